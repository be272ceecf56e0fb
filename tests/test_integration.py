"""
The Deferred API on real loopback sockets (127.0.0.1 and ::1), on the
global reactor that pytest-twisted runs (default or asyncio).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

import txportend

from .fakes import has_ipv6_loopback, time_wait

LOOPBACKS = ["127.0.0.1", "::1"]


loopback = pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        pytest.param(
            "::1",
            marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no ::1"),
        ),
    ],
)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


@pytest.fixture
def unused_port() -> Iterator[int]:
    """A port that nothing listens on (bound and closed by the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    yield port


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _listen(reactor: Any, host: str, port: int = 0) -> Any:
    return reactor.listenTCP(port, Factory.forProtocol(Protocol), interface=host)


@loopback
@pytest_twisted.ensureDeferred
async def test_occupied_sees_a_server_that_starts_later(
    reactor: Any, host: str
) -> None:
    # Bound now (so no probe's own local port can take it), listening later.
    with socket.socket(_family(host)) as server:
        server.bind((host, 0))
        port = server.getsockname()[1]
        listening: list[bool] = []

        def start() -> None:
            server.listen(8)
            listening.append(True)

        starter = reactor.callLater(0.05, start)
        try:
            await txportend.occupied(host, port, timeout=10, reactor=reactor)
            assert listening, "occupied fired before the server listened"
        finally:
            if starter.active():
                starter.cancel()


@loopback
@pytest_twisted.ensureDeferred
async def test_free_sees_a_server_that_stops_later(reactor: Any, host: str) -> None:
    listening = _listen(reactor, host)
    port = listening.getHost().port
    stopped: list[bool] = []

    def stop() -> None:
        stopped.append(True)
        listening.stopListening()

    stopper = reactor.callLater(0.05, stop)
    try:
        await txportend.free(host, port, timeout=10, reactor=reactor)
        assert stopped
    finally:
        if stopper.active():
            stopper.cancel()
            await listening.stopListening()


@loopback
@pytest_twisted.ensureDeferred
async def test_assert_free_and_probe_on_a_listening_port(
    reactor: Any, host: str
) -> None:
    listening = _listen(reactor, host)
    port = listening.getHost().port
    try:
        with pytest.raises(txportend.PortNotFree) as info:
            await txportend.assert_free(host, port, reactor=reactor)
        assert str(info.value) == f"Port {port} is in use on {host}."
        result = await txportend.probe(host, port, reactor=reactor)
        assert result.outcomes == {host: txportend.Outcome.ACCEPTED}
    finally:
        await listening.stopListening()
    result = await txportend.probe(host, port, reactor=reactor)
    assert result.outcomes == {host: txportend.Outcome.REFUSED}
    await txportend.assert_free(host, port, reactor=reactor)


@pytest_twisted.ensureDeferred
async def test_occupied_times_out_on_a_closed_port(
    reactor: Any, unused_port: int
) -> None:
    with pytest.raises(txportend.Timeout) as info:
        await txportend.occupied("127.0.0.1", unused_port, timeout=0.2, reactor=reactor)
    assert str(info.value) == f"Port {unused_port} not bound on 127.0.0.1."


@pytest_twisted.ensureDeferred
async def test_localhost_is_resolved_without_blocking(reactor: Any) -> None:
    """'localhost' goes through the reactor's resolver and is probed."""
    listening = _listen(reactor, "127.0.0.1")
    port = listening.getHost().port
    try:
        result = await txportend.probe("localhost", port, reactor=reactor)
        assert result.outcomes.get("127.0.0.1") is txportend.Outcome.ACCEPTED
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_unusable_name_is_refused_at_once(
    reactor: Any, unused_port: int
) -> None:
    with pytest.raises(ValueError, match="empty label"):
        # Refused before any lookup (no DNS traffic), synchronously.
        txportend.free("no-such-host..invalid", unused_port, reactor=reactor)


@pytest_twisted.ensureDeferred
async def test_cancelled_wait_leaves_nothing_behind(
    reactor: Any, unused_port: int
) -> None:
    """The reactor fixture fails the test if a timer or socket is left."""
    d = txportend.occupied("127.0.0.1", unused_port, timeout=30, reactor=reactor)
    await deferLater(reactor, 0.05, lambda: None)
    d.cancel()
    with pytest.raises(CancelledError):
        await d


@pytest_twisted.ensureDeferred
async def test_cancel_right_away_leaves_nothing_behind(
    reactor: Any, unused_port: int
) -> None:
    d = txportend.occupied("127.0.0.1", unused_port, timeout=30, reactor=reactor)
    d.cancel()
    with pytest.raises(CancelledError):
        await d


@pytest_twisted.ensureDeferred
async def test_polling_a_listening_port_leaks_no_fd_and_bounds_time_wait(
    reactor: Any,
) -> None:
    listening = _listen(reactor, "127.0.0.1")
    port = listening.getHost().port
    try:
        fds = _fds()
        # Earlier connections may have left TIME_WAIT entries towards a port
        # that the kernel has now handed to this listener: count new ones only.
        before = time_wait(port)[0]
        for _ in range(300):
            result = await txportend.probe("127.0.0.1", port, reactor=reactor)
            assert result.accepted
            # A probe on loopback can finish without a reactor turn; let the
            # in-process server accept, or its backlog fills up.
            await deferLater(reactor, 0, lambda: None)
        # The in-process server closes its side when it reads the end; give
        # it a few turns (bounded). A leak on either side would not go away.
        for _ in range(50):
            if _fds() <= fds:
                break
            await deferLater(reactor, 0.01, lambda: None)
        # No growth (a resolver thread of an earlier test may still hold a
        # file at the first count, so fewer is fine).
        assert _fds() <= fds
        # A probe closes politely (FIN), so it may leave one TIME_WAIT on our
        # side, never more (Linux reuses them on loopback).
        assert time_wait(port)[0] <= before + 300
    finally:
        await listening.stopListening()


@pytest_twisted.ensureDeferred
async def test_can_bind_sees_a_bound_but_not_listening_socket(reactor: Any) -> None:
    """portend's connect check calls such a port free; can_bind does not."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        await txportend.assert_free("127.0.0.1", port, reactor=reactor)
        assert await txportend.can_bind("127.0.0.1", port, reactor=reactor) is False
    assert await txportend.can_bind("127.0.0.1", port, reactor=reactor) is True


@pytest_twisted.ensureDeferred
async def test_find_available_local_port_is_bindable(reactor: Any) -> None:
    port = await txportend.find_available_local_port(reactor=reactor)
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


@pytest_twisted.ensureDeferred
async def test_many_waits_see_their_ports_open_and_close(reactor: Any) -> None:
    """More waits than the watcher's threshold: it reads the kernel's table
    (where it can) and every wait still ends with a confirmed state."""
    from twisted.internet.defer import gatherResults

    count = 24
    # Bound from the start (so no probe's own local port can take one), and
    # made to listen, then closed, later.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        ports = [s.getsockname()[1] for s in sockets]
        waits = [
            txportend.occupied("127.0.0.1", p, timeout=20, reactor=reactor)
            for p in ports
        ]
        await deferLater(reactor, 0.05, lambda: None)
        for s in sockets:
            s.listen(1024)
        await gatherResults(waits)
        frees = [
            txportend.free("127.0.0.1", p, timeout=20, reactor=reactor) for p in ports
        ]
        await deferLater(reactor, 0.05, lambda: None)
        for s in sockets:
            s.close()
        await gatherResults(frees)
    finally:
        for s in sockets:
            s.close()
