"""A/B: two configs on one workload, run alternately (A B A B ...), each run on a fresh directory.

For every metric of :func:`proxistore.bench.report.summarise` it reports the median of A's runs
and of B's, their ratio B/A, and a verdict by this rule (:data:`RULE`). A metric "differs" when

1. the closest runs of A and B are further apart than SEPARATION (4) times the wider of the two
   configs' own ranges (min..max over their runs): the ranges do not overlap, and the gap is far
   beyond the run-to-run spread. Counts (flushes, segments, rows) are compared as ratios, on a
   log(1 + n) scale, so that 7 against 10 flushes is as far apart as 70 against 100;
2. the medians differ by at least MIN_CHANGE (5%);
3. a count differs by more than 1, the jitter of a count that depends on when a background tick
   falls.

Otherwise it says "no difference", which means "not shown by these runs", not "equal".

Why this rule: with the few runs a benchmark can afford, a rank test cannot reach significance
(at 3 runs a side the smallest two-sided Mann-Whitney p is 0.1), and plain non-overlap of two
ranges happens by chance 10% of the time per metric for identical configs, so a report of 50
metrics would almost always "find" something. Run-to-run noise is also far from Gaussian: a burst
of slow fsyncs from another process can land on all three runs of one side, and a p99 over a few
samples is their maximum. So rule 1 asks for a wide margin: under Gaussian noise a chance verdict
is about 1 in 5,000 per metric at 3 runs a side. Measured on 60 identical-config reports (3 runs a
side) of the tiny test workload on a busy 2-core machine, a margin of 3 gave 3 reports with a
chance "differs" and a margin of 4 one (a 0.1% difference in disk bytes, which rule 2 removes);
the rule as a whole gave none. The price is sensitivity: at 3 runs a side a difference must be
around 10 standard deviations of the run-to-run noise to be found half the time. A "differs" is
a real difference; to see smaller ones, make each run's figures steadier (a longer workload)
rather than adding runs: ranges widen as runs are added, so this rule is meant for 2 to 5 runs a
side.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .report import metric_info, summarise
from .runner import Progress, prepare, run
from .workload import Workload

__all__ = ["RULE", "SEPARATION", "MIN_CHANGE", "COUNT_RESOLUTION", "Side", "Comparison", "AbResult", "compare", "run_ab"]

#: How many times the wider of the two ranges the gap between A's and B's runs must exceed.
SEPARATION = 4.0
#: The least relative difference of the medians that is called a difference.
MIN_CHANGE = 0.05
#: The least absolute difference of a count (flushes, segments, rows) that is called a difference.
COUNT_RESOLUTION = 1.0
RULE = ("differs when the closest runs of A and B are further apart than 4 times the wider of the two configs' "
        "ranges (min-max over their runs, so the ranges do not overlap; counts compared on a log(1+n) scale), "
        "the medians differ by at least 5%, and a count differs by more than 1; otherwise no difference "
        "(not shown by these runs)")
NO_DIFFERENCE = "no difference"


@dataclass
class Side:
    """One config's values of one metric over its runs (None where a run had no value)."""

    values: List[Optional[float]]

    @property
    def present(self) -> List[float]:
        return [float(v) for v in self.values if v is not None]

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.present) if self.present else None

    @property
    def low(self) -> Optional[float]:
        return min(self.present) if self.present else None

    @property
    def high(self) -> Optional[float]:
        return max(self.present) if self.present else None

    def to_dict(self) -> Dict[str, Any]:
        return {"median": self.median, "min": self.low, "max": self.high, "values": self.values}


@dataclass
class Comparison:
    """One metric: A's and B's runs, the ratio of medians B/A, and the verdict under :data:`RULE`."""

    name: str
    a: Side
    b: Side
    ratio: Optional[float]
    verdict: str
    better: Optional[str] = None

    @property
    def differs(self) -> bool:
        return self.verdict.startswith("differs")

    def to_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "a": self.a.to_dict(), "b": self.b.to_dict(), "ratio": self.ratio,
                "verdict": self.verdict, "better": self.better, "help": metric_info(self.name).help}


def compare(name: str, a_values: Sequence[Optional[float]], b_values: Sequence[Optional[float]]) -> Comparison:
    """The verdict for one metric under :data:`RULE`."""
    a, b = Side(list(a_values)), Side(list(b_values))
    pa, pb = a.present, b.present
    ratio = None
    if a.median is not None and b.median is not None:
        if a.median != 0:
            ratio = b.median / a.median
        elif b.median == 0:
            ratio = 1.0
    if not pa and not pb:
        return Comparison(name, a, b, ratio, "n/a (no values)")
    if not pa or not pb:
        return Comparison(name, a, b, ratio, f"only in {'B' if pb else 'A'}")
    if len(pa) < 2 or len(pb) < 2:
        return Comparison(name, a, b, ratio, "n/a (needs 2 runs a side)")
    count = metric_info(name).unit == "count"
    gap = max(min(pb) - max(pa), min(pa) - max(pb))    # > 0 only when the ranges do not overlap
    small = a.median != 0 and abs(b.median / a.median - 1.0) < MIN_CHANGE  # type: ignore[operator]
    if gap <= 0 or small or (count and gap <= COUNT_RESOLUTION):
        return Comparison(name, a, b, ratio, NO_DIFFERENCE)
    if count and min(pa + pb) >= 0:                    # counts as ratios: 7 vs 10 is as far as 70 vs 100
        pa, pb = [math.log1p(v) for v in pa], [math.log1p(v) for v in pb]
        gap = max(min(pb) - max(pa), min(pa) - max(pb))
    if gap <= SEPARATION * max(max(pa) - min(pa), max(pb) - min(pb)):
        return Comparison(name, a, b, ratio, NO_DIFFERENCE)
    higher = min(pb) > max(pa)
    better = metric_info(name).better
    verdict = "differs"
    if better is not None:
        verdict += " (B better)" if higher == (better == "higher") else " (B worse)"
    return Comparison(name, a, b, ratio, verdict, better)


@dataclass
class AbResult:
    """Every run's record and metrics for both configs, and the per-metric comparisons."""

    workload: Workload
    config_a: str
    config_b: str
    runs_a: List[Dict[str, Any]] = field(default_factory=list)
    runs_b: List[Dict[str, Any]] = field(default_factory=list)
    metrics_a: List[Dict[str, Optional[float]]] = field(default_factory=list)
    metrics_b: List[Dict[str, Optional[float]]] = field(default_factory=list)

    def comparisons(self) -> List[Comparison]:
        runs = self.metrics_a + self.metrics_b
        # a metric no run has a value for (close.seconds of crash runs...) is not compared
        names = [n for n in dict.fromkeys(n for m in runs for n in m) if any(m.get(n) is not None for m in runs)]
        return [compare(n, [m.get(n) for m in self.metrics_a], [m.get(n) for m in self.metrics_b]) for n in names]

    def representative(self, side: str) -> Dict[str, Any]:
        """The run of ``side`` ("a" or "b") whose write throughput is the median one (for plots)."""
        runs, metrics = (self.runs_a, self.metrics_a) if side == "a" else (self.runs_b, self.metrics_b)
        order = sorted(range(len(runs)), key=lambda i: metrics[i].get("write.rows_per_s") or 0.0)
        return runs[order[len(order) // 2]]

    def to_dict(self) -> Dict[str, Any]:
        comps = self.comparisons()
        return {"workload": self.workload.to_dict(), "repeat": len(self.runs_a), "order": "A B A B ...",
                "a": {"config": self.config_a, "runs": self.metrics_a},
                "b": {"config": self.config_b, "runs": self.metrics_b},
                "rule": RULE, "metrics": [c.to_dict() for c in comps],
                "differs": [c.name for c in comps if c.differs]}


def run_ab(wl: Workload, config_a: Any, config_b: Any, repeat: int, *, workdir: Optional[str] = None,
           progress: Optional[Progress] = None,
           on_run: Optional[Callable[[str, int, Mapping[str, Any]], None]] = None) -> AbResult:
    """Run A then B, ``repeat`` times, each on a fresh directory; ``on_run(side, i, metrics)`` after each."""
    if repeat < 2:
        raise ValueError("an A/B comparison needs at least 2 runs of each config to measure their spread")
    result = AbResult(wl, str(config_a), str(config_b))
    prepared = prepare(wl)
    for i in range(repeat):
        for side, config in (("A", config_a), ("B", config_b)):
            record = run(wl, config, workdir=workdir, progress=progress, prepared=prepared)
            metrics = summarise(record)
            runs, ms = (result.runs_a, result.metrics_a) if side == "A" else (result.runs_b, result.metrics_b)
            runs.append(record)
            ms.append(metrics)
            if on_run is not None:
                on_run(side, i, metrics)
    return result
