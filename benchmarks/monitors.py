"""
Scenario 7: ``n`` :class:`txportend.Monitor` services (``interval`` seconds
apart, the default timeout) on as many closed loopback ports, on the default
global reactor of this process, for ``duration`` seconds.

The ports are bound, not listening, by the helper server, so every probe is
refused and nothing else can listen on them meanwhile. The monitors run in
one :class:`~twisted.application.service.MultiService`, started in one go.

How probes are counted, without touching txportend or the reactor: each
probe that ends leaves a new :class:`txportend.LastProbe` on its monitor
(``last_probe``, with ``at``, the reactor's ``seconds()`` when it ended). A
``LoopingCall`` on the same reactor looks at every monitor once a second and
records the ``at`` of each ``last_probe`` it has not seen yet. A monitor
probes every ``interval`` seconds, so no probe is missed as long as two
looks are less than ``interval`` apart (the figures check that:
``longest_between_looks``). Probes are then counted per second of
the run by when they ended, not by when they were seen. The looking costs
CPU in the measured process too; its share is reported apart
(``counting_cpu``, included in the CPU figures).

Figures:

* probes per second over the steady part (from ``interval`` seconds after
  the start, when the first probes, spread by the reactor's
  :class:`txportend.Pacing`, have all been made, to the end): the mean, the
  busiest and the quietest second; and the busiest 100 ms (a reactor held
  up, by the garbage collector say, runs the probes that fell due meanwhile
  in one turn);
* CPU: this process's ``getrusage(RUSAGE_SELF)`` (every thread) over the
  steady part and over the whole run, as a fraction of one core, read by a
  sampler thread at those times so a busy reactor can't delay the readings;
* peak RSS (``ru_maxrss``) at the end; the cyclic garbage collector's
  pauses;
* the monitors' states at the end (all should read ``free``), how many
  probes could not be made, and what the reactor held after every monitor
  was stopped (no DelayedCall and no selectable of theirs should be left).
"""

from __future__ import annotations

import time
from itertools import pairwise
from typing import Any

from ._common import LOOPBACK, HelperServer, cpu_seconds, peak_rss_mib
from .many_waits import _GCPauses, _Sampler


def _per_second(ends: list[float], start: float, duration: float) -> list[int]:
    """How many of ``ends`` fall in each whole second of the run."""
    bins = [0] * int(duration)
    for at in ends:
        second = int(at - start)
        if 0 <= second < len(bins):
            bins[second] += 1
    return bins


def _busiest_tenth(ends: list[float], start: float, first: float) -> int:
    """The most probes that ended in one 100 ms slice from ``first`` on."""
    slices: dict[int, int] = {}
    for at in ends:
        if at - start >= first:
            key = int((at - start) * 10)
            slices[key] = slices.get(key, 0) + 1
    return max(slices.values(), default=0)


def _selectables(reactor: Any) -> int:
    """The reactor's readers and writers, but for its own signal wakers
    (one of which it adds after the scenario starts)."""
    return sum(
        type(selectable).__module__ != "twisted.internet._signals"
        for selectable in {*reactor.getReaders(), *reactor.getWriters()}
    )


def deferred_side(
    n: int, interval: float, duration: float, budget: float | None = None
) -> dict[str, Any]:
    """``n`` monitors on the default global reactor for ``duration`` s; with
    ``budget``, on a :class:`txportend.Pacing` of that many probes a second
    instead of the reactor's own (the quick run scales it down with ``n``)."""
    from twisted.application.service import MultiService
    from twisted.internet import reactor as global_reactor
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    import txportend

    out: dict[str, Any] = {}

    def main(reactor: Any) -> Deferred[None]:
        server = HelperServer(lifetime=duration + 120)
        ports = server.bind(n)
        pacing = None if budget is None else txportend.Pacing(reactor, budget=budget)
        monitors = [
            txportend.Monitor(LOOPBACK, port, interval=interval, pacing=pacing)
            for port in ports
        ]
        services = MultiService()
        for monitor in monitors:
            monitor.setServiceParent(services)
        seen: list[object] = [None] * n
        ends: list[float] = []
        counting = [0.0]
        looks: list[float] = []

        def look() -> None:
            began = time.thread_time()
            looks.append(time.monotonic())
            for i, monitor in enumerate(monitors):
                last = monitor.last_probe
                if last is not seen[i] and last is not None:
                    seen[i] = last
                    ends.append(last.at)
            counting[0] += time.thread_time() - began

        pauses = _GCPauses()
        t0 = time.monotonic()
        start = (t0, cpu_seconds())
        sampler = _Sampler([t0 + interval, t0 + duration])
        sampler.start()
        r0 = reactor.seconds()
        base_calls = len(reactor.getDelayedCalls())
        services.startService()
        started = time.monotonic() - t0
        looker = task.LoopingCall(look)
        looker.clock = reactor
        looker.start(1.0, now=False)

        def finish() -> Any:
            look()
            looker.stop()
            states: dict[str, int] = {}
            for monitor in monitors:
                states[monitor.state.value] = states.get(monitor.state.value, 0) + 1
            errors = [
                f"{type(m.last_probe.error).__name__}: {m.last_probe.error}"
                for m in monitors
                if m.last_probe is not None and m.last_probe.error is not None
            ]
            durations = [m.last_probe.duration for m in monitors if m.last_probe]
            stopped = services.stopService()
            left_calls = len(reactor.getDelayedCalls()) - base_calls
            left_selectables = _selectables(reactor)
            sampler.join(timeout=10)
            server.stop()
            (t_steady, c_steady), (t_end, c_end) = sampler.readings
            per_second = _per_second(ends, r0, duration)
            steady = per_second[int(interval) :]
            mean = sum(steady) / len(steady) if steady else 0.0
            out.update(
                {
                    "n": n,
                    "interval": interval,
                    "duration": duration,
                    "start_seconds": started,
                    "probes": len(ends),
                    # Below ``interval``: no monitor probed twice between
                    # two looks, so every probe was counted.
                    "longest_between_looks": max(
                        (b - a for a, b in pairwise([t0, *looks])), default=0.0
                    ),
                    "per_second": per_second,
                    "steady_mean": mean,
                    "steady_max": max(steady, default=0),
                    "steady_min": min(steady, default=0),
                    "busiest_100ms": _busiest_tenth(ends, r0, interval),
                    "steady_cpu": (c_end - c_steady) / (t_end - t_steady),
                    "total_cpu": (c_end - start[1]) / (t_end - start[0]),
                    "counting_cpu": counting[0] / (t_end - start[0]),
                    "peak_rss_mib": peak_rss_mib(),
                    "states": states,
                    "error_count": len(errors),
                    "errors": errors[:5],
                    "max_probe_seconds": max(durations, default=0.0),
                    "left_delayed_calls": left_calls,
                    "left_selectables": left_selectables,
                    **pauses.summary(),
                }
            )
            return stopped

        return task.deferLater(reactor, duration, finish)

    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    out["reactor"] = type(global_reactor).__name__
    return out
