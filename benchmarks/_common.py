"""
What the scenarios share: statistics, CPU and memory readings, the helper
server client, and running one side of a scenario in a fresh process.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
LOOPBACK = "127.0.0.1"


# -- statistics ---------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


# -- this process -------------------------------------------------------------


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread, so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mib() -> float:
    """Peak resident set size of this process (``ru_maxrss``, KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def raise_nofile(wanted: int) -> tuple[int, int]:
    """
    Raise the soft RLIMIT_NOFILE towards ``wanted`` (never above the hard
    limit). Return the (soft, hard) limits in force afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    target = min(max(wanted, soft), ceiling)
    if target != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


# -- the helper server --------------------------------------------------------


class HelperServer:
    """
    A client for ``_server.py`` running in its own process: binds ports and
    makes them listen or close at a given ``time.monotonic()``.
    """

    def __init__(self, lifetime: float = 600.0) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, "_server.py"),
                "--lifetime",
                str(lifetime),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=tempfile.gettempdir(),
        )

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message).encode() + b"\n")
        self._proc.stdin.flush()

    def _reply(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the helper server exited")
        result: dict[str, Any] = json.loads(line)
        return result

    def bind(self, n: int, host: str = LOOPBACK) -> list[int]:
        """Bind ``n`` ports that refuse connections (bound, not listening)."""
        self._send({"op": "bind", "n": n, "host": host})
        ports: list[int] = self._reply()["ports"]
        return ports

    def listen(self, ports: Sequence[int], at: float = 0.0) -> None:
        """Ask for ``listen()`` on ``ports`` at monotonic time ``at``."""
        self._send({"op": "listen", "ports": list(ports), "at": at})

    def close(self, ports: Sequence[int], at: float = 0.0) -> None:
        """Ask for ``close()`` of ``ports`` at monotonic time ``at``."""
        self._send({"op": "close", "ports": list(ports), "at": at})

    def times(self) -> list[float]:
        """The monotonic times of the last listen/close asked for."""
        times: list[float] = self._reply()["times"]
        return times

    def stop(self) -> None:
        try:
            self._send({"op": "quit"})
            self._reply()
        except (OSError, RuntimeError, ValueError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def __enter__(self) -> HelperServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- one side of a scenario in a fresh process --------------------------------


@dataclass
class ChildResult:
    ok: bool
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_child(
    module: str, function: str, params: dict[str, Any], timeout: float
) -> ChildResult:
    """
    Run ``benchmarks.<module>.<function>(**params)`` in a fresh interpreter
    and return the JSON it prints on its last stdout line.

    The child starts from a temporary directory with this package loaded by
    file location, so ``txportend`` and ``portend`` are imported from where
    they are installed, not from the working tree.
    """
    command = [sys.executable, os.path.join(HERE, "_child.py"), module, function]
    try:
        done = subprocess.run(
            command,
            input=json.dumps(params),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=tempfile.gettempdir(),
            env=_absolute_pythonpath(),
        )
    except subprocess.TimeoutExpired:
        return ChildResult(False, error=f"timed out after {timeout:.0f} s")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return ChildResult(False, error=f"exit {done.returncode}: " + " | ".join(tail))
    try:
        data = json.loads(lines[-1])
    except ValueError:
        return ChildResult(False, error=f"bad output: {lines[-1][:200]}")
    if "unavailable" in data:
        return ChildResult(False, data, error=str(data["unavailable"]))
    return ChildResult(True, data)


def _absolute_pythonpath() -> dict[str, str]:
    """The environment, with a relative ``PYTHONPATH`` (``PYTHONPATH=.``)
    made absolute: the child starts in another directory."""
    env = dict(os.environ)
    if env.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.pathsep.join(
            os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p
        )
    return env


def module_available(name: str) -> str | None:
    """``None`` when ``name`` imports, else why not (one line)."""
    try:
        __import__(name)
    except Exception as e:  # any import failure means "not available"
        return f"{name} not available ({type(e).__name__}: {e})"
    return None


def monotonic_sleep_until(when: float) -> None:
    """Sleep until ``time.monotonic()`` reaches ``when`` (bounded: 60 s)."""
    for _ in range(1000):
        left = when - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.06))
