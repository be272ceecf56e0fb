"""
Both probe transports under one contract.

On Twisted's POSIX reactors a probe is ``_SocketAttempt`` (a non-blocking
``connect()`` watched with ``addWriter``); elsewhere, and on every
MemoryReactorClock, it is ``_ProbeFactory`` through ``connectTCP``. Each test
here runs against both, on the real reactor (the ``reactor`` fixture checks
that no DelayedCall or selectable is left), on loopback only.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import protocol
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

import txportend
from txportend import Outcome
from txportend._probe import _ProbeFactory, _SocketAttempt

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


def _time_wait(port: int) -> tuple[int, int]:
    """Connections in TIME_WAIT (Linux /proc): (towards ``port``, from it)."""
    towards = from_port = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "06":
                continue
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                towards += 1
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                from_port += 1
    return towards, from_port


needs_proc_net = pytest.mark.skipif(
    not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp"
)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A loopback listener that accepts only when the test says so."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s


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
    towards, from_port = _time_wait(port)
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
    now_towards, now_from = _time_wait(port)
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
