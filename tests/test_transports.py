"""
Both probe transports under one contract.

On Twisted's POSIX reactors a probe is ``_SocketAttempt`` (a non-blocking
``connect()`` watched with ``addWriter``); elsewhere, and on every
MemoryReactorClock, it is ``_ProbeFactory`` through ``connectTCP``. Each test
here runs against both, on the real reactor (the ``reactor`` fixture checks
that no DelayedCall or selectable is left), on loopback only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import deferLater

import txportend
from txportend import Outcome
from txportend._connect import _ProbeFactory, _SocketAttempt
from txportend._sockets import bind_now

from .fakes import time_wait

Transport = Callable[[Any, float], Any]

transports = pytest.mark.parametrize(
    "transport",
    [
        pytest.param(_SocketAttempt, id="socket"),
        pytest.param(_ProbeFactory, id="connectTCP"),
    ],
)

#: Linux keeps a connection in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN).
TIME_WAIT_SECONDS = 60.0


needs_proc_net = pytest.mark.skipif(
    not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp"
)


async def _accepted_reads(reactor: Any, listener: socket.socket) -> bytes:
    """Accept the probe's connection and read from it, as a server does:
    b"" for a clean end of file; ConnectionResetError after a reset."""
    listener.setblocking(False)
    for _ in range(500):  # bounded: the connection is in the backlog already
        try:
            conn, _ = listener.accept()
            break
        except BlockingIOError:
            await deferLater(reactor, 0.01, lambda: None)
    else:
        raise AssertionError("the probe's connection never reached the server")
    with conn:
        conn.settimeout(5)
        return conn.recv(1)


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


needs_proc_fd = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc/self/fd"
)


async def _no_fd_left(reactor: Any, before: int) -> None:
    """No more descriptors open than ``before``; connectTCP closes a socket
    a reactor turn or two after its result (bounded)."""
    for _ in range(100):
        if _fds() <= before:
            return
        await deferLater(reactor, 0.01, lambda: None)
    assert _fds() <= before, "a probe left a file descriptor open"


def _accept_queue(port: int) -> tuple[int, int] | None:
    """A loopback listener's (queued connections, backlog), from /proc."""
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if fields[3] == "0A" and local_port == port:
                backlog, queued = (int(n, 16) for n in fields[4].split(":"))
                return queued, backlog
    return None


@pytest.fixture
def full_backlog() -> Iterator[int]:
    """
    The port of a loopback listener that never accepts and whose accept
    queue is full (listen(0), filled by clients): the kernel drops a new
    SYN, so a connection attempt gets no answer, as from a firewall.
    """
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp to see the queue fill")
    clients: list[socket.socket] = []
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = server.getsockname()[1]
        try:
            for _ in range(8):  # bounded: one or two fill it on Linux
                queue = _accept_queue(port)
                assert queue is not None
                if queue[0] > queue[1]:
                    break
                client = socket.socket()
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", port))
                clients.append(client)
                for _ in range(500):  # until the kernel queues it (bounded)
                    queue = _accept_queue(port)
                    if queue is not None and queue[0] >= len(clients):
                        break
                    time.sleep(0.01)
            else:
                pytest.skip("could not fill the accept queue")
            yield port
        finally:
            for client in clients:
                client.close()


def _closed_port() -> socket.socket:
    """A bound, never listening socket: its port refuses connections."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s


# -- the contract, on the real reactor ------------------------------------------


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_refused(transport: Transport, reactor: Any) -> None:
    with _closed_port() as holder:
        port = holder.getsockname()[1]
        before = _fds()
        outcome = await transport(reactor, 1.0).connect("127.0.0.1", port)
        assert outcome is Outcome.REFUSED
        await _no_fd_left(reactor, before)


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_accepted_leaves_no_fd(
    transport: Transport, reactor: Any, listener: socket.socket
) -> None:
    before = _fds()
    port = listener.getsockname()[1]
    assert await transport(reactor, 1.0).connect("127.0.0.1", port) is Outcome.ACCEPTED
    await _no_fd_left(reactor, before)


class _BindingReactor:
    """A reactor whose connectTCP binds the client's socket to ``bind``."""

    def __init__(self, reactor: Any, bind: tuple[str, int]) -> None:
        self._reactor = reactor
        self._bind = bind

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def connectTCP(self, host: str, port: int, factory: Any, *args: Any) -> Any:
        return self._reactor.connectTCP(host, port, factory, 30, self._bind)


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_a_probe_connected_to_itself_is_refused(
    transport: Transport, reactor: Any
) -> None:
    """When the kernel picks the port probed as the probe's own (a port in
    its range of local ports, with nothing listening), TCP's simultaneous
    open connects the socket to itself. Nothing accepted it: refused, as a
    new user's daemon found ports that read "occupied" once in a while."""
    before = _fds()
    if transport is _SocketAttempt:
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        attempt = _SocketAttempt(reactor, 1.0, make_socket=lambda family: sock)
    else:
        with socket.socket() as probe:  # a port of the kernel's choosing
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        attempt = _ProbeFactory(_BindingReactor(reactor, ("127.0.0.1", port)), 1.0)
    outcome = await attempt.connect("127.0.0.1", port)
    assert outcome is Outcome.REFUSED
    await _no_fd_left(reactor, before)
    # closed with a reset: the probed port is not left in TIME_WAIT
    assert bind_now("127.0.0.1", port) == port


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_timed_out_on_a_full_backlog(
    transport: Transport, reactor: Any, full_backlog: int
) -> None:
    before = _fds()
    outcome = await transport(reactor, 0.2).connect("127.0.0.1", full_backlog)
    assert outcome is Outcome.TIMED_OUT
    await _no_fd_left(reactor, before)


class _Resetting(protocol.Protocol):
    """A server that resets each connection the moment it accepts it."""

    def connectionMade(self) -> None:
        self.transport.abortConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Any) -> None:
        done = self.factory.done  # type: ignore[attr-defined]
        if not done.called:
            done.callback(None)


@transports
@pytest_twisted.ensureDeferred
async def test_a_connection_the_server_resets_counts_as_accepted(
    transport: Transport, reactor: Any
) -> None:
    factory = protocol.Factory.forProtocol(_Resetting)
    factory.noisy = False
    factory.done = Deferred()  # type: ignore[attr-defined]
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        port = listening.getHost().port
        outcome = await transport(reactor, 1.0).connect("127.0.0.1", port)
        assert outcome is Outcome.ACCEPTED
        # Let the server accept and reset it (bounded), so nothing lingers.
        await factory.done.addTimeout(10, reactor)  # type: ignore[attr-defined]
    finally:
        await listening.stopListening()


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_cancelled_before_the_answer(
    transport: Transport, reactor: Any, full_backlog: int
) -> None:
    """Cancelled while the handshake is under way: CancelledError, and the
    attempt is stopped and its socket closed."""
    before = _fds()
    d = transport(reactor, 30.0).connect("127.0.0.1", full_backlog)
    await deferLater(reactor, 0.01, lambda: None)  # under way by now
    assert not d.called
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    await _no_fd_left(reactor, before)


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_cancelled_at_once(
    transport: Transport, reactor: Any, listener: socket.socket
) -> None:
    """Cancelled in the same turn it starts: connectTCP has not connected
    yet (CancelledError); the socket path may have its answer already. Either
    way nothing is left."""
    before = _fds()
    d = transport(reactor, 1.0).connect("127.0.0.1", listener.getsockname()[1])
    d.cancel()
    with contextlib.suppress(CancelledError):
        assert await d is Outcome.ACCEPTED
    await _no_fd_left(reactor, before)


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_cancelled_after_the_answer_changes_nothing(
    transport: Transport, reactor: Any, listener: socket.socket
) -> None:
    before = _fds()
    d = transport(reactor, 1.0).connect("127.0.0.1", listener.getsockname()[1])
    assert await d is Outcome.ACCEPTED
    d.cancel()
    assert await d is Outcome.ACCEPTED
    await _no_fd_left(reactor, before)


@needs_proc_fd
@transports
@pytest_twisted.ensureDeferred
async def test_many_probes_leave_nothing_behind(
    transport: Transport, reactor: Any, listener: socket.socket
) -> None:
    listening = listener.getsockname()[1]
    with _closed_port() as holder:
        closed = holder.getsockname()[1]
        before = _fds()
        for i in range(100):
            port = closed if i % 2 else listening
            outcome = await transport(reactor, 1.0).connect("127.0.0.1", port)
            assert outcome is (Outcome.REFUSED if i % 2 else Outcome.ACCEPTED)
            if not i % 2:  # keep the backlog from filling
                listener.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    listener.accept()[0].close()
        await _no_fd_left(reactor, before)


# -- the connectTCP path on a memory reactor (every unit test's path) ----------


def _memory_attempt(timeout: float = 1.0) -> tuple[Any, _ProbeFactory, Any]:
    from .fakes import memory_reactor

    reactor = memory_reactor()
    factory = _ProbeFactory(reactor, timeout)
    d = factory.connect("127.0.0.1", 1)
    return reactor, factory, d


def _result(d: Deferred[Any]) -> Any:
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def test_memory_accepted_closes_politely() -> None:
    from .fakes import accept

    reactor, _factory, d = _memory_attempt()
    transport = accept(reactor)
    assert _result(d) is Outcome.ACCEPTED
    assert transport.disconnecting and not transport.disconnected  # no abort
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        ("ConnectionRefusedError", Outcome.REFUSED),
        ("TimeoutError", Outcome.TIMED_OUT),
        ("TCPTimedOutError", Outcome.TIMED_OUT),
        ("NoRouteError", Outcome.UNREACHABLE),
    ],
)
def test_memory_failures(error: str, outcome: Outcome) -> None:
    from twisted.internet import error as errors
    from twisted.python.failure import Failure

    reactor, factory, d = _memory_attempt()
    factory.clientConnectionFailed(
        reactor.connectors[-1], Failure(getattr(errors, error)())
    )
    assert _result(d) is outcome
    assert reactor.getDelayedCalls() == []


def test_memory_reset_after_the_handshake_is_accepted() -> None:
    from twisted.internet import error as errors
    from twisted.python.failure import Failure

    reactor, factory, d = _memory_attempt()
    factory.clientConnectionLost(
        reactor.connectors[-1], Failure(errors.ConnectionLost())
    )
    assert _result(d) is Outcome.ACCEPTED


def test_memory_timed_out_and_cancelled_at_each_step() -> None:
    # No answer by the timer (and the one more turn it gives): TIMED_OUT.
    reactor, _factory, d = _memory_attempt(timeout=1.0)
    reactor.advance(1.0)
    assert _result(d) is Outcome.TIMED_OUT
    assert reactor.connectors[-1].stoppedConnecting
    assert reactor.getDelayedCalls() == []
    # Cancelled before any answer.
    reactor, _factory, d = _memory_attempt()
    d.cancel()
    assert _result(d).check(CancelledError)
    assert reactor.connectors[-1].stoppedConnecting
    assert reactor.getDelayedCalls() == []
    # Cancelled while the timer is pending.
    reactor, _factory, d = _memory_attempt()
    reactor.advance(0.5)
    d.cancel()
    assert _result(d).check(CancelledError)
    assert reactor.getDelayedCalls() == []


# -- a polite close -------------------------------------------------------------


@transports
@pytest_twisted.ensureDeferred
async def test_an_accepted_probe_leaves_as_a_polite_client(
    transport: Transport, reactor: Any, listener: socket.socket
) -> None:
    """The server accept()s and recv()s: a clean end of file (b""), never a
    reset (which http.server logs as a 20-line traceback)."""
    port = listener.getsockname()[1]
    assert await transport(reactor, 1.0).connect("127.0.0.1", port) is Outcome.ACCEPTED
    assert await _accepted_reads(reactor, listener) == b""


class _Server(protocol.Protocol):
    """Notes how each connection ended."""

    def connectionLost(self, reason: Any) -> None:
        self.factory.ends.append(type(reason.value).__name__)  # type: ignore[attr-defined]


def test_the_default_schedule_starts_at_most_677_probes_a_minute() -> None:
    """
    The bound on TIME_WAIT, by construction: each accepted probe leaves at
    most one connection in TIME_WAIT, for 60 s, on our side; the default
    schedule's pauses never shrink, so its first minute is its busiest, and
    it starts at most 677 probes in it (about 10 a second after the first
    2.5 s). On loopback Linux reuses TIME_WAIT ports (``tcp_tw_reuse``), so
    even many waits can't use up local ports there.
    """
    pauses = [txportend.default_interval(n) for n in range(10_000)]
    assert pauses == sorted(pauses)
    started, elapsed = 1, 0.0
    for pause in pauses:
        if elapsed + pause >= TIME_WAIT_SECONDS:
            break
        elapsed += pause
        started += 1
    assert started == 677


@needs_proc_net
@pytest_twisted.ensureDeferred
async def test_a_long_free_wait_leaves_at_most_one_time_wait_per_probe(
    reactor: Any,
) -> None:
    """
    free() on a listening port at the default schedule: every probe is
    accepted and closed politely (the server sees a clean close, never a
    reset), at most one TIME_WAIT per probe is left on our side, and none
    on the server's. The wait ends when the test closes the listener.
    """
    factory = protocol.Factory.forProtocol(_Server)
    factory.noisy = False
    factory.ends = []  # type: ignore[attr-defined]
    listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
    port = listening.getHost().port
    # Earlier connections may have left TIME_WAIT entries towards a port the
    # kernel has now handed to this listener: count new ones only.
    towards, from_port = time_wait(port)
    probes = 0
    stopped: Deferred[None] | None = None

    def counting(attempt: int) -> float:
        nonlocal probes, stopped
        probes = attempt + 1
        if probes == 100 and stopped is None:
            stopped = listening.stopListening()
        return txportend.default_interval(attempt)

    try:
        await txportend.free("127.0.0.1", port, timeout=60, interval=counting)
    finally:
        if stopped is None:
            await listening.stopListening()
    for _ in range(100):  # bounded: let the server read the last closes
        if len(factory.ends) >= probes - 1:  # type: ignore[attr-defined]
            break
        await deferLater(reactor, 0.01, lambda: None)
    ends = set(factory.ends)  # type: ignore[attr-defined]
    assert ends == {"ConnectionDone"}, "a probe closed with a reset"
    now_towards, now_from = time_wait(port)
    assert 0 < now_towards - towards <= probes
    assert now_from - from_port == 0


# -- what the connectTCP path says about this machine's errors -----------------


def _connect_tcp_fails_with(code: int, address: str = "127.0.0.1") -> Deferred[Any]:
    from twisted.internet import error
    from twisted.python.failure import Failure

    from .fakes import memory_reactor

    reactor = memory_reactor()
    factory = _ProbeFactory(reactor, 1.0)
    d = factory.connect(address, 1)
    connector = reactor.connectors[-1]
    factory.clientConnectionFailed(
        connector, Failure(error.getConnectError((code, os.strerror(code))))
    )
    assert reactor.getDelayedCalls() == []
    return d


@pytest.mark.parametrize("code", [errno.EADDRNOTAVAIL, errno.EAGAIN, errno.EMFILE])
def test_connect_tcp_fails_with_this_machines_error_as_the_socket_path(
    code: int,
) -> None:
    """No local port left, no socket to be had: an error, never an answer
    (which a wait for free would take for "free")."""
    failure = []
    _connect_tcp_fails_with(code).addErrback(failure.append)
    assert failure[0].check(OSError)
    assert failure[0].value.errno == code


def test_connect_tcp_counts_a_family_this_machine_lacks_as_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from txportend import _sockets

    monkeypatch.setattr(_sockets, "lacks_family", lambda family, code, make=None: True)
    outcomes: list[Outcome] = []
    _connect_tcp_fails_with(errno.EADDRNOTAVAIL, "::1").addCallback(outcomes.append)
    assert outcomes == [Outcome.UNREACHABLE]
