"""
The portserver: portpicker's protocol, bad input, the cap on connections,
who may ask, and its socket's life (mode, stale file, a live one never
taken). Memory transports for the protocol's paths; real AF_UNIX sockets
(abstract names unique per test) for the rest; and an end-to-end run in
which real processes call ``portpicker.pick_unused_port()``.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import portpicker
import pytest
import pytest_twisted
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import deferLater
from twisted.internet.testing import (
    MemoryReactorClock,
    StringTransportWithDisconnection,
)
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from txportend._portpool import PortPool
from txportend._portserver import (
    DEFAULT_ADDRESS,
    CannotServe,
    PortServer,
    peer_uid,
)

_sync = SynchronousTestCase()
ROOT = Path(__file__).resolve().parent.parent
ME = os.getpid()
OTHER = 4242  # a live process, as far as the fake process facts go


def unique_address() -> str:
    return f"@txportend-test-{uuid.uuid4().hex}"


class Processes:
    """Fake process facts: pid -> start time of the live ones."""

    def __init__(self) -> None:
        self.live: dict[int, float] = {ME: 1.0, OTHER: 2.0}

    def __call__(self, pid: int) -> float | None:
        return self.live.get(pid)


class Checks:
    """A port check whose answers the test gives, one at a time."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, Deferred[bool]]] = []

    def __call__(self, port: int) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.pending.append((port, d))
        return d

    def answer(self, free: bool = True) -> int:
        port, d = self.pending.pop(0)
        d.callback(free)
        return port


class Conn:
    """One client connection on a memory transport."""

    def __init__(self, factory: Any) -> None:
        self.protocol = factory.buildProtocol(UNIXAddress(None))
        self.transport = StringTransportWithDisconnection()
        if self.protocol is not None:
            self.transport.protocol = self.protocol
            self.protocol.makeConnection(self.transport)

    def send(self, data: bytes) -> Conn:
        self.protocol.dataReceived(data)
        return self

    @property
    def answer(self) -> bytes:
        return self.transport.value()

    @property
    def closed(self) -> bool:
        return not self.transport.connected

    def leave(self) -> None:
        self.transport.loseConnection()


def memory_server(
    ports: int = 3, reactor: Any = None, **kw: Any
) -> tuple[PortServer, Any, Any]:
    """A started PortServer on a memory reactor, every port free."""
    reactor = reactor or MemoryReactorClock()
    kw.setdefault("port_check", lambda port: succeed(True))
    kw.setdefault("peer_uid", lambda transport: os.getuid())
    pool = PortPool(range(20000, 20000 + ports), process_start=Processes())
    server = PortServer("@test", pool, reactor=reactor, **kw)
    server.startService()
    return server, reactor, reactor.unixServers[-1][1] if reactor.unixServers else None


# The protocol


def test_answers_a_port_and_closes() -> None:
    """b"<pid>\\n" in, b"<port>\\n" out, then the server closes."""
    server, reactor, factory = memory_server()
    conn = Conn(factory).send(b"%d\n" % ME)
    assert conn.answer == b"20000\n"
    assert conn.closed
    assert (server.requests_served, server.ports_allocated, server.bad_requests) == (
        1,
        1,
        0,
    )
    assert reactor.getDelayedCalls() == []


def test_a_held_port_goes_to_nobody_else() -> None:
    """Distinct ports while the holders live; none left: close, no answer."""
    server, _, factory = memory_server(ports=2)
    answers = [Conn(factory).send(b"%d\n" % pid).answer for pid in (ME, OTHER, ME)]
    assert answers == [b"20000\n", b"20001\n", b""]
    assert (server.requests_served, server.requests_denied) == (2, 1)


def test_a_dead_holders_port_is_handed_out_again() -> None:
    server, _, factory = memory_server(ports=1)
    Conn(factory).send(b"%d\n" % OTHER)
    del server.pool.process_start.live[OTHER]  # type: ignore[attr-defined]
    assert server.ports_allocated == 0
    assert Conn(factory).send(b"%d\n" % ME).answer == b"20000\n"


@pytest.mark.parametrize(
    "request_",
    [
        b"garbage\n",
        b"12ab\n",
        b"1" * 21,
        b"%d\n" % ME + b" " * 20,  # more than 20 bytes
        b"1\n",  # init
        b"0\n",
        b"-5\n",
        b"99999999\n",  # no such process
        b"\xff\xfe\n",
    ],
)
def test_bad_requests_get_nothing(request_: bytes) -> None:
    """Refused: closed with nothing sent, counted, no port taken."""
    server, reactor, factory = memory_server()
    conn = Conn(factory).send(request_)
    assert (conn.answer, conn.closed) == (b"", True)
    assert (server.bad_requests, server.requests_served, server.ports_allocated) == (
        1,
        0,
        0,
    )
    assert reactor.getDelayedCalls() == []


def test_twenty_bytes_is_still_a_request() -> None:
    """portpicker's limit: up to 20 bytes, read with int() (spaces allowed)."""
    _, _, factory = memory_server()
    request = b"%d\n" % ME
    request = b" " * (20 - len(request)) + request
    assert Conn(factory).send(request).answer == b"20000\n"


def test_empty_request() -> None:
    """A client that closes without sending anything: a bad request."""
    server, reactor, factory = memory_server()
    Conn(factory).leave()
    assert (server.bad_requests, server.connections) == (1, 0)
    assert reactor.getDelayedCalls() == []


def test_slow_client_is_timed_out() -> None:
    server, reactor, factory = memory_server(request_timeout=3.0)
    conn = Conn(factory)
    reactor.advance(2.9)
    assert not conn.closed
    reactor.advance(0.1)
    assert (conn.closed, conn.answer, server.bad_requests) == (True, b"", 1)
    assert reactor.getDelayedCalls() == []


def test_only_the_first_chunk_counts() -> None:
    _, _, factory = memory_server()
    conn = Conn(factory).send(b"%d\n" % ME).send(b"%d\n" % OTHER)
    assert conn.answer == b"20000\n"


def test_requests_are_served_one_at_a_time_in_order() -> None:
    """While a port is being checked, the next request waits: one port is
    never given twice, even when checks take time."""
    checks = Checks()
    _, _, factory = memory_server(port_check=checks)
    first = Conn(factory).send(b"%d\n" % ME)
    second = Conn(factory).send(b"%d\n" % OTHER)
    assert [port for port, _ in checks.pending] == [20000]
    assert checks.answer() == 20000
    assert first.answer == b"20000\n"
    assert checks.answer() == 20001
    assert second.answer == b"20001\n"


def test_client_gone_before_its_turn_gets_no_port() -> None:
    checks = Checks()
    server, _, factory = memory_server(port_check=checks)
    Conn(factory).send(b"%d\n" % ME)
    leaving = Conn(factory).send(b"%d\n" % OTHER)
    leaving.leave()
    checks.answer()
    assert checks.pending == []  # no port looked for the one that left
    assert server.pool.allocated() == 1
    assert server.pool.holder(20001) is None


def test_client_gone_during_its_turn_keeps_the_port() -> None:
    """As in portpicker: a port chosen for a pid stays with it."""
    checks = Checks()
    server, _, factory = memory_server(port_check=checks)
    leaving = Conn(factory).send(b"%d\n" % OTHER)
    leaving.leave()
    checks.answer()
    assert leaving.answer == b""
    assert server.pool.holder(20000) == (OTHER, 2.0)
    assert server.requests_served == 1


def test_a_failing_check_denies_and_the_server_goes_on() -> None:
    calls: list[int] = []

    def check(port: int) -> Deferred[bool]:
        calls.append(port)
        if len(calls) == 1:
            return fail(CannotListenError("::", port, OSError(errno.EMFILE, "x")))
        return succeed(True)

    server, _, factory = memory_server(port_check=check)
    with capturedLogs() as events:
        assert Conn(factory).send(b"%d\n" % ME).answer == b""
    assert any(e.get("log_failure") is not None for e in events)
    assert Conn(factory).send(b"%d\n" % ME).answer == b"20001\n"
    assert (server.requests_denied, server.requests_served) == (1, 1)


# Who may ask


def test_other_users_are_refused() -> None:
    server, _, factory = memory_server(peer_uid=lambda transport: os.getuid() + 1)
    conn = Conn(factory)
    assert (conn.closed, conn.answer, server.bad_requests) == (True, b"", 1)


def test_unknown_users_are_refused() -> None:
    server, _, factory = memory_server(peer_uid=lambda transport: None)
    assert Conn(factory).closed
    assert server.bad_requests == 1


def test_other_users_allowed_when_the_operator_says_so() -> None:
    _, reactor, factory = memory_server(
        peer_uid=lambda transport: os.getuid() + 1, allow_other_users=True
    )
    assert Conn(factory).send(b"%d\n" % ME).answer == b"20000\n"
    assert reactor.unixServers[-1][3] == 0o666


def test_socket_file_is_for_the_owner_only_by_default() -> None:
    _, reactor, _ = memory_server()
    address, _, _, mode, want_pid = reactor.unixServers[-1]
    assert (address, mode, want_pid) == ("\0test", 0o600, 0)


def test_peer_uid_reads_the_peers_credentials() -> None:
    if not hasattr(socket, "SO_PEERCRED"):
        pytest.skip("no SO_PEERCRED here")
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:

        class Transport:
            def getHandle(self) -> socket.socket:
                return left

        assert peer_uid(Transport()) == os.getuid()  # type: ignore[arg-type]


# The cap on connections


@implementer(IPushProducer)
class PausablePort:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        pass

    def stopListening(self) -> None:
        pass

    numberAccepts = 100  # as Twisted's listening ports have


def test_cap_stops_accepting_and_narrows_the_accept_round() -> None:
    """At the cap the server stops accepting (clients wait in the kernel's
    queue); below it, it accepts again, a round taking at most the room
    left."""
    reactor = MemoryReactorClock()
    port = PausablePort()
    factories: list[Any] = []

    def listen(address: str, factory: Any, **kw: Any) -> PausablePort:
        factories.append(factory)
        return port

    reactor.listenUNIX = listen  # type: ignore[assignment]
    server, _, _ = memory_server(ports=3, max_connections=3, reactor=reactor)
    assert port.numberAccepts == 3
    first = Conn(factories[0])
    assert port.numberAccepts == 2
    second, third = Conn(factories[0]), Conn(factories[0])
    assert (port.calls, port.numberAccepts) == (["pause"], 1)
    first.send(b"%d\n" % ME)
    assert (port.calls, port.numberAccepts) == (["pause", "resume"], 1)
    second.send(b"%d\n" % ME)
    assert port.numberAccepts == 2
    assert third.send(b"%d\n" % ME).answer == b"20002\n"
    assert (server.connections, port.numberAccepts) == (0, 3)


# Starting and stopping


def test_stop_drops_connections_and_queue() -> None:
    checks = Checks()
    server, reactor, factory = memory_server(port_check=checks)
    busy = Conn(factory).send(b"%d\n" % ME)
    queued = Conn(factory).send(b"%d\n" % OTHER)
    waiting = Conn(factory)
    stopped = server.stopService()
    assert (busy.closed, queued.closed, waiting.closed) == (True, True, True)
    assert not stopped.called  # the check under way finishes first
    checks.answer()
    _sync.successResultOf(stopped)
    assert checks.pending == []
    assert server.pool.holder(20001) is None
    assert reactor.getDelayedCalls() == []
    assert (server.connections, server.bad_requests) == (0, 0)


@pytest.mark.parametrize("address", ["", "@", "a\0b"])
def test_bad_address_refused(address: str) -> None:
    with pytest.raises(ValueError):
        PortServer(address, PortPool([20000]))


@pytest.mark.parametrize(
    "options", [{"max_connections": 0}, {"request_timeout": 0}, {"request_timeout": -1}]
)
def test_bad_options_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        PortServer("@x", PortPool([20000]), **options)


def test_default_address_is_portpickers() -> None:
    assert DEFAULT_ADDRESS == "@unittest-portserver"
    assert PortServer().address == DEFAULT_ADDRESS
    assert PortServer().ports_managed == 10000


# Real sockets


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit AF_UNIX's ~100 bytes."""
    with tempfile.TemporaryDirectory(prefix="txp-") as name:
        yield Path(name)


def real_server(reactor: Any, address: str, ports: range, **kw: Any) -> PortServer:
    server = PortServer(address, PortPool(ports), reactor=reactor, **kw)
    server.startService()
    return server


def ask(address: str, request: bytes | None, shut: bool = False) -> bytes:
    """A client in a thread: send ``request`` (or nothing), read to the end."""
    path = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.settimeout(30)
        if request is not None:
            sock.sendall(request)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(100):
            data += chunk
        return data


@pytest_twisted.ensureDeferred
async def test_portpicker_client_gets_distinct_ports(reactor: Any) -> None:
    """portpicker's own client, over a real abstract socket, with real
    port checks."""
    address = unique_address()
    server = real_server(reactor, address, range(21000, 21100))
    try:
        ports = [
            await deferToThread(portpicker.get_port_from_port_server, address)
            for _ in range(3)
        ]
    finally:
        await server.stopService()
    assert len(set(ports)) == 3
    assert all(21000 <= p < 21100 for p in ports)
    assert server.requests_served == 3


@pytest.mark.parametrize(
    ("request_", "shut"),
    [(b"garbage\n", False), (b"", True), (b"1\n", False), (b"9" * 30, False)],
)
@pytest_twisted.ensureDeferred
async def test_bad_requests_on_a_real_socket(
    reactor: Any, request_: bytes, shut: bool
) -> None:
    address = unique_address()
    server = real_server(reactor, address, range(21000, 21010))
    try:
        assert await deferToThread(ask, address, request_, shut) == b""
        answer = await deferToThread(ask, address, b"%d\n" % ME)
    finally:
        await server.stopService()
    assert server.bad_requests == 1
    assert 21000 <= int(answer) < 21010  # still up


@pytest_twisted.ensureDeferred
async def test_slow_client_on_a_real_socket(reactor: Any) -> None:
    address = unique_address()
    server = real_server(reactor, address, range(21000, 21010), request_timeout=0.05)
    try:
        assert await deferToThread(ask, address, None) == b""
    finally:
        await server.stopService()
    assert server.bad_requests == 1


@pytest_twisted.ensureDeferred
async def test_filesystem_socket_mode_and_cleanup(
    reactor: Any, short_dir: Path
) -> None:
    path = short_dir / "ps.sock"
    server = real_server(reactor, str(path), range(21000, 21010))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        answer = await deferToThread(ask, str(path), b"%d\n" % ME)
        assert 21000 <= int(answer) < 21010
    finally:
        await server.stopService()
    assert not path.exists()


@pytest_twisted.ensureDeferred
async def test_stale_socket_file_is_replaced(reactor: Any, short_dir: Path) -> None:
    """A socket file left by a server that is gone (connecting is refused)."""
    path = short_dir / "ps.sock"
    with socket.socket(socket.AF_UNIX) as crashed:
        crashed.bind(str(path))
    assert path.exists()
    with capturedLogs() as events:
        server = real_server(reactor, str(path), range(21000, 21010))
    try:
        assert any("stale" in e.get("log_format", "") for e in events)
        answer = await deferToThread(ask, str(path), b"%d\n" % ME)
        assert 21000 <= int(answer) < 21010
    finally:
        await server.stopService()


@pytest.mark.parametrize("kind", ["abstract", "path"])
@pytest_twisted.ensureDeferred
async def test_live_server_is_never_taken(
    reactor: Any, short_dir: Path, kind: str
) -> None:
    address = unique_address() if kind == "abstract" else str(short_dir / "ps.sock")
    first = real_server(reactor, address, range(21000, 21010))
    try:
        second = PortServer(address, PortPool([21020]), reactor=reactor)
        with pytest.raises(CannotServe) as caught:
            second.startService()
        assert str(caught.value) == f"Another server is listening on {address}."
        assert isinstance(caught.value, CannotListenError)
        assert not second.running
        answer = await deferToThread(ask, address, b"%d\n" % ME)
        assert 21000 <= int(answer) < 21010  # the first one still serves
    finally:
        await first.stopService()
    # The second server's look at a path is a connection without a request.
    assert first.bad_requests == (1 if kind == "path" else 0)


def test_a_path_that_is_not_a_socket_is_left_alone(short_dir: Path) -> None:
    from twisted.internet import reactor

    path = short_dir / "notes.txt"
    path.write_text("keep me")
    server = PortServer(str(path), PortPool([21000]), reactor=reactor)  # type: ignore[arg-type]
    with pytest.raises(CannotServe) as caught:
        server.startService()
    assert str(caught.value) == f"{path} exists and is not a socket."
    assert path.read_text() == "keep me"


def test_a_missing_directory_is_one_clear_error(short_dir: Path) -> None:
    from twisted.internet import reactor

    path = short_dir / "nowhere" / "ps.sock"
    server = PortServer(str(path), PortPool([21000]), reactor=reactor)  # type: ignore[arg-type]
    with pytest.raises(CannotServe) as caught:
        server.startService()
    assert str(caught.value) == f"Cannot listen on {path}: No such file or directory."


FLOOD = textwrap.dedent(
    """
    import os, socket, sys, threading
    address, count = "\\0" + sys.argv[1][1:], int(sys.argv[2])
    threading.stack_size(256 * 1024)
    barrier = threading.Barrier(count)
    answers = [None] * count

    def client(i):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            barrier.wait()
            sock.connect(address)  # blocking: waits while the queue is full
            sock.settimeout(120)
            data = b""
            try:
                sock.sendall(b"%d\\n" % os.getpid())
                while chunk := sock.recv(100):
                    data += chunk
            except (BrokenPipeError, ConnectionResetError):
                pass  # counted as no answer
            answers[i] = data

    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(" ".join(a.decode().strip() or "-" for a in answers))
    """
)


def _flood(address: str, count: int) -> list[str]:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = count + 100
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"the file descriptor limit ({hard}) is too low for the flood")

    def raise_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))

    done = subprocess.run(
        [sys.executable, "-c", FLOOD, address, str(count)],
        capture_output=True,
        text=True,
        timeout=240,
        preexec_fn=raise_limit,
        check=True,
    )
    return done.stdout.split()


@pytest_twisted.ensureDeferred
async def test_a_flood_of_a_thousand_requests(reactor: Any) -> None:
    """1,000 clients at once: each gets its own port, the connections open
    at once stay bounded, and the server goes on serving."""
    address = unique_address()
    cap = 50
    peak = [0]

    def check(port: int) -> Deferred[bool]:  # takes a reactor turn, binds nothing
        return deferLater(reactor, 0, lambda: True)

    server = real_server(
        reactor, address, range(30000, 31100), max_connections=cap, port_check=check
    )
    opened = server._opened

    def counting(request: Any) -> None:
        opened(request)
        peak[0] = max(peak[0], server.connections)

    server._opened = counting  # type: ignore[method-assign]
    try:
        answers = await deferToThread(_flood, address, 1000)
        after = await deferToThread(ask, address, b"%d\n" % ME)
    finally:
        await server.stopService()
    assert len(answers) == 1000
    assert "-" not in answers
    assert len(set(answers)) == 1000
    assert server.requests_served == 1001
    assert (server.bad_requests, server.requests_denied) == (0, 0)
    # At the cap it stops accepting; a round of accepts is narrowed to the
    # room left, though Twisted may widen it by 20 first.
    assert peak[0] <= 2 * cap + 20
    assert 30000 <= int(after) < 31100


# End to end: real processes, portpicker's client, the server in its own
# process.

SERVER = textwrap.dedent(
    """
    import sys
    from twisted.internet import defer, task
    from txportend._portpool import PortPool, parse_port_ranges
    from txportend._portserver import PortServer

    def main(reactor):
        server = PortServer(sys.argv[1], PortPool(parse_port_ranges(sys.argv[2])))
        server.startService()
        print("ready", flush=True)
        done = defer.Deferred()
        reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
        return done

    task.react(main)
    """
)

CLIENT = textwrap.dedent(
    """
    import sys, portpicker
    print(portpicker.pick_unused_port(), flush=True)
    sys.stdin.read()  # hold the port until told to go
    """
)


def portpicker_client(env: dict[str, str]) -> subprocess.Popen[str]:
    """A process that asks for a port with portpicker.pick_unused_port()
    (PORTSERVER_ADDRESS in ``env``), prints it, and holds it until its
    standard input ends."""
    return subprocess.Popen(
        [sys.executable, "-c", CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_portpicker_processes_get_distinct_ports() -> None:
    """Several real processes calling portpicker.pick_unused_port() with
    PORTSERVER_ADDRESS set get distinct ports from the pool."""
    address = unique_address()
    base = 22000 + (os.getpid() % 100) * 20
    env = dict(os.environ, PYTHONPATH=str(ROOT), PORTSERVER_ADDRESS=address)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, address, f"{base}-{base + 19}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    children: list[subprocess.Popen[str]] = []
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "ready\n", server.stderr.read()  # type: ignore[union-attr]
        children = [portpicker_client(env) for _ in range(6)]
        ports = [int(c.stdout.readline()) for c in children]  # type: ignore[union-attr]
        assert len(set(ports)) == 6
        assert all(base <= p < base + 20 for p in ports)
        for c in children:
            _, err = c.communicate("", timeout=60)
            assert c.returncode == 0 and "portserver" not in err.lower(), err
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert server.returncode == 0, err
