"""
Scenario 1: one wait at a time; the port changes 50-250 ms (seeded random)
after the wait starts.

For ``occupied`` the helper server holds a bound, not yet listening socket
(connections are refused) and calls ``listen()`` at the scheduled time; for
``free`` it listens from the start and closes at the scheduled time.
Detection latency is the time the wait returned minus the time the helper's
``listen()``/``close()`` returned; CPU per wait is this process's
``getrusage(RUSAGE_SELF)`` (all threads) from the start of the wait to its
end.
"""

from __future__ import annotations

import errno
import random
import socket
import time
from collections.abc import Callable
from typing import Any

from ._common import LOOPBACK, HelperServer, cpu_seconds, module_available

WAIT_TIMEOUT = 5.0
WARMUP_DELAY = 0.02
#: The floor's fixed pause: about the longest that still meets the latency
#: targets here (a change is seen within one pause, at a uniformly random
#: point of it, plus the sleep's own overshoot: 8 ms gave a median of 5 to
#: 6 ms on the reference machine).
FLOOR_PACE = 0.006


def _delays(trials: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(0.05, 0.25) for _ in range(trials)]


class _Trials:
    """Drives the helper for one trial at a time and collects the figures."""

    def __init__(self, server: HelperServer, state: str) -> None:
        self.server = server
        self.state = state
        self.latencies: list[float] = []
        self.cpu: list[float] = []
        self.wall: list[float] = []
        self.errors: list[str] = []
        self.port = 0
        self.cpu0 = self.start = 0.0

    def prepare(self, delay: float) -> None:
        (self.port,) = self.server.bind(1)
        if self.state == "free":
            self.server.listen([self.port])
            self.server.times()
            self.server.close([self.port], time.monotonic() + delay)
        else:
            self.server.listen([self.port], time.monotonic() + delay)
        self.cpu0 = cpu_seconds()
        self.start = time.monotonic()

    def finished(self, error: str | None, record: bool) -> None:
        end = time.monotonic()
        cpu = cpu_seconds() - self.cpu0
        (changed,) = self.server.times()
        if self.state == "occupied":
            self.server.close([self.port])
            self.server.times()
        if not record:
            return
        if error is not None:
            self.errors.append(error)
        elif end < changed:
            self.errors.append("returned before the change")
        else:
            self.latencies.append(end - changed)
            self.cpu.append(cpu)
            self.wall.append(end - self.start)

    def result(self) -> dict[str, Any]:
        return {
            "latencies": self.latencies,
            "cpu": self.cpu,
            "wall": self.wall,
            "errors": self.errors,
        }


def _run_sync(
    wait: Callable[[str, int, float], object], state: str, trials: int, seed: int
) -> dict[str, Any]:
    with HelperServer() as server:
        t = _Trials(server, state)
        for i, delay in enumerate([WARMUP_DELAY, *_delays(trials, seed)]):
            t.prepare(delay)
            try:
                wait(LOOPBACK, t.port, WAIT_TIMEOUT)
                error = None
            except Exception as e:
                error = f"{type(e).__name__}: {e}"
            t.finished(error, record=i > 0)
        return t.result()


def portend_side(state: str, trials: int, seed: int) -> dict[str, Any]:
    """portend.occupied / portend.free, called in this thread."""
    import portend

    return _run_sync(getattr(portend, state), state, trials, seed)


def _bare_wait(want_occupied: bool) -> Callable[[str, int, float], None]:
    """The cheapest poller one can write in Python: one plain connect(),
    then ``time.sleep(FLOOR_PACE)``, no library at all."""

    def wait(host: str, port: int, timeout: float) -> None:
        for _ in range(int(timeout / FLOOR_PACE) + 2):  # bounded by the timeout
            with socket.socket() as s:
                code = s.connect_ex((host, port))
            if (code == 0) == want_occupied and code in (0, errno.ECONNREFUSED):
                return
            time.sleep(FLOOR_PACE)
        raise TimeoutError(f"port {port} did not change in {timeout} s")

    return wait


def floor_side(state: str, trials: int, seed: int) -> dict[str, Any]:
    """Not a library: the floor under any poller that meets the latency
    targets (see :data:`FLOOR_PACE`), measured the same way."""
    return _run_sync(_bare_wait(state == "occupied"), state, trials, seed)


def blocking_side(state: str, trials: int, seed: int) -> dict[str, Any]:
    """txportend.blocking.occupied / free, called in this thread."""
    why = module_available("txportend.blocking")
    if why:
        return {"unavailable": why}
    from txportend import blocking

    return _run_sync(getattr(blocking, state), state, trials, seed)


def deferred_side(state: str, trials: int, seed: int) -> dict[str, Any]:
    """txportend.occupied / free (Deferred API) on the default global reactor."""
    from twisted.internet import task
    from twisted.internet.defer import Deferred

    import txportend

    wait = getattr(txportend, state)
    out: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        with HelperServer() as server:
            t = _Trials(server, state)
            for i, delay in enumerate([WARMUP_DELAY, *_delays(trials, seed)]):
                t.prepare(delay)
                try:
                    await wait(LOOPBACK, t.port, WAIT_TIMEOUT, reactor=reactor)
                    error = None
                except Exception as e:
                    error = f"{type(e).__name__}: {e}"
                t.finished(error, record=i > 0)
            out.update(t.result())
        out["reactor"] = type(reactor).__name__

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    return out
