"""
Waiting for a port to be occupied or free: the polling schedule, the
overall timeout and cancellation; and the one-shot ``assert_free`` check.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from ._errors import HostNotFound, PortNotFree, Timeout
from ._hostport import (
    TimeoutType,
    check_host,
    check_port,
    client_host,
    is_loopback,
    timeout_seconds,
)
from ._listeners import ListenWatcher
from ._probe import Outcome, ProbeResult, probe, probe_checked, probe_now
from ._reactor import IPortendReactor, get_reactor
from ._schedule import IntervalType, default_interval, interval_policy

#: Seconds each connection attempt may take while waiting, as in portend: a
#: port being waited on to go free is expected to refuse quickly.
OCCUPIED_PROBE_TIMEOUT = 0.5
FREE_PROBE_TIMEOUT = 0.1


#: Probes per second that all the waits on one reactor make together, at
#: most, from their own schedules: with N waits at once, each pauses at
#: least N / PROBE_BUDGET seconds between probes (about 10% of a core).
PROBE_BUDGET = 1000.0
#: The same for waits that the kernel's listening table watches: it wakes
#: them, so their own probes can be rarer.
WATCHED_PROBE_BUDGET = 200.0
#: How many waits may make their first probe at once; the first probes of
#: the waits started beyond these are spread at PROBE_BUDGET a second.
PROBE_BURST = 100


class _Shared:
    """What the waits on one reactor share: their count and the watcher."""

    def __init__(self, reactor: IPortendReactor) -> None:
        self.active = 0
        self.watcher = ListenWatcher(reactor)


_shared: weakref.WeakKeyDictionary[IPortendReactor, _Shared] = (
    weakref.WeakKeyDictionary()
)


def shared_for(reactor: IPortendReactor) -> _Shared:
    """The state shared by every wait on ``reactor``, made on first use."""
    state = _shared.get(reactor)
    if state is None:
        state = _shared[reactor] = _Shared(reactor)
    return state


def _busy(result: ProbeResult, strict: bool) -> bool:
    """
    Whether ``result`` shows something listening: a connection accepted, or
    (unless ``strict``) one that got no answer from a loopback address, where
    nothing drops packets, so the listener's backlog is full.
    """
    if result.accepted:
        return True
    return not strict and any(
        outcome is Outcome.TIMED_OUT and is_loopback(address)
        for address, outcome in result.outcomes.items()
    )


class _Wait:
    """
    Probes ``host:port`` until it is (or is not) accepting connections.

    One probe is in flight at a time; the next is scheduled with ``callLater``
    after the pause the policy gives, stretched when many waits share the
    reactor (:data:`PROBE_BUDGET`). The overall deadline is one more
    ``callLater``. At least one probe always completes, so ``timeout=0``
    means "check once", as in portend: a probe still in flight when the
    deadline passes decides, if no probe has completed before it.

    A wait on loopback also subscribes to the reactor's
    :class:`~txportend._listeners.ListenWatcher`; when the kernel's table of
    listening sockets says the port changed the right way, the wait probes
    at once instead of at its next turn.
    """

    def __init__(
        self,
        reactor: IPortendReactor,
        host: str,
        port: int,
        *,
        want_occupied: bool,
        timeout: float,
        policy: Callable[[int], float],
        probe_timeout: float,
        retry_unresolved: bool,
    ) -> None:
        self._reactor = reactor
        self._retry_unresolved = retry_unresolved
        self._host = host
        self._target = client_host(host)  # what each probe connects to
        self._port = port
        self._want_occupied = want_occupied
        self._timeout = timeout
        self._policy = policy
        self._probe_timeout = probe_timeout
        self._pauses = 0
        self._completed = 0
        self._expired = False
        self._done = False
        self._unresolved = False
        self._next: IDelayedCall | None = None
        self._deadline: IDelayedCall | None = None
        self._inflight: Deferred[ProbeResult] | None = None
        self._shared = shared_for(reactor)
        self._watching = False
        self._hinted = False
        # When the pending pause began and the policy's part of it, if the
        # table's word stretched it (None: it didn't).
        self._stretched: tuple[float, float] | None = None
        self.result: Deferred[None] = Deferred(lambda d: self._stop())

    def start(self) -> Deferred[None]:
        self._shared.active += 1
        if math.isfinite(self._timeout):
            self._deadline = self._reactor.callLater(self._timeout, self._expire)
        if is_loopback(self._target):
            self._watch()
        crowd = self._shared.active - PROBE_BURST
        if crowd > 0:
            self._next = self._reactor.callLater(crowd / PROBE_BUDGET, self._probe)
        else:
            self._probe()
        return self.result

    def _watch(self) -> None:
        if not self._watching:
            self._watching = True
            self._shared.watcher.subscribe(self._port, self, self._hint)

    def _timeout_error(self) -> Timeout:
        if self._want_occupied:
            message = f"Port {self._port} not bound on {self._host}."
            if self._unresolved:
                message += " The host name did not resolve."
        else:
            message = f"Port {self._port} not free on {self._host}."
        return Timeout(message)

    def _probe(self) -> None:
        self._next = None
        try:
            self._inflight = probe_checked(
                self._reactor, self._target, self._port, self._probe_timeout
            )
        except Exception:
            self._inflight = fail()
        self._inflight.addCallbacks(self._probed, self._probe_failed)

    def _probed(self, result: ProbeResult) -> None:
        if self._done:
            return
        self._unresolved = False
        self._completed_one()
        if _busy(result, self._want_occupied) == self._want_occupied:
            self._finish(None)
            return
        if not self._watching and all(map(is_loopback, result.outcomes)):
            self._watch()
        self._again()

    def _hint(self, listening: bool | None) -> None:
        """The listening table says the port now listens (or not); ``None``:
        the table is no longer read, so a pause stretched on its word ends."""
        if self._done or listening not in (None, self._want_occupied):
            return
        if listening is None:
            self._unstretch()
            return
        if self._next is not None:
            self._next.cancel()
            self._probe()
        else:
            self._hinted = True  # a probe is in flight: probe again after it

    def _unstretch(self) -> None:
        """
        The table is no longer read: a pause stretched on its word ends when
        the plain budget, for the waits running now, would have ended it. A
        few waits left probe about at once; many (a table that turned
        unreadable) keep their places in the budget instead of all probing
        in one turn.
        """
        stretched, self._stretched = self._stretched, None
        if stretched is None or self._next is None:
            return
        began, policy_pause = stretched
        plain = max(policy_pause, self._shared.active / PROBE_BUDGET)
        now = self._reactor.seconds()
        due = max(began + plain, now)
        if due < self._next.getTime():
            self._next.cancel()
            self._next = self._reactor.callLater(due - now, self._probe)

    def _probe_failed(self, failure: Failure) -> None:
        if self._done:
            return
        if isinstance(failure.value, HostNotFound) and self._retry_unresolved:
            # The name may appear later (a container starting, say).
            self._unresolved = True
            self._completed_one()
            self._again()
        else:
            self._completed_one()
            self._finish(failure)

    def _completed_one(self) -> None:
        self._inflight = None
        self._completed += 1

    def _again(self) -> None:
        if self._expired:
            self._finish(self._timeout_error())
            return
        self._stretched = None
        if self._hinted:
            self._hinted = False
            pause = 0.0
        else:
            try:
                pause = float(self._policy(self._pauses))
                if not 0 <= pause < math.inf:
                    raise ValueError(
                        f"the interval policy gave {pause!r}: not a number of seconds"
                    )
            except Exception:
                self._finish(Failure())  # type: ignore[no-untyped-call]
                return
            self._pauses += 1
            # The budget stretches the pause, unless the kernel's table says
            # the port is already as wanted and the probe just missed it
            # (a dropped SYN under load, say): then keep the plain pace.
            watcher = self._shared.watcher
            known = watcher.listening(self._port) if self._watching else None
            if known is None:
                pause = max(pause, self._shared.active / PROBE_BUDGET)
            elif known != self._want_occupied:
                # The table will wake this wait; probing is only the safety
                # net for what the table can't see (another namespace, say).
                self._stretched = (self._reactor.seconds(), pause)
                pause = max(pause, self._shared.active / WATCHED_PROBE_BUDGET)
        self._next = self._reactor.callLater(pause, self._probe)

    def _expire(self) -> None:
        self._deadline = None
        self._expired = True
        if self._completed == 0:
            # Let the first probe decide; start it now if it was spread. A
            # probe has its own timeout, but a name lookup has none: give it
            # as long as a probe, then time out anyway.
            if self._inflight is None:
                if self._next is not None:
                    self._next.cancel()
                self._probe()
            if not self._done and self._completed == 0:
                self._deadline = self._reactor.callLater(
                    self._probe_timeout, self._finish_timeout
                )
            return
        self._finish(self._timeout_error())

    def _finish_timeout(self) -> None:
        self._deadline = None
        self._finish(self._timeout_error())

    def _stop(self) -> None:
        if self._done:
            return
        self._done = True
        self._shared.active -= 1
        if self._watching:
            self._shared.watcher.unsubscribe(self._port, self)
        for call in (self._next, self._deadline):
            if call is not None and call.active():
                call.cancel()
        self._next = self._deadline = None
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            inflight.cancel()

    def _finish(self, error: BaseException | Failure | None) -> None:
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
) -> Deferred[None]:
    """
    The one implementation behind :func:`occupied` and :func:`free` (and the
    blocking API's, which passes ``retry_unresolved=False``: portend fails at
    once on a name that does not resolve).
    """
    check_host(host)
    return _Wait(
        get_reactor(reactor),
        host,
        check_port(port),
        want_occupied=want_occupied,
        timeout=timeout_seconds(timeout),
        policy=interval_policy(interval),
        probe_timeout=OCCUPIED_PROBE_TIMEOUT if want_occupied else FREE_PROBE_TIMEOUT,
        retry_unresolved=retry_unresolved and want_occupied,
    ).start()


def occupied(
    host: str,
    port: int,
    timeout: TimeoutType = math.inf,
    *,
    interval: IntervalType = default_interval,
    reactor: IPortendReactor | None = None,
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
    :return: a Deferred that fires with ``None`` once the port is occupied,
        or fails with :class:`~txportend.Timeout`
        (``Port 8080 not bound on localhost.``), or with the
        :exc:`OSError` of this machine when it can't make a connection
        attempt at all (out of file descriptors, say). Cancelling it stops
        the wait and leaves nothing behind.
    :raises ValueError: for an empty host (portend's message), or a bad
        port, timeout or interval.
    """
    return wait_for(host, port, timeout, interval, reactor, want_occupied=True)


def free(
    host: str,
    port: int,
    timeout: TimeoutType = math.inf,
    *,
    interval: IntervalType = default_interval,
    reactor: IPortendReactor | None = None,
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
    :return: a Deferred that fires with ``None`` once the port is free, or
        fails with :class:`~txportend.Timeout`
        (``Port 8080 not free on localhost.``), or at once with
        :class:`~txportend.HostNotFound` for a name that does not resolve,
        or with the :exc:`OSError` of this machine when it can't make a
        connection attempt at all. Cancelling it stops the wait and leaves
        nothing behind.
    :raises ValueError: for an empty host (portend's message), or a bad
        port, timeout or interval.
    """
    return wait_for(host, port, timeout, interval, reactor, want_occupied=False)


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
    :param timeout: seconds each connection attempt may take; one that gets
        no answer in time counts as free, as in portend.
    :param reactor: the reactor to use; the global one by default.
    :return: a Deferred that fires with ``None`` when the port is free, or
        fails with :class:`~txportend.PortNotFree`
        (``Port 8080 is in use on 127.0.0.1.``, naming the address that
        accepted), or :class:`~txportend.HostNotFound`. It can be cancelled.
    :raises ValueError: for an empty host (portend's message) or a bad port.
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
    """Raise PortNotFree when ``result`` shows an address accepting."""
    address = result.first_accepting()
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
