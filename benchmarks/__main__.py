"""
``python -m benchmarks [--quick] [--only SCENARIO ...] [--json FILE]``

Runs every scenario, each side (txportend, portend) in its own fresh
process, and prints one table: the figure for each side, their ratio, the
target and whether it is met. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from ._common import HERE
from ._report import Row, machine, progress, sanitise, table
from .scenarios_waiting import (
    scenario_assert_free,
    scenario_cli,
    scenario_free_load,
    scenario_single,
    scenario_waits_1000,
    scenario_waits_10000,
)
from .scenarios_watching import scenario_daemon, scenario_monitors

SCENARIOS = (
    "single",
    "waits-1000",
    "waits-10000",
    "assert_free",
    "cli",
    "free-load",
    "monitors-10000",
    "daemon-10000",
)
ALIASES = {"1": "single", "2": "waits-1000", "3": "waits-10000", "4": "assert_free"}
ALIASES.update({"5": "cli", "6": "free-load", "7": "monitors-10000"})
ALIASES["8"] = "daemon-10000"


RUNNERS: dict[str, Callable[[bool, int, dict[str, Any]], list[Row]]] = {
    "single": scenario_single,
    "waits-1000": scenario_waits_1000,
    "waits-10000": scenario_waits_10000,
    "assert_free": scenario_assert_free,
    "cli": scenario_cli,
    "free-load": scenario_free_load,
    "monitors-10000": scenario_monitors,
    "daemon-10000": scenario_daemon,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer trials: a smoke run"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[*SCENARIOS, *ALIASES],
        metavar="SCENARIO",
        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)} or 1-8",
    )
    parser.add_argument(
        "--json", metavar="FILE", help="also write every figure to FILE"
    )
    parser.add_argument(
        "--probe-cost",
        action="store_true",
        help="after the table, time a probe layer by layer (benchmarks.probe_cost)",
    )
    parser.add_argument(
        "--seed", type=int, default=20240601, help="seed for the change delays"
    )
    args = parser.parse_args(argv)
    chosen = [ALIASES.get(s, s) for s in (args.only or SCENARIOS)]
    info = machine()
    info["load_before"] = [round(x, 2) for x in os.getloadavg()]
    raw: dict[str, Any] = {}
    rows: list[Row] = []
    started = time.monotonic()
    for name in SCENARIOS:
        if name in chosen:
            progress(f"scenario {name}")
            rows += RUNNERS[name](args.quick, args.seed, raw)
    info["load_after"] = [round(x, 2) for x in os.getloadavg()]
    info["seconds"] = round(time.monotonic() - started, 1)
    print(
        f"txportend {info['txportend']} vs portend {info['portend']}; "
        f"Twisted {info['twisted']}, {info['implementation']} {info['python']}, "
        f"{info['system']}, {info['cpus']} CPUs, {info.get('ram_gib', '?')} GiB RAM; "
        f"load average {info['load_before'][0]} before, {info['load_after'][0]} after; "
        f"{'quick' if args.quick else 'full'} run, {info['seconds']} s"
    )
    print(table(rows))
    if args.probe_cost:
        progress("probe cost, layer by layer")
        print()
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, "child.py"), "probe_cost", "main"],
            input='{"argv": []}',
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tempfile.gettempdir(),
        )
        lines = done.stdout.strip().splitlines()[:-1]  # the last is the JSON
        print("\n".join(lines) if lines else sanitise(done.stderr.strip()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"machine": info, "rows": [asdict(r) for r in rows], "raw": raw},
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
