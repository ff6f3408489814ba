"""Shared helpers of the benchmarks: medians with their spread, the machine, rich tables.

A benchmark prints ratios against a raw baseline measured in the same run, as the median over
rounds with the min..max of those rounds, and a verdict against the figure's goal.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

from rich.console import Console
from rich.table import Table

__all__ = ["Spread", "spread", "percentile", "Figure", "figure", "judge", "console", "machine",
           "print_machine", "print_figures", "write_json", "timed", "skip"]

console = Console(width=int(os.environ.get("BENCH_WIDTH", "150")), highlight=False)


@dataclass
class Spread:
    """Median of a figure over rounds, with its min and max."""

    median: float
    low: float
    high: float
    n: int

    def fmt(self, spec: str = ".2f", suffix: str = "") -> str:
        if self.n == 1:
            return f"{self.median:{spec}}{suffix} (1 round)"
        return f"{self.median:{spec}}{suffix} ({self.low:{spec}}–{self.high:{spec}})"


def spread(values: Sequence[float]) -> Spread:
    vals = [float(v) for v in values]
    return Spread(statistics.median(vals), min(vals), max(vals), len(vals))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation (numpy's default)."""
    import numpy as np
    return float(np.percentile(np.asarray(values, dtype=float), q))


@dataclass
class Figure:
    """One measured figure: what, its value over rounds, the goal and whether it is met."""

    name: str
    value: Spread
    shown: str                      # the value as printed (median and spread, with units)
    goal: str = ""                  # e.g. ">= 0.8x"; empty when the figure is informational
    met: Optional[bool] = None      # None when there is no goal
    detail: str = ""                # the raw numbers behind a ratio
    extra: Dict[str, Any] = field(default_factory=dict)


def judge(value: float, goal: str) -> Optional[bool]:
    """``goal`` like ">= 0.99", "<= 1.5x"; None when empty."""
    if not goal:
        return None
    op, num = goal.split()[:2]
    target = float(num.rstrip("x×"))
    return value >= target if op == ">=" else value <= target


def figure(name: str, values: Sequence[float], *, spec: str = ".2f", suffix: str = "", goal: str = "",
           detail: str = "", **extra: Any) -> Figure:
    s = spread(values)
    return Figure(name, s, s.fmt(spec, suffix), goal, judge(s.median, goal), detail, dict(extra))


def print_figures(title: str, figures: List[Figure]) -> None:
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("figure", overflow="fold")
    table.add_column("median (min–max over rounds)", overflow="fold")
    table.add_column("goal", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("raw numbers (medians)", overflow="fold")
    for f in figures:
        verdict = "" if f.met is None else ("met" if f.met else "NOT MET")
        style = None if f.met is None else ("green" if f.met else "bold red")
        table.add_row(f.name, f.shown, f.goal or "—", verdict, f.detail, style=style)
    console.print(table)


def machine() -> Dict[str, Any]:
    """What the figures were measured on."""
    info: Dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "?")
    except OSError:
        info["cpu"] = platform.processor() or "?"
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    versions = {}
    for mod in ("proxistore", "numpy", "faiss", "pyarrow", "fastavro", "hnswlib", "psutil"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing optional library is just not listed
            pass
    info["versions"] = versions
    return info


def print_machine(extra: str = "") -> Dict[str, Any]:
    m = machine()
    libs = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    console.print(f"machine: {m['cpus']} CPUs ({m['cpu']}), Python {m['python']}, load avg (1 min) "
                  f"{m.get('load_avg_1m', '?')}; {libs}{'; ' + extra if extra else ''}")
    return m


def write_json(path: Optional[str], payload: Dict[str, Any]) -> None:
    if not path:
        return

    def default(o: Any) -> Any:
        if hasattr(o, "__dataclass_fields__"):
            return asdict(o)
        if hasattr(o, "item"):
            return o.item()
        return str(o)

    with open(path, "w") as f:
        json.dump(payload, f, indent=2, default=default)
    console.print(f"figures written to {path}")


def timed(fn: Callable[[], Any]) -> float:
    import time
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def skip(message: str) -> int:
    print(f"SKIP: {message}", file=sys.stdout)
    return 0
