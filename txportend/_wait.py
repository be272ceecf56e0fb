"""
Waiting for a port to be occupied or free: the polling schedule, the
overall timeout and cancellation; and the one-shot ``assert_free`` check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from ._errors import HostNotFound, PortNotFree, Timeout
from ._hostport import (
    TimeoutType,
    check_host,
    check_port,
    client_host,
    timeout_seconds,
)
from ._loop import ProbeLoop
from ._pacing import Pacing
from ._probe import ProbeResult, probe, probe_now
from ._reactor import IPortendReactor, get_reactor
from ._result import State
from ._schedule import IntervalType, default_interval, interval_policy

#: Seconds each connection attempt may take while waiting, as in portend: a
#: port being waited on to go free is expected to refuse quickly.
OCCUPIED_PROBE_TIMEOUT = 0.5
FREE_PROBE_TIMEOUT = 0.1


class _Wait:
    """
    A :class:`~txportend._loop.ProbeLoop` that stops at the state it wants,
    or at its deadline.

    The deadline is one ``callLater``. At least one probe always completes,
    so ``timeout=0`` means "check once", as in portend: a probe still in
    flight when the deadline passes decides, if no probe has completed
    before it. A name lookup has no limit of its own within a wait: past the
    deadline it gets as long as a connection attempt, then the wait times
    out, saying that the lookup did not finish.
    """

    def __init__(
        self,
        reactor: IPortendReactor,
        host: str,
        port: int,
        *,
        want: State,
        timeout: float,
        policy: Callable[[int], float],
        pacing: Pacing,
        retry_unresolved: bool,
    ) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._want = want
        self._timeout = timeout
        self._retry_unresolved = retry_unresolved
        self._probe_timeout = (
            OCCUPIED_PROBE_TIMEOUT if want is State.OCCUPIED else FREE_PROBE_TIMEOUT
        )
        self._loop = ProbeLoop(
            reactor,
            host,
            port,
            policy=policy,
            pacing=pacing,
            probe_timeout=self._probe_timeout,
            seen=self._seen,
            broke=self._finish,
            want=want,
        )
        self._completed = 0
        self._expired = False
        self._unresolved = False
        self._deadline: IDelayedCall | None = None
        self.result: Deferred[None] = Deferred(lambda d: self._stop())

    def start(self) -> Deferred[None]:
        if math.isfinite(self._timeout):
            self._deadline = self._reactor.callLater(self._timeout, self._expire)
        self._loop.start()
        return self.result

    def _timeout_error(self, lookup_unfinished: bool = False) -> Timeout:
        if self._want is State.OCCUPIED:
            message = f"Port {self._port} not bound on {self._host}."
        else:
            message = f"Port {self._port} not free on {self._host}."
        if lookup_unfinished:
            message += f" The lookup of {self._host} did not finish."
        elif self._unresolved:
            message += " The host name did not resolve."
        return Timeout(message)

    def _seen(self, outcome: ProbeResult | Failure) -> bool:
        if self.result.called:
            return True
        self._completed += 1
        if isinstance(outcome, Failure):
            if not (isinstance(outcome.value, HostNotFound) and self._retry_unresolved):
                self._finish(outcome)
                return True
            # The name may appear later (a container starting, say).
            self._unresolved = True
        else:
            self._unresolved = False
            if outcome.state is self._want:
                self._finish(None)
                return True
        if self._expired:
            self._finish(self._timeout_error())
            return True
        return False

    def _expire(self) -> None:
        self._deadline = None
        self._expired = True
        if self._completed == 0:
            # Let the first probe decide; start it now if it was spread.
            self._loop.probe_soon()
            if not self.result.called and self._completed == 0:
                self._deadline = self._reactor.callLater(
                    self._probe_timeout, self._lookup_timed_out
                )
            return
        self._finish(self._timeout_error())

    def _lookup_timed_out(self) -> None:
        self._deadline = None
        if self._loop.resolving or not self._loop.probing:
            self._finish(self._timeout_error(lookup_unfinished=self._loop.resolving))
            return
        # The lookup finished late: the connection attempt it started has its
        # own timeout, and its answer decides.
        self._deadline = self._reactor.callLater(
            self._probe_timeout, self._lookup_timed_out
        )

    def _stop(self) -> None:
        self._loop.stop()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _finish(self, error: BaseException | Failure | None) -> None:
        if self.result.called:
            return
        self._stop()
        if error is None:
            self.result.callback(None)
        else:
            self.result.errback(error)


def wait_for(
    host: str,
    port: int,
    timeout: TimeoutType,
    interval: IntervalType,
    reactor: IPortendReactor | None,
    *,
    want_occupied: bool,
    retry_unresolved: bool = True,
    pacing: Pacing | None = None,
) -> Deferred[None]:
    """
    The one implementation behind :func:`occupied` and :func:`free` (and the
    blocking API's, which passes ``retry_unresolved=False``: portend fails at
    once on a name that does not resolve).
    """
    check_host(host)
    r = get_reactor(reactor)
    return _Wait(
        r,
        host,
        check_port(port),
        want=State.OCCUPIED if want_occupied else State.FREE,
        timeout=timeout_seconds(timeout),
        policy=interval_policy(interval),
        pacing=Pacing.of(r) if pacing is None else pacing,
        retry_unresolved=retry_unresolved and want_occupied,
    ).start()


def occupied(
    host: str,
    port: int,
    timeout: TimeoutType = math.inf,
    *,
    interval: IntervalType = default_interval,
    reactor: IPortendReactor | None = None,
    pacing: Pacing | None = None,
) -> Deferred[None]:
    """
    Wait until something accepts TCP connections on ``host:port``.

    Every address the host resolves to (IPv4 and IPv6) is probed; the port
    counts as occupied as soon as any of them accepts. A name that does not
    resolve yet is retried until the timeout.

    :param host: a host name or address; ``0.0.0.0`` and ``::`` are checked
        on the matching loopback address.
    :param port: the TCP port.
    :param timeout: seconds or a :class:`datetime.timedelta`; ``None`` or
        ``math.inf`` waits forever; ``0`` (or less, as in portend) probes
        once.
    :param interval: the pause between probes, in seconds, or a policy
        ``(attempt) -> seconds``; :func:`default_interval` by default.
    :param reactor: the reactor to use; the global one by default.
    :param pacing: the :class:`Pacing` this wait shares with the other waits
        and monitors; the reactor's own by default (:meth:`Pacing.of`).
    :return: a Deferred that fires with ``None`` once the port is occupied,
        or fails with :class:`~txportend.Timeout`
        (``Port 8080 not bound on localhost.``), or with the
        :exc:`OSError` of this machine when it can't make a connection
        attempt at all (out of file descriptors, say). Cancelling it stops
        the wait and leaves nothing behind.
    :raises ValueError: for an empty or unusable host (portend's message
        for an empty one), or a bad port, timeout or interval.
    :raises TypeError: for a host that is not a string, or a timeout or
        interval that is not seconds, a timedelta (or a policy).
    """
    return wait_for(
        host, port, timeout, interval, reactor, want_occupied=True, pacing=pacing
    )


def free(
    host: str,
    port: int,
    timeout: TimeoutType = math.inf,
    *,
    interval: IntervalType = default_interval,
    reactor: IPortendReactor | None = None,
    pacing: Pacing | None = None,
) -> Deferred[None]:
    """
    Wait until nothing accepts TCP connections on ``host:port``.

    Free means no address the host resolves to accepts a connection: a
    refused connection counts as free, and so does one that gets no answer
    (as in portend), except from a loopback address, where nothing drops
    packets, so no answer means a listener whose backlog is full.

    :param host: a host name or address; ``0.0.0.0`` and ``::`` are checked
        on the matching loopback address.
    :param port: the TCP port.
    :param timeout: seconds or a :class:`datetime.timedelta`; ``None`` or
        ``math.inf`` waits forever; ``0`` (or less, as in portend) probes
        once.
    :param interval: the pause between probes, in seconds, or a policy
        ``(attempt) -> seconds``; :func:`default_interval` by default.
    :param reactor: the reactor to use; the global one by default.
    :param pacing: the :class:`Pacing` this wait shares with the other waits
        and monitors; the reactor's own by default (:meth:`Pacing.of`).
    :return: a Deferred that fires with ``None`` once the port is free, or
        fails with :class:`~txportend.Timeout`
        (``Port 8080 not free on localhost.``), or at once with
        :class:`~txportend.HostNotFound` for a name that does not resolve,
        or with the :exc:`OSError` of this machine when it can't make a
        connection attempt at all. Cancelling it stops the wait and leaves
        nothing behind.
    :raises ValueError: for an empty or unusable host (portend's message
        for an empty one), or a bad port, timeout or interval.
    :raises TypeError: for a host that is not a string, or a timeout or
        interval that is not seconds, a timedelta (or a policy).
    """
    return wait_for(
        host, port, timeout, interval, reactor, want_occupied=False, pacing=pacing
    )


def assert_free(
    host: str | Sequence[object],
    port: int | None = None,
    timeout: TimeoutType = 1.0,
    *,
    reactor: IPortendReactor | None = None,
) -> Deferred[None]:
    """
    Check once that nothing accepts connections on ``host:port``.

    :param host: a host name or address, or an address tuple such as
        ``('::1', 8080, 0, 0)`` when ``port`` is ``None``.
    :param port: the TCP port.
    :param timeout: seconds the whole check may take, name lookup included
        (``None``: no limit, as in portend). An address that gives no answer
        in time counts as free, as in portend, except a loopback address:
        nothing drops packets there, so no answer means a listener whose
        accept queue is full, and the port is in use (the one rule of
        :attr:`ProbeResult.state`, shared with :func:`free`).
    :param reactor: the reactor to use; the global one by default.
    :return: a Deferred that fires with ``None`` when the port is free, or
        fails with :class:`~txportend.PortNotFree`
        (``Port 8080 is in use on 127.0.0.1.``, naming the address that
        showed it in use), or :class:`~txportend.HostNotFound` (a name that
        does not resolve, or whose lookup did not finish in time). It can be
        cancelled.
    :raises ValueError: for an empty or unusable host (portend's message
        for an empty one), a bad port or a NaN timeout.
    :raises TypeError: for a host that is not a string, or a timeout that is
        not seconds or a timedelta.
    """
    host, number = _assert_free_target(host, port)
    # None (portend's "no timeout") or a timedelta, as for the waits.
    seconds = timeout_seconds(timeout)
    return probe(host, number, seconds, reactor=reactor).addCallback(
        _judge_free, host, number
    )


def assert_free_now(
    host: str | Sequence[object], port: int | None = None, timeout: TimeoutType = 1.0
) -> bool:
    """
    :func:`assert_free` without a reactor, when the kernel answers at once
    (an address literal on loopback, in practice): the blocking API's fast
    path, which then needs no thread hop. The check and its verdict are
    :func:`assert_free`'s own.

    :return: ``True`` when it decided (the port is free), ``False`` when
        only a real probe can tell.
    :raises PortNotFree: as :func:`assert_free`.
    :raises ValueError: as :func:`assert_free`.
    """
    host, number = _assert_free_target(host, port)
    timeout_seconds(timeout)  # checked as assert_free checks it
    result = probe_now(host, number)
    if result is None:
        return False
    _judge_free(result, host, number)
    return True


def _assert_free_target(
    host: str | Sequence[object], port: int | None
) -> tuple[str, int]:
    """``assert_free``'s arguments, checked: ``(host, port)`` or an address
    tuple as portend takes."""
    if port is None and isinstance(host, Sequence) and not isinstance(host, str):
        host, port = host[:2]  # type: ignore[assignment]
    check_host(host)
    return str(host), check_port(port)


def _judge_free(result: ProbeResult, host: str, port: int) -> None:
    """Raise PortNotFree when ``result`` shows the port occupied."""
    address = result.occupied_on()
    if address is not None:
        # A bind address was probed on loopback; name it as given, as
        # portend (which connects to it directly) does.
        shown = host if client_host(host) == address else address
        raise PortNotFree(f"Port {port} is in use on {shown}.")


class Checker:
    """
    portend's ``Checker``: holds the per-connection timeout for
    :meth:`assert_free`.

    :param timeout: seconds each connection attempt may take.
    :param reactor: the reactor to use; the global one by default.
    """

    def __init__(
        self, timeout: TimeoutType = 1.0, reactor: IPortendReactor | None = None
    ) -> None:
        self.timeout = timeout
        self.reactor = reactor

    def assert_free(
        self, host: str | Sequence[object], port: int | None = None
    ) -> Deferred[None]:
        """
        Check once that nothing accepts connections on ``host:port``; see
        :func:`txportend.assert_free`.

        :return: a Deferred firing with ``None``, or failing with
            :class:`~txportend.PortNotFree`.
        """
        return assert_free(host, port, self.timeout, reactor=self.reactor)
