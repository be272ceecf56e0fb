"""
The status page in a real headless browser (Debian's ``chromium``): what a
person sees, the table, the states and the page refreshing itself. Skipped
where chromium is not installed.
"""

from __future__ import annotations

import shutil
import struct
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from txportend import State
from txportend._web import make_site

from .fakes import accept, memory_reactor, refuse
from .test_web import Watchlist, watched

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium, or tox -e browser)",
)
#: A bound, should the browser hang: not a timing assertion.
BOUND = 90.0


class _Run(ProcessProtocol):
    def __init__(self) -> None:
        self.out = b""
        self.ended: Deferred[bytes] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(self.out)


class Chromium:
    """Headless chromium runs on the reactor, each with a profile of its own."""

    def __init__(self, reactor: Any, tmp_path: Path) -> None:
        self.reactor = reactor
        self.tmp_path = tmp_path
        self.runs = 0

    def start(self, *args: str) -> tuple[Any, _Run]:
        self.runs += 1
        assert CHROMIUM is not None
        argv = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={self.tmp_path / f'profile{self.runs}'}",
            *args,
        ]
        run = _Run()
        process = self.reactor.spawnProcess(run, CHROMIUM, argv, env=None)
        return process, run

    async def run(self, *args: str) -> bytes:
        process, run = self.start(*args)
        watchdog = self.reactor.callLater(BOUND, process.signalProcess, "KILL")
        try:
            return await run.ended
        finally:
            if watchdog.active():
                watchdog.cancel()


class _Cells(HTMLParser):
    """The page as a person reads it: each row's cell texts, and the meta
    refresh."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, list[str]]] = []
        self.refresh: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "meta" and found.get("http-equiv") == "refresh":
            self.refresh = found.get("content")
        elif tag == "tr" and found.get("class") in ("ok", "bad"):
            self.rows.append((found["class"] or "", []))
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1][1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def read_page(dom: bytes) -> _Cells:
    cells = _Cells()
    cells.feed(dom.decode("utf-8"))
    return cells


class Counting(Watchlist):
    """Counts the requests that read it."""

    reads = 0

    def targets(self) -> Any:
        self.reads += 1
        return super().targets()


async def serving(reactor: Any) -> tuple[Any, Any, Counting]:
    """Two targets on a memory clock set to now, served on loopback."""
    clock = memory_reactor()
    clock.advance(time.time() - 120)
    web = watched(clock, 8080, interval=3600)
    accept(clock)
    db = watched(clock, 5432, interval=3600)
    refuse(clock)
    clock.advance(120)
    docker = watched(clock, 2375, State.FREE, interval=3600)
    refuse(clock)
    watchlist = Counting([web, db, docker])
    port = reactor.listenTCP(
        0, make_site(watchlist, reactor=reactor), interface="127.0.0.1"
    )
    return port, clock, watchlist


@pytest_twisted.ensureDeferred
async def test_a_person_sees_the_table_and_a_changed_state_after_a_reload(
    reactor: Any, tmp_path: Path
) -> None:
    port, clock, watchlist = await serving(reactor)
    url = f"http://127.0.0.1:{port.getHost().port}/"
    chromium = Chromium(reactor, tmp_path)
    try:
        first = read_page(await chromium.run("--dump-dom", url))
        db = watchlist.items[1].monitor
        db.stopService()
        db.startService()  # probes at once
        accept(clock)
        assert db.state is State.OCCUPIED
        second = read_page(await chromium.run("--dump-dom", url))
    finally:
        await port.stopListening()
    assert first.refresh == "5"
    headings = ["Target", "Check", "State", "Expected", "For", "Last probe", "Changes"]
    assert len(headings) == len(first.rows[0][1])
    assert [(cls, cells[0], cells[2], cells[3]) for cls, cells in first.rows] == [
        ("ok", "127.0.0.1:8080", "occupied", "occupied"),
        ("bad", "127.0.0.1:5432", "free", "occupied"),
        ("ok", "127.0.0.1:2375", "free", "free"),
    ]
    assert first.rows[1][1][1].endswith("NOT as expected")
    assert first.rows[0][1][4].startswith("2 min")  # a clock of its own: "2 min 1 s"
    assert [(cls, cells[2], cells[6]) for cls, cells in second.rows][1] == (
        "ok",
        "occupied",
        "2",
    )


@pytest_twisted.ensureDeferred
async def test_the_page_reloads_itself(reactor: Any, tmp_path: Path) -> None:
    """Left open, the page asks the server again on its own."""
    port, _, watchlist = await serving(reactor)
    url = f"http://127.0.0.1:{port.getHost().port}/"
    process, run = Chromium(reactor, tmp_path).start("--remote-debugging-port=0", url)
    try:
        for _ in range(int(BOUND * 10)):
            if watchlist.reads >= 2:
                break
            await deferLater(reactor, 0.1, lambda: None)
    finally:
        process.signalProcess("KILL")
        await run.ended
        await port.stopListening()
    assert watchlist.reads >= 2


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


@pytest.mark.parametrize("width", [1280, 390])
@pytest_twisted.ensureDeferred
async def test_screenshots(reactor: Any, tmp_path: Path, width: int) -> None:
    """Screenshots at a desktop and a phone width (looked at by a person
    when the page changes; here: they are taken, at that width)."""
    port, _, _ = await serving(reactor)
    shot = tmp_path / f"page-{width}.png"
    url = f"http://127.0.0.1:{port.getHost().port}/"
    try:
        await Chromium(reactor, tmp_path).run(
            f"--window-size={width},900", f"--screenshot={shot}", url
        )
    finally:
        await port.stopListening()
    assert png_size(shot) == (width, 900)
