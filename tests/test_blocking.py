"""
txportend.blocking: the portend-compatible blocking API, run on a private
reactor in one daemon thread.

Real loopback sockets only (127.0.0.1 and ::1). Behaviour is compared with
the real ``portend`` module where the two overlap. Tests that need a fresh
interpreter (no private reactor yet, a global reactor installed afterwards,
fork, SIGINT) run a short script in a subprocess.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from types import TracebackType
from typing import Any

import portend
import pytest
import pytest_twisted

import txportend
import txportend.blocking as blocking

from .fakes import has_ipv6_loopback

needs_ipv6 = pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1")
loopback = pytest.mark.parametrize(
    "host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)]
)
#: A bound but never listening socket's port refuses connections: "closed",
#: and no one else can take it while the test holds it.
CLOSED = "closed"
SUBPROCESS_TIMEOUT = 60


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Listener:
    """
    A TCP server on a loopback address and a kernel-picked port, accepting
    (and closing) connections in a thread so its backlog never fills.
    """

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(_family(host), socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(128)
        self.sock.settimeout(0.05)
        self.port: int = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:  # including the 0.05 s timeout
                continue
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ClosedPort:
    """A port bound without listening: connections to it are refused."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(_family(host), socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.port: int = self.sock.getsockname()[1]

    def __enter__(self) -> ClosedPort:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.sock.close()


@pytest.fixture
def closed_v4() -> Iterator[int]:
    with ClosedPort("127.0.0.1") as closed:
        yield closed.port


def outcome(call: Callable[[], object]) -> tuple[str, str]:
    """What a call did: ``('returned', repr(value))`` or (exception type, message)."""
    try:
        value = call()
    except Exception as e:
        return type(e).__name__, str(e)
    return "returned", repr(value)


def run_script(source: str) -> dict[str, Any]:
    """Run ``source`` in a fresh interpreter; it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# The public surface


PORTEND_NAMES = [
    "Checker",
    "HostPort",
    "PortNotFree",
    "Timeout",
    "client_host",
    "find_available_local_port",
    "free",
    "occupied",
]


def test_every_public_portend_name_is_there() -> None:
    public = {n for n in vars(portend) if not n.startswith("_")}
    # portend's module namespace also holds the modules it imports.
    public = {n for n in public if not inspect.ismodule(getattr(portend, n))}
    assert public - {"timing"} == set(PORTEND_NAMES)
    assert set(PORTEND_NAMES) <= set(blocking.__all__)
    for name in PORTEND_NAMES:
        assert hasattr(blocking, name), name


@pytest.mark.parametrize("name", ["Timeout", "PortNotFree", "HostPort", "client_host"])
def test_reexports_are_txportends_own_objects(name: str) -> None:
    """``except txportend.Timeout`` catches what txportend.blocking raises."""
    assert getattr(blocking, name) is getattr(txportend, name)


@pytest.mark.parametrize("name", ["Timeout", "PortNotFree"])
def test_exceptions_have_portends_base(name: str) -> None:
    assert issubclass(getattr(blocking, name), OSError)
    assert issubclass(getattr(portend, name), OSError)


def _positional(function: Callable[..., object]) -> list[tuple[str, object, object]]:
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(function).parameters.values()
        if p.kind is not inspect.Parameter.KEYWORD_ONLY
    ]


@pytest.mark.parametrize(
    "path",
    ["occupied", "free", "find_available_local_port", "Checker", "Checker.assert_free"],
)
def test_signatures_match_portend(path: str) -> None:
    """Same positional parameters and defaults; extras are keyword-only."""
    ours: Any = blocking
    theirs: Any = portend
    for part in path.split("."):
        ours, theirs = getattr(ours, part), getattr(theirs, part)
    assert _positional(ours) == _positional(theirs)
    extras = [
        p
        for p in inspect.signature(ours).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    assert all(p.default is not inspect.Parameter.empty for p in extras)


def test_checker_keeps_its_timeout_like_portend() -> None:
    assert blocking.Checker().timeout == portend.Checker().timeout == 1.0
    assert blocking.Checker(0.25).timeout == 0.25


# Same results, exceptions and messages as portend


@loopback
def test_assert_free_on_a_closed_port_returns_none_like_portend(host: str) -> None:
    with ClosedPort(host) as closed:
        ours = outcome(lambda: blocking.Checker().assert_free(host, closed.port))
        theirs = outcome(lambda: portend.Checker().assert_free(host, closed.port))
    assert ours == theirs == ("returned", "None")


@loopback
def test_assert_free_on_a_listening_port_raises_portends_message(host: str) -> None:
    with Listener(host) as server:
        ours = outcome(lambda: blocking.Checker().assert_free(host, server.port))
        theirs = outcome(lambda: portend.Checker().assert_free(host, server.port))
    assert ours == theirs == ("PortNotFree", f"Port {server.port} is in use on {host}.")


@needs_ipv6
def test_assert_free_takes_an_address_tuple_like_portend() -> None:
    with Listener("::1") as server:
        addr = ("::1", server.port, 0, 0)
        ours = outcome(lambda: blocking.Checker().assert_free(addr))
        theirs = outcome(lambda: portend.Checker().assert_free(addr))
        assert (
            ours == theirs == ("PortNotFree", f"Port {server.port} is in use on ::1.")
        )
    with ClosedPort("::1") as closed:
        addr = ("::1", closed.port, 0, 0)
        assert outcome(lambda: blocking.Checker().assert_free(addr)) == (
            "returned",
            "None",
        )


@loopback
@pytest.mark.parametrize("path", ["calling thread", "private reactor"])
def test_assert_free_gives_one_verdict_in_either_thread(
    host: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An address literal is checked in the calling thread when the kernel
    answers within connect(); the private reactor's path must agree."""
    if path == "private reactor":
        monkeypatch.setattr(blocking._wait, "assert_free_now", lambda *a: False)
    else:

        def no_hop(*args: object, **kwargs: object) -> None:
            raise AssertionError("went to the private reactor")

        monkeypatch.setattr(blocking, "_call", no_hop)
    with Listener(host) as server:
        assert outcome(lambda: blocking.Checker().assert_free(host, server.port)) == (
            "PortNotFree",
            f"Port {server.port} is in use on {host}.",
        )
    with ClosedPort(host) as closed:
        assert outcome(lambda: blocking.Checker().assert_free(host, closed.port)) == (
            "returned",
            "None",
        )


def test_assert_free_on_a_name_goes_to_the_private_reactor(
    closed_v4: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = blocking._call

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(blocking, "_call", counted)
    blocking.Checker().assert_free("localhost", closed_v4)
    assert calls == [txportend._wait.assert_free]


def test_assert_free_on_localhost_names_the_address_that_accepted() -> None:
    with Listener("127.0.0.1") as server:
        ours = outcome(lambda: blocking.Checker().assert_free("localhost", server.port))
        theirs = outcome(
            lambda: portend.Checker().assert_free("localhost", server.port)
        )
    assert (
        ours == theirs == ("PortNotFree", f"Port {server.port} is in use on 127.0.0.1.")
    )


@loopback
def test_occupied_returns_none_on_a_listening_port_like_portend(host: str) -> None:
    with Listener(host) as server:
        ours = outcome(lambda: blocking.occupied(host, server.port, 5))
        theirs = outcome(lambda: portend.occupied(host, server.port, 5))
    assert ours == theirs == ("returned", "None")


@pytest.mark.parametrize("timeout", [0, 0.05, datetime.timedelta(milliseconds=50)])
def test_occupied_times_out_with_portends_message(timeout: Any) -> None:
    with ClosedPort("127.0.0.1") as closed:
        ours = outcome(lambda: blocking.occupied("localhost", closed.port, timeout))
        theirs = outcome(lambda: portend.occupied("localhost", closed.port, timeout))
    assert ours == theirs == ("Timeout", f"Port {closed.port} not bound on localhost.")


@loopback
def test_free_returns_none_on_a_closed_port_like_portend(host: str) -> None:
    with ClosedPort(host) as closed:
        ours = outcome(lambda: blocking.free(host, closed.port, 5))
        theirs = outcome(lambda: portend.free(host, closed.port, 5))
    assert ours == theirs == ("returned", "None")


@loopback
def test_free_times_out_with_portends_message(host: str) -> None:
    with Listener(host) as server:
        ours = outcome(lambda: blocking.free(host, server.port, 0.05))
        theirs = outcome(lambda: portend.free(host, server.port, 0.05))
    assert ours == theirs == ("Timeout", f"Port {server.port} not free on {host}.")


@pytest.mark.parametrize("function", ["free", "occupied"])
@pytest.mark.parametrize("host", [None, ""])
def test_empty_host_raises_portends_value_error(function: str, host: Any) -> None:
    ours = outcome(lambda: getattr(blocking, function)(host, None))
    theirs = outcome(lambda: getattr(portend, function)(host, None))
    assert (
        ours == theirs == ("ValueError", "Host values of '' or None are not allowed.")
    )


def test_a_blocking_timeout_is_caught_as_txportend_timeout(closed_v4: int) -> None:
    with pytest.raises(txportend.Timeout, match=f"Port {closed_v4} not bound"):
        blocking.occupied("127.0.0.1", closed_v4, 0)


def test_find_available_local_port_binds_in_the_calling_thread() -> None:
    """As a process's first call it starts no thread, and imports no
    reactor."""
    code = (
        "import sys, threading\n"
        "import txportend.blocking as portend\n"
        "port = portend.find_available_local_port()\n"
        "print(0 < port < 65536, threading.active_count(),"
        " 'twisted.internet.reactor' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert (done.stdout, done.stderr) == ("True 1 False\n", "")


def test_find_available_local_port_returns_an_int_one_can_listen_on() -> None:
    port = blocking.find_available_local_port()
    assert type(port) is int
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen(1)


# Waiting


def test_occupied_returns_once_a_late_listener_appears() -> None:
    with ClosedPort("127.0.0.1") as closed:
        # The bound socket starts listening 0.2 s later.
        late = threading.Timer(0.2, closed.sock.listen, (8,))
        started = time.monotonic()
        late.start()
        try:
            blocking.occupied("127.0.0.1", closed.port, 10, interval=0.01)
            waited = time.monotonic() - started
        finally:
            late.join(5)
    assert 0.2 <= waited < 10


def test_free_returns_once_the_listener_closes() -> None:
    server = Listener("127.0.0.1")
    closer = threading.Timer(0.2, server.close)
    started = time.monotonic()
    closer.start()
    try:
        blocking.free("127.0.0.1", server.port, 10, interval=0.01)
        waited = time.monotonic() - started
    finally:
        closer.join(5)
        server.close()
    assert 0.2 <= waited < 10


def test_interval_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        blocking.occupied("127.0.0.1", 1, 0, 0.1)  # type: ignore[call-arg]


# Threads and resources


def test_many_threads_at_once_each_get_their_own_results() -> None:
    """8 threads x 100 calls on distinct ports: no answer goes to the wrong caller."""
    servers = [Listener("127.0.0.1") for _ in range(8)]
    closed = [ClosedPort("127.0.0.1") for _ in range(8)]
    results: dict[int, list[tuple[str, str]]] = {}
    expected: dict[int, list[tuple[str, str]]] = {}

    def work(index: int) -> None:
        ports = [servers[index].port, closed[index].port]  # busy, free
        checker = blocking.Checker()
        results[index] = [
            outcome(partial(checker.assert_free, "127.0.0.1", ports[i % 2]))
            for i in range(100)
        ]

    for index, server in enumerate(servers):
        busy = ("PortNotFree", f"Port {server.port} is in use on 127.0.0.1.")
        expected[index] = [("returned", "None") if i % 2 else busy for i in range(100)]
    workers = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
    finally:
        for server in servers:
            server.close()
        for c in closed:
            c.sock.close()
    assert not any(w.is_alive() for w in workers)
    assert results == expected


def _txportend_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if blocking.THREAD_NAME in t.name]


def test_one_daemon_thread_serves_every_call(closed_v4: int) -> None:
    """Calls on address literals start no thread beyond the private reactor's."""
    with pytest.raises(blocking.Timeout):  # the private reactor's, started
        blocking.occupied("127.0.0.1", closed_v4, 0.02)
    blocking.Checker().assert_free("127.0.0.1", closed_v4)
    before = set(threading.enumerate())
    for _ in range(200):
        blocking.Checker().assert_free("127.0.0.1", closed_v4)
    blocking.find_available_local_port()
    with pytest.raises(blocking.Timeout):
        blocking.occupied("127.0.0.1", closed_v4, 0.02)
    after = set(threading.enumerate())
    # No new thread (a resolver thread left by an earlier test may have quit).
    assert after <= before
    loops = [t for t in _txportend_threads() if t.name == blocking.THREAD_NAME]
    assert len(loops) == 1
    assert loops[0].daemon
    assert loops[0].ident == blocking._get_loop().ident


# Name lookups: txportend._resolver, here and in the private reactor

#: Bounds every wait on an Event in these tests (never reached when they pass).
EVENT_WAIT = 10


class FakeNames:
    """
    A stand-in for getaddrinfo: answers from ``table`` (127.0.0.1 and ::1
    for the names in it, nothing for others), and for names in ``slow``
    only once their Event is set. Records which names started, and in
    which threads.
    """

    def __init__(self, table: dict[str, list[str]], slow: tuple[str, ...] = ()) -> None:
        self.table = table
        self.release = {name: threading.Event() for name in slow}
        self.started: dict[str, threading.Event] = {}
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def began(self, name: str) -> threading.Event:
        with self._lock:
            return self.started.setdefault(name, threading.Event())

    def __call__(
        self, host: str, port: int, family: int = 0, kind: int = 0
    ) -> list[tuple[Any, ...]]:
        with self._lock:
            self.threads.append(threading.current_thread())
        self.began(host).set()
        if host in self.release:
            assert self.release[host].wait(EVENT_WAIT), f"{host} never released"
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (
                _family(a),
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in self.table[host]
        ]

    def release_all(self) -> None:
        for event in self.release.values():
            event.set()


@pytest.fixture
def private_names() -> Iterator[Callable[[FakeNames], None]]:
    """Make the private reactor resolve with a FakeNames, for one test."""
    loop = blocking._get_loop()
    previous = loop.reactor.nameResolver
    used: list[FakeNames] = []

    def use(names: FakeNames) -> None:
        used.append(names)
        resolver = txportend._resolver.ThreadedResolver(loop.reactor, getaddrinfo=names)  # type: ignore[arg-type]
        _in_loop(loop, lambda: loop.reactor.installNameResolver(resolver))

    yield use
    for names in used:
        names.release_all()
    _in_loop(loop, lambda: loop.reactor.installNameResolver(previous))


def _in_loop(loop: Any, call: Callable[[], object]) -> None:
    """Run ``call`` in the private reactor's thread and wait for it."""
    done = threading.Event()
    loop.call_from_thread(lambda: (call(), done.set()))
    assert done.wait(EVENT_WAIT)


def test_a_slow_name_does_not_change_another_names_answer(
    private_names: Callable[[FakeNames], None],
) -> None:
    """While one lookup hangs, another name's lookup runs and its call gets
    the right answer, not a wrong Timeout (a one-thread resolver pool queued
    it behind the slow one)."""
    names = FakeNames({"db.slow": [], "fast.test": ["127.0.0.1"]}, slow=("db.slow",))
    private_names(names)
    slow_result: list[tuple[str, str]] = []
    slow = threading.Thread(
        target=lambda: slow_result.append(
            outcome(lambda: blocking.occupied("db.slow", 5432, 60))
        )
    )
    slow.start()
    try:
        assert names.began("db.slow").wait(EVENT_WAIT)
        with Listener("127.0.0.1") as server:
            assert outcome(lambda: blocking.occupied("fast.test", server.port, 5)) == (
                "returned",
                "None",
            )
            assert outcome(
                lambda: blocking.Checker().assert_free("fast.test", server.port)
            ) == ("PortNotFree", f"Port {server.port} is in use on 127.0.0.1.")
        assert slow.is_alive(), "the slow lookup was not pending meanwhile"
    finally:
        names.release_all()
        slow.join(EVENT_WAIT)
    assert not slow.is_alive()
    assert slow_result[0][0] == "HostNotFound"


def test_lookup_threads_are_daemons_and_end_when_no_lookup_is_left(
    closed_v4: int, private_names: Callable[[FakeNames], None]
) -> None:
    names = FakeNames({"name.test": ["127.0.0.1"]})
    private_names(names)
    for _ in range(20):
        assert outcome(
            lambda: blocking.Checker().assert_free("name.test", closed_v4)
        ) == ("returned", "None")
    assert names.threads, "the lookups ran in no thread"
    assert all(t.daemon for t in names.threads)
    assert {t.name for t in names.threads} == {txportend._resolver.THREAD_NAME}
    for thread in set(names.threads):
        thread.join(EVENT_WAIT)  # the test waits; the resolver never does
        assert not thread.is_alive()


def _resolve_with(resolver: Any, name: str) -> Any:
    """Resolve ``name``; a Deferred firing with the addresses seen and the
    thread that delivered them."""
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IResolutionReceiver
    from zope.interface import implementer

    result: Deferred[tuple[list[str], str]] = Deferred()
    seen: list[str] = []

    @implementer(IResolutionReceiver)
    class Receiver:
        def resolutionBegan(self, resolution: Any) -> None:
            pass

        def addressResolved(self, address: Any) -> None:
            seen.append(address.host)

        def resolutionComplete(self) -> None:
            result.callback((seen, threading.current_thread().name))

    resolver.resolveHostName(Receiver(), name, 80)
    return result


@pytest_twisted.ensureDeferred
async def test_the_resolver_answers_on_the_reactor_thread(reactor: Any) -> None:
    from twisted.internet.threads import deferToThread

    names = FakeNames({"two.test": ["::1", "127.0.0.1"]})
    resolver = txportend._resolver.ThreadedResolver(reactor, getaddrinfo=names)  # type: ignore[arg-type]
    here = threading.current_thread().name
    assert await _resolve_with(resolver, "two.test") == (["::1", "127.0.0.1"], here)
    # A name that fails to resolve completes with no address.
    assert await _resolve_with(resolver, "missing.test") == ([], here)
    # Let the lookup threads end (the reactor fixture checks what is left).
    await deferToThread(lambda: [t.join(EVENT_WAIT) for t in names.threads])


@pytest_twisted.ensureDeferred
async def test_the_resolver_caps_its_threads_and_drops_cancelled_lookups(
    reactor: Any,
) -> None:
    """Beyond max_lookups, lookups wait their turn; one cancelled while it
    waits never runs, one cancelled while it runs is never answered."""
    from twisted.internet.threads import deferToThread

    names = FakeNames(
        {"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"], "c.test": ["127.0.0.1"]},
        slow=("a.test", "b.test"),
    )
    resolver = txportend._resolver.ThreadedResolver(
        reactor,
        getaddrinfo=names,  # type: ignore[arg-type]
        max_lookups=1,
    )
    a = _resolve_with(resolver, "a.test")
    b = _resolve_with(resolver, "b.test")
    waiting = resolver.resolveHostName(_Ignoring(), "c.test", 80)
    assert await deferToThread(names.began("a.test").wait, EVENT_WAIT)
    waiting.cancel()
    assert not names.began("b.test").is_set(), "one thread at most"
    names.release["a.test"].set()
    assert (await a)[0] == ["127.0.0.1"]
    assert await deferToThread(names.began("b.test").wait, EVENT_WAIT)
    names.release["b.test"].set()
    assert (await b)[0] == ["127.0.0.1"]
    await deferToThread(lambda: [t.join(EVENT_WAIT) for t in names.threads])
    assert not names.began("c.test").is_set(), "a cancelled lookup ran"
    assert len(set(names.threads)) == 1
    # Cancelled while running: the answer is dropped.
    names = FakeNames({"d.test": ["127.0.0.1"]}, slow=("d.test",))
    resolver = txportend._resolver.ThreadedResolver(reactor, getaddrinfo=names)  # type: ignore[arg-type]
    receiver = _Ignoring()
    running = resolver.resolveHostName(receiver, "d.test", 80)
    assert await deferToThread(names.began("d.test").wait, EVENT_WAIT)
    running.cancel()
    names.release_all()
    await deferToThread(lambda: [t.join(EVENT_WAIT) for t in names.threads])
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0, lambda: None)  # a delivery would run by now
    assert receiver.heard == ["began"]


class _Ignoring:
    """A resolution receiver that only notes what it heard."""

    def __init__(self) -> None:
        self.heard: list[str] = []

    def resolutionBegan(self, resolution: Any) -> None:
        self.heard.append("began")

    def addressResolved(self, address: Any) -> None:
        self.heard.append("address")

    def resolutionComplete(self) -> None:
        self.heard.append("complete")


def test_a_hanging_lookup_does_not_hold_up_the_reactors_shutdown() -> None:
    """
    The command line's case: with the resolver installed, the reactor stops
    and the process exits while a lookup still hangs. (Twisted's default
    resolver runs lookups in the reactor's thread pool, which shutdown
    joins: this script would never end.)
    """
    result = run_script(
        """
        import json, socket, threading
        hanging = threading.Event()

        def getaddrinfo(*args, **kwargs):
            hanging.set()
            threading.Event().wait()  # for ever

        socket.getaddrinfo = getaddrinfo  # before txportend binds it
        from twisted.internet import reactor
        from txportend import _probe, _resolver

        _resolver.install(reactor)
        failures = []

        def start():
            d = _probe.resolve(reactor, "hang.test", 80)
            d.addErrback(lambda f: failures.append(f.type.__name__))
            threading.Thread(target=watch, args=(d,), daemon=True).start()

        def watch(d):
            if hanging.wait(10):
                reactor.callFromThread(stop, d)

        def stop(d):
            d.cancel()
            reactor.stop()

        reactor.callWhenRunning(start)
        reactor.run()
        print(json.dumps({"stopped": True, "failures": failures}))
        """
    )
    assert result == {"stopped": True, "failures": ["CancelledError"]}


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd")
def test_no_file_descriptor_is_left_after_1000_calls(closed_v4: int) -> None:
    blocking.Checker().assert_free("127.0.0.1", closed_v4)
    before = len(os.listdir("/proc/self/fd"))
    results = {
        outcome(lambda: blocking.Checker().assert_free("127.0.0.1", closed_v4))
        for _ in range(1000)
    }
    after = len(os.listdir("/proc/self/fd"))
    assert results == {("returned", "None")}
    assert after <= before


def test_calling_from_the_private_reactor_thread_raises_instead_of_deadlocking(
    closed_v4: int,
) -> None:
    loop = blocking._get_loop()
    box: queue.Queue[tuple[str, str]] = queue.Queue()
    loop.call_from_thread(
        lambda: box.put(outcome(lambda: blocking.free("127.0.0.1", closed_v4, 0)))
    )
    kind, message = box.get(timeout=10)
    assert kind == "RuntimeError"
    assert "deadlock" in message
    assert "Deferred API" in message
    # Checker().assert_free too, though the kernel could answer it at once.
    loop.call_from_thread(
        lambda: box.put(
            outcome(lambda: blocking.Checker().assert_free("127.0.0.1", closed_v4))
        )
    )
    assert box.get(timeout=10)[0] == "RuntimeError"
    # The private reactor is still fine.
    assert outcome(lambda: blocking.free("127.0.0.1", closed_v4, 0)) == (
        "returned",
        "None",
    )


@pytest_twisted.ensureDeferred
async def test_works_from_a_worker_thread_while_the_global_reactor_runs(
    reactor: Any,
) -> None:
    """The global reactor keeps running while a thread waits in
    txportend.blocking: the first wait can only end because the global
    reactor, meanwhile, makes its port listen."""
    from twisted.internet.threads import deferToThread

    with ClosedPort("127.0.0.1") as closed, Listener("127.0.0.1") as server:
        later = socket.socket()
        later.bind(("127.0.0.1", 0))
        later_port = later.getsockname()[1]
        try:

            def in_thread() -> tuple[tuple[str, str], ...]:
                return (
                    outcome(lambda: blocking.occupied("127.0.0.1", later_port, 30)),
                    outcome(lambda: blocking.occupied("127.0.0.1", closed.port, 0.3)),
                    outcome(
                        lambda: blocking.Checker().assert_free("127.0.0.1", server.port)
                    ),
                )

            reactor.callLater(0.05, later.listen)
            results = await deferToThread(in_thread)
        finally:
            later.close()
    assert results == (
        ("returned", "None"),
        ("Timeout", f"Port {closed.port} not bound on 127.0.0.1."),
        ("PortNotFree", f"Port {server.port} is in use on 127.0.0.1."),
    )


@pytest_twisted.ensureDeferred
async def test_works_in_the_global_reactor_thread_but_blocks_it(reactor: Any) -> None:
    from twisted.internet.task import deferLater

    ran: list[bool] = []
    reactor.callLater(0, ran.append, True)
    with ClosedPort("127.0.0.1") as closed, Listener("127.0.0.1") as server:
        with pytest.raises(blocking.Timeout, match=f"Port {closed.port} not bound"):
            blocking.occupied("127.0.0.1", closed.port, 0.05)
        blocking.occupied("127.0.0.1", server.port, 5)
    assert ran == [], "the global reactor ran while a blocking call waited"
    await deferLater(reactor, 0, lambda: None)
    assert ran == [True]


# Fresh interpreters

_PRELUDE = """
    import json, os, signal, socket, sys, threading, time
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(128)
    busy = server.getsockname()[1]

    def outcome(call):
        try:
            return ["returned", repr(call())]
        except Exception as e:
            return [type(e).__name__, str(e)]
"""


def test_a_plain_script_starts_one_daemon_thread_and_no_global_reactor() -> None:
    """The script exits at once although a resolver thread may still exist."""
    result = run_script(
        _PRELUDE
        + """
    threads = threading.active_count()
    import txportend.blocking as portend
    imported = threading.active_count()
    results = [
        outcome(lambda: portend.Checker().assert_free("localhost", port)),
        outcome(lambda: portend.occupied("localhost", busy, 5)),
        outcome(lambda: portend.free("127.0.0.1", busy, 0)),
    ]
    extra = [
        (t.name, t.daemon) for t in threading.enumerate()
        if t is not threading.main_thread()
    ]
    print(json.dumps({
        "threads": threads, "imported": imported, "extra": extra,
        "results": results, "busy": busy,
        "global": "twisted.internet.reactor" in sys.modules,
    }))
    """
    )
    busy = result["busy"]
    assert result["results"] == [
        ["returned", "None"],
        ["returned", "None"],
        ["Timeout", f"Port {busy} not free on 127.0.0.1."],
    ]
    assert result["threads"] == result["imported"] == 1, "import starts nothing"
    assert ["txportend.blocking", True] in result["extra"]
    assert all(daemon for _, daemon in result["extra"])
    assert result["global"] is False


@pytest.mark.parametrize("kind", ["asyncio", "default"])
def test_the_global_reactor_can_still_be_chosen_and_run_afterwards(kind: str) -> None:
    """
    After txportend.blocking was used, the program installs the global reactor
    of its choice and runs it, and calls txportend.blocking from its thread.
    """
    install = (
        "from twisted.internet import asyncioreactor; asyncioreactor.install()"
        if kind == "asyncio"
        else "from twisted.internet import default; default.install()"
    )
    result = run_script(
        _PRELUDE
        + f"""
    import txportend.blocking as portend
    before = outcome(lambda: portend.Checker().assert_free("127.0.0.1", busy))
    {install}
    from twisted.internet import reactor
    inside = []

    def in_reactor():
        inside.append(outcome(lambda: portend.occupied("127.0.0.1", busy, 5)))
        inside.append(outcome(lambda: portend.occupied("127.0.0.1", port, 0)))
        reactor.stop()

    reactor.callWhenRunning(in_reactor)
    reactor.run()
    print(json.dumps({{
        "before": before, "inside": inside, "reactor": type(reactor).__name__,
        "busy": busy, "port": port,
    }}))
    """
    )
    assert result["before"] == [
        "PortNotFree",
        f"Port {result['busy']} is in use on 127.0.0.1.",
    ]
    assert result["inside"] == [
        ["returned", "None"],
        ["Timeout", f"Port {result['port']} not bound on 127.0.0.1."],
    ]
    if kind == "asyncio":
        assert result["reactor"] == "AsyncioSelectorReactor"


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs pthread_kill")
def test_keyboard_interrupt_cancels_the_wait_and_leaves_nothing_running() -> None:
    result = run_script(
        _PRELUDE
        + """
    import txportend.blocking as portend
    from twisted.internet.task import deferLater
    main = threading.main_thread().ident
    caught = threading.Event()

    def ctrl_c():
        # Python can swallow a KeyboardInterrupt that lands in a weakref
        # callback or a __del__ ("Exception ignored"): press again until one
        # reaches the wait (bounded).
        for _ in range(100):
            if caught.wait(0.3):
                return
            signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=ctrl_c, daemon=True).start()
    started = time.monotonic()
    try:
        portend.occupied("127.0.0.1", port)  # forever: nothing will listen
        what = "returned"
    except KeyboardInterrupt:
        caught.set()
        what = "interrupted"
    waited = time.monotonic() - started

    def leftovers(reactor):
        def look():
            selectables = reactor.getReaders() + reactor.getWriters()
            return (
                [repr(c) for c in reactor.getDelayedCalls()],
                [repr(s) for s in selectables if s is not reactor.waker],
            )
        # One turn for the TCP client's own callLater(0).
        return deferLater(reactor, 0.01, look)

    calls, selectables = portend._call(leftovers)
    print(json.dumps({
        "what": what, "waited": waited, "calls": calls,
        "selectables": selectables,
        "after": outcome(lambda: portend.Checker().assert_free("127.0.0.1", busy)),
        "busy": busy,
    }))
    """
    )
    assert result["what"] == "interrupted"
    assert result["waited"] < SUBPROCESS_TIMEOUT
    assert result["calls"] == []
    assert result["selectables"] == []
    assert result["after"] == [
        "PortNotFree",
        f"Port {result['busy']} is in use on 127.0.0.1.",
    ]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_starts_its_own_private_reactor() -> None:
    result = run_script(
        _PRELUDE
        + """
    import warnings
    warnings.simplefilter("ignore")  # fork() with threads
    import txportend.blocking as portend
    portend.Checker().assert_free("127.0.0.1", port)
    parent = portend._get_loop()
    inherited = [parent._base.waker.i, parent._base.waker.o]
    poller = getattr(parent._base, "_poller", None)
    if hasattr(poller, "fileno"):
        inherited.append(poller.fileno())
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(reader)

        def is_open(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False

        report = {
            "forgotten": portend._loop is None,
            "open": [fd for fd in inherited if is_open(fd)],
            "results": [
                outcome(lambda: portend.Checker().assert_free("127.0.0.1", busy)),
                outcome(lambda: portend.free("127.0.0.1", port, 5)),
            ],
        }
        child = portend._get_loop()
        report["fresh"] = child is not parent and child.thread.is_alive()
        os.write(writer, json.dumps(report).encode())
        os._exit(0)
    os.close(writer)
    chunks = []
    while chunk := os.read(reader, 65536):
        chunks.append(chunk)
    deadline = time.monotonic() + 30
    while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    report = json.loads(b"".join(chunks))
    report["parent"] = outcome(lambda: portend.Checker().assert_free("127.0.0.1", busy))
    report["busy"] = busy
    print(json.dumps(report))
    """
    )
    in_use = ["PortNotFree", f"Port {result['busy']} is in use on 127.0.0.1."]
    assert result["forgotten"] is True
    assert result["open"] == [], "the parent's reactor descriptors leaked"
    assert result["results"] == [in_use, ["returned", "None"]]
    assert result["fresh"] is True
    assert result["parent"] == in_use, "the parent's private reactor still works"


def test_occupied_refuses_a_name_that_cannot_be_looked_up_at_once() -> None:
    """Not a wait until the timeout: an empty label is refused before any
    lookup (no DNS traffic), with check_host's message."""
    with pytest.raises(ValueError, match="empty label"):
        blocking.occupied("db..local", 80, timeout=30)
