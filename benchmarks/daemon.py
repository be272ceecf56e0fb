"""
Scenario 8: the ``twistd portend`` daemon with ``n`` targets at ``interval``
seconds on loopback, half of them open, for ``duration`` seconds, while
``/metrics`` is scraped.

How it runs. The daemon is a real ``twistd -n`` process on the default
reactor: twistd's runner, its log (to a file), its signal handling, the
daemon built by ``txportend.tap``'s ``Options`` and ``makeService`` from a
configuration file, exactly as the ``portend`` plugin builds it. twistd runs
a ``.tac`` file (``twistd -y``) rather than ``twistd portend`` only to add
one service beside the daemon, :class:`Recorder`, that notes each target's
probes from inside (reading every target's probes from outside would take
a ``/status`` of all of them every second, which would be the biggest cost
measured). The helper server (another process) binds the ``n`` ports and
listens on every other one (accepting and closing each connection); the
rest refuse. The configuration expects the open ones ``occupied`` and the
others ``free``, so every target should end as expected.

How probes are counted: as in scenario 7, once a second the recorder notes
each monitor's new ``last_probe`` (when it ended, and how long it took), so
no probe is missed while two looks are less than ``interval`` apart. From
these, for each target, the time between the ends of consecutive probes (its
*interval*; the monitor pauses ``interval`` after each probe, so ideally
``interval`` plus a probe's duration), and each probe's *lateness*: when it
started minus when it fell due (the previous end plus the pause).

Scrapes: from this process (not the daemon's), over loopback TCP, one at a
time: a few in the first interval (:data:`EARLY_SCRAPES`, from the moment
the daemon's reactor runs, through every target's first probe), then
``scrapes`` of them spread over the second half of the steady part,
alternately asking for the text format 0.0.4 and for OpenMetrics with
Prometheus' own ``Accept`` header; each is timed from sending the request
to having the whole body. The probes that fell due while a scrape was being
answered are compared with the others.

CPU (the daemon's ``getrusage(RUSAGE_SELF)``, read by a thread in the
daemon at fixed times) over the steady part (``interval`` s after the
start, when every target has had its first probe, to the end): its first
half without scrapes, its second half with them; the difference gives the
CPU of one scrape. Peak RSS is the daemon's ``ru_maxrss``.

Also: the start-up (from launching twistd to its reactor running), the stop
(from ``SIGTERM`` to the process's exit), the states at the end, and the
probing side's sockets in TIME_WAIT. Each accepted probe leaves one for 60 s,
holding an ephemeral port, so a run first waits (at most 90 s) until there
are ports enough to bind the targets.
"""

from __future__ import annotations

import array
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from twisted.application.service import Service

from ._common import (
    HERE,
    LOOPBACK,
    HelperServer,
    cpu_seconds,
    median,
    monotonic_sleep_until,
    peak_rss_mib,
    percentile,
)
from .many_waits import _GCPauses, _Sampler

#: What Prometheus sends (its default scrape protocols, without native
#: histograms): OpenMetrics first, then the text format.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,"
    "application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)

TWISTD = "from twisted.scripts.twistd import run; run()"

#: Seconds after the daemon's reactor started at which ``/metrics`` is also
#: scraped, through every target's first probe (those within the interval).
EARLY_SCRAPES = (0.0, 0.5, 1.5, 3.0, 5.0, 7.0, 9.0)

_TAC = """\
# Written by the benchmarks' scenario 8 for twistd -y.
import sys
sys.path.insert(0, {here!r})
import _child
_child._load_package()
from benchmarks.daemon import application_for
application = application_for({params!r})
"""


# -- in the daemon's process ----------------------------------------------------


class Recorder(Service):
    """
    Notes every probe of the daemon's monitors (see the module's docstring),
    writes ``ready`` once the reactor runs (the web site's port, the start
    times) and ``results`` after ``duration`` seconds.
    """

    def __init__(self, watchlist: Any, params: dict[str, Any]) -> None:
        self.watchlist = watchlist
        self.params = params
        self.index = array.array("i")
        self.ends = array.array("d")
        self.durations = array.array("d")
        self.looks: list[float] = []
        self.counting = 0.0

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]
        from twisted.internet import reactor, task

        self.reactor: Any = reactor
        self.monitors = [target.monitor for target in self.watchlist.targets()]
        self.seen: list[object] = [None] * len(self.monitors)
        self.pauses = _GCPauses()
        self.t0 = time.monotonic()
        self.r0 = reactor.seconds()
        self.c0 = cpu_seconds()
        self.sampler = _Sampler([self.t0 + at for at in self.params["cpu_at"]])
        self.sampler.start()
        self.looker = task.LoopingCall(self.look)
        self.looker.clock = reactor
        self.looker.start(1.0, now=False)
        reactor.callWhenRunning(self.ready)
        reactor.callLater(self.params["duration"], self.finish)

    def ready(self) -> None:
        from twisted.internet import tcp

        ports = [r for r in self.reactor.getReaders() if isinstance(r, tcp.Port)]
        _write(
            self.params["ready"],
            {
                "port": ports[0].getHost().port if ports else None,
                "t0": self.t0,
                "r0": self.r0,
                "running_after": time.monotonic() - self.t0,
            },
        )

    def look(self) -> None:
        began = time.thread_time()
        self.looks.append(time.monotonic())
        seen = self.seen
        for i, monitor in enumerate(self.monitors):
            last = monitor.last_probe
            if last is not seen[i] and last is not None:
                seen[i] = last
                self.index.append(i)
                self.ends.append(last.at)
                self.durations.append(last.duration)
        self.counting += time.thread_time() - began

    def finish(self) -> None:
        self.look()
        self.looker.stop()
        r_end = self.reactor.seconds()
        self.sampler.join(timeout=10)
        states: dict[str, int] = {}
        for monitor in self.monitors:
            states[monitor.state.value] = states.get(monitor.state.value, 0) + 1
        errors = [
            f"{type(m.last_probe.error).__name__}: {m.last_probe.error}"
            for m in self.monitors
            if m.last_probe is not None and m.last_probe.error is not None
        ]
        looks = [self.t0, *self.looks]
        _write(
            self.params["results"],
            {
                "r_end": r_end,
                "readings": [(self.t0, self.c0), *self.sampler.readings],
                "peak_rss_mib": peak_rss_mib(),
                "counting_seconds": self.counting,
                "longest_between_looks": max(
                    (b - a for a, b in pairwise(looks)),
                    default=0.0,
                ),
                "states": states,
                "as_expected": sum(t.as_expected for t in self.watchlist.targets()),
                "error_count": len(errors),
                "errors": errors[:5],
                "index": self.index.tolist(),
                "ends": self.ends.tolist(),
                "durations": self.durations.tolist(),
                **self.pauses.summary(),
            },
        )


def _write(path: str, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON to ``path`` in one step (readers poll for it)."""
    with open(path + ".part", "w") as f:
        json.dump(data, f)
    os.replace(path + ".part", path)


def application_for(params_path: str) -> Any:
    """The ``application`` of the ``.tac`` file: a :class:`Recorder`, then
    the daemon as ``twistd portend --config FILE`` makes it."""
    from twisted.application.service import Application

    from txportend import tap
    from txportend._daemon import Watchlist

    with open(params_path) as f:
        params = json.load(f)
    if params["budget"] is not None:
        # The quick run: the daemon's first probes spread over one interval,
        # as the full run's do (the reactor's Pacing, made before the daemon
        # starts; see scenario 7).
        from twisted.internet import reactor

        import txportend
        from txportend import _pacing

        _pacing._default[reactor] = txportend.Pacing(reactor, budget=params["budget"])
    options = tap.Options()
    options.parseOptions(["--config", params["config"]])
    daemon = tap.makeService(options)
    watchlist = next(s for s in daemon if isinstance(s, Watchlist))
    application = Application("portend")
    Recorder(watchlist, params).setServiceParent(application)
    daemon.setServiceParent(application)
    return application


# -- in the measuring process ---------------------------------------------------


def _config(ports: Sequence[int], open_ports: set[int], interval: float) -> str:
    lines = [
        'listen = ["tcp:0:interface=127.0.0.1"]',
        f"interval = {interval!r}",
        'timeout = "1s"',
    ]
    for port in ports:
        expect = "occupied" if port in open_ports else "free"
        lines += ["[[target]]", f'address = "{LOOPBACK}:{port}"']
        lines.append(f'expect = "{expect}"')
    return "\n".join(lines) + "\n"


def _wait_for(path: str, process: subprocess.Popen[bytes], seconds: float) -> Any:
    """The JSON in ``path`` once it exists; ``None`` if the daemon exited
    or ``seconds`` passed first."""
    for _ in range(int(seconds * 20)):
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        if process.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def _time_wait(ports: set[int] | None = None) -> int | None:
    """Sockets in TIME_WAIT on IPv4 (with ``ports``, only those connected to
    one of them: the probing side's), or ``None`` where Linux's table can't
    be read."""
    try:
        with open("/proc/net/tcp") as table:
            lines = table.read().splitlines()[1:]
    except OSError:
        return None
    count = 0
    for line in lines:
        fields = line.split()
        if fields[3] != "06":  # TCP_TIME_WAIT
            continue
        count += ports is None or int(fields[2].rsplit(":", 1)[1], 16) in ports
    return count


def _wait_for_ports(n: int) -> float:
    """
    Wait (at most 90 s) until ``n`` more ephemeral ports can be bound: the
    probes of an earlier run leave a socket in TIME_WAIT for 60 s per
    connection accepted, each holding one of them. Return the seconds waited.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
    except (OSError, ValueError):
        return 0.0
    began = time.monotonic()
    for _ in range(45):
        taken = _time_wait()
        if taken is None or high - low + 1 - taken >= n + 2000:
            break
        time.sleep(2)
    return time.monotonic() - began


def _scrape(port: int, accept: str | None) -> dict[str, Any]:
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    headers = {} if accept is None else {"Accept": accept}
    began = time.monotonic()
    try:
        connection.request("GET", "/metrics", headers=headers)
        response = connection.getresponse()
        body = response.read()
        ended = time.monotonic()
        status = response.status
    except OSError as error:
        return {"began": began, "ended": time.monotonic(), "error": str(error)}
    finally:
        connection.close()
    return {
        "began": began,
        "ended": ended,
        "seconds": ended - began,
        "status": status,
        "bytes": len(body),
        "openmetrics": accept is not None,
        "body": body.decode("utf-8"),
    }


def _count_ones(body: str, openmetrics: bool) -> dict[str, int]:
    """How many targets the body says are up and as expected."""
    if openmetrics:
        from prometheus_client.openmetrics.parser import text_string_to_metric_families
    else:
        from prometheus_client.parser import (  # type: ignore[assignment]
            text_string_to_metric_families,
        )
    counts = {"portend_up": 0, "portend_as_expected": 0, "targets": 0}
    for family in text_string_to_metric_families(body):
        if family.name in counts:
            counts[family.name] += sum(s.value == 1 for s in family.samples)
        if family.name == "portend_up":
            counts["targets"] = len(family.samples)
    return counts


def _stats(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    p99 = percentile(values, 99)
    return {
        "count": len(values),
        "median": median(values),
        "p99": p99,
        "max": max(values),
    }


def _analyse(
    n: int,
    interval: float,
    pause: float,
    ready: dict[str, Any],
    results: dict[str, Any],
    scrapes: list[dict[str, Any]],
) -> dict[str, Any]:
    """Intervals and lateness per target, from the recorder's probes."""
    r0, t0 = ready["r0"], ready["t0"]
    steady_from = r0 + interval
    per_target: list[list[tuple[float, float]]] = [[] for _ in range(n)]
    for i, at, duration in zip(
        results["index"], results["ends"], results["durations"], strict=True
    ):
        per_target[i].append((at, duration))
    # Scrape windows on the daemon's clock (its reactor's seconds()).
    windows = [(r0 + s["began"] - t0, r0 + s["ended"] - t0) for s in scrapes]
    intervals: list[float] = []
    late_quiet: list[float] = []
    late_scraped: list[float] = []
    on_time_targets = 0
    worst_gap_at_end = 0.0
    unprobed = 0
    for probes in per_target:
        if not probes:
            unprobed += 1
            continue
        good = True
        for (before, _), (at, duration) in pairwise(probes):
            if at < steady_from:
                continue
            gap = at - before
            intervals.append(gap)
            good = good and abs(gap - interval) <= 1.0
            due = before + pause
            late = at - duration - due
            scraped = any(a <= due <= b for a, b in windows)
            (late_scraped if scraped else late_quiet).append(late)
        gap_at_end = results["r_end"] - probes[-1][0]
        worst_gap_at_end = max(worst_gap_at_end, gap_at_end)
        good = good and gap_at_end <= interval + 1.0 and len(probes) > 1
        on_time_targets += good
    outside = sum(abs(x - interval) > 1.0 for x in intervals)
    return {
        "intervals": _stats(intervals),
        "interval_min": min(intervals, default=0.0),
        "intervals_outside": outside,
        "on_time_targets": on_time_targets,
        "unprobed_targets": unprobed,
        "worst_gap_at_end": worst_gap_at_end,
        "lateness_quiet": _stats(late_quiet),
        "lateness_scraped": _stats(late_scraped),
    }


def run_side(
    n: int,
    interval: float,
    duration: float,
    scrapes: int,
    budget: float | None = None,
) -> dict[str, Any]:
    """
    Scenario 8, from the measuring process: the helper server, the daemon
    under twistd, the scrapes; the figures (see the module's docstring).
    With ``budget``, the daemon's reactor gets a :class:`txportend.Pacing`
    of that many probes a second instead of its own (the quick run).
    """
    waited = _wait_for_ports(n)
    work = tempfile.mkdtemp(prefix="txportend-bench-")
    server = HelperServer(lifetime=duration + 300)
    daemon: subprocess.Popen[bytes] | None = None
    try:
        ports = server.bind(n)
        open_ports = ports[::2]
        server.listen(open_ports)
        server.times()
        files = {
            name: os.path.join(work, name)
            for name in ("portend.toml", "params.json", "daemon.tac", "twistd.log")
        }
        with open(files["portend.toml"], "w") as f:
            f.write(_config(ports, set(open_ports), interval))
        steady = duration - interval
        cpu_at = [interval, interval + steady / 2, duration]
        params = {
            "config": files["portend.toml"],
            "duration": duration,
            "budget": budget,
            "cpu_at": cpu_at,
            "ready": os.path.join(work, "ready.json"),
            "results": os.path.join(work, "results.json"),
        }
        with open(files["params.json"], "w") as f:
            json.dump(params, f)
        with open(files["daemon.tac"], "w") as f:
            f.write(_TAC.format(here=HERE, params=files["params.json"]))
        launched = time.monotonic()
        command = [sys.executable, "-c", TWISTD, "--nodaemon", "--pidfile="]
        with open(files["twistd.log"], "wb") as log:
            daemon = subprocess.Popen(
                [*command, "--python", files["daemon.tac"]],
                cwd=work,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        ready = _wait_for(params["ready"], daemon, 120.0)
        if ready is None or ready["port"] is None:
            return {"unavailable": "the daemon did not start: " + _tail(files)}
        t0 = ready["t0"]
        early: list[dict[str, Any]] = []
        for k, at in enumerate(EARLY_SCRAPES):
            if at >= interval:
                break
            monotonic_sleep_until(t0 + at)
            scraped = _scrape(ready["port"], PROMETHEUS_ACCEPT if k % 2 else None)
            scraped.pop("body", None)
            early.append(scraped)
        spacing = steady / 2 / scrapes
        done: list[dict[str, Any]] = []
        for k in range(scrapes):
            monotonic_sleep_until(t0 + cpu_at[1] + spacing * (k + 0.25))
            accept = PROMETHEUS_ACCEPT if k % 2 else None
            done.append(_scrape(ready["port"], accept))
        results = _wait_for(params["results"], daemon, duration + 60)
        if results is None:
            return {"unavailable": "the daemon gave no results: " + _tail(files)}
        time_wait = _time_wait(set(ports))
        stopping = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
        stop_seconds = time.monotonic() - stopping
        with open(files["twistd.log"], errors="replace") as f:
            log_text = f.read()
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait(timeout=10)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return _summary(
        n, interval, duration, budget, ready, results, done, stop_seconds, log_text
    ) | {
        "start_seconds": ready["running_after"] + (t0 - launched),
        "early_scrape_seconds": [e["seconds"] for e in early if "seconds" in e],
        "early_scrape_failures": sum("seconds" not in e for e in early),
        "waited_for_ports": waited,
        "time_wait": time_wait,
    }


def _tail(files: dict[str, str]) -> str:
    with open(files["twistd.log"], errors="replace") as f:
        return " | ".join(f.read().strip().splitlines()[-3:])


def _summary(
    n: int,
    interval: float,
    duration: float,
    budget: float | None,
    ready: dict[str, Any],
    results: dict[str, Any],
    scrapes: list[dict[str, Any]],
    stop_seconds: float,
    log_text: str,
) -> dict[str, Any]:
    from txportend._pacing import PROBE_BUDGET

    pause = max(interval, n / (budget or PROBE_BUDGET))
    figures = _analyse(n, interval, pause, ready, results, scrapes)
    (t_0, c_0), (t_s, c_s), (t_m, c_m), (t_e, c_e) = results["readings"]
    quiet_cpu = (c_m - c_s) / (t_m - t_s)
    scraped_cpu = (c_e - c_m) / (t_e - t_m)
    answered = [s for s in scrapes if s.get("status") == 200]
    checks = [_count_ones(s["body"], s["openmetrics"]) for s in answered[-2:]]
    lines = log_text.splitlines()
    reactor = [x.split("reactor class: ")[1] for x in lines if "reactor class: " in x]
    return {
        "n": n,
        "interval": interval,
        "duration": duration,
        "open": (n + 1) // 2,
        **figures,
        "longest_between_looks": results["longest_between_looks"],
        "quiet_cpu": quiet_cpu,
        "scraped_cpu": scraped_cpu,
        "scrape_cpu_seconds": (scraped_cpu - quiet_cpu) * (t_e - t_m) / len(scrapes),
        "total_cpu": (c_e - c_0) / (t_e - t_0),
        "counting_cpu": results["counting_seconds"] / (t_e - t_0),
        "peak_rss_mib": results["peak_rss_mib"],
        "scrapes": [{k: v for k, v in s.items() if k != "body"} for s in scrapes],
        "scrape_seconds": [s["seconds"] for s in answered],
        "scrape_seconds_text": [s["seconds"] for s in answered if not s["openmetrics"]],
        "scrape_seconds_openmetrics": [
            s["seconds"] for s in answered if s["openmetrics"]
        ],
        "scrape_failures": len(scrapes) - len(answered),
        "metrics_checks": checks,
        "states": results["states"],
        "as_expected": results["as_expected"],
        "error_count": results["error_count"],
        "errors": results["errors"],
        "probes": len(results["ends"]),
        "stop_seconds": stop_seconds,
        "change_lines": sum(" is now " in line for line in lines),
        "error_lines": [
            line
            for line in lines
            if "Traceback" in line or "#error]" in line or "#critical]" in line
        ][:5],
        "reactor": reactor[0].rstrip(".") if reactor else "?",
        "gc_longest_pause": results["gc_longest_pause"],
        "gc_full_collections": results["gc_full_collections"],
    }
