"""
The daemon's web side, on :mod:`twisted.web`: a status page for people
(``/``, :mod:`txportend._page`), JSON for programs (``/status``) and
Prometheus metrics (``/metrics``), all read from the watchlist's monitors and
the portserver's figures on the reactor thread. Nothing here adds a target or
connects anywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Iterator
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol as _Protocol
from twisted.internet.task import Cooperator, TaskFinished, TaskStopped
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    globalLogPublisher,
)
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import provider

from ._exposition import Exposition
from ._metrics import (
    PortServerFigures,
    Target,
    Watchlist,
    read_portserver,
)
from ._page import Page, probe_error, utc_iso
from ._version import __version__

log = Logger()

#: Seconds a connection may stay idle (no request, or a request that stopped
#: arriving) before it is closed.
IDLE_TIMEOUT = 10.0
#: Connections open at once; past this, a new connection is closed at once,
#: so that the web side never takes the file descriptors the probes need.
MAX_CONNECTIONS = 256
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
    portserver: PortServerFigures | None = None,
    exposition: Exposition | None = None,
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
    :param portserver: the portserver whose figures to show, if any (read on
        every request).
    :param exposition: what ``/metrics`` serves: an
        :class:`~txportend._exposition.Exposition` of ``watchlist`` and
        ``portserver`` (a new one by default, which a
        :class:`~txportend._exposition.Refresher` does not keep current).
    :param reactor: the reactor whose ``seconds()`` the monitors use, and
        that times the idle connections out.
    :param idle_timeout: seconds a connection may stay idle before it is
        closed.
    :param max_connections: connections open at once; a connection past them
        is closed as soon as it is accepted.
    """
    site = _Site(
        _root(
            watchlist,
            reactor,
            portserver,
            exposition or Exposition(watchlist, portserver),
        ),
        timeout=idle_timeout,
        reactor=reactor,
        max_connections=max_connections,
    )
    site.displayTracebacks = False
    return site


@provider(ILogObserver)
def _warnings_and_worse(event: LogEvent) -> None:
    """Pass on to the global log the events of warning level and above."""
    if event["log_level"] >= LogLevel.warn:
        globalLogPublisher(event)


class _Channel(HTTPChannel):
    """
    twisted.web's HTTP/1.1 channel, answering a request line or a header line
    longer than its limit (16 KiB) with 414 or 431, where it would close the
    connection without a word; and not logging each idle connection it
    closes ("Timing out client"): Prometheus' and browsers' kept-alive
    connections go idle between their requests.
    """

    _log = Logger(observer=_warnings_and_worse)
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
    """A Site that keeps at most ``max_connections`` connections open, and
    logs no request."""

    protocol = _Channel  # type: ignore[assignment]  # HTTP/1.x: no HTTP/2
    noisy = False  # no "Starting factory" lines in the daemon's log

    def log(self, request: Any) -> None:
        """No access log: each scrape would add a line to the daemon's."""

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


def _root(
    watchlist: Watchlist,
    reactor: IReactorTime,
    portserver: PortServerFigures | None,
    exposition: Exposition,
) -> Resource:
    root = _Resource()  # type: ignore[no-untyped-call]
    root.putChild(b"", StatusPage(watchlist, reactor, portserver))
    root.putChild(b"status", StatusJSON(watchlist, reactor, portserver))
    root.putChild(b"metrics", Metrics(exposition, reactor))
    return root


class _Resource(Resource):
    """
    ``GET`` and ``HEAD`` (with the ``Content-Length`` a ``GET`` would have),
    405 for any other method, 404 for any path below.
    """

    #: Whether other methods get 405 (any method gets 404 on a path that
    #: is not there).
    only_get_and_head = True

    def getChild(self, path: bytes, request: _Request) -> IResource:
        return _NotFound()  # type: ignore[no-untyped-call]

    def render(self, request: _Request) -> bytes | int:
        for name, value in _SECURITY_HEADERS.items():
            request.setHeader(name, value)
        if self.only_get_and_head and request.method not in (b"GET", b"HEAD"):
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
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"Not found: the paths are /, /status and /metrics.\n"


class _View(_Resource):
    """A resource that shows the watchlist (and the portserver's figures)."""

    def __init__(
        self,
        watchlist: Watchlist,
        reactor: IReactorTime,
        portserver: PortServerFigures | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._watchlist = watchlist
        self._reactor = reactor
        self._portserver = portserver


class _NotFound(_Resource):
    """Any other path: 404 (``_Resource.render_GET``), plain text, with the
    headers every answer has."""

    isLeaf = True
    only_get_and_head = False


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
            probe["error"] = probe_error(last)
    return {
        "target": monitor.target,
        "state": monitor.state.value,
        "expect": target.expect.value,
        "as_expected": target.as_expected,
        "since": utc_iso(monitor.since),
        "changes": monitor.changes,
        "last_probe": probe,
    }


class StatusJSON(_View):
    """``/status``: every target's state, and the portserver's figures (or
    ``null``), as JSON."""

    def render_GET(self, request: _Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        reading = read_portserver(self._portserver)
        status = {
            "version": __version__,
            "targets": [target_status(t) for t in self._watchlist.targets()],
            "portserver": None if reading is None else dataclasses.asdict(reading),
        }
        return json.dumps(status).encode("ascii") + b"\n"


class Metrics(_Resource):
    """``/metrics``: Prometheus exposition, as the ``Accept`` header asks.

    :param exposition: the metrics.
    :param reactor: the reactor that runs between the body's parts.
    """

    def __init__(self, exposition: Exposition, reactor: IReactorTime) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._exposition = exposition
        self._reactor = reactor

    def render_GET(self, request: _Request) -> int:
        accept = request.getHeader(b"accept")
        parts, content_type = self._exposition.metrics(
            None if accept is None else accept.decode("latin-1")
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


class StatusPage(_View):
    """``/``: the status page, for people."""

    def render_GET(self, request: _Request) -> int:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        )
        page = Page(
            self._watchlist.targets(),
            self._reactor.seconds(),
            read_portserver(self._portserver),
        )
        return stream(request, page.parts(), self._reactor)


__all__ = [
    "IDLE_TIMEOUT",
    "MAX_CONNECTIONS",
    "Metrics",
    "StatusJSON",
    "StatusPage",
    "make_site",
    "stream",
    "target_status",
]
