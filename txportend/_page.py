"""
The daemon's status page (``/``), for people: a summary, one row per target,
and the portserver's figures when one runs; built with
:mod:`twisted.web.template`, which escapes every value.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence

from twisted.python.failure import Failure
from twisted.web.template import (
    Comment,
    Element,
    Flattenable,
    Tag,
    TagLoader,
    flattenString,
    renderer,
    tags,
)

from ._metrics import PortServerReading, Target, accepting
from ._monitor import LastProbe, outcome_label
from ._version import __version__

#: Seconds between the page's reloads.
REFRESH = 5
#: Rows of the page flattened in one go.
ROWS_PER_PART = 100
# Where the rows go: a comment no value can forge (values are escaped).
_ROWS = Comment("rows")


def utc_iso(seconds: float | None) -> str | None:
    """Unix time as UTC ISO-8601 with milliseconds
    (``2024-05-01T12:00:00.250+00:00``), or ``None``."""
    if seconds is None:
        return None
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds")


def probe_error(last: LastProbe) -> str:
    """Why a probe could not be made, in one line."""
    error = last.error
    assert error is not None
    return str(error) or type(error).__name__


def _flatten(element: Flattenable) -> bytes:
    """The page's bytes, now: it renders without waiting for anything."""
    result: list[bytes | Failure] = []
    flattenString(None, element).addBoth(result.append)
    (body,) = result
    if isinstance(body, Failure):
        body.raiseException()
    assert isinstance(body, bytes)
    return body


def human_duration(seconds: float) -> str:
    """``seconds`` as a person reads it: ``"42 s"``, ``"3 min 5 s"``,
    ``"2 h 7 min"``, ``"3 d 4 h"``."""
    s = max(int(seconds), 0)
    for unit, size, sub, subsize in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "min", 60),
        ("min", 60, "s", 1),
    ):
        if s >= size:
            rest = (s % size) // subsize
            return f"{s // size} {unit}" + (f" {rest} {sub}" if rest else "")
    return f"{s} s"


def human_latency(seconds: float) -> str:
    """A probe's duration: ``"0.42 ms"``, ``"12 ms"``, ``"1.5 s"``."""
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


_STYLE = """
:root { color-scheme: light; --bad: #b00020; --bad-bg: #fde7ea; --ok: #1b5e20; }
body { font: 16px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 1rem;
  max-width: 72rem; color: #1a1a1a; background: #fff; }
h1 { font-size: 1.4rem; margin: 0 0 .25rem; }
.meta { color: #555; font-size: .85rem; margin: 0 0 1rem; }
.summary { font-weight: 600; padding: .5rem .75rem; border-radius: .3rem;
  margin: 0 0 1rem; }
.summary.ok { background: #e8f5e9; color: var(--ok); }
.summary.bad { background: var(--bad-bg); color: var(--bad);
  border-left: .4rem solid var(--bad); }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .45rem .6rem; border-bottom: 1px solid #ddd;
  vertical-align: top; }
th { font-size: .8rem; text-transform: uppercase; letter-spacing: .04em;
  color: #555; }
td.num { font-variant-numeric: tabular-nums; }
th.num, td.num { text-align: right; }
.target { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
.check, .short { white-space: nowrap; }
.check { font-weight: 600; }
tr.ok .check { color: var(--ok); }
tr.bad { background: var(--bad-bg); }
tr.bad td:first-child { box-shadow: inset .4rem 0 var(--bad); }
tr.bad .check { color: var(--bad); }
.state { font-weight: 600; }
.quiet { color: #666; }
h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
dl.figures { display: grid; grid-template-columns: max-content auto;
  gap: .3rem 1.5rem; margin: 0; }
dl.figures dt { color: #555; }
dl.figures dd { margin: 0; font-variant-numeric: tabular-nums; }
.empty { padding: 2rem 1rem; text-align: center; color: #444;
  border: 1px dashed #bbb; border-radius: .3rem; }
@media (max-width: 40rem) {
  body { padding: .75rem; }
  thead { display: none; }
  table, tbody, tr, td { display: block; width: auto; }
  tr { border: 1px solid #ddd; border-radius: .3rem; margin: 0 0 .75rem;
    padding: .25rem 0; }
  tr.bad { border-color: var(--bad); }
  td { border: 0; padding: .2rem .75rem; display: flex; gap: .75rem; }
  td.num { text-align: left; }
  td::before { content: attr(data-label); flex: 0 0 7.5rem; color: #555;
    font-size: .85rem; font-weight: normal; font-family: system-ui, sans-serif; }
  tr.bad td:first-child { box-shadow: none; }
}
"""

#: The table's columns: heading, and class of its cells.
_COLUMNS = (
    ("Target", "target"),
    ("Check", "check"),
    ("State", "state"),
    ("Expected", None),
    ("For", "short"),
    ("Last probe", "short"),
    ("Changes", "num"),
)


def _class(name: str | None) -> dict[str, str]:
    return {} if name is None else {"class": name}


#: The portserver's figures on the page: label, and its field in a
#: :class:`~txportend._metrics.PortServerReading`.
_FIGURES = (
    ("Ports managed", "ports_managed"),
    ("Allocated now", "ports_allocated"),
    ("Requests served", "requests_served"),
    ("Denied (no port left)", "requests_denied"),
    ("Bad requests", "bad_requests"),
)


class Page(Element):
    """
    The status page: a summary, one row per target, then the portserver's
    figures if one runs.

    :param targets: the targets, in configuration order.
    :param now: the time the page shows (Unix time).
    :param portserver: the portserver's figures, or ``None``.
    """

    loader = TagLoader(
        tags.html(lang="en")(
            tags.head(
                tags.meta(charset="utf-8"),
                tags.meta(
                    name="viewport", content="width=device-width, initial-scale=1"
                ),
                tags.meta(**{"http-equiv": "refresh", "content": str(REFRESH)}),
                tags.title(render="title"),
                tags.style(_STYLE),
            ),
            tags.body(
                tags.h1("portend"),
                tags.p(class_="meta", render="meta"),
                tags.div(render="targets"),
                tags.div(render="portserver"),
            ),
        )
    )

    def __init__(
        self,
        targets: Sequence[Target],
        now: float,
        portserver: PortServerReading | None = None,
    ) -> None:
        super().__init__()
        self._targets = list(targets)
        self._now = now
        self._portserver = portserver
        self._bad = [t for t in self._targets if not t.as_expected]

    def _summary(self) -> str:
        total = len(self._targets)
        if not total:
            return "no targets" if self._portserver is None else "portserver"
        if not self._bad:
            return f"all {total} as expected"
        return f"{len(self._bad)} of {total} not as expected"

    @renderer
    def title(self, request: object, tag: Tag) -> Tag:
        return tag(f"portend: {self._summary()}")

    @renderer
    def meta(self, request: object, tag: Tag) -> Tag:
        return tag(
            f"At {utc_iso(self._now)} (UTC) \N{MIDDLE DOT} refreshes every "
            f"{REFRESH} s \N{MIDDLE DOT} txportend {__version__}"
        )

    @renderer
    def targets(self, request: object, tag: Tag) -> Tag | list[Tag]:
        if not self._targets:
            if self._portserver is not None:
                return []  # a daemon that only hands out ports
            return tags.p(class_="empty")(
                "No targets are watched. Give them with --watch or in the "
                "configuration file."
            )
        summary = tags.p(
            self._summary().capitalize(),
            class_="summary " + ("bad" if self._bad else "ok"),
            role="status",
        )
        if self._bad:
            summary(": ", ", ".join(t.monitor.target for t in self._bad[:10]))
            if len(self._bad) > 10:
                summary(", \N{HORIZONTAL ELLIPSIS}")
        head = tags.tr(*(tags.th(name, **_class(cls)) for name, cls in _COLUMNS))
        return [summary, tags.table(tags.thead(head), tags.tbody(_ROWS))]

    @renderer
    def portserver(self, request: object, tag: Tag) -> Tag | list[Tag]:
        reading = self._portserver
        if reading is None:
            return []
        figures: list[Tag] = [
            tags.dt("Address"),
            tags.dd(reading.address, class_="target"),
        ]
        for label, name in _FIGURES:
            figures += [tags.dt(label), tags.dd(str(getattr(reading, name)))]
        return tags.section(**{"aria-labelledby": "portserver"})(
            tags.h2("Portserver", id="portserver"),
            tags.dl(*figures, class_="figures"),
        )

    def parts(self) -> Iterator[bytes]:
        """The page, in parts: all but the rows, then the rows,
        :data:`ROWS_PER_PART` at a time."""
        whole = b"<!DOCTYPE html>\n" + _flatten(self)
        head, _, tail = whole.partition(_flatten(_ROWS))
        yield head
        for start in range(0, len(self._targets) if tail else 0, ROWS_PER_PART):
            batch = self._targets[start : start + ROWS_PER_PART]
            yield _flatten(tags.transparent(*(self._row(t) for t in batch)))
        yield tail

    def _row(self, target: Target) -> Tag:
        monitor = target.monitor
        ok = target.as_expected
        since = monitor.since
        held = (
            tags.span("\N{EM DASH}", class_="quiet")
            if since is None
            else tags.span(
                human_duration(self._now - since), title=f"since {utc_iso(since)}"
            )
        )
        cells: tuple[Flattenable, ...] = (
            monitor.target,
            "\N{CHECK MARK} as expected"
            if ok
            else "\N{HEAVY MULTIPLICATION X} NOT as expected",
            monitor.state.value,
            target.expect.value,
            held,
            self._last_probe(target),
            str(monitor.changes),
        )
        return tags.tr(class_="ok" if ok else "bad")(
            *(
                tags.td(cell, **{"data-label": name}, **_class(cls))
                for cell, (name, cls) in zip(cells, _COLUMNS, strict=True)
            )
        )

    def _last_probe(self, target: Target) -> Tag:
        last = target.monitor.last_probe
        if last is None:
            return tags.span("none yet", class_="quiet")
        outcome = last.result if last.result is not None else last.error
        assert outcome is not None
        label = outcome_label(outcome).replace("_", " ")
        text = f"{label}, {human_latency(last.duration)}"
        detail = f"at {utc_iso(last.at)}"
        if last.result is None:
            detail += f": {probe_error(last)}"
        elif not accepting(target.monitor) and last.result.queue_full():
            text += " (accept queue full)"
        return tags.span(text, title=detail)
