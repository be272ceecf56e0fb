"""
/metrics (txportend._metrics): every series, read back with
prometheus_client's text parser and its OpenMetrics parser.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

import txportend
from txportend import Monitor, State
from txportend._metrics import SLICE, metrics

from .fakes import accept, memory_reactor, refuse, time_out
from .test_web import T0, PortServer, Target, Watchlist, two_targets, watched

OPEN_METRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def scrape(
    watchlist: Watchlist, accept: str | None = None, portserver: Any = None
) -> tuple[str, str]:
    parts, content_type = metrics(watchlist, accept, portserver)
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
    parts, _ = metrics(Watchlist(targets), accept_header)
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
    parts, _ = metrics(Watchlist([target]), None)
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
    parts, _ = metrics(Watchlist(), None, portserver)
    assert portserver.reads == 1
    portserver.requests_served = 99
    found = samples(b"".join(parts).decode())
    assert found[("portend_portserver_requests_total", ("result", "served"))] == 7.0
