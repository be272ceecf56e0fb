"""
The benchmarks' report: a row per figure, the formatting of figures, the
verdicts against the targets, the child-process runner's wrapper, the
machine's description and the table.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import sys
from dataclasses import dataclass
from typing import Any

from ._common import ChildResult, run_child


@dataclass
class Row:
    scenario: str
    metric: str
    txportend: float | None
    portend: float | None
    unit: str
    target: str
    verdict: str  # PASS, FAIL, "n/a" or "-" (no target)
    note: str = ""


def fmt(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == math.inf:
        return "not all"
    if unit == "ms":
        return f"{value * 1e3:.1f} ms"
    if unit == "us":
        return f"{value * 1e6:.0f} us"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "%":
        return f"{value * 100:.0f} %"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    return f"{value:g}"


def sanitise(text: str) -> str:
    """Keep this machine's paths out of the report."""
    text = text.replace(sys.executable, "python").replace(sys.prefix, "<prefix>")
    return text.replace(os.path.expanduser("~"), "~")


def absolute(value: float | None, limit: float) -> str:
    if value is None or math.isnan(value):
        return "FAIL"
    return "PASS" if value <= limit else "FAIL"


def relative(tx: float | None, pd: float | None, limit: float) -> str:
    if tx is None or pd is None or not pd:
        return "n/a"
    return "PASS" if tx / pd <= limit else "FAIL"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def child(
    module: str, function: str, params: dict[str, Any], timeout: float
) -> ChildResult:
    progress(f"  {module}.{function} {json.dumps(params)}")
    result = run_child(module, function, params, timeout)
    if not result.ok:
        result.error = sanitise(result.error)
        progress(f"    -> not available: {result.error}")
    return result


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "system": f"{platform.system()} {platform.machine()}",
    }
    try:
        import psutil

        info["ram_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    for dist in ("twisted", "portend", "txportend"):
        try:
            from importlib.metadata import version

            info[dist] = version(dist)
        except Exception:
            info[dist] = "?"
    info["rlimit_nofile"] = list(resource.getrlimit(resource.RLIMIT_NOFILE))
    return info


def table(rows: list[Row]) -> str:
    header = ["scenario", "metric", "txportend", "portend", "ratio", "target", "result"]
    lines = [header]
    notes: list[str] = []
    for row in rows:
        ratio = ""
        if row.txportend is not None and row.portend:
            ratio = f"{row.txportend / row.portend:.2f}"
        result = row.verdict
        if row.note:
            if row.note not in notes:
                notes.append(row.note)
            result += f" [{notes.index(row.note) + 1}]"
        lines.append(
            [
                row.scenario,
                row.metric,
                fmt(row.txportend, row.unit),
                fmt(row.portend, row.unit),
                ratio,
                row.target,
                result,
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for i, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) for cell, w in zip(line, widths, strict=True)
            ).rstrip()
        )
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out += [f"[{i}] {note}" for i, note in enumerate(notes, 1)]
    return "\n".join(out)
