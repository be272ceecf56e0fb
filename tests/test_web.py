"""
The daemon's web side (txportend._web): the page, /status, /metrics' HTTP
side, methods and paths, and the connection limits, on a memory reactor
through the Site's own HTTP channel; then its behaviour under abuse on real
loopback sockets.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import error
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

import txportend
from txportend import Monitor, State
from txportend._page import human_duration, human_latency
from txportend._web import make_site, stream

from .fakes import accept, memory_reactor, refuse, time_out

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20+00:00


@dataclass(eq=False)
class Target:
    """The daemon's Target, as the web side reads it."""

    monitor: Monitor
    expect: State = State.OCCUPIED

    @property
    def as_expected(self) -> bool:
        return self.monitor.state is self.expect


@dataclass
class Watchlist:
    """The daemon's Watchlist, as the web side reads it."""

    items: list[Target] = field(default_factory=list)
    reload_successful: bool = True

    def targets(self) -> Sequence[Target]:
        return self.items


def watched(reactor: Any, port: int, expect: State = State.OCCUPIED, **kw: Any) -> Any:
    """A started monitor of 127.0.0.1:``port`` (its first probe in flight)."""
    monitor = Monitor(kw.pop("host", "127.0.0.1"), port, reactor=reactor, **kw)
    monitor.startService()
    return Target(monitor, expect)


@dataclass
class PortServer:
    """A portserver's figures, as the web side reads them; ``reads`` counts
    the reads of ``ports_allocated`` (which asks the system, in the real
    one)."""

    address: str = "@unittest-portserver"
    ports_managed: int = 10000
    allocated: int = 3
    requests_served: int = 7
    requests_denied: int = 1
    bad_requests: int = 2
    reads: int = 0

    @property
    def ports_allocated(self) -> int:
        self.reads += 1
        return self.allocated


def two_targets() -> tuple[Any, Watchlist]:
    """127.0.0.1:8080 accepted (as expected), 127.0.0.1:8081 refused (not)."""
    reactor = memory_reactor()
    reactor.advance(T0)
    up = watched(reactor, 8080)
    reactor.advance(0.0012)
    accept(reactor)
    down = watched(reactor, 8081)
    reactor.advance(0.5)
    refuse(reactor)
    return reactor, Watchlist([up, down])


@dataclass
class Response:
    code: int
    headers: dict[str, list[str]]
    body: bytes
    closed: bool

    def header(self, name: str) -> str:
        (value,) = self.headers[name.lower()]
        return value


def connect(site: Any) -> tuple[Any, StringTransport]:
    """A connection to ``site``, on a StringTransport."""
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def parse(raw: bytes, closed: bool) -> Response:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.lower(), []).append(value.strip())
    return Response(int(status.split()[1]), headers, body, closed)


def request(
    site: Any,
    reactor: Any,
    path: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
) -> Response:
    """One HTTP/1.0 request through the site's own channel (so the body is
    not chunked), its streamed parts run to the end."""
    protocol, transport = connect(site)
    lines = [f"{method} {path} HTTP/1.0", "Host: localhost"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    protocol.dataReceived(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    for _ in range(100_000):
        if transport.disconnecting:
            break
        reactor.advance(0)
    assert transport.disconnecting, "the response never ended"
    protocol.connectionLost(Failure(error.ConnectionDone()))
    return parse(transport.value(), transport.disconnecting)


def get_json(site: Any, reactor: Any) -> Any:
    response = request(site, reactor, "/status")
    assert response.code == 200
    assert response.header("content-type") == "application/json"
    return json.loads(response.body)


# /status


def test_status_json_shape() -> None:
    reactor, watchlist = two_targets()
    assert get_json(make_site(watchlist, reactor=reactor), reactor) == {
        "version": txportend.__version__,
        "targets": [
            {
                "target": "127.0.0.1:8080",
                "state": "occupied",
                "expect": "occupied",
                "as_expected": True,
                "since": "2023-11-14T22:13:20.001+00:00",
                "changes": 1,
                "last_probe": {
                    "at": "2023-11-14T22:13:20.001+00:00",
                    "duration_seconds": 0.0012,
                    "outcomes": {"127.0.0.1": "accepted"},
                },
            },
            {
                "target": "127.0.0.1:8081",
                "state": "free",
                "expect": "occupied",
                "as_expected": False,
                "since": "2023-11-14T22:13:20.501+00:00",
                "changes": 1,
                "last_probe": {
                    "at": "2023-11-14T22:13:20.501+00:00",
                    "duration_seconds": 0.5,
                    "outcomes": {"127.0.0.1": "refused"},
                },
            },
        ],
        "portserver": None,
    }


def test_status_shows_the_portservers_figures_read_when_asked() -> None:
    reactor, watchlist = two_targets()
    portserver = PortServer()
    site = make_site(watchlist, reactor=reactor, portserver=portserver)
    assert portserver.reads == 0  # read on each request, not before
    first = get_json(site, reactor)
    assert first["portserver"] == {
        "address": "@unittest-portserver",
        "ports_managed": 10000,
        "ports_allocated": 3,
        "requests_served": 7,
        "requests_denied": 1,
        "bad_requests": 2,
    }
    assert len(first["targets"]) == 2
    portserver.requests_served, portserver.allocated = 8, 4
    second = get_json(site, reactor)["portserver"]
    assert (second["requests_served"], second["ports_allocated"]) == (8, 4)
    assert portserver.reads == 2


def test_status_before_the_first_probe_and_before_the_start() -> None:
    reactor = memory_reactor()
    reactor.advance(T0)
    started = watched(reactor, 8080)
    not_started = Target(Monitor("127.0.0.1", 8081, reactor=reactor), State.FREE)
    site = make_site(Watchlist([started, not_started]), reactor=reactor)
    first, second = get_json(site, reactor)["targets"]
    assert (first["state"], first["since"], first["last_probe"]) == (
        "unknown",
        "2023-11-14T22:13:20.000+00:00",
        None,
    )
    assert (first["as_expected"], first["changes"]) == (False, 0)
    assert (second["since"], second["expect"], second["as_expected"]) == (
        None,
        "free",
        False,
    )


def test_status_of_a_probe_that_could_not_be_made() -> None:
    """The name did not resolve: no outcomes, and an error saying why."""
    reactor = memory_reactor({})
    reactor.advance(T0)
    target = watched(reactor, 5432, host="db.invalid")
    site = make_site(Watchlist([target]), reactor=reactor)
    (status,) = get_json(site, reactor)["targets"]
    assert status["state"] == "unknown"
    probe = status["last_probe"]
    assert probe["outcomes"] == {}
    assert isinstance(probe["error"], str) and probe["error"]
    assert set(probe) == {"at", "duration_seconds", "outcomes", "error"}


def test_status_outcomes_use_the_metric_labels() -> None:
    """A timed-out address reads ``timed_out`` (the Outcome's name), as in
    portend_probes_total, not the Outcome's value ``"timed out"``."""
    reactor = memory_reactor()
    target = watched(reactor, 8080, expect=State.FREE)
    time_out(reactor)
    site = make_site(Watchlist([target]), reactor=reactor)
    (status,) = get_json(site, reactor)["targets"]
    assert status["last_probe"]["outcomes"] == {"127.0.0.1": "timed_out"}
    assert (status["state"], status["as_expected"]) == ("occupied", False)


# Methods, paths, headers


@pytest.mark.parametrize("path", ["/", "/status", "/metrics"])
def test_head_works_where_get_does(path: str) -> None:
    reactor, watchlist = two_targets()
    site = make_site(watchlist, reactor=reactor)
    got = request(site, reactor, path)
    head = request(site, reactor, path, method="HEAD")
    assert (got.code, head.code) == (200, 200)
    assert got.body and head.body == b""
    assert head.header("content-type") == got.header("content-type")
    if "content-length" in head.headers:
        assert int(head.header("content-length")) == len(got.body)


@pytest.mark.parametrize(
    "path", ["/nope", "/status/", "/status/x", "/metrics/", "//", "/index.html"]
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_any_other_path_is_404(path: str, method: str) -> None:
    """Plain text, with the headers every other answer has."""
    reactor, watchlist = two_targets()
    response = request(make_site(watchlist, reactor=reactor), reactor, path, method)
    assert response.code == 404
    assert response.header("cache-control") == "no-store"
    assert response.header("content-type") == "text/plain; charset=utf-8"
    if method == "HEAD":
        assert response.body == b""
    else:
        assert b"/status" in response.body


@pytest.mark.parametrize("path", ["/", "/status", "/metrics"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_are_405_with_allow(path: str, method: str) -> None:
    reactor, watchlist = two_targets()
    response = request(make_site(watchlist, reactor=reactor), reactor, path, method)
    assert response.code == 405
    assert response.header("allow") == "GET, HEAD"


def test_responses_are_not_cached_and_the_page_runs_nothing() -> None:
    reactor, watchlist = two_targets()
    site = make_site(watchlist, reactor=reactor)
    for path in ("/", "/status", "/metrics"):
        response = request(site, reactor, path)
        assert response.header("cache-control") == "no-store"
        assert response.header("x-content-type-options") == "nosniff"
    policy = request(site, reactor, "/").header("content-security-policy")
    assert "default-src 'none'" in policy and "script-src" not in policy


def test_metrics_content_negotiation() -> None:
    reactor, watchlist = two_targets()
    site = make_site(watchlist, reactor=reactor)
    plain = request(site, reactor, "/metrics")
    assert plain.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    assert b'portend_up{target="127.0.0.1:8080"} 1.0' in plain.body
    scraper = "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
    open_metrics = request(site, reactor, "/metrics", headers={"Accept": scraper})
    assert open_metrics.header("content-type").startswith(
        "application/openmetrics-text; version=1.0.0"
    )
    assert open_metrics.body.endswith(b"# EOF\n")


# The page


def page(site: Any, reactor: Any) -> str:
    response = request(site, reactor, "/")
    assert response.code == 200
    assert response.header("content-type") == "text/html; charset=utf-8"
    return response.body.decode("utf-8")


def rows(html: str) -> list[str]:
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [row for row in body.split("</tr>") if row]


def test_page_one_row_per_target_in_order() -> None:
    reactor, watchlist = two_targets()
    reactor.advance(3725)
    html = page(make_site(watchlist, reactor=reactor), reactor)
    assert html.startswith('<!DOCTYPE html>\n<html lang="en">')
    up, down = rows(html)
    for cell in (
        "127.0.0.1:8080",
        "as expected",
        "occupied",
        "1 h 2 min",
        "accepted, 1.20 ms",
    ):
        assert cell in up
    assert "127.0.0.1:8081" in down and ">free<" in down and "refused" in down


def test_page_marks_targets_not_as_expected_by_colour_and_text() -> None:
    reactor, watchlist = two_targets()
    html = page(make_site(watchlist, reactor=reactor), reactor)
    up, down = rows(html)
    assert up.startswith('<tr class="ok">') and "NOT as expected" not in up
    assert down.startswith('<tr class="bad">') and "NOT as expected" in down
    assert "tr.bad { background:" in html  # the colour
    assert "1 of 2 not as expected: 127.0.0.1:8081" in html
    assert "<title>portend: 1 of 2 not as expected</title>" in html


def test_page_all_as_expected() -> None:
    reactor, watchlist = two_targets()
    watchlist.items[1].expect = State.FREE
    html = page(make_site(watchlist, reactor=reactor), reactor)
    assert "All 2 as expected" in html and 'class="bad"' not in html


def test_page_refreshes_itself() -> None:
    reactor, watchlist = two_targets()
    html = page(make_site(watchlist, reactor=reactor), reactor)
    assert '<meta http-equiv="refresh" content="5" />' in html
    assert 'name="viewport"' in html


def test_page_with_no_targets_says_so() -> None:
    reactor = memory_reactor()
    html = page(make_site(Watchlist(), reactor=reactor), reactor)
    assert "No targets are watched." in html and "<table" not in html


def test_page_shows_the_portservers_figures_after_the_targets() -> None:
    reactor, watchlist = two_targets()
    portserver = PortServer(address="@<b>&")
    html = page(make_site(watchlist, reactor=reactor, portserver=portserver), reactor)
    assert len(rows(html)) == 2
    section = html.split("</table>", 1)[1]
    assert '<h2 id="portserver">Portserver</h2>' in section
    figures = [
        ("Address", "@&lt;b&gt;&amp;"),
        ("Ports managed", "10000"),
        ("Allocated now", "3"),
        ("Requests served", "7"),
        ("Denied (no port left)", "1"),
        ("Bad requests", "2"),
    ]
    for label, value in figures:
        assert f"<dt>{label}</dt><dd" in section
        assert f">{value}</dd>" in section
    assert portserver.reads == 1


def test_page_without_a_portserver_has_no_section() -> None:
    reactor, watchlist = two_targets()
    html = page(make_site(watchlist, reactor=reactor), reactor)
    assert "Portserver" not in html and "<dl" not in html


def test_page_of_a_daemon_that_only_hands_out_ports() -> None:
    reactor = memory_reactor()
    site = make_site(Watchlist(), reactor=reactor, portserver=PortServer())
    html = page(site, reactor)
    assert "No targets are watched." not in html and "<table" not in html
    assert "<title>portend: portserver</title>" in html
    assert "<dt>Requests served</dt><dd>7</dd>" in html


def test_page_escapes_a_hostile_target_name() -> None:
    reactor, watchlist = two_targets()
    hostile = '<script>alert("x")</script>&<!--rows-->'
    watchlist.items[1].monitor.target = hostile
    html = page(make_site(watchlist, reactor=reactor), reactor)
    assert "<script>" not in html and "<!--rows-->" not in html
    assert '&lt;script&gt;alert("x")&lt;/script&gt;&amp;&lt;!--rows--&gt;' in html
    assert len(rows(html)) == 2


def test_page_before_the_first_probe_and_after_a_failed_one() -> None:
    reactor = memory_reactor({})
    waiting = watched(reactor, 8080)
    lost = watched(reactor, 5432, host="db.invalid")
    html = page(make_site(Watchlist([waiting, lost]), reactor=reactor), reactor)
    first, second = rows(html)
    assert "none yet" in first and ">unknown<" in first
    assert "unresolved, " in second


def test_page_many_targets_in_several_parts() -> None:
    """More rows than one part holds: every row, once, in order."""
    reactor = memory_reactor()
    targets = [watched(reactor, 1000 + n) for n in range(250)]
    html = page(make_site(Watchlist(targets), reactor=reactor), reactor)
    found = rows(html)
    assert len(found) == 250
    assert all(f"127.0.0.1:{1000 + n}<" in row for n, row in enumerate(found))


def test_human_times() -> None:
    assert [human_duration(s) for s in (0, 42.9, 60, 185, 3600, 7260, 90000)] == [
        "0 s",
        "42 s",
        "1 min",
        "3 min 5 s",
        "1 h",
        "2 h 1 min",
        "1 d 1 h",
    ]
    assert human_duration(-3) == "0 s"
    assert [human_latency(s) for s in (0.00042, 0.012, 0.5, 1.5)] == [
        "0.42 ms",
        "12 ms",
        "500 ms",
        "1.5 s",
    ]


# Streaming, and the client that leaves


def test_a_client_that_leaves_stops_the_work() -> None:
    """The parts are written a few per turn of the reactor; once the client
    has gone, no more are made."""
    reactor = memory_reactor()
    made = 0

    def parts() -> Iterator[bytes]:
        nonlocal made
        for _ in range(1_000_000):
            made += 1
            yield b"x"

    request = DummyRequest([b""])
    assert stream(request, parts(), reactor) == NOT_DONE_YET
    assert made < 1_000_000 and reactor.getDelayedCalls()  # more to come
    request.processingFailed(Failure(error.ConnectionLost()))  # the client left
    reactor.advance(0)
    assert made < 1_000_000 and not reactor.getDelayedCalls()
    assert not request.finished


def test_the_parts_are_written_in_order_then_the_request_finished() -> None:
    reactor = memory_reactor()
    request = DummyRequest([b""])
    stream(request, iter([b"a", b"b", b"c"]), reactor)
    for _ in range(10):
        reactor.advance(0)
    assert (request.written, request.finished) == ([b"a", b"b", b"c"], 1)


# Connection limits


def test_an_idle_connection_is_closed_after_the_idle_timeout() -> None:
    reactor = memory_reactor()
    site = make_site(Watchlist(), reactor=reactor, idle_timeout=7)
    _, transport = connect(site)
    reactor.advance(6.9)
    assert not transport.disconnecting
    reactor.advance(0.1)
    assert transport.disconnecting


def test_requests_and_idle_connections_are_not_logged() -> None:
    """The daemon's log has its changes, not a line per request (an access
    log: one per scrape) or per kept-alive connection closed when idle."""
    reactor = memory_reactor()
    site = make_site(Watchlist(), reactor=reactor, idle_timeout=7)
    site.doStart()
    try:
        with capturedLogs() as events:
            codes = [request(site, reactor, p).code for p in ("/", "/metrics", "/x")]
            _, transport = connect(site)
            reactor.advance(7)
            assert transport.disconnecting
    finally:
        site.doStop()
    assert codes == [200, 200, 404]
    assert [formatEvent(e) for e in events] == []


def test_connections_past_the_limit_are_refused_at_once() -> None:
    reactor = memory_reactor()
    site = make_site(Watchlist(), reactor=reactor, max_connections=2)
    first, _ = connect(site)
    connect(site)
    assert site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001)) is None
    first.connectionLost(Failure(error.ConnectionDone()))
    assert site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40002)) is not None


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n", b"431"),
        (b"GET / HTTP/1.1\r\n" + b"X-Big: %s\r\n" % (b"a" * 9000) * 2, b"400"),
        (
            b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % n for n in range(600)),
            b"400",
        ),
    ],
    ids=["request line", "header", "headers' size", "headers' number"],
)
def test_oversized_requests_get_an_error_status_and_are_closed(
    raw: bytes, status: bytes
) -> None:
    reactor, watchlist = two_targets()
    protocol, transport = connect(make_site(watchlist, reactor=reactor))
    protocol.dataReceived(raw)
    assert transport.value().startswith(b"HTTP/1.1 %s " % status)
    assert transport.disconnecting


def test_a_long_line_in_a_second_request_is_told_apart() -> None:
    """On a kept-alive connection, the second request's line is a request
    line again (414), not a header (431)."""
    reactor, watchlist = two_targets()
    protocol, transport = connect(make_site(watchlist, reactor=reactor))
    protocol.dataReceived(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 ")
    transport.clear()
    protocol.dataReceived(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 414 ")


# Real loopback sockets


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _Fetch(Protocol):
    """Sends one request, keeps the answer."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = error.ConnectionDone) -> None:  # type: ignore[assignment]
        self.done.callback(self.received)


def fetch(reactor: Any, port: int, raw: bytes) -> Deferred[bytes]:
    """Connect to 127.0.0.1:port, send ``raw``, get all it answers."""
    protocol = _Fetch(raw)
    factory = ClientFactory.forProtocol(lambda: protocol)
    factory.noisy = False

    def failed(connector: Any, reason: Failure) -> None:
        protocol.done.callback(b"")

    factory.clientConnectionFailed = failed  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, factory, timeout=30)
    return protocol.done


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
@pytest_twisted.ensureDeferred
async def test_1000_concurrent_requests_and_idle_clients_on_loopback(
    reactor: Any,
) -> None:
    """
    1,000 requests at once: each gets a whole 200, or (past the connection
    limit) is closed without a byte; clients that send nothing are closed at
    the idle timeout; the fds come back; and a monitor watching a port on
    the same reactor meanwhile never fails to make a probe.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    watched_port = listener.getsockname()[1]
    monitor = Monitor("127.0.0.1", watched_port, interval=0.01, reactor=reactor)
    watchlist = Watchlist([Target(monitor)])
    site = make_site(watchlist, reactor=reactor, idle_timeout=0.5)
    busiest = 0
    register = site.registerProtocol

    def counting(protocol: Any) -> None:
        nonlocal busiest
        register(protocol)
        busiest = max(busiest, site.open_connections)

    site.registerProtocol = counting  # type: ignore[method-assign]
    port = reactor.listenTCP(0, site, interface="127.0.0.1", backlog=1024)
    before = open_fds()
    monitor.startService()
    try:
        idle = [fetch(reactor, port.getHost().port, b"") for _ in range(50)]
        status = b"GET /status HTTP/1.0\r\n\r\n"
        answers = await DeferredList(
            [fetch(reactor, port.getHost().port, status) for _ in range(1000)]
        )
        idle_answers = await DeferredList(idle)
    finally:
        monitor.stopService()
        await port.stopListening()
        listener.close()
    bodies = [body for _, body in answers]
    served = [b for b in bodies if b]
    assert all(b.startswith(b"HTTP/1.0 200 OK\r\n") for b in served)
    assert all(json.loads(b.partition(b"\r\n\r\n")[2])["targets"] for b in served)
    assert len(served) >= 256
    assert busiest <= 256
    assert [body for _, body in idle_answers] == [b""] * 50  # closed, nothing sent
    assert monitor.probes["error"] == 0 and monitor.probes["accepted"] > 0
    for _ in range(200):  # the last connections' fds close on their turn
        if open_fds() <= before:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert open_fds() <= before
    assert site.open_connections == 0
