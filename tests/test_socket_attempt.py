"""
The probe's own non-blocking connect() on Twisted's POSIX reactors
(``_SocketAttempt``): real loopback sockets for the kernel's answers, a
Clock with a recorded ``addWriter`` for the reactor, and a scripted socket for
what loopback can't show (a handshake that never answers).
"""

from __future__ import annotations

import errno
import select
import socket
from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from txportend import Outcome
from txportend._connect import _SocketAttempt

from .test_sockets import assert_left_politely

_tc = SynchronousTestCase()
success = _tc.successResultOf
failure = _tc.failureResultOf


class FDClock(Clock):
    """A Clock that records the descriptors it is asked to watch."""

    def __init__(self) -> None:
        super().__init__()
        self.writers: set[Any] = set()

    def addWriter(self, writer: Any) -> None:
        self.writers.add(writer)

    def removeWriter(self, writer: Any) -> None:
        self.writers.discard(writer)


def _settle(clock: FDClock) -> None:
    """Play the reactor: hand each writable descriptor to doWrite (bounded)."""
    for _ in range(100):
        if not clock.writers:
            return
        ready = select.select([], list(clock.writers), [], 0.05)[1]
        for writer in ready:
            writer.doWrite()
    raise AssertionError("the connection attempt never finished")


def test_refused(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    listener.close()
    clock = FDClock()
    d = _SocketAttempt(clock, 1.0).connect("127.0.0.1", port)
    _settle(clock)
    assert success(d) is Outcome.REFUSED
    assert clock.writers == set()
    assert clock.getDelayedCalls() == []


def test_accepted_and_closed_politely(listener: socket.socket) -> None:
    clock = FDClock()
    d = _SocketAttempt(clock, 1.0).connect("127.0.0.1", listener.getsockname()[1])
    _settle(clock)
    assert success(d) is Outcome.ACCEPTED
    assert clock.writers == set()
    assert clock.getDelayedCalls() == []
    assert_left_politely(listener)


class ScriptedSocket:
    """Stands in for a socket whose handshake is still in flight."""

    def __init__(self, so_error: int = 0, connected: bool = False) -> None:
        self.so_error = so_error
        self.connected = connected
        self.closed = False
        self.options: list[tuple[int, int, object]] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def connect_ex(self, address: object) -> int:
        return errno.EINPROGRESS

    def fileno(self) -> int:
        return 99

    def getsockopt(self, level: int, option: int) -> int:
        return self.so_error

    def setsockopt(self, level: int, option: int, value: object) -> None:
        self.options.append((level, option, value))

    def bind(self, address: object) -> None:
        pass  # the family exists

    def getpeername(self) -> tuple[str, int]:
        if not self.connected:
            raise OSError(errno.ENOTCONN, "not connected")
        return ("127.0.0.1", 1)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", 54321)

    def close(self) -> None:
        self.closed = True


def _scripted(sock: ScriptedSocket, timeout: float = 1.0) -> tuple[FDClock, Any]:
    clock = FDClock()
    attempt = _SocketAttempt(clock, timeout, make_socket=lambda family: sock)  # type: ignore[arg-type,return-value]
    return clock, attempt


def test_no_answer_by_the_deadline_is_a_timeout() -> None:
    sock = ScriptedSocket()
    clock, attempt = _scripted(sock)
    d = attempt.connect("127.0.0.1", 1)
    assert clock.writers == {attempt}
    clock.advance(1.0)
    assert success(d) is Outcome.TIMED_OUT
    assert sock.closed
    assert clock.writers == set()


def test_an_unread_answer_at_the_deadline_wins() -> None:
    """Under load the timer can run before the reactor reads the socket:
    the socket is asked, and its answer is what the probe reports."""
    sock = ScriptedSocket()
    clock, attempt = _scripted(sock)
    d = attempt.connect("127.0.0.1", 1)
    sock.connected = True  # the handshake completed, unread
    clock.advance(1.0)
    assert success(d) is Outcome.ACCEPTED
    assert sock.closed
    assert sock.options == []  # no SO_LINGER: a normal close
    sock = ScriptedSocket()
    clock, attempt = _scripted(sock)
    d = attempt.connect("127.0.0.1", 1)
    sock.so_error = errno.ECONNREFUSED
    clock.advance(1.0)
    assert success(d) is Outcome.REFUSED


def test_a_hang_up_reads_the_answer_from_the_socket() -> None:
    """epoll reports a refused connect() as a hang-up (connectionLost)."""
    sock = ScriptedSocket()
    clock, attempt = _scripted(sock)
    d = attempt.connect("127.0.0.1", 1)
    sock.so_error = errno.ECONNREFUSED
    attempt.connectionLost(None)
    assert success(d) is Outcome.REFUSED
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    ("so_error", "connected", "outcome"),
    [(errno.ECONNREFUSED, False, Outcome.REFUSED), (0, True, Outcome.ACCEPTED)],
)
def test_an_answer_known_at_connect_needs_no_reactor(
    so_error: int, connected: bool, outcome: Outcome
) -> None:
    """On loopback the kernel often answers within connect(): no addWriter,
    no timer."""
    sock = ScriptedSocket(so_error=so_error, connected=connected)
    clock, attempt = _scripted(sock)
    assert success(attempt.connect("127.0.0.1", 1)) is outcome
    assert clock.writers == set()
    assert clock.getDelayedCalls() == []
    assert sock.closed


def test_cancel_closes_the_socket() -> None:
    sock = ScriptedSocket()
    clock, attempt = _scripted(sock)
    d = attempt.connect("127.0.0.1", 1)
    d.cancel()
    failure(d, CancelledError)
    assert sock.closed
    assert clock.writers == set()
    assert clock.getDelayedCalls() == []


def test_no_socket_to_be_had_is_an_error_not_an_answer() -> None:
    """Out of file descriptors says nothing about the port: the probe fails
    with the error, rather than let a wait call a listening port free."""

    def no_socket(family: int) -> socket.socket:
        raise OSError(errno.EMFILE, "Too many open files")

    clock = FDClock()
    d = _SocketAttempt(clock, 1.0, make_socket=no_socket).connect("127.0.0.1", 1)
    assert failure(d, OSError).value.errno == errno.EMFILE
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("code", [errno.EADDRNOTAVAIL, errno.EAGAIN])
def test_no_local_port_left_is_an_error_not_an_answer(code: int) -> None:
    sock = ScriptedSocket()
    sock.connect_ex = lambda address: code  # type: ignore[method-assign]
    clock, attempt = _scripted(sock)
    d = attempt.connect("127.0.0.1", 1)
    assert failure(d, OSError).value.errno == code
    assert sock.closed
    assert clock.writers == set()
    assert clock.getDelayedCalls() == []


def test_a_scope_naming_no_interface_is_an_error_and_leaks_nothing() -> None:
    made: list[ScriptedSocket] = []

    def make(family: int) -> ScriptedSocket:
        made.append(ScriptedSocket())
        return made[-1]

    clock = FDClock()
    d = _SocketAttempt(clock, 1.0, make_socket=make).connect(  # type: ignore[arg-type]
        "fe80::1%no-such-interface0", 1
    )
    failure(d, OSError)
    assert made == []  # the address is checked before any socket is made


def test_a_reset_after_the_handshake_counts_as_accepted() -> None:
    sock = ScriptedSocket()
    _clock, attempt = _scripted(sock)
    d = attempt.connect("127.0.0.1", 1)
    sock.so_error = errno.ECONNRESET
    attempt.doWrite()
    assert success(d) is Outcome.ACCEPTED


def test_no_timeout_means_no_timer() -> None:
    """Checker(timeout=None) in portend is a connect with no timeout."""
    sock = ScriptedSocket()
    clock, attempt = _scripted(sock, timeout=float("inf"))
    d = attempt.connect("127.0.0.1", 1)
    assert clock.getDelayedCalls() == []
    assert clock.writers == {attempt}
    d.cancel()
    failure(d, CancelledError)
