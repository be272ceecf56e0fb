"""
One TCP connection attempt to an address literal, through the reactor, and
closed at once.

One connection attempt (:func:`connect_once`) has two transports under one
contract (``tests/test_transports.py`` runs the same suite against both):

- On Twisted's POSIX reactors (epoll, poll, select, asyncio), production's
  path: :class:`_SocketAttempt`, a non-blocking ``connect()`` watched with
  ``addWriter``, whose answer on loopback is usually known within
  ``connect()``. About 12 µs of CPU per refused probe and 25 µs per accepted
  one, against 60 to 90 and 115 to 150 µs through ``connectTCP``.
- Elsewhere (IOCP) and on every test double: :class:`_ProbeFactory` through
  ``connectTCP``, which needs nothing but ``IReactorTCP``.

Both report the same :class:`Outcome` for the same answer, close an accepted
connection at once and politely (a FIN, never a reset), fail with this
machine's :exc:`OSError` rather than call it an answer, count an address
family the machine lacks as unreachable, and leave nothing behind when they
end or are cancelled. The design page of the documentation says more.
"""

from __future__ import annotations

import errno
import math
import socket
from collections.abc import Callable

from twisted.internet import error
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IWriteDescriptor,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ._reactor import IPortendReactor
from ._sockets import (
    MACHINE_ERRORS,
    Outcome,
    answer_of,
    new_socket,
    outcome_of,
    settle,
    start_connect,
)


class _ProbeProtocol(Protocol):
    """Closes the connection the moment it is made, normally (a FIN), as a
    polite client does; a connection to itself (see
    :func:`~txportend._sockets.answer_of`) is noted, and reset."""

    def __init__(self, factory: _ProbeFactory) -> None:
        self._factory = factory

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        if transport.getHost() == transport.getPeer():
            # A reset, so that the probed port is not left in TIME_WAIT.
            self._factory.self_connected = True
            transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport
            return
        transport.loseConnection()


class _ProbeFactory(ClientFactory):
    """
    One connection attempt: fires ``result`` with its :class:`Outcome`.

    The handshake timeout is this factory's own timer, not ``connectTCP``'s:
    a reactor runs its timed calls before it polls, so under load a timer can
    fire while the kernel's answer (accepted or refused) waits unread. When
    the timer fires, the attempt gets one more reactor turn, in which that
    answer is read, before it counts as timed out.
    """

    noisy = False

    def __init__(self, reactor: IPortendReactor, timeout: float) -> None:
        self.result: Deferred[Outcome] = Deferred(self._cancel)
        self.timeout = timeout
        self._reactor = reactor
        self._connector: IConnector | None = None
        self._giving_up = False
        self._timer: IDelayedCall | None = None
        self._address = ""
        #: Whether the connection made was to itself: nothing accepted it.
        self.self_connected = False

    def connect(self, address: str, port: int) -> Deferred[Outcome]:
        self._address = address
        self._connector = self._reactor.connectTCP(
            address,
            port,
            self,
            None,  # type: ignore[arg-type]  # no timeout: ours is below
        )
        if math.isfinite(self.timeout) and not self.result.called:
            self._timer = self._reactor.callLater(self.timeout, self._expire)
        return self.result

    def buildProtocol(self, addr: IAddress | None) -> _ProbeProtocol:
        return _ProbeProtocol(self)

    def _expire(self) -> None:
        self._timer = self._reactor.callLater(0, self._give_up)

    def _give_up(self) -> None:
        self._timer = None
        self._giving_up = True
        if not self._stop():
            # Not connected: nothing will answer now (a connector need not
            # call clientConnectionFailed when told to stop).
            self._fire(Outcome.TIMED_OUT)

    def _stop(self) -> bool:
        """Stop the attempt; True when it had connected already."""
        if self._connector is None:
            return False
        try:
            self._connector.stopConnecting()
        except error.NotConnectingError:
            # Already connected: the probe is closing it; make sure.
            self._connector.disconnect()
            return True
        return False

    def _cancel(self, d: Deferred[Outcome]) -> None:
        self._stop_timer()
        self._stop()

    def _stop_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _fire(self, outcome: Outcome) -> None:
        self._stop_timer()
        if not self.result.called:
            self.result.callback(outcome)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        # The connection was made and closed: the socket is gone now.
        self._fire(Outcome.REFUSED if self.self_connected else Outcome.ACCEPTED)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if type(reason.value) is error.UserError:
            # stopConnecting(): our own timeout, or our canceller (then the
            # Deferred is cancelled already). Exactly UserError: TimeoutError
            # is a subclass of it.
            if self._giving_up:
                self._fire(Outcome.TIMED_OUT)
            return
        code = getattr(reason.value, "osError", None)
        if isinstance(reason.value, error.ConnectError) and code in MACHINE_ERRORS:
            # Twisted's wrapping of an errno of socket() or connect(): this
            # machine's error, or a family it lacks, told apart as
            # start_connect does.
            try:
                self._fire(settle(self._address, code))
            except OSError as e:
                self._stop_timer()
                if not self.result.called:
                    self.result.errback(e)
        elif isinstance(reason.value, error.ConnectionRefusedError):
            self._fire(Outcome.REFUSED)
        elif isinstance(reason.value, (error.TimeoutError, error.TCPTimedOutError)):
            self._fire(Outcome.TIMED_OUT)
        else:
            self._fire(Outcome.UNREACHABLE)


@implementer(IWriteDescriptor)
class _SocketAttempt:
    """
    One non-blocking ``connect()`` watched through the reactor's own
    file-descriptor interface (``addWriter``), on Twisted's POSIX reactors.

    It does what :class:`_ProbeFactory` does through ``connectTCP``, at a
    third of the cost (no transport, protocol or connector, no extra reactor
    turns): the kernel's answer is read with ``SO_ERROR`` when the socket
    turns writable, or at once when ``connect()`` already knows it. When the
    handshake timer fires, the socket itself is asked, so an answer not yet
    read is never mistaken for a timeout.
    """

    def __init__(
        self,
        reactor: IPortendReactor,
        timeout: float,
        make_socket: Callable[[int], socket.socket] = new_socket,
    ) -> None:
        self.result: Deferred[Outcome] = Deferred(self._cancel)
        self.timeout = timeout
        self._reactor = reactor
        self._make_socket = make_socket
        self._sock: socket.socket | None = None
        self._timer: IDelayedCall | None = None

    def connect(self, address: str, port: int) -> Deferred[Outcome]:
        try:
            sock, outcome = start_connect(address, port, self._make_socket)
        except (OSError, UnicodeError) as e:
            # A scope that names no interface, no socket to be had (EMFILE),
            # no local port left: this machine's error, not an answer.
            self.result.errback(e)
            return self.result
        if sock is None:
            assert outcome is not None
            self.result.callback(outcome)
            return self.result
        try:
            if math.isfinite(self.timeout):
                self._timer = self._reactor.callLater(self.timeout, self._expire)
            self._sock = sock  # fileno() answers from here on
            self._reactor.addWriter(self)  # type: ignore[attr-defined]
        except BaseException as e:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._sock = None
            sock.close()
            if isinstance(e, Exception):
                self.result.errback(e)
                return self.result
            raise
        return self.result

    def fileno(self) -> int:
        return self._sock.fileno() if self._sock is not None else -1

    def logPrefix(self) -> str:
        return "txportend probe"

    def doWrite(self) -> None:
        # Writable: connect() has finished, one way or the other.
        self._finish(self._answer(unconnected=errno.ECONNABORTED))

    def connectionLost(self, reason: Failure) -> None:
        # A refused connect() is a hang-up to epoll, which reports it here
        # rather than to doWrite: the socket still holds the answer.
        self._finish(self._answer(unconnected=errno.ECONNABORTED))

    def _expire(self) -> None:
        self._timer = None
        # Ask the socket, not the clock: under load the answer may be there,
        # unread.
        self._finish(self._answer(unconnected=errno.ETIMEDOUT))

    def _answer(self, unconnected: int) -> int:
        if self._sock is None:
            return unconnected
        return answer_of(self._sock, unconnected)

    def _release(self) -> socket.socket | None:
        sock = self._sock
        if sock is not None:
            # While fileno() still answers: poll reactors find it by it.
            self._reactor.removeWriter(self)  # type: ignore[attr-defined]
            self._sock = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return sock

    def _finish(self, code: int) -> None:
        sock = self._release()
        if sock is None:
            return
        sock.close()  # normally: a FIN, if it connected
        if not self.result.called:
            self.result.callback(outcome_of(code))

    def _cancel(self, d: Deferred[Outcome]) -> None:
        sock = self._release()
        if sock is not None:
            sock.close()


_posix_reactor: type | None = None


def _has_own_sockets(reactor: IPortendReactor) -> bool:
    """Whether ``reactor`` is one of Twisted's POSIX reactors, whose
    ``addWriter`` watches a plain socket (not IOCP, not a test double)."""
    global _posix_reactor
    if _posix_reactor is None:  # imported once, on a probe's hot path
        from twisted.internet.posixbase import PosixReactorBase

        _posix_reactor = PosixReactorBase
    return isinstance(reactor, _posix_reactor)


def connect_once(
    reactor: IPortendReactor, address: str, port: int, timeout: float
) -> Deferred[Outcome]:
    """
    Try one TCP connection to an address literal and close it at once.

    On Twisted's POSIX reactors (epoll, poll, select, asyncio) this is a
    non-blocking ``connect()`` watched with ``addWriter``; on any other
    reactor (IOCP, :class:`~twisted.internet.testing.MemoryReactorClock`) it
    goes through ``connectTCP``. Both close an accepted connection at once,
    normally (a FIN), as a polite client does.

    :param timeout: seconds to wait for the handshake.
    :return: a Deferred firing with the :class:`Outcome`; cancelling it stops
        the attempt and closes the socket.
    """
    if _has_own_sockets(reactor):
        return _SocketAttempt(reactor, timeout).connect(address, port)
    return _ProbeFactory(reactor, timeout).connect(address, port)
