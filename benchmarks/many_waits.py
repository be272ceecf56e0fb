"""
Scenarios 2 and 3: many concurrent ``occupied`` waits in one process, on as
many ports, which the helper server opens together ``open_after`` seconds
after the waits start.

Figures per trial:

* how many waits completed (succeeded) and their detection latency: the time
  each wait returned minus the time the helper's ``listen()`` on that port
  returned;
* idle CPU: this process's ``getrusage(RUSAGE_SELF)`` CPU (every thread)
  between starting the waits and the opening, over the wall time of that
  window, as a fraction of one core. A sampler thread takes the reading at
  the opening time, so a busy reactor can't delay it. The last second before
  the opening is reported apart as ``steady_cpu``;
* peak RSS (``ru_maxrss``) of the process at the end;
* the cyclic garbage collector's pauses (``gc.callbacks``): how many full
  (generation 2) collections ran, their total and longest pause.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

from ._common import (
    LOOPBACK,
    HelperServer,
    cpu_seconds,
    monotonic_sleep_until,
    peak_rss_mib,
    raise_nofile,
)


class _Sampler(threading.Thread):
    """Reads this process's CPU at given monotonic times, off the reactor."""

    def __init__(self, times: list[float]) -> None:
        super().__init__(daemon=True)
        self.times = times
        self.readings: list[tuple[float, float]] = []

    def run(self) -> None:
        for when in self.times:
            monotonic_sleep_until(when)
            self.readings.append((time.monotonic(), cpu_seconds()))


class _GCPauses:
    """Times every collection of the cyclic garbage collector."""

    def __init__(self) -> None:
        self.started = 0.0
        self.total = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self.longest = 0.0
        gc.callbacks.append(self.callback)

    def callback(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self.started = now
            return
        generation = info["generation"]
        self.total[generation] += now - self.started
        self.count[generation] += 1
        self.longest = max(self.longest, now - self.started)

    def summary(self) -> dict[str, Any]:
        gc.callbacks.remove(self.callback)
        return {
            "gc_seconds": sum(self.total),
            "gc_full_collections": self.count[2],
            "gc_full_seconds": self.total[2],
            "gc_longest_pause": self.longest,
        }


def _summary(
    n: int,
    ports: list[int],
    opened: list[float],
    fired: dict[int, float],
    errors: list[str],
    start: tuple[float, float],
    all_started: float,
    sampler: _Sampler,
    gc_pauses: _GCPauses,
) -> dict[str, Any]:
    latencies = [fired[p] - t for p, t in zip(ports, opened, strict=True) if p in fired]
    early = sum(1 for x in latencies if x < 0)
    (t_steady, c_steady), (t_open, c_open) = sampler.readings
    t_start, c_start = start
    return {
        "n": n,
        "completed": len(latencies) - early,
        "early": early,
        "errors": errors[:5],
        "error_count": len(errors),
        "latencies": sorted(latencies),
        "open_spread": max(opened) - min(opened),
        "start_seconds": all_started - t_start,
        "idle_cpu": (c_open - c_start) / (t_open - t_start),
        "steady_cpu": (c_open - c_steady) / (t_open - t_steady),
        "peak_rss_mib": peak_rss_mib(),
        **gc_pauses.summary(),
    }


def deferred_side(
    n: int, open_after: float, detect_bound: float, state: str = "occupied"
) -> dict[str, Any]:
    """
    ``n`` txportend.occupied waits on the default global reactor; or, with
    ``state="free"``, ``n`` txportend.free waits on listening ports that the
    helper closes at the same time (a wait that returns before its port
    closed counts as ``early``).
    """
    limits = raise_nofile(n + 512)
    if limits[0] < n + 64:
        return {"unavailable": f"RLIMIT_NOFILE {limits} too low for {n} waits"}
    from twisted.internet import reactor as global_reactor
    from twisted.internet import task
    from twisted.internet.defer import Deferred, gatherResults

    import txportend

    out: dict[str, Any] = {}

    def main(reactor: Any) -> Deferred[None]:
        server = HelperServer()
        ports = server.bind(n)
        if state == "free":
            server.listen(ports)
            server.times()
        fired: dict[int, float] = {}
        errors: list[str] = []
        at = time.monotonic() + open_after
        sampler = _Sampler([at - min(1.0, open_after / 2), at])
        sampler.start()
        (server.close if state == "free" else server.listen)(ports, at)
        pauses = _GCPauses()
        start = (time.monotonic(), cpu_seconds())
        wait = getattr(txportend, state)

        def on_fire(_: object, port: int) -> None:
            fired[port] = time.monotonic()

        def on_error(failure: Any) -> None:
            errors.append(f"{failure.type.__name__}: {failure.value}")

        waits = []
        for port in ports:
            d = wait(LOOPBACK, port, open_after + detect_bound, reactor=reactor)
            d.addCallback(on_fire, port)
            d.addErrback(on_error)
            waits.append(d)
        all_started = time.monotonic()

        def done(_: object) -> None:
            sampler.join(timeout=open_after + detect_bound)
            opened = server.times()
            server.stop()
            out.update(
                _summary(
                    n, ports, opened, fired, errors, start, all_started, sampler, pauses
                )
            )

        return gatherResults(waits).addCallback(done)

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    out["reactor"] = type(global_reactor).__name__
    return out


def portend_side(n: int, open_after: float, detect_bound: float) -> dict[str, Any]:
    """``n`` threads, each calling portend.occupied."""
    limits = raise_nofile(n + 512)
    if limits[0] < n + 64:
        return {"unavailable": f"RLIMIT_NOFILE {limits} too low for {n} waits"}
    import portend

    fired: dict[int, float] = {}
    errors: list[str] = []
    with HelperServer() as server:
        ports = server.bind(n)
        at = time.monotonic() + open_after
        sampler = _Sampler([at - min(1.0, open_after / 2), at])
        sampler.start()
        server.listen(ports, at)
        pauses = _GCPauses()
        start = (time.monotonic(), cpu_seconds())

        def wait(port: int) -> None:
            try:
                portend.occupied(LOOPBACK, port, open_after + detect_bound)
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
            else:
                fired[port] = time.monotonic()

        threads = [threading.Thread(target=wait, args=(p,), daemon=True) for p in ports]
        for thread in threads:
            thread.start()
        all_started = time.monotonic()
        deadline = at + detect_bound + 5
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        sampler.join(timeout=open_after + detect_bound)
        opened = server.times()
        alive = sum(thread.is_alive() for thread in threads)
    result = _summary(
        n, ports, opened, fired, errors, start, all_started, sampler, pauses
    )
    result["threads_left"] = alive
    return result
