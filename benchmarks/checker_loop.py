"""
Scenario 4: the blocking API's per-call overhead. ``Checker().assert_free``
on a loopback port that refuses connections (a socket bound but not
listening), called in a loop: wall time and CPU (``RUSAGE_SELF``, every
thread, so a private reactor thread counts) per call.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from ._common import LOOPBACK, cpu_seconds, module_available


def _loop(checker: Any, calls: int, batches: int, max_seconds: float) -> dict[str, Any]:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind((LOOPBACK, 0))  # bound, never listening: connections are refused
    port = holder.getsockname()[1]
    try:
        for _ in range(20):  # warm-up: imports, a reactor thread starting, caches
            checker.assert_free(LOOPBACK, port)
        per_call: list[float] = []
        cpu_per_call: list[float] = []
        for _ in range(batches):
            c0 = cpu_seconds()
            t0 = time.perf_counter()
            done = 0
            for done in range(1, calls + 1):  # noqa: B007 - the count is used below
                checker.assert_free(LOOPBACK, port)
                if time.perf_counter() - t0 > max_seconds:
                    break
            per_call.append((time.perf_counter() - t0) / done)
            cpu_per_call.append((cpu_seconds() - c0) / done)
    finally:
        holder.close()
    return {"per_call": per_call, "cpu_per_call": cpu_per_call}


def portend_side(calls: int, batches: int, max_seconds: float) -> dict[str, Any]:
    import portend

    return _loop(portend.Checker(), calls, batches, max_seconds)


def blocking_side(calls: int, batches: int, max_seconds: float) -> dict[str, Any]:
    why = module_available("txportend.blocking")
    if why:
        return {"unavailable": why}
    from txportend import blocking

    return _loop(blocking.Checker(), calls, batches, max_seconds)
