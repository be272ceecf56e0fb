"""
Scenario 5: command-line start-up. ``python -m txportend 127.0.0.1:P
occupied`` against ``python -m portend 127.0.0.1:P occupied`` on a port the
helper server holds open, runs interleaved; whole-process wall time, and the
CPU and peak RSS of each run from ``wait4()``.

Every run starts in a temporary directory, so both packages are imported
from where they are installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from ._common import LOOPBACK, HelperServer

RUN_TIMEOUT = 30.0


def _run_once(argv: list[str]) -> tuple[int, float, float, float, str]:
    """(exit status, wall s, CPU s, peak RSS MiB, stderr tail) of one run."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tempfile.gettempdir(),
    )
    killer = threading.Timer(RUN_TIMEOUT, proc.kill)
    killer.start()
    try:
        _pid, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:]
    proc.stderr.close()
    cpu = usage.ru_utime + usage.ru_stime
    return proc.returncode, wall, cpu, usage.ru_maxrss / 1024.0, " ".join(err)


def run(runs: int) -> dict[str, Any]:
    commands = {
        "txportend": [sys.executable, "-m", "txportend"],
        "portend": [sys.executable, "-m", "portend"],
    }
    out: dict[str, Any] = {
        side: {"wall": [], "cpu": [], "rss": []} for side in commands
    }
    with HelperServer() as server:
        (port,) = server.bind(1)
        server.listen([port])
        server.times()
        target = [f"{LOOPBACK}:{port}", "occupied", "-t", "10"]
        for side, command in commands.items():  # warm-up, and is it there at all?
            code, _wall, _cpu, _rss, err = _run_once(command + target)
            if code != 0:
                out[side] = {"unavailable": f"exit {code}: {err}"}
        for _ in range(runs):
            for side, command in commands.items():
                if "unavailable" in out[side]:
                    continue
                code, wall, cpu, rss, err = _run_once(command + target)
                if code != 0:
                    out[side] = {"unavailable": f"exit {code}: {err}"}
                    continue
                out[side]["wall"].append(wall)
                out[side]["cpu"].append(cpu)
                out[side]["rss"].append(rss)
    return out
