"""
/metrics (txportend._metrics): every series, read back with
prometheus_client's text parser and its OpenMetrics parser.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.registry import CollectorRegistry
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

import txportend
import txportend._exposition
from txportend import Monitor, State
from txportend._exposition import _SPECIMEN, FORMATS, SLICE, Exposition, Refresher
from txportend._metrics import (
    _SERIES,
    Collector,
    _daemon_families,
    _portserver_families,
    read,
    read_portserver,
)
from txportend._monitor import PROBE_OUTCOMES

from .fakes import accept, memory_reactor, refuse, time_out
from .test_web import T0, PortServer, Target, Watchlist, two_targets, watched

OPEN_METRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape(
    watchlist: Watchlist, accept: str | None = None, portserver: Any = None
) -> tuple[str, str]:
    parts, content_type = Exposition(watchlist, portserver).metrics(accept)
    return b"".join(parts).decode("utf-8"), content_type


def samples(text: str, parser: Any = parse_text) -> dict[tuple[Any, ...], float]:
    """name and sorted labels -> value, from every family."""
    return {
        (s.name, *sorted(s.labels.items())): s.value
        for family in parser(text)
        for s in family.samples
    }


def by_target(found: dict[tuple[Any, ...], float], name: str) -> dict[str, float]:
    return {
        dict(key[1:])["target"]: value
        for key, value in found.items()
        if key[0] == name and len(key) == 2
    }


@pytest.mark.parametrize("fmt", ["text", "openmetrics"])
def test_every_series_parses_back(fmt: str) -> None:
    _, watchlist = two_targets()
    if fmt == "text":
        text, content_type = scrape(watchlist)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        found = samples(text)
    else:
        text, content_type = scrape(watchlist, OPEN_METRICS)
        assert content_type.startswith("application/openmetrics-text; version=1.0.0")
        assert text.endswith("# EOF\n") and text.count("# EOF") == 1
        found = samples(text, parse_openmetrics)
    up, down = "127.0.0.1:8080", "127.0.0.1:8081"
    assert by_target(found, "portend_up") == {up: 1.0, down: 0.0}
    assert by_target(found, "portend_as_expected") == {up: 1.0, down: 0.0}
    durations = by_target(found, "portend_probe_duration_seconds")
    assert durations == {up: pytest.approx(0.0012, abs=1e-6), down: 0.5}
    assert by_target(found, "portend_state_changes_total") == {up: 1.0, down: 1.0}
    assert by_target(found, "portend_last_change_timestamp_seconds") == {
        up: pytest.approx(T0 + 0.0012),
        down: pytest.approx(T0 + 0.5012),
    }
    probes = {
        (dict(k[1:])["target"], dict(k[1:])["outcome"]): v
        for k, v in found.items()
        if k[0] == "portend_probes_total"
    }
    assert probes == {
        (target, outcome): float(count)
        for target, accepted in ((up, 1), (down, 0))
        for outcome, count in {
            "accepted": accepted,
            "refused": 1 - accepted,
            "timed_out": 0,
            "unreachable": 0,
            "unresolved": 0,
            "error": 0,
        }.items()
    }
    assert found[("portend_build_info", ("version", txportend.__version__))] == 1.0
    assert found[("portend_config_last_reload_successful",)] == 1.0


def test_types_and_help() -> None:
    _, watchlist = two_targets()
    text, _ = scrape(watchlist, OPEN_METRICS)
    types = {f.name: f.type for f in parse_openmetrics(text)}
    assert types == {
        "portend_up": "gauge",
        "portend_as_expected": "gauge",
        "portend_probe_duration_seconds": "gauge",
        "portend_probes": "counter",
        "portend_state_changes": "counter",
        "portend_last_change_timestamp_seconds": "gauge",
        "portend_build": "info",
        "portend_config_last_reload_successful": "gauge",
    }
    assert all(f.documentation for f in parse_openmetrics(text))


def test_a_failed_reload_shows() -> None:
    _, watchlist = two_targets()
    watchlist.reload_successful = False
    found = samples(scrape(watchlist)[0])
    assert found[("portend_config_last_reload_successful",)] == 0.0


def test_a_full_accept_queue_is_not_up_but_occupied() -> None:
    """portend_up is 1 only when a connection was accepted: a loopback
    listener that does not answer is occupied (as expected) but not up."""
    reactor = memory_reactor()
    target = watched(reactor, 8080)
    time_out(reactor)
    assert target.monitor.state is State.OCCUPIED
    found = samples(scrape(Watchlist([target]))[0])
    assert by_target(found, "portend_up") == {"127.0.0.1:8080": 0.0}
    assert by_target(found, "portend_as_expected") == {"127.0.0.1:8080": 1.0}
    assert (
        found[
            (
                "portend_probes_total",
                ("outcome", "timed_out"),
                ("target", "127.0.0.1:8080"),
            )
        ]
        == 1.0
    )


def test_before_the_first_probe_and_before_the_start() -> None:
    """No duration before the first probe, no timestamp before the start."""
    reactor = memory_reactor()
    waiting = watched(reactor, 8080)
    idle = Target(Monitor("127.0.0.1", 8081, reactor=reactor))
    found = samples(scrape(Watchlist([waiting, idle]))[0])
    assert by_target(found, "portend_probe_duration_seconds") == {}
    assert by_target(found, "portend_last_change_timestamp_seconds") == {
        "127.0.0.1:8080": 0.0
    }
    assert by_target(found, "portend_up") == {
        "127.0.0.1:8080": 0.0,
        "127.0.0.1:8081": 0.0,
    }


@pytest.mark.parametrize("accept_header", [None, OPEN_METRICS])
def test_label_values_are_escaped(accept_header: str | None) -> None:
    _, watchlist = two_targets()
    odd = 'we"ird\\name\nwith lines'
    watchlist.items[0].monitor.target = odd
    text, _ = scrape(watchlist, accept_header)
    parser = parse_text if accept_header is None else parse_openmetrics
    found = samples(text, parser)
    assert by_target(found, "portend_up")[odd] == 1.0
    assert '\\"' in text and "\\\\" in text and "\\n" in text


@pytest.mark.parametrize("accept_header", [None, OPEN_METRICS])
def test_no_targets(accept_header: str | None) -> None:
    text, _ = scrape(Watchlist(), accept_header)
    parser = parse_text if accept_header is None else parse_openmetrics
    found = samples(text, parser)
    assert set(found) == {
        ("portend_build_info", ("version", txportend.__version__)),
        ("portend_config_last_reload_successful",),
    }


@pytest.mark.parametrize("accept_header", [None, OPEN_METRICS])
def test_many_targets_are_encoded_in_slices_as_one_exposition(
    accept_header: str | None,
) -> None:
    """More targets than a slice: one HELP and TYPE per family, every
    target's samples once, in order."""
    reactor = memory_reactor()
    count = 2 * SLICE + 7
    targets = [watched(reactor, 1000 + n) for n in range(count)]
    for n in range(100):  # Pacing lets 100 first probes go at once
        (accept if n % 2 else refuse)(reactor, n)
    parts, _ = Exposition(Watchlist(targets)).metrics(accept_header)
    chunks = list(parts)
    assert len(chunks) == 6 * 3 + 1
    text = b"".join(chunks).decode()
    assert text.count("# TYPE portend_up ") == 1
    parser = parse_text if accept_header is None else parse_openmetrics
    families = {f.name: f for f in parser(text)}
    up = families["portend_up"].samples
    assert [s.labels["target"] for s in up] == [
        f"127.0.0.1:{1000 + n}" for n in range(count)
    ]
    assert sum(s.value for s in up) == 50
    probes = families["portend_probes"].samples
    assert len(probes) == 6 * count


def test_the_monitors_are_read_when_asked() -> None:
    """What a scrape shows is the monitors' state when it was asked for,
    even if a probe ends while it is being encoded."""
    reactor = memory_reactor()
    target = watched(reactor, 8080)
    parts, _ = Exposition(Watchlist([target])).metrics(None)
    refuse(reactor)
    found = samples(b"".join(parts).decode())
    assert by_target(found, "portend_state_changes_total") == {"127.0.0.1:8080": 0.0}


PORTSERVER_SAMPLES = {
    ("portend_portserver_ports_managed",): 10000.0,
    ("portend_portserver_ports_allocated",): 3.0,
    ("portend_portserver_requests_total", ("result", "served")): 7.0,
    ("portend_portserver_requests_total", ("result", "denied")): 1.0,
    ("portend_portserver_requests_total", ("result", "bad")): 2.0,
}


@pytest.mark.parametrize("accept_header", [None, OPEN_METRICS])
def test_the_portservers_figures(accept_header: str | None) -> None:
    _, watchlist = two_targets()
    text, _ = scrape(watchlist, accept_header, PortServer())
    parser = parse_text if accept_header is None else parse_openmetrics
    found = samples(text, parser)
    assert {k: v for k, v in found.items() if "portserver" in k[0]} == (
        PORTSERVER_SAMPLES
    )
    assert by_target(found, "portend_up") == {
        "127.0.0.1:8080": 1.0,
        "127.0.0.1:8081": 0.0,
    }
    types = {f.name: (f.type, f.documentation) for f in parser(text)}
    assert types["portend_portserver_ports_managed"][0] == "gauge"
    assert types["portend_portserver_ports_allocated"][0] == "gauge"
    assert types["portend_portserver_requests"][0] == "counter"
    assert all(doc for _, doc in types.values())


@pytest.mark.parametrize("accept_header", [None, OPEN_METRICS])
def test_a_portserver_alone(accept_header: str | None) -> None:
    text, _ = scrape(Watchlist(), accept_header, PortServer())
    parser = parse_text if accept_header is None else parse_openmetrics
    assert set(samples(text, parser)) == {
        ("portend_build_info", ("version", txportend.__version__)),
        ("portend_config_last_reload_successful",),
        *PORTSERVER_SAMPLES,
    }


def test_no_portserver_no_portserver_series() -> None:
    _, watchlist = two_targets()
    assert "portserver" not in scrape(watchlist)[0]


def test_the_portserver_is_read_when_asked() -> None:
    """Read once per scrape, at the moment it is asked for."""
    portserver = PortServer()
    parts, _ = Exposition(Watchlist(), portserver).metrics(None)
    assert portserver.reads == 1
    portserver.requests_served = 99
    found = samples(b"".join(parts).decode())
    assert found[("portend_portserver_requests_total", ("result", "served"))] == 7.0


# The kept lines: a scrape re-encodes only the samples whose value changed,
# and gives what prometheus_client gives for the whole registry.

ACCEPTS = [
    None,
    OPEN_METRICS,
    "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8",
    "application/openmetrics-text; version=1.0.0; escaping=values",
    "text/plain; version=1.0.0; escaping=dots",
]


@dataclass
class Result:
    accepted: bool


@dataclass
class LastProbe:
    result: Result | None
    duration: float


@dataclass
class FakeMonitor:
    """What :func:`txportend._metrics.read` reads of a Monitor."""

    target: str
    last_probe: LastProbe | None = None
    probes: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(PROBE_OUTCOMES, 0)
    )
    changes: int = 0
    since: float | None = None


@dataclass
class FakeTarget:
    monitor: FakeMonitor
    as_expected: bool = False


def whole(watchlist: Any, accept: str | None, portserver: Any = None) -> bytes:
    """prometheus_client's encoding of every family at once."""
    encode, _ = choose_encoder(accept or "")
    families = []
    readings = read(watchlist.targets())
    for series in _SERIES:
        family = series.family()
        for r in readings:
            values = series.values(series.key(r))
            for extra, value in zip(series.extras, values, strict=False):
                family.add_metric([r.target, *extra], value)  # type: ignore[attr-defined]
        families.append(family)
    families += _daemon_families(watchlist.reload_successful)
    if portserver is not None:
        families += _portserver_families(read_portserver(portserver))  # type: ignore[arg-type]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(families))
    return encode(registry)


ODD_VALUES = [0.0, -0.0, 1.0, 1, True, False, float("inf"), float("nan"), 1e-7]


def change(rng: random.Random, monitor: FakeMonitor, target: FakeTarget) -> None:
    """One random change of what a target shows."""
    what = rng.randrange(7)
    if what == 0:
        accepted = rng.random() < 0.5
        monitor.last_probe = LastProbe(Result(accepted), rng.random())
        monitor.probes["accepted" if accepted else "refused"] += 1
    elif what == 1:
        target.as_expected = not target.as_expected
    elif what == 2:
        duration = rng.choice([*ODD_VALUES, rng.random()])
        result = None if rng.random() < 0.3 else Result(rng.random() < 0.5)
        monitor.last_probe = None if rng.random() < 0.1 else LastProbe(result, duration)
        monitor.probes[rng.choice(PROBE_OUTCOMES)] += rng.choice([1, 1000, 10**9])
    elif what == 3:
        monitor.changes += 1
        monitor.since = T0 + rng.random() * 1000
    elif what == 4:
        monitor.since = rng.choice([None, *ODD_VALUES])
    elif what == 5:
        monitor.probes = dict.fromkeys(PROBE_OUTCOMES, rng.choice([0, -0, 7]))
    else:
        monitor.changes = rng.choice([0, 1, 2**40])


def fake_target(n: int) -> FakeTarget:
    names = [f"127.0.0.1:{1000 + n}", f"[::1]:{n}", f'we"ird\\{n}\nx', f"é{n}"]
    return FakeTarget(FakeMonitor(names[n % len(names)]))


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_lines_are_what_prometheus_client_gives_for_the_whole(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """For random changes, reloads (targets added, removed, moved, the same
    target twice) and formats (more than are kept), every scrape gives
    byte for byte prometheus_client's encoding of the whole registry, even
    while another scrape is under way."""
    monkeypatch.setattr(txportend._exposition, "SLICE", 7)
    rng = random.Random(seed)
    made = 40
    watchlist = Watchlist([fake_target(n) for n in range(made)])  # type: ignore[misc]
    portserver = PortServer() if seed % 2 else None
    exposition = Exposition(watchlist, portserver)  # type: ignore[arg-type]
    unfinished: list[tuple[Iterator[bytes], bytes]] = []
    for _ in range(60):
        for target in rng.sample(watchlist.items, k=rng.randrange(12)):
            change(rng, target.monitor, target)  # type: ignore[arg-type]
        if rng.random() < 0.15:  # a reload
            rng.shuffle(watchlist.items)
            del watchlist.items[: rng.randrange(5)]
            for _ in range(rng.randrange(5)):
                made += 1
                watchlist.items.insert(rng.randrange(30), fake_target(made))  # type: ignore[arg-type]
            twice = rng.choice(watchlist.items)
            watchlist.items.append(twice)  # the same target twice
            same_name = FakeTarget(FakeMonitor(twice.monitor.target))  # type: ignore[arg-type]
            watchlist.items.append(same_name)  # type: ignore[arg-type]
            watchlist.reload_successful = rng.random() < 0.5
        accept_header = rng.choice(ACCEPTS)
        parts, _ = exposition.metrics(accept_header)
        expected = whole(watchlist, accept_header, portserver)
        if rng.random() < 0.2:  # left unfinished until after the next one
            unfinished.append((parts, next(parts), expected))
            continue
        assert b"".join(parts) == expected
        for left, begun, wanted in unfinished:
            assert begun + b"".join(left) == wanted
        unfinished.clear()


def counting_encoders(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Note the (target, sample name) of every per-target sample the
    exposition has encoded, the specimen's aside."""
    seen: list[tuple[str, str]] = []
    specimen = {r.target for r in _SPECIMEN}
    encoded = txportend._exposition.encoded

    def counting(encode: Any, families: Any) -> bytes:
        for family in families:
            seen.extend(
                (s.labels["target"], s.name)
                for s in family.samples
                if s.labels.get("target", next(iter(specimen))) not in specimen
            )
        return encoded(encode, families)

    monkeypatch.setattr(txportend._exposition, "encoded", counting)
    return seen


def test_a_scrape_encodes_only_the_samples_whose_value_changed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = counting_encoders(monkeypatch)
    targets = [fake_target(4 * n) for n in range(3)]
    one, two, three = (t.monitor.target for t in targets)
    watchlist = Watchlist(list(targets))  # type: ignore[arg-type]
    exposition = Exposition(watchlist)  # type: ignore[arg-type]

    def scrape_seen(accept_header: str | None = None) -> list[tuple[str, str]]:
        seen.clear()
        parts, _ = exposition.metrics(accept_header)
        assert b"".join(parts) == whole(watchlist, accept_header)
        return sorted(seen)

    assert len(scrape_seen()) == 3 * 9  # up, as expected, 6 probes, changes
    assert scrape_seen() == []
    targets[1].monitor.probes["refused"] += 1
    targets[0].monitor.last_probe = LastProbe(None, 0.25)
    assert scrape_seen() == [
        (one, "portend_probe_duration_seconds"),
        (two, "portend_probes_total"),
    ]
    targets[0].monitor.last_probe = LastProbe(Result(True), 0.25)
    targets[0].monitor.probes["accepted"] += 1
    assert scrape_seen() == [(one, "portend_probes_total"), (one, "portend_up")]
    # a reload takes the third target away, the next puts it back: forgotten
    del watchlist.items[2]
    assert scrape_seen() == []
    watchlist.items.append(targets[2])
    assert [target for target, _ in scrape_seen()] == [three] * 9


VALUES = "application/openmetrics-text; version=1.0.0; escaping=values"
DOTS = "application/openmetrics-text; version=1.0.0; escaping=dots"


@pytest.mark.parametrize(
    "accept_header",
    [
        "application/openmetrics-text; version=abc",
        "text/plain; version=1.x.0",
    ],
)
def test_an_accept_header_prometheus_client_cannot_read_gets_the_default(
    accept_header: str,
) -> None:
    _, watchlist = two_targets()
    text, content_type = scrape(watchlist, accept_header)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert text.encode() == whole(watchlist, None)


def test_formats_that_write_samples_alike_share_their_lines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The text format and OpenMetrics (with any escaping that leaves the
    daemon's names be) share their lines; other escapings have their own,
    kept while their format is among the latest FORMATS asked for."""
    assert FORMATS == 4
    seen = counting_encoders(monkeypatch)
    watchlist = Watchlist([fake_target(n) for n in range(3)])  # type: ignore[misc]
    exposition = Exposition(watchlist)  # type: ignore[arg-type]

    def count(*accept_headers: str | None) -> list[int]:
        counts = []
        for accept_header in accept_headers:
            seen.clear()
            body = b"".join(exposition.metrics(accept_header)[0])
            assert body == whole(watchlist, accept_header)
            counts.append(len(seen))
        return counts

    utf8 = "application/openmetrics-text; version=1.0.0; escaping=allow-utf-8"
    om2 = "application/openmetrics-text; version=2.0.0"
    assert count(None, None, OPEN_METRICS, utf8, om2, None) == [27, 0, 0, 0, 0, 0]
    assert count(VALUES, VALUES, DOTS, DOTS) == [27, 0, 27, 0]
    # four more formats: VALUES is the least recently used, and goes
    assert count(OPEN_METRICS, utf8, om2, None, VALUES, DOTS) == [0, 0, 0, 0, 27, 27]
    # the text format's lines stay, whatever was asked for
    text_dots = "text/plain; version=1.0.0; escaping=dots"
    dots_101 = "application/openmetrics-text; version=1.0.1; escaping=dots"
    assert count(VALUES, DOTS, text_dots, dots_101, None) == [0, 0, 0, 0, 0]


def test_the_refresher_keeps_the_lines_current(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between scrapes, the Refresher goes through every target once a
    cycle, SLICE at a time at even intervals (the first time at once): a
    scrape after a full cycle has nothing left to encode, in the text format
    or OpenMetrics."""
    monkeypatch.setattr(txportend._exposition, "SLICE", 4)
    seen = counting_encoders(monkeypatch)
    targets = [fake_target(n) for n in range(10)]  # slices of 4, 4 and 2
    names = [t.monitor.target for t in targets]
    watchlist = Watchlist(list(targets))  # type: ignore[arg-type]
    exposition = Exposition(watchlist)  # type: ignore[arg-type]
    clock = Clock()
    refresher = Refresher(exposition, clock, cycle=12.0)
    refresher.startService()

    def encoded_since(*advances: float) -> list[str]:
        seen.clear()
        for advance in advances:  # one step each: Clock runs no later call
            clock.advance(advance)
        return [target for target, _ in seen]

    def scrape_count(accept_header: str | None) -> int:
        seen.clear()
        body = b"".join(exposition.metrics(accept_header)[0])
        assert body == whole(watchlist, accept_header)
        return len(seen)

    assert seen == []  # nothing before the reactor runs
    # the first time through at once, a slice a turn of the reactor
    assert sorted(encoded_since(0)) == sorted(names * 9)
    assert [scrape_count(a) for a in (None, OPEN_METRICS, None)] == [0, 0, 0]
    # then a slice every cycle / 3 seconds: the changes, and only them
    targets[0].monitor.probes["refused"] += 1
    targets[9].as_expected = True
    assert encoded_since(3.5) == []
    assert encoded_since(0.5) == [names[0]]  # the next cycle's first slice
    assert encoded_since(4) == []
    assert encoded_since(4) == [names[9]]
    assert [scrape_count(a) for a in (OPEN_METRICS, None)] == [0, 0]
    # a reload: a target taken away is let go at the next cycle, and a new
    # one is encoded in its place
    gone = watchlist.items.pop(1)
    watchlist.items.append(fake_target(10))  # type: ignore[arg-type]
    assert encoded_since(4) == []
    assert sorted(encoded_since(4, 4)) == [watchlist.items[-1].monitor.target] * 9
    watchlist.items.append(gone)
    assert scrape_count(None) == 9  # encoded again: it had been let go
    refresher.stopService()
    assert clock.getDelayedCalls() == []


def test_started_before_its_reactor_runs_the_refresher_makes_every_line_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """twistd and twist start their services before their reactor runs:
    the first time through is done then, at once; the cycles follow."""
    monkeypatch.setattr(txportend._exposition, "SLICE", 4)
    seen = counting_encoders(monkeypatch)
    targets = [fake_target(n) for n in range(10)]
    names = [t.monitor.target for t in targets]
    watchlist = Watchlist(list(targets))  # type: ignore[arg-type]
    exposition = Exposition(watchlist)  # type: ignore[arg-type]
    clock = Clock()
    clock.running = False  # type: ignore[attr-defined]
    refresher = Refresher(exposition, clock, cycle=12.0)
    refresher.startService()
    assert sorted(target for target, _ in seen) == sorted(names * 9)
    seen.clear()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [4.0]
    targets[0].monitor.changes += 1
    clock.advance(4)
    assert seen == [(names[0], "portend_state_changes_total")]
    seen.clear()
    assert b"".join(exposition.metrics(None)[0]) == whole(watchlist, None)
    assert seen == []
    refresher.stopService()
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("running", [True, False])
def test_a_refresher_that_fails_stops_and_says_so(
    monkeypatch: pytest.MonkeyPatch, running: bool
) -> None:
    """A bug in refreshing is logged once; the refresher stops, and scrapes
    still work."""
    watchlist = Watchlist([fake_target(n) for n in range(3)])  # type: ignore[misc]
    exposition = Exposition(watchlist)  # type: ignore[arg-type]

    def broken(targets: Any) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(exposition, "refresh", broken)
    clock = Clock()
    clock.running = running  # type: ignore[attr-defined]
    refresher = Refresher(exposition, clock)
    with capturedLogs() as events:
        refresher.startService()
        clock.advance(0)
    assert [formatEvent(e) for e in events] == [
        "Keeping /metrics current failed; each scrape does it"
    ]
    assert events[0]["log_failure"].check(ZeroDivisionError)
    assert clock.getDelayedCalls() == []
    assert b"".join(exposition.metrics(None)[0]) == whole(watchlist, None)
    refresher.stopService()
