"""
The daemon's web side, on :mod:`twisted.web`: a status page for people
(``/``), JSON for programs (``/status``) and Prometheus metrics
(``/metrics``), all read from the watchlist's monitors on the reactor
thread. Nothing here adds a target or connects anywhere.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol as _Protocol
from twisted.internet.task import Cooperator, TaskFinished, TaskStopped
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web import pages
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
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

from ._metrics import Target, Watchlist, accepting, metrics
from ._monitor import LastProbe, outcome_label
from ._version import __version__

log = Logger()

#: Seconds a connection may stay idle (no request, or a request that stopped
#: arriving) before it is closed.
IDLE_TIMEOUT = 10.0
#: Connections open at once; past this, a new connection is closed at once,
#: so that the web side never takes the file descriptors the probes need.
MAX_CONNECTIONS = 256
#: Seconds between the page's reloads.
REFRESH = 5
#: Rows of the page flattened in one go.
ROWS_PER_PART = 100
# Where the rows go: a comment no value can forge (values are escaped).
_ROWS = Comment("rows")

_SECURITY_HEADERS = {
    b"cache-control": b"no-store",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
}


class _Request(Protocol):
    """What the resources use of a request (``twisted.web.server.Request``)."""

    method: bytes
    uri: bytes

    def getHeader(self, key: bytes) -> bytes | None: ...
    def setHeader(self, name: bytes, value: bytes) -> None: ...
    def setResponseCode(self, code: int) -> None: ...
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def notifyFinish(self) -> Deferred[None]: ...
    def loseConnection(self) -> None: ...


def make_site(
    watchlist: Watchlist,
    *,
    reactor: IReactorTime,
    idle_timeout: float = IDLE_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> Site:
    """
    The daemon's :class:`~twisted.web.server.Site`: ``GET`` (and ``HEAD``) of
    ``/``, ``/status`` and ``/metrics``; any other path is 404, any other
    method 405. Requests are bounded by twisted.web's limits: a request line
    longer than 16 KiB gets 414, a header line longer than that 431, and a
    request whose lines total more than 16 KiB, or with more than 500
    headers, 400; each then has its connection closed.

    :param watchlist: what to show (read on every request).
    :param reactor: the reactor whose ``seconds()`` the monitors use, and
        that times the idle connections out.
    :param idle_timeout: seconds a connection may stay idle before it is
        closed.
    :param max_connections: connections open at once; a connection past them
        is closed as soon as it is accepted.
    """
    site = _Site(
        _root(watchlist, reactor),
        timeout=idle_timeout,
        reactor=reactor,
        max_connections=max_connections,
    )
    site.displayTracebacks = False
    return site


class _Channel(HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel, answering a request line or a header line
    longer than its limit (16 KiB) with 414 or 431, where it would close the
    connection without a word.
    """

    _in_headers = False

    def lineReceived(self, line: bytes) -> None:
        self._in_headers = True
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        self._in_headers = False
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        status = (
            b"431 Request Header Fields Too Large"
            if self._in_headers
            else b"414 URI Too Long"
        )
        assert self.transport is not None
        self.transport.write(
            b"HTTP/1.1 %s\r\nConnection: close\r\nContent-Length: 0\r\n\r\n" % status
        )
        self.loseConnection()  # type: ignore[no-untyped-call]


class _Site(Site):
    """A Site that keeps at most ``max_connections`` connections open."""

    protocol = _Channel  # type: ignore[assignment]  # HTTP/1.x: no HTTP/2

    def __init__(self, resource: IResource, *, max_connections: int, **kw: Any) -> None:
        super().__init__(resource, **kw)  # type: ignore[no-untyped-call]
        self.max_connections = max_connections
        self.open_connections = 0

    def buildProtocol(self, addr: IAddress) -> _Protocol | None:  # type: ignore[override]
        if self.open_connections >= self.max_connections:
            return None  # the listening port closes the connection
        channel = super().buildProtocol(addr)  # type: ignore[no-untyped-call]
        if channel is None:
            return None
        return ProtocolWrapper(self, channel)  # type: ignore[arg-type]

    def registerProtocol(self, protocol: ProtocolWrapper) -> None:
        """Count a connection made (called by its ProtocolWrapper)."""
        self.open_connections += 1

    def unregisterProtocol(self, protocol: ProtocolWrapper) -> None:
        """Count a connection lost (called by its ProtocolWrapper)."""
        self.open_connections -= 1


def _root(watchlist: Watchlist, reactor: IReactorTime) -> Resource:
    root = _Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"", StatusPage(watchlist, reactor))
    root.putChild(b"status", StatusJSON(watchlist, reactor))
    root.putChild(b"metrics", Metrics(watchlist, reactor))
    return root


class _Resource(Resource):
    """
    ``GET`` and ``HEAD`` (with the ``Content-Length`` a ``GET`` would have),
    405 for any other method, 404 for any path below.
    """

    def getChild(self, path: bytes, request: _Request) -> IResource:
        return pages.notFound()

    def render(self, request: _Request) -> bytes | int:
        for name, value in _SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Method not allowed: GET or HEAD only.\n"
        body = self.render_GET(request)
        if request.method == b"HEAD" and isinstance(body, bytes):
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body

    def render_GET(self, request: _Request) -> bytes | int:
        return pages.notFound().render(request)  # type: ignore[no-any-return,no-untyped-call]


def utc_iso(seconds: float | None) -> str | None:
    """Unix time as UTC ISO-8601 with milliseconds
    (``2024-05-01T12:00:00.250+00:00``), or ``None``."""
    if seconds is None:
        return None
    when = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return when.isoformat(timespec="milliseconds")


def _probe_error(last: LastProbe) -> str:
    error = last.error
    assert error is not None
    return str(error) or type(error).__name__


def target_status(target: Target) -> dict[str, Any]:
    """One target as ``/status`` shows it."""
    monitor = target.monitor
    last = monitor.last_probe
    probe: dict[str, Any] | None = None
    if last is not None:
        outcomes = {} if last.result is None else last.result.outcomes
        probe = {
            "at": utc_iso(last.at),
            "duration_seconds": round(last.duration, 6),
            "outcomes": {a: o.name.lower() for a, o in outcomes.items()},
        }
        if last.result is None:
            probe["error"] = _probe_error(last)
    return {
        "target": monitor.target,
        "state": monitor.state.value,
        "expect": target.expect.value,
        "as_expected": target.as_expected,
        "since": utc_iso(monitor.since),
        "changes": monitor.changes,
        "last_probe": probe,
    }


class StatusJSON(_Resource):
    """``/status``: every target's state as JSON."""

    def __init__(self, watchlist: Watchlist, reactor: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._watchlist = watchlist

    def render_GET(self, request: _Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        status = {
            "version": __version__,
            "targets": [target_status(t) for t in self._watchlist.targets()],
        }
        return json.dumps(status).encode("ascii") + b"\n"


class Metrics(_Resource):
    """``/metrics``: Prometheus exposition, as the ``Accept`` header asks."""

    def __init__(self, watchlist: Watchlist, reactor: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._watchlist = watchlist
        self._reactor = reactor

    def render_GET(self, request: _Request) -> int:
        accept = request.getHeader(b"accept")
        parts, content_type = metrics(
            self._watchlist, None if accept is None else accept.decode("latin-1")
        )
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return stream(request, parts, self._reactor)


def stream(request: _Request, parts: Iterator[bytes], reactor: IReactorTime) -> int:
    """
    Write ``parts`` to ``request`` a few at a time, letting the reactor run
    between them (for at most about 10 ms at a stretch), then finish it. A
    client that goes away stops the work.

    :return: ``NOT_DONE_YET``, for ``render``.
    """
    cooperator = Cooperator(scheduler=lambda step: reactor.callLater(0, step))

    def write() -> Iterator[None]:
        for part in parts:
            request.write(part)
            yield None

    task = cooperator.cooperate(write())

    def failed(failure: Failure) -> None:
        if isinstance(failure.value, TaskStopped):
            return  # the client went away
        log.failure("Rendering {uri} failed", failure, uri=request.uri)
        request.loseConnection()

    def gone(failure: Failure) -> None:
        with contextlib.suppress(TaskFinished):  # unless it had ended
            task.stop()

    task.whenDone().addCallbacks(lambda _: request.finish(), failed)
    request.notifyFinish().addErrback(gone)
    return NOT_DONE_YET


class StatusPage(_Resource):
    """``/``: the status page, for people."""

    def __init__(self, watchlist: Watchlist, reactor: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._watchlist = watchlist
        self._reactor = reactor

    def render_GET(self, request: _Request) -> int:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )
        page = _Page(self._watchlist.targets(), self._reactor.seconds())
        return stream(request, page.parts(), self._reactor)


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


class _Page(Element):
    """The status page: a summary, then one row per target."""

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
            ),
        )
    )

    def __init__(self, targets: Sequence[Target], now: float) -> None:
        super().__init__()
        self._targets = list(targets)
        self._now = now
        self._bad = [t for t in self._targets if not t.as_expected]

    def _summary(self) -> str:
        total = len(self._targets)
        if not total:
            return "no targets"
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
            detail += f": {_probe_error(last)}"
        elif not accepting(target.monitor) and last.result.queue_full():
            text += " (accept queue full)"
        return tags.span(text, title=detail)
