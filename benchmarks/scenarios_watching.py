"""
Scenarios 7 and 8 (watching ports: the monitors, the daemon), as the
table's rows.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from ._common import median
from ._report import Row, absolute, child, fmt
from .scenarios_waiting import nofile_for

# -- scenario 7 ---------------------------------------------------------------


def scenario_monitors(quick: bool, seed: int, raw: dict[str, Any]) -> list[Row]:
    """
    ``n`` monitors at a 10 s interval on closed loopback ports, for 60 s
    (quick: 2,000 for 20 s). The targets scale with ``n``: ``n`` / 10
    probes a second. The quick run scales the pacing's budget (1,000 probes
    a second by default) down with ``n`` too, so that its first probes
    spread across the interval as the full run's do.
    """
    n, scaled = nofile_for(2000 if quick else 10_000)
    interval, duration = 10.0, (20.0 if quick else 60.0)
    params: dict[str, Any] = {"n": n, "interval": interval, "duration": duration}
    if quick:
        params["budget"] = n / interval
    result = child("monitors", "deferred_side", params, duration + 120 + n / 100)
    raw["monitors-10000/txportend"] = asdict(result)
    name = f"7 monitors ({n}, every {interval:g} s, {duration:g} s)"
    rate = n / interval
    if not result.ok:
        return [
            Row(
                name,
                "probes/s",
                None,
                None,
                "",
                f"{rate:g} +-10 %",
                "FAIL",
                result.error,
            )
        ]
    d = result.data
    mean = d["steady_mean"]
    peak = d["steady_max"] / mean if mean else math.inf
    free = d["states"].get("free", 0)
    problems = [scaled] if scaled else []
    if d["error_count"]:
        problems.append(f"{d['error_count']} probes not made ({d['errors'][0]})")
    if d["left_delayed_calls"] or d["left_selectables"]:
        problems.append(
            f"left after stop: {d['left_delayed_calls']} DelayedCalls, "
            f"{d['left_selectables']} selectables"
        )
    if d["longest_between_looks"] >= interval:
        problems.append(
            f"probes not all counted: {d['longest_between_looks']:.1f} s "
            "between two looks"
        )
    note = "; ".join(problems)
    steady = f"steady part: {interval:g} s to the end"
    cpu_note = f"of which counting the probes {d['counting_cpu'] * 100:.1f} %"
    return [
        Row(
            name,
            "probes/s, mean",
            mean,
            None,
            "",
            f"{rate * 0.9:g} to {rate * 1.1:g}",
            "PASS" if abs(mean - rate) <= rate * 0.1 else "FAIL",
            steady,
        ),
        Row(
            name,
            "busiest second / mean",
            peak,
            None,
            "",
            "<= 2",
            absolute(peak, 2.0),
            f"quietest second {d['steady_min']}, busiest {d['steady_max']}",
        ),
        Row(
            name,
            "busiest 100 ms / mean",
            d["busiest_100ms"] / (mean / 10) if mean else math.inf,
            None,
            "",
            "-",
            "-",
            f"busiest 100 ms: {d['busiest_100ms']} probes; longest garbage "
            f"collector pause {d['gc_longest_pause'] * 1e3:.0f} ms",
        ),
        Row(
            name,
            "CPU (1 core)",
            d["steady_cpu"],
            None,
            "%",
            "<= 30 %",
            absolute(d["steady_cpu"], 0.30),
            f"{steady}; {cpu_note}",
        ),
        Row(name, "CPU with start-up", d["total_cpu"], None, "%", "-", "-"),
        _peak_rss(name, d["peak_rss_mib"]),
        Row(
            name,
            "read free at the end",
            free,
            None,
            "",
            f"{n}/{n}",
            "PASS" if free == n and d["longest_between_looks"] < interval else "FAIL",
            note,
        ),
    ]


# -- scenario 8 ---------------------------------------------------------------


def scenario_daemon(quick: bool, seed: int, raw: dict[str, Any]) -> list[Row]:
    """
    ``twistd portend`` with ``n`` targets at a 10 s interval, half of them
    open, for 60 s (quick: 2,000 for 20 s, with the pacing budget scaled
    down with ``n`` as in scenario 7), scraped ``scrapes`` times in the
    second half of its steady part.
    """
    n, scaled = nofile_for(2000 if quick else 10_000)
    interval, duration = 10.0, (20.0 if quick else 60.0)
    params: dict[str, Any] = {
        "n": n,
        "interval": interval,
        "duration": duration,
        "scrapes": 4 if quick else 10,
    }
    if quick:
        params["budget"] = n / interval
    result = child("daemon", "run_side", params, duration + 300 + n / 50)
    raw["daemon-10000/txportend"] = asdict(result)
    name = f"8 daemon ({n}, half open, every {interval:g} s, {duration:g} s)"
    if not result.ok:
        return [Row(name, "on time", None, None, "", f"{n}/{n}", "FAIL", result.error)]
    d = result.data
    iv = d["intervals"]
    worst = max(
        iv.get("max", math.inf), d["interval_min"], key=lambda x: abs(x - interval)
    )
    mid = interval + (duration - interval) / 2
    problems = [scaled] if scaled else []
    if d["waited_for_ports"] >= 1:
        problems.append(
            f"waited {d['waited_for_ports']:.0f} s for an earlier run's "
            "TIME_WAIT sockets to free enough ports"
        )
    if d["error_count"]:
        problems.append(f"{d['error_count']} probes not made ({d['errors'][0]})")
    if d["error_lines"]:
        problems.append(f"errors in the log: {d['error_lines'][0]}")
    if d["longest_between_looks"] >= interval:
        problems.append(
            f"probes not all counted: {d['longest_between_looks']:.1f} s "
            "between two looks"
        )
    late_q, late_s = d["lateness_quiet"], d["lateness_scraped"]
    every_15s = d["quiet_cpu"] + d["scrape_cpu_seconds"] / 15
    times = d["scrape_seconds"]
    checks = d["metrics_checks"]
    up = checks[-1]["portend_up"] if checks else None
    expected = checks[-1]["portend_as_expected"] if checks else None
    return [
        Row(
            name,
            "intervals outside 10 +-1 s",
            d["intervals_outside"],
            None,
            "",
            "0",
            "PASS" if d["intervals_outside"] == 0 and iv["count"] else "FAIL",
            f"{iv['count']} intervals between consecutive probes of a target, "
            f"those ending {interval:g} s after the start or later; median "
            f"{iv['median']:.3f} s, 99th percentile {iv['p99']:.3f} s, "
            f"shortest {d['interval_min']:.3f} s, longest {iv['max']:.3f} s",
        ),
        Row(
            name,
            "worst interval",
            worst,
            None,
            "s",
            "9 to 11 s",
            "PASS" if abs(worst - interval) <= 1 else "FAIL",
        ),
        Row(
            name,
            "targets always on time",
            d["on_time_targets"],
            None,
            "",
            f"{n}/{n}",
            "PASS" if d["on_time_targets"] == n else "FAIL",
            f"each interval within +-1 s and the last probe at most 11 s "
            f"before the end (longest: {d['worst_gap_at_end']:.2f} s); "
            f"{d['unprobed_targets']} targets never probed",
        ),
        Row(
            name,
            "CPU (1 core)",
            d["quiet_cpu"],
            None,
            "%",
            "<= 30 %",
            absolute(d["quiet_cpu"], 0.30),
            f"steady part without scrapes, {interval:g} to {mid:g} s; counting "
            f"the probes took {d['counting_cpu'] * 100:.1f} % of it",
        ),
        Row(
            name,
            "CPU, a scrape every 15 s",
            every_15s,
            None,
            "%",
            "<= 30 %",
            absolute(every_15s, 0.30),
            "the CPU without scrapes plus one scrape's CPU every 15 s "
            "(a common Prometheus scrape interval)",
        ),
        Row(
            name,
            "CPU while scraped",
            d["scraped_cpu"],
            None,
            "%",
            "-",
            "-",
            f"{mid:g} s to the end: {len(d['scrapes'])} scrapes of /metrics, "
            f"one every {(duration - mid) / len(d['scrapes']):.1f} s, one at "
            "a time; a scrape's CPU is the difference from the CPU without "
            "scrapes",
        ),
        Row(
            name,
            "CPU per scrape",
            d["scrape_cpu_seconds"],
            None,
            "s",
            "-",
            "-",
        ),
        _peak_rss(name, d["peak_rss_mib"]),
        Row(
            name,
            "/metrics, worst",
            max(times) if times else None,
            None,
            "s",
            "<= 1 s",
            "PASS"
            if times and not d["scrape_failures"] and max(times) <= 1
            else "FAIL",
            f"{len(times)} scrapes answered, {d['scrape_failures']} not, each "
            "timed from the request sent to the whole body read; alternately "
            "text 0.0.4 (median "
            f"{fmt(median(d['scrape_seconds_text']), 's')}) and OpenMetrics as "
            "Prometheus asks for it (median "
            f"{fmt(median(d['scrape_seconds_openmetrics']), 's')}); about "
            f"{d['scrapes'][0].get('bytes', 0) / 1e6:.1f} MB each",
        ),
        Row(
            name,
            "/metrics in the first interval, worst",
            max(d["early_scrape_seconds"], default=None),
            None,
            "s",
            "<= 1 s",
            "PASS"
            if d["early_scrape_seconds"]
            and not d["early_scrape_failures"]
            and max(d["early_scrape_seconds"]) <= 1
            else "FAIL",
            f"{len(d['early_scrape_seconds'])} scrapes answered, "
            f"{d['early_scrape_failures']} not, from the moment the daemon's "
            f"reactor runs to {interval:g} s, through every target's first "
            "probe: " + ", ".join(fmt(x, "s") for x in d["early_scrape_seconds"]),
        ),
        Row(
            name,
            "/metrics, median",
            median(times) if times else None,
            None,
            "s",
            "-",
            "-",
        ),
        Row(
            name,
            "probe lateness, worst",
            late_q.get("max"),
            None,
            "ms",
            "-",
            "-",
            f"when a probe started after it fell due; {late_q['count']} probes "
            f"due between scrapes, median {late_q.get('median', 0) * 1e3:.1f} ms; "
            f"the garbage collector's longest pause "
            f"{d['gc_longest_pause'] * 1e3:.0f} ms ({d['gc_full_collections']} "
            "full collections)",
        ),
        Row(
            name,
            "  the same, during a scrape",
            late_s.get("max"),
            None,
            "ms",
            "-",
            "-",
            f"{late_s['count']} probes due while /metrics was being answered, "
            f"median {late_s.get('median', 0) * 1e3:.1f} ms",
        ),
        Row(
            name,
            "as expected at the end",
            d["as_expected"],
            None,
            "",
            f"{n}/{n}",
            "PASS"
            if d["as_expected"] == n and up == d["open"] and expected == n
            else "FAIL",
            f"states {d['states']}; /metrics: {up} up of {d['open']} open, "
            f"{expected} as expected; "
            f"{d['change_lines']} changes logged; {d['time_wait']} probes' "
            f"sockets in TIME_WAIT at the end; {'; '.join(problems)}".rstrip("; "),
        ),
        Row(name, "start-up", d["start_seconds"], None, "s", "-", "-"),
        Row(
            name,
            "stop on SIGTERM",
            d["stop_seconds"],
            None,
            "s",
            "<= 1 s",
            absolute(d["stop_seconds"], 1.0),
            "the issue's rule for stopping; until the process has exited",
        ),
    ]


def _peak_rss(name: str, mib: float) -> Row:
    """The peak RSS row of scenarios 7 and 8: at most 200 MiB."""
    return Row(name, "peak RSS", mib, None, "MiB", "<= 200 MiB", absolute(mib, 200.0))
