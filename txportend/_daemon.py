"""
The ``twistd portend`` daemon's watching side: a :class:`Watchlist` of
:class:`~txportend.Monitor` services, one per configured target, that logs
every change and reloads its configuration on ``SIGHUP``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.interfaces import IReactorFromThreads
from twisted.logger import Logger

from ._config import Plan, TargetSpec
from ._hostport import HostPort
from ._monitor import Change, Monitor
from ._pacing import Pacing
from ._reactor import IPortendReactor, get_reactor
from ._result import State

log = Logger()


@dataclass(eq=False)
class Target:
    """
    One watched target.

    :ivar monitor: its :class:`~txportend.Monitor` (``monitor.target`` is
        ``"host:port"``, IPv6 addresses in brackets).
    :ivar expect: the state it should be in: :attr:`State.OCCUPIED` or
        :attr:`State.FREE`.
    """

    monitor: Monitor
    expect: State = State.OCCUPIED

    @property
    def as_expected(self) -> bool:
        """Whether the monitor's state now is the expected one (never while
        it is :attr:`State.UNKNOWN`)."""
        return self.monitor.state is self.expect


class Watchlist(MultiService):
    """
    The daemon's monitors, one per target of a :class:`~txportend._config.Plan`,
    kept in configuration order. Every change of a monitor's state is logged
    as one event, ``{target} is now {new} (was {old})``, with the fields
    ``target`` (``"host:port"``), ``old`` and ``new`` (``"occupied"``,
    ``"free"`` or ``"unknown"``) and ``when`` (the reactor's ``seconds()``:
    a POSIX timestamp on a real reactor).

    :param plan: what to watch at start.
    :param load: reads the configuration again (for :meth:`reload`), raising
        ``ValueError`` (one line) when it is not valid; ``None`` when there is
        no file to reload. With ``load``, a running watch list reloads on
        ``SIGHUP``.
    :param reactor: the reactor the monitors run on; the global one by
        default.
    :param pacing: the :class:`~txportend.Pacing` the monitors share; the
        reactor's own by default.

    :ivar reload_successful: ``True`` at start and after a good reload,
        ``False`` after a reload that failed.
    """

    def __init__(
        self,
        plan: Plan,
        *,
        load: Callable[[], Plan] | None = None,
        reactor: IPortendReactor | None = None,
        pacing: Pacing | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._load = load
        self._reactor = reactor
        self._pacing = pacing
        self._listen = plan.listen
        self._portserver = plan.portserver
        self._watched: dict[str, tuple[TargetSpec, Target]] = {}
        self._previous_handler: Any = None
        self.reload_successful = True
        self._apply(plan.targets)

    def targets(self) -> Sequence[Target]:
        """The targets, in configuration order (the file's, then
        ``--watch``'s)."""
        return [target for _, target in self._watched.values()]

    def startService(self) -> None:
        log.info("Watching {count} target(s)", count=len(self._watched))
        super().startService()  # type: ignore[no-untyped-call]
        if self._load is not None and hasattr(signal, "SIGHUP"):
            self._previous_handler = signal.signal(signal.SIGHUP, self._on_sighup)

    def stopService(self) -> Any:
        if self._load is not None and hasattr(signal, "SIGHUP"):
            if signal.getsignal(signal.SIGHUP) == self._on_sighup:
                signal.signal(signal.SIGHUP, self._previous_handler)
            self._previous_handler = None
        return super().stopService()  # type: ignore[no-untyped-call]

    def _on_sighup(self, signum: int, frame: object) -> None:
        # A signal handler runs between any two bytecodes of the main
        # thread: hand the reload to the reactor.
        reactor = cast(IReactorFromThreads, get_reactor(self._reactor))
        reactor.callFromThread(self.reload)

    def reload(self) -> None:
        """
        Read the configuration again and apply it: targets added start,
        targets removed stop, targets unchanged keep their monitor (state,
        history and counters). A target whose ``expect`` changed keeps its
        monitor; one whose interval or timeout changed gets a new monitor on
        the new schedule that carries on the old one's state, history and
        counters.

        A configuration that cannot be read or is not valid changes nothing:
        it is logged as one error and :attr:`reload_successful` turns
        ``False``. The listening endpoints and the portserver are set up at
        start-up only: a reload that changes them logs a warning, and the
        change takes effect on restart.
        """
        if self._load is None:
            log.warn("No configuration file to reload")
            return
        try:
            plan = self._load()
        except ValueError as error:
            self.reload_successful = False
            log.error("Configuration not reloaded: {error}", error=str(error))
            return
        counts = self._apply(plan.targets)
        self.reload_successful = True
        log.info(
            "Configuration reloaded: {added} added, {removed} removed, "
            "{changed} changed, {kept} unchanged",
            **counts,
        )
        if plan.listen != self._listen:
            log.warn("The listening endpoints changed: they take effect on restart")
        if plan.portserver != self._portserver:
            log.warn("The portserver's settings changed: they take effect on restart")

    def _apply(self, specs: Sequence[TargetSpec]) -> dict[str, int]:
        counts = dict.fromkeys(("added", "removed", "changed", "kept"), 0)
        old = self._watched
        new: dict[str, tuple[TargetSpec, Target]] = {}
        for spec in specs:
            if spec.key not in old:
                new[spec.key] = (spec, Target(self._monitor(spec), spec.expect))
                counts["added"] += 1
                continue
            before, target = old[spec.key]
            if (spec.interval, spec.timeout) != (before.interval, before.timeout):
                self._reschedule(target, spec)
            target.expect = spec.expect
            new[spec.key] = (spec, target)
            counts["kept" if spec == before else "changed"] += 1
        for key, (_, target) in old.items():
            if key not in new:
                target.monitor.disownServiceParent()  # type: ignore[no-untyped-call]
                counts["removed"] += 1
        self._watched = new
        for _, target in new.values():
            if target.monitor.parent is None:
                target.monitor.setServiceParent(self)  # type: ignore[no-untyped-call]
        return counts

    def _monitor(self, spec: TargetSpec) -> Monitor:
        hostport = HostPort(spec.address)
        assert hostport.host is not None and hostport.port is not None
        monitor = Monitor(
            hostport.host,
            hostport.port,
            interval=spec.interval,
            timeout=spec.timeout,
            reactor=self._reactor,
            pacing=self._pacing,
        )
        monitor.subscribe(_log_change)
        return monitor

    def _reschedule(self, target: Target, spec: TargetSpec) -> None:
        """Give ``target`` a monitor on ``spec``'s schedule that carries on
        from the old one (a Monitor's schedule is fixed when it is made)."""
        old = target.monitor
        new = self._monitor(spec)
        new.state, new.since, new.changes = old.state, old.since, old.changes
        new.last_probe, new.probes = old.last_probe, dict(old.probes)
        old.disownServiceParent()  # type: ignore[no-untyped-call]
        target.monitor = new


def _log_change(change: Change) -> None:
    log.info(
        "{target} is now {new} (was {old})",
        target=change.target,
        old=change.old.value,
        new=change.new.value,
        when=change.at,
    )
