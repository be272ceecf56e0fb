"""
Watching a port for as long as an application runs: :class:`Monitor`, a
Twisted service on the same probe-and-pause loop as the waits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._errors import HostNotFound
from ._hostport import HostPort, TimeoutType, check_host, check_port, seconds
from ._loop import ProbeLoop
from ._pacing import Pacing
from ._reactor import IPortendReactor, get_reactor
from ._result import ProbeResult, State
from ._schedule import IntervalType, interval_policy
from ._sockets import Outcome

log = Logger()


@dataclass(frozen=True)
class Change:
    """
    A change of a :class:`Monitor`'s ``state``, as its
    observers get it.

    :ivar target: ``"host:port"`` (an IPv6 address in brackets:
        ``"[::1]:8080"``).
    :ivar old: the state before.
    :ivar new: the state now.
    :ivar at: when the probe that saw it ended, in the reactor's
        ``seconds()``.
    """

    target: str
    old: State
    new: State
    at: float


@dataclass(frozen=True)
class LastProbe:
    """
    A :class:`Monitor`'s latest probe.

    :ivar result: what it saw per address, or ``None`` when it could not be
        made (see ``error``).
    :ivar error: why it could not be made (the name did not resolve, or
        this machine's own error), else ``None``.
    :ivar at: when it ended, in the reactor's ``seconds()``.
    :ivar duration: how long it took, in seconds, name lookup included.
    """

    result: ProbeResult | None
    error: BaseException | None
    at: float
    duration: float


#: The outcomes :attr:`Monitor.probes` counts, one per probe: the best answer
#: any address gave (``accepted``, then ``timed_out``, ``refused``,
#: ``unreachable``), or why the probe could not be made: ``unresolved`` (the
#: name did not resolve, or its lookup did not finish) or ``error`` (this
#: machine's own error). A bounded set, fit for a metric's label.
PROBE_OUTCOMES = (
    "accepted",
    "refused",
    "timed_out",
    "unreachable",
    "unresolved",
    "error",
)
_RANKED = (Outcome.ACCEPTED, Outcome.TIMED_OUT, Outcome.REFUSED, Outcome.UNREACHABLE)


def outcome_label(outcome: ProbeResult | BaseException) -> str:
    """The label of one probe among :data:`PROBE_OUTCOMES`."""
    if isinstance(outcome, ProbeResult):
        seen = set(outcome.outcomes.values())
        best = next((o for o in _RANKED if o in seen), Outcome.UNREACHABLE)
        return best.name.lower()
    return "unresolved" if isinstance(outcome, HostNotFound) else "error"


for _name in (Change, LastProbe):
    _name.__module__ = "txportend"


class Monitor(Service):
    """
    Watch ``host:port`` for as long as the service runs: a
    :class:`twisted.application.service.Service`, so it goes into a
    :class:`~twisted.application.service.MultiService` or a twistd
    application as it is.

    Starting it probes at once (or soon after, when many loops start
    together on one :class:`Pacing`), then again ``interval`` after each
    probe ends; probes never overlap. What each probe means is
    :attr:`ProbeResult.state`, the judgement every face of txportend makes.

    :param host: a host name or address; ``0.0.0.0`` and ``::`` are watched
        on the matching loopback address.
    :param port: the TCP port.
    :param interval: the pause after each probe: seconds, a
        :class:`datetime.timedelta`, or a policy ``(attempt) -> seconds``
        (as for :func:`occupied`). Many monitors on one reactor share its
        :class:`Pacing`, whose budget may stretch it (10,000 monitors probe
        1,000 times a second by default, each every 10 s).
    :param timeout: seconds (or a :class:`~datetime.timedelta`) each probe
        may take, the name lookup included.
    :param reactor: the reactor to use; the global one by default.
    :param pacing: the :class:`Pacing` to share; the reactor's own by
        default.
    :raises ValueError: for an empty or unusable host, a bad port, a
        negative or NaN interval, or a timeout that is not a positive,
        finite duration.
    :raises TypeError: for a host that is not a string, or an interval or
        timeout that is not seconds, a timedelta (or a policy, for the
        interval).

    :ivar target: ``"host:port"``, IPv6 addresses in brackets; a bind
        address is given as the loopback address probed (``0.0.0.0`` as
        ``127.0.0.1``, ``::`` as ``::1``), as portend's ``HostPort.from_addr``
        does.
    :ivar state: the :class:`State` now: :attr:`State.UNKNOWN` until the
        first probe ends, while the name does not resolve, and after a probe
        this machine could not make (out of file descriptors, say: logged);
        never :attr:`State.FREE` for want of an answer. A monitor stopped
        and started again keeps its state, counters and history until its
        next probe says otherwise, so a restart (the daemon's reload, say)
        reports no change that did not happen.
    :ivar since: when ``state`` began, in the reactor's ``seconds()``
        (``None`` until the service first starts).
    :ivar changes: how many times ``state`` has changed.
    :ivar last_probe: the latest :class:`LastProbe`, or ``None``.
    :ivar probes: how many probes ended, by outcome: a dict with a count for
        each of ``"accepted"``, ``"refused"``, ``"timed_out"``,
        ``"unreachable"`` (the best answer any address gave),
        ``"unresolved"`` (the name did not resolve, or its lookup did not
        finish) and ``"error"`` (this machine's own error).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        interval: IntervalType = 10.0,
        timeout: TimeoutType = 1.0,
        reactor: IPortendReactor | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        check_host(host)
        port = check_port(port)
        self._policy = interval_policy(interval)
        limit = seconds(timeout, unlimited=False)
        if limit == 0:
            raise ValueError(f"timeout must be more than 0 seconds: {timeout!r}")
        self._timeout = limit
        self._host = host
        self._port = port
        self._reactor = reactor
        self._pacing = pacing
        self.target = str(HostPort.from_addr((host, port)))
        self.state = State.UNKNOWN
        self.since: float | None = None
        self.changes = 0
        self.last_probe: LastProbe | None = None
        self.probes = dict.fromkeys(PROBE_OUTCOMES, 0)
        self._observers: list[_Observer] = []
        self._loop: ProbeLoop | None = None

    def __repr__(self) -> str:
        return f"<Monitor {self.target} {self.state.value}>"

    def subscribe(self, observer: Callable[[Change], object]) -> Callable[[], None]:
        """
        Call ``observer(change)`` with a :class:`Change` on every change of
        ``state``, the first one (from :attr:`State.UNKNOWN`) included.
        An observer that raises is logged; the monitor and the other
        observers go on.

        :return: a function that unsubscribes ``observer`` (calling it again
            does nothing).
        """
        entry = _Observer(observer)
        self._observers.append(entry)

        def unsubscribe() -> None:
            if entry in self._observers:
                self._observers.remove(entry)

        return unsubscribe

    def startService(self) -> None:
        """Start probing (a monitor already running is left as it is)."""
        if self._loop is not None:
            return
        super().startService()  # type: ignore[no-untyped-call]
        reactor = get_reactor(self._reactor)
        if self.since is None:
            self.since = reactor.seconds()
        self._loop = ProbeLoop(
            reactor,
            self._host,
            self._port,
            policy=self._policy,
            pacing=Pacing.of(reactor) if self._pacing is None else self._pacing,
            probe_timeout=self._timeout,
            lookup_timeout=self._timeout,
            seen=self._seen,
            broke=self._broke,
        )
        self._loop.start()

    def stopService(self) -> None:
        """Stop probing: the probe in flight and the next one are cancelled,
        and nothing is left on the reactor."""
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.stop()
        super().stopService()  # type: ignore[no-untyped-call]

    def _seen(self, outcome: ProbeResult | Failure) -> bool:
        loop = self._loop
        if loop is None:
            return True  # stopped meanwhile
        now = loop.reactor.seconds()
        started = now if loop.started_at is None else loop.started_at
        duration = max(now - started, 0.0)
        if isinstance(outcome, ProbeResult):
            self.probes[outcome_label(outcome)] += 1
            self.last_probe = LastProbe(outcome, None, now, duration)
            self._become(outcome.state, now)
            return False
        error = outcome.value
        assert error is not None
        self.probes[outcome_label(error)] += 1
        self.last_probe = LastProbe(None, error, now, duration)
        if not isinstance(error, HostNotFound):
            log.failure(
                "Probe of {target} could not be made", outcome, target=self.target
            )
        self._become(State.UNKNOWN, now)
        return False

    def _broke(self, failure: Failure) -> None:
        log.failure(
            "The interval policy of {target} failed: no more probes",
            failure,
            target=self.target,
        )
        self._become(State.UNKNOWN, self._reactor_seconds())

    def _reactor_seconds(self) -> float:
        return get_reactor(self._reactor).seconds()

    def _become(self, state: State, now: float) -> None:
        if state is self.state:
            return
        change = Change(self.target, self.state, state, now)
        self.state = state
        self.since = now
        self.changes += 1
        for entry in list(self._observers):
            try:
                entry.observer(change)
            except Exception:
                log.failure(
                    "Observer {observer!r} of {target} failed",
                    observer=entry.observer,
                    target=self.target,
                )


class _Observer:
    """One subscription (two subscriptions of one function are two)."""

    __slots__ = ("observer",)

    def __init__(self, observer: Callable[[Change], object]) -> None:
        self.observer = observer
