"""
What the daemon's web side reads (a watchlist of targets, each a
:class:`~txportend.Monitor` and the state it is expected in, and the
portserver's figures), and its Prometheus metrics: ``prometheus_client``
families over them, encoded on the reactor thread by ``prometheus_client``'s
exposition code, which re-encodes on each scrape only the samples whose
value changed (see :class:`Exposition`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from operator import attrgetter
from typing import Any, Protocol

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


_Encoder = Callable[[CollectorRegistry], bytes]


def _encoded(encode: _Encoder, families: Sequence[Metric]) -> bytes:
    """``families`` encoded by ``encode``, from a private registry."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(families))
    return encode(registry)


def _lines(text: bytes) -> list[bytes]:
    return [line + b"\n" for line in text.split(b"\n")[:-1]]


_EOF = b"# EOF\n"
_MISSING = object()


def _same(a: Any, b: Any) -> bool:
    """Whether two values of a reading's field (a number, ``None``, or a
    tuple of ints) encode alike: equal and, zeros, of the same sign (``0.0``
    and ``-0.0`` are equal, but encode differently)."""
    return a is b or (
        bool(a == b) and (a != 0 or math.copysign(1, a) == math.copysign(1, b))
    )


class _Format:
    """
    One exposition format: its encoder, each series' HELP and TYPE lines,
    and, for each target, each series' sample lines as encoded, with the
    field they were encoded from.
    """

    def __init__(self, encode: _Encoder) -> None:
        self.encode = encode
        self.heads = [
            b"".join(
                x
                for x in _lines(_encoded(encode, [series.family()]))
                if x.startswith(b"#") and x != _EOF
            )
            for series in _SERIES
        ]
        #: target -> each series' field, then each series' lines.
        self.targets: dict[str, list[Any]] = {}

    def lines(self, index: int, readings: Sequence[Reading]) -> bytes:
        """
        The sample lines of series ``index`` for ``readings``: as they were
        encoded where the values are unchanged, the others encoded anew by
        ``prometheus_client`` (all in one family).
        """
        series = _SERIES[index]
        at = len(_SERIES) + index
        family = series.family()
        chunks: list[bytes] = []
        pending = []
        for reading in readings:
            key = series.key(reading)
            entry = self.targets.get(reading.target)
            if entry is None:
                entry = self.targets[reading.target] = [_MISSING] * len(_SERIES)
                entry += [b""] * len(_SERIES)
            if _same(entry[index], key):
                chunks.append(entry[at])
                continue
            values = series.values(key)
            before = () if entry[index] is _MISSING else series.values(entry[index])
            if len(before) == len(values):  # the same samples: the changed ones
                lines = _lines(entry[at])
                changed = zip(before, values, strict=True)
                redo = [n for n, (a, b) in enumerate(changed) if not _same(a, b)]
            else:
                lines = [b""] * len(values)
                redo = list(range(len(values)))
            for n in redo:
                labels = [reading.target, *series.extras[n]]
                family.add_metric(labels, values[n])  # type: ignore[attr-defined]
            pending.append((len(chunks), entry, key, lines, redo))
            chunks.append(b"")
        if pending:
            text = _encoded(self.encode, [family])
            encoded = [x for x in _lines(text) if not x.startswith(b"#")]
            if len(encoded) != len(family.samples):
                raise ValueError(f"{len(family.samples)} samples gave {text!r}")
            fresh = iter(encoded)
            for place, entry, key, lines, redo in pending:
                for n in redo:
                    lines[n] = next(fresh)
                entry[index] = key
                entry[at] = chunks[place] = b"".join(lines)
        return b"".join(chunks)

    def forget(self, targets: Iterable[str]) -> None:
        """Forget the targets not among ``targets``."""
        keep = set(targets)
        if len(self.targets) > len(keep):
            for target in self.targets.keys() - keep:
                del self.targets[target]


#: Targets encoded in one go: a slice takes a few milliseconds.
SLICE = 250

#: Formats whose encoded lines are kept, the most recently asked for: one
#: for Prometheus, one for people reading the text format.
FORMATS = 2


class Exposition:
    """
    A watchlist's metrics, and a portserver's if there is one, encoded by
    ``prometheus_client``'s exposition code. Every scrape reads the
    monitors anew; the sample lines encoded for a value are kept, so that a
    scrape encodes only the samples whose value changed since the one
    before (in the same format). What it gives is what
    ``prometheus_client`` gives for the whole registry, byte for byte.

    The lines are kept for the targets of the latest scrape, in the latest
    :data:`FORMATS` formats asked for: about 12 MB a format for 10,000
    targets.

    :param watchlist: the targets.
    :param portserver: the portserver, or ``None``.
    """

    def __init__(
        self, watchlist: Watchlist, portserver: PortServerFigures | None = None
    ) -> None:
        self._watchlist = watchlist
        self._portserver = portserver
        self._formats: dict[Any, _Format] = {}

    def metrics(self, accept: str | None) -> tuple[Iterator[bytes], str]:
        """
        The metrics in the format ``accept`` (an HTTP ``Accept`` header, or
        ``None``) asks for, as chosen by
        ``prometheus_client.exposition.choose_encoder``: the text format
        0.0.4 by default, OpenMetrics when asked for.

        The monitors and the portserver are read at once, when this is
        called (on the reactor thread: see :func:`read` and
        :func:`read_portserver`). The body is encoded as the returned
        iterator is consumed, :data:`SLICE` targets at a time, so that a
        caller can spread the work for thousands of targets over several
        turns of the reactor.

        :return: the body's parts, and its ``Content-Type``.
        """
        readings = read(self._watchlist)
        daemon = _daemon_families(self._watchlist.reload_successful)
        reading = read_portserver(self._portserver)
        if reading is not None:
            daemon += _portserver_families(reading)
        encode, content_type = choose_encoder(accept or "")
        form = self._format(encode)

        def parts() -> Iterator[bytes]:
            for index in range(len(_SERIES)):
                for start in range(0, len(readings) or 1, SLICE):
                    lines = form.lines(index, readings[start : start + SLICE])
                    yield form.heads[index] + lines if start == 0 else lines
            form.forget(r.target for r in readings)
            yield _encoded(encode, daemon)  # OpenMetrics' "# EOF" ends it

        return parts(), content_type

    def _format(self, encode: _Encoder) -> _Format:
        """The :class:`_Format` of ``encode``, now the most recently used."""
        key: Any = encode
        if isinstance(encode, partial):
            key = (encode.func, encode.args, tuple(sorted(encode.keywords.items())))
        form = self._formats.pop(key, None) or _Format(encode)
        self._formats[key] = form
        while len(self._formats) > FORMATS:
            del self._formats[next(iter(self._formats))]
        return form
