"""
``/metrics``' body: the daemon's series (:mod:`txportend._metrics`) encoded
by ``prometheus_client``'s exposition code, on the reactor thread.

Encoding is what a scrape costs: 10,000 targets are 110,000 samples, and
``prometheus_client`` spends about 10 µs on each. So each sample's encoded
line is kept with the value it shows (:class:`_Lines`), a scrape has only
the samples whose value changed encoded again, and :class:`Refresher` keeps
the lines current between scrapes, a few targets at a time, so that even
the first scrape after start-up finds little left to do. Formats that
encode samples alike (the text format 0.0.4 and OpenMetrics, as the daemon's
series are named) share their lines; only their ``HELP``/``TYPE`` lines and
the end differ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from functools import partial
from typing import Any

from prometheus_client.exposition import choose_encoder, generate_latest
from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from ._metrics import (
    _SERIES,
    Encoder,
    PortServerFigures,
    Reading,
    Target,
    Watchlist,
    _daemon_families,
    _portserver_families,
    encoded,
    read,
    read_portserver,
)

log = Logger()


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


class _Lines:
    """
    Each target's sample lines as one encoder writes them, series by series,
    with the field of the reading they were encoded from.

    :param encode: a ``prometheus_client`` encoder (``generate_latest`` of
        one format).
    """

    def __init__(self, encode: Encoder) -> None:
        self.encode = encode
        #: target -> each series' field, then each series' lines.
        self.targets: dict[str, list[Any]] = {}

    def lines(self, index: int, readings: Sequence[Reading]) -> bytes:
        """
        The sample lines of series ``index`` for ``readings``: as they were
        encoded where the values are unchanged, the others encoded anew by
        ``prometheus_client`` (all in one family), and kept.
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
            text = encoded(self.encode, [family])
            fresh_lines = [x for x in _lines(text) if not x.startswith(b"#")]
            if len(fresh_lines) != len(family.samples):
                raise ValueError(f"{len(family.samples)} samples gave {text!r}")
            fresh = iter(fresh_lines)
            for place, entry, key, lines, redo in pending:
                for n in redo:
                    lines[n] = next(fresh)
                entry[index] = key
                entry[at] = chunks[place] = b"".join(lines)
        return b"".join(chunks)

    def update(self, readings: Sequence[Reading]) -> None:
        """Bring every series' lines for ``readings`` up to date."""
        for index in range(len(_SERIES)):
            self.lines(index, readings)

    def forget(self, targets: Iterable[str]) -> None:
        """Forget the targets not among ``targets``."""
        for target in self.targets.keys() - set(targets):
            del self.targets[target]


#: Readings whose every series' samples test an encoder where formats could
#: differ: escaping in label values (quotes, backslashes, line breaks,
#: non-ASCII), and numbers (zeros of both signs, infinities, NaN, tiny, huge
#: and inexact floats, integers past 2**53, booleans).
_SPECIMEN = (
    Reading("127.0.0.1:80", True, False, 0.0012, (1, 0, 0, 0, 0, 0), 1, 1.7e9 + 0.1),
    Reading(
        "[fe80::1%eth0]:65535",
        False,
        True,
        -0.0,
        (0, 2**53 + 1, 10**20, 7, 0, 1),
        0,
        None,
    ),
    Reading(
        'x"y\\z\nw é\u2028\t{a="b"}:1',
        True,
        True,
        math.nan,
        (3, 1, 4, 1, 5, 9),
        2**40,
        math.inf,
    ),
    Reading("é:2", False, False, 1e-7, (0, 0, 0, 0, 0, 0), 0, 0.1 + 0.2),
    Reading("h:3", True, False, 1e22, (2, 7, 1, 8, 2, 8), 3, -math.inf),
)


def _specimen(encode: Encoder) -> bytes:
    """How ``encode`` writes the daemon's samples: every series' sample
    lines for :data:`_SPECIMEN`. Two encoders that write it alike write the
    daemon's samples alike."""
    lines = _Lines(encode)
    return b"".join(lines.lines(i, _SPECIMEN) for i in range(len(_SERIES)))


class _Format:
    """One exposition format (of encoder ``encode``): each series' ``HELP``
    and ``TYPE`` lines, and the sample lines it shares with the formats that
    write samples alike."""

    def __init__(self, encode: Encoder, lines: _Lines) -> None:
        self.heads = [
            b"".join(
                x
                for x in _lines(encoded(encode, [series.family()]))
                if x.startswith(b"#") and x != _EOF
            )
            for series in _SERIES
        ]
        self.lines = lines


#: Targets encoded in one go: a slice takes a few milliseconds.
SLICE = 250

#: Formats kept, the most recently asked for. Their sample lines are kept
#: once for each way of writing samples among them (one, for Prometheus'
#: formats), besides the text format's.
FORMATS = 4


class Exposition:
    """
    A watchlist's metrics, and a portserver's if there is one, encoded by
    ``prometheus_client``'s exposition code. Every scrape reads the
    monitors anew; the sample lines encoded for a value are kept, so that a
    scrape encodes only the samples whose value changed since they were
    last encoded: at the scrape before, or by :meth:`refresh`. What it gives
    is what ``prometheus_client`` gives for the whole registry, byte for
    byte.

    The lines are kept for the targets of the latest scrape or refresh:
    about 12 MB for 10,000 targets, once for the text format 0.0.4 and
    OpenMetrics (which write the daemon's samples alike), and once more for
    each other way of writing them among the latest :data:`FORMATS` formats
    asked for (OpenMetrics with ``escaping=dots`` or ``values``).

    :param watchlist: the targets.
    :param portserver: the portserver, or ``None``.
    """

    def __init__(
        self, watchlist: Watchlist, portserver: PortServerFigures | None = None
    ) -> None:
        self._watchlist = watchlist
        self._portserver = portserver
        self._formats: dict[Any, _Format] = {}
        #: Each way of writing samples in use, by its specimen.
        self._writings: dict[bytes, _Lines] = {}
        #: The text format's, which :meth:`refresh` keeps current.
        self._current = self._writing(generate_latest)

    def metrics(self, accept: str | None) -> tuple[Iterator[bytes], str]:
        """
        The metrics in the format ``accept`` (an HTTP ``Accept`` header, or
        ``None``) asks for, as chosen by
        ``prometheus_client.exposition.choose_encoder``: the text format
        0.0.4 by default, OpenMetrics when asked for. A header it can't read
        (a ``version`` that is not numbers) gets the default, as no header
        does.

        The monitors and the portserver are read at once, when this is
        called (on the reactor thread: see :func:`~txportend._metrics.read`
        and :func:`~txportend._metrics.read_portserver`). The body is
        encoded as the returned iterator is consumed, :data:`SLICE` targets
        at a time, so that a caller can spread the work for thousands of
        targets over several turns of the reactor.

        :return: the body's parts, and its ``Content-Type``.
        """
        readings = read(self._watchlist.targets())
        daemon = _daemon_families(self._watchlist.reload_successful)
        reading = read_portserver(self._portserver)
        if reading is not None:
            daemon += _portserver_families(reading)
        try:
            encode, content_type = choose_encoder(accept or "")
        except (TypeError, ValueError):  # prometheus_client: a bad version=
            encode, content_type = choose_encoder("")
        form = self._format(encode)

        def parts() -> Iterator[bytes]:
            for index in range(len(_SERIES)):
                for start in range(0, len(readings) or 1, SLICE):
                    lines = form.lines.lines(index, readings[start : start + SLICE])
                    yield form.heads[index] + lines if start == 0 else lines
            form.lines.forget(r.target for r in readings)
            yield encoded(encode, daemon)  # OpenMetrics' "# EOF" ends it

        return parts(), content_type

    def targets(self) -> Sequence[Target]:
        """The watchlist's targets now."""
        return self._watchlist.targets()

    def refresh(self, targets: Sequence[Target]) -> None:
        """Read ``targets`` now and bring their sample lines in the text
        format 0.0.4 up to date: OpenMetrics' too, while it writes samples
        alike (it does with the ``prometheus_client`` versions tested)."""
        self._current.update(read(targets))

    def forget(self, targets: Sequence[Target]) -> None:
        """Let go of the lines of targets not among ``targets``."""
        self._current.forget(t.monitor.target for t in targets)

    def _writing(self, encode: Encoder) -> _Lines:
        """The kept lines of the formats that write samples as ``encode``
        does (made for ``encode`` if there are none)."""
        specimen = _specimen(encode)
        lines = self._writings.get(specimen)
        if lines is None:
            lines = self._writings[specimen] = _Lines(encode)
        return lines

    def _format(self, encode: Encoder) -> _Format:
        """The :class:`_Format` of ``encode``, now the most recently used."""
        key: Any = encode
        if isinstance(encode, partial):
            key = (encode.func, encode.args, tuple(sorted(encode.keywords.items())))
        form = self._formats.pop(key, None) or _Format(encode, self._writing(encode))
        self._formats[key] = form
        while len(self._formats) > FORMATS:
            del self._formats[next(iter(self._formats))]
        used = {id(f.lines) for f in self._formats.values()} | {id(self._current)}
        for specimen, lines in list(self._writings.items()):
            if id(lines) not in used:
                del self._writings[specimen]
        return form


#: Seconds :class:`Refresher` takes to go through every target once.
CYCLE = 10.0


class Refresher(Service):
    """
    Keeps an :class:`Exposition`'s lines current between scrapes: it goes
    through every target once each ``cycle`` seconds, :data:`SLICE` targets
    at a time at even intervals, and has the samples whose value changed
    encoded again. A scrape then encodes only the samples that changed in
    the last ``cycle`` seconds. The first time through makes every line: at
    once when the service starts before its reactor runs, as under
    ``twistd`` and ``twist`` (about 0.06 ms a target), so that no request
    is answered before the lines are made; on a running reactor, a slice
    every turn of the reactor.

    What it costs is about what scrapes every ``cycle`` seconds would: with
    10,000 targets probed every 10 s, about 3 % of a core.

    :param exposition: the exposition to keep current.
    :param reactor: the reactor whose ``callLater`` paces it.
    :param cycle: seconds to go through every target once.
    """

    def __init__(
        self, exposition: Exposition, reactor: IReactorTime, cycle: float = CYCLE
    ) -> None:
        self._exposition = exposition
        self._reactor = reactor
        self._cycle = cycle
        self._call: IDelayedCall | None = None
        self._targets: Sequence[Target] = ()
        self._at = 0
        #: Whether this is the first time through since the start, done a
        #: slice a turn of the reactor rather than spread over ``cycle``
        #: seconds.
        self._eager = True

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        self._targets, self._at, self._eager = (), 0, True
        if not getattr(self._reactor, "running", True):
            # twistd and twist start their services before their reactor
            # runs, and after their endpoints listen: nothing waits on the
            # reactor yet, and a request that comes meanwhile waits in the
            # kernel's queue. The first time through is done at once.
            targets = list(self._exposition.targets())
            try:
                for start in range(0, len(targets), SLICE):
                    self._exposition.refresh(targets[start : start + SLICE])
            except Exception:
                log.failure("Keeping /metrics current failed; each scrape does it")
                return
            self._targets, self._at, self._eager = targets, len(targets), False
        self._call = self._reactor.callLater(self._delay(), self._step)

    def _delay(self) -> float:
        """Seconds to the next step: none in the first time through, else
        ``cycle`` spread over the steps of a cycle."""
        if self._eager:
            return 0.0
        return self._cycle / max(1, math.ceil(len(self._targets) / SLICE))

    def stopService(self) -> Any:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        return super().stopService()  # type: ignore[no-untyped-call]

    def _step(self) -> None:
        self._call = None
        exposition = self._exposition
        try:
            if self._at >= len(self._targets):  # a new cycle
                self._targets, self._at = list(exposition.targets()), 0
                exposition.forget(self._targets)
            exposition.refresh(self._targets[self._at : self._at + SLICE])
        except Exception:
            log.failure("Keeping /metrics current failed; each scrape does it")
            return
        self._at += SLICE
        if self._at >= len(self._targets):
            self._eager = False
        self._call = self._reactor.callLater(self._delay(), self._step)


__all__ = ["CYCLE", "FORMATS", "SLICE", "Exposition", "Refresher"]
