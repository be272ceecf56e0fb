"""
What the daemon's web side reads (a watchlist of targets, each a
:class:`~txportend.Monitor` and the state it is expected in, and the
portserver's figures), and its Prometheus metrics: a ``prometheus_client``
collector over them, encoded on the reactor thread by ``prometheus_client``'s
exposition code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.exposition import choose_encoder
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


@dataclass(frozen=True)
class Reading:
    """One target's numbers, read from its monitor at one moment."""

    target: str
    up: bool
    as_expected: bool
    duration: float | None
    probes: tuple[int, ...]
    changes: int
    since: float | None


def read(watchlist: Watchlist) -> list[Reading]:
    """Every target's :class:`Reading`, now (on the reactor thread)."""
    readings = []
    for target in watchlist.targets():
        monitor = target.monitor
        last = monitor.last_probe
        readings.append(
            Reading(
                monitor.target,
                accepting(monitor),
                target.as_expected,
                None if last is None else last.duration,
                tuple(monitor.probes[o] for o in PROBE_OUTCOMES),
                monitor.changes,
                monitor.since,
            )
        )
    return readings


_Values = Callable[[Reading], Iterable[tuple[Sequence[str], float]]]

#: The per-target series: family, name, help, labels after ``target``, and
#: the samples of one reading (extra label values, value).
_SERIES: tuple[tuple[type[Metric], str, str, Sequence[str], _Values], ...] = (
    (
        GaugeMetricFamily,
        "portend_up",
        "1 when the latest probe had a connection accepted, else 0.",
        (),
        lambda r: [((), float(r.up))],
    ),
    (
        GaugeMetricFamily,
        "portend_as_expected",
        "1 when the target is in its expected state, else 0.",
        (),
        lambda r: [((), float(r.as_expected))],
    ),
    (
        GaugeMetricFamily,
        "portend_probe_duration_seconds",
        "How long the latest probe took, name lookup included.",
        (),
        lambda r: [] if r.duration is None else [((), r.duration)],
    ),
    (
        CounterMetricFamily,
        "portend_probes",
        "Probes ended, by outcome.",
        ("outcome",),
        lambda r: [((o,), n) for o, n in zip(PROBE_OUTCOMES, r.probes, strict=True)],
    ),
    (
        CounterMetricFamily,
        "portend_state_changes",
        "Changes of the target's state.",
        (),
        lambda r: [((), r.changes)],
    ),
    (
        GaugeMetricFamily,
        "portend_last_change_timestamp_seconds",
        "When the target's current state began (Unix time).",
        (),
        lambda r: [] if r.since is None else [((), r.since)],
    ),
)


def _family(index: int, readings: Sequence[Reading]) -> Metric:
    """The family ``_SERIES[index]`` for ``readings``."""
    kind, name, documentation, labels, values = _SERIES[index]
    family = kind(name, documentation, labels=["target", *labels])  # type: ignore[call-arg]
    for r in readings:
        for extra, value in values(r):
            family.add_metric([r.target, *extra], value)  # type: ignore[attr-defined]
    return family


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


#: Targets encoded in one go: a slice takes a few milliseconds.
SLICE = 250

_EOF = b"# EOF\n"


def metrics(
    watchlist: Watchlist,
    accept: str | None,
    portserver: PortServerFigures | None = None,
) -> tuple[Iterator[bytes], str]:
    """
    The watchlist's metrics, and the portserver's if there is one, in the
    format ``accept`` (an HTTP ``Accept`` header, or ``None``) asks for, as
    chosen by ``prometheus_client.exposition.choose_encoder``: the text
    format 0.0.4 by default, OpenMetrics when asked for.

    The monitors and the portserver are read at once, when this is called
    (on the reactor thread: see :func:`read` and :func:`read_portserver`).
    The body is encoded by ``prometheus_client``, from a :class:`Collector`
    on a private registry, as the returned iterator is consumed,
    :data:`SLICE` targets at a time, so that a caller can spread the work
    for thousands of targets over several turns of the reactor.

    :return: the body's parts, and its ``Content-Type``.
    """
    readings = read(watchlist)
    daemon = _daemon_families(watchlist.reload_successful)
    reading = read_portserver(portserver)
    if reading is not None:
        daemon += _portserver_families(reading)
    encode, content_type = choose_encoder(accept or "")

    def encoded(families: Sequence[Metric]) -> bytes:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(Collector(families))
        return encode(registry)

    def parts() -> Iterator[bytes]:
        for index in range(len(_SERIES)):
            for start in range(0, len(readings) or 1, SLICE):
                text = encoded([_family(index, readings[start : start + SLICE])])
                lines = text.removesuffix(_EOF).splitlines(keepends=True)
                # A family's HELP and TYPE lines go with its first slice only.
                yield b"".join(x for x in lines if not (start and x.startswith(b"#")))
        yield encoded(daemon)  # OpenMetrics' "# EOF" ends it

    return parts(), content_type
