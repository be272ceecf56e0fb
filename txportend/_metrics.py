"""
What the daemon's web side reads (a watchlist of targets, each a
:class:`~txportend.Monitor` and the state it is expected in, and the
portserver's figures), and its Prometheus metrics: the series and
``prometheus_client`` families over them. They are encoded by
:mod:`txportend._exposition`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Protocol

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import CollectorRegistry

from ._monitor import PROBE_OUTCOMES, Monitor
from ._result import State
from ._version import __version__


class Target(Protocol):
    """One watched target, as the daemon's watchlist holds it."""

    @property
    def monitor(self) -> Monitor:
        """The :class:`~txportend.Monitor` probing it."""

    @property
    def expect(self) -> State:
        """The state it should be in: :attr:`State.OCCUPIED` or
        :attr:`State.FREE`."""

    @property
    def as_expected(self) -> bool:
        """Whether the monitor's state is ``expect``."""


class Watchlist(Protocol):
    """The daemon's targets, as the web side reads them."""

    def targets(self) -> Sequence[Target]:
        """The targets, in configuration order."""

    @property
    def reload_successful(self) -> bool:
        """Whether the latest configuration reload worked (true before any
        reload)."""


class PortServerFigures(Protocol):
    """A portserver's figures (:class:`~txportend._portserver.PortServer`),
    as the web side reads them."""

    @property
    def address(self) -> str:
        """Its socket: ``"@name"`` or a path."""

    @property
    def ports_managed(self) -> int:
        """The ports in its pool."""

    @property
    def ports_allocated(self) -> int:
        """The ports held by live processes now."""

    @property
    def requests_served(self) -> int:
        """Ports handed out."""

    @property
    def requests_denied(self) -> int:
        """Requests that got no port: none was left."""

    @property
    def bad_requests(self) -> int:
        """Requests refused."""


@dataclass(frozen=True)
class PortServerReading:
    """A portserver's figures at one moment (the names are ``/status``'s)."""

    address: str
    ports_managed: int
    ports_allocated: int
    requests_served: int
    requests_denied: int
    bad_requests: int


def read_portserver(portserver: PortServerFigures | None) -> PortServerReading | None:
    """The portserver's figures now (on the reactor thread: who holds a port
    is asked of the system), or ``None`` when there is no portserver."""
    if portserver is None:
        return None
    return PortServerReading(
        portserver.address,
        portserver.ports_managed,
        portserver.ports_allocated,
        portserver.requests_served,
        portserver.requests_denied,
        portserver.bad_requests,
    )


def accepting(monitor: Monitor) -> bool:
    """Whether the monitor's latest probe had a connection accepted."""
    last = monitor.last_probe
    return last is not None and last.result is not None and last.result.accepted


@dataclass(frozen=True, slots=True)
class Reading:
    """One target's numbers, read from its monitor at one moment."""

    target: str
    up: bool
    as_expected: bool
    duration: float | None
    probes: tuple[int, ...]
    changes: int
    since: float | None


def reading(target: Target) -> Reading:
    """The target's :class:`Reading`, now (on the reactor thread)."""
    monitor = target.monitor
    last = monitor.last_probe
    return Reading(
        monitor.target,
        accepting(monitor),
        target.as_expected,
        None if last is None else last.duration,
        tuple(monitor.probes[o] for o in PROBE_OUTCOMES),
        monitor.changes,
        monitor.since,
    )


def read(targets: Iterable[Target]) -> list[Reading]:
    """Every target's :class:`Reading`, now (on the reactor thread)."""
    return [reading(target) for target in targets]


def _optional(value: float | None) -> tuple[float, ...]:
    return () if value is None else (value,)


@dataclass(frozen=True)
class _Series:
    """One per-target series: its family, and how a reading gives its
    samples."""

    kind: type[Metric]
    name: str
    documentation: str
    #: The labels after ``target``, and their values in each sample.
    labels: tuple[str, ...]
    extras: tuple[tuple[str, ...], ...]
    #: The reading's field the samples show...
    key: Callable[[Reading], Any]
    #: ...and their values, from that field (as many as are present).
    values: Callable[[Any], tuple[float, ...]]

    def family(self) -> Metric:
        """An empty family."""
        labels = ["target", *self.labels]
        return self.kind(self.name, self.documentation, labels=labels)  # type: ignore[call-arg]


_ONE = ((),)

#: The per-target series, in the order they are exposed.
_SERIES = (
    _Series(
        GaugeMetricFamily,
        "portend_up",
        "1 when the latest probe had a connection accepted, else 0.",
        (),
        _ONE,
        attrgetter("up"),
        lambda up: (float(up),),
    ),
    _Series(
        GaugeMetricFamily,
        "portend_as_expected",
        "1 when the target is in its expected state, else 0.",
        (),
        _ONE,
        attrgetter("as_expected"),
        lambda as_expected: (float(as_expected),),
    ),
    _Series(
        GaugeMetricFamily,
        "portend_probe_duration_seconds",
        "How long the latest probe took, name lookup included.",
        (),
        _ONE,
        attrgetter("duration"),
        _optional,
    ),
    _Series(
        CounterMetricFamily,
        "portend_probes",
        "Probes ended, by outcome.",
        ("outcome",),
        tuple((o,) for o in PROBE_OUTCOMES),
        attrgetter("probes"),
        lambda probes: probes,
    ),
    _Series(
        CounterMetricFamily,
        "portend_state_changes",
        "Changes of the target's state.",
        (),
        _ONE,
        attrgetter("changes"),
        lambda changes: (changes,),
    ),
    _Series(
        GaugeMetricFamily,
        "portend_last_change_timestamp_seconds",
        "When the target's current state began (Unix time).",
        (),
        _ONE,
        attrgetter("since"),
        _optional,
    ),
)


def _daemon_families(reload_successful: bool) -> list[Metric]:
    """The daemon's own series."""
    return [
        InfoMetricFamily(
            "portend_build", "The running txportend.", value={"version": __version__}
        ),
        GaugeMetricFamily(
            "portend_config_last_reload_successful",
            "1 when the latest configuration reload worked, else 0.",
            value=1.0 if reload_successful else 0.0,
        ),
    ]


def _portserver_families(reading: PortServerReading) -> list[Metric]:
    """The portserver's series."""
    requests = CounterMetricFamily(
        "portend_portserver_requests",
        "Requests to the portserver, by result: served (a port handed out), "
        "denied (no port left), bad (refused).",
        labels=["result"],
    )
    requests.add_metric(["served"], reading.requests_served)
    requests.add_metric(["denied"], reading.requests_denied)
    requests.add_metric(["bad"], reading.bad_requests)
    return [
        GaugeMetricFamily(
            "portend_portserver_ports_managed",
            "Ports in the portserver's pool.",
            value=reading.ports_managed,
        ),
        GaugeMetricFamily(
            "portend_portserver_ports_allocated",
            "Ports of the pool held by live processes now.",
            value=reading.ports_allocated,
        ),
        requests,
    ]


class Collector:
    """A ``prometheus_client`` collector of families made beforehand."""

    def __init__(self, families: Sequence[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


Encoder = Callable[[CollectorRegistry], bytes]


def encoded(encode: Encoder, families: Sequence[Metric]) -> bytes:
    """``families`` encoded by ``encode``, from a private registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(families))
    return encode(registry)
