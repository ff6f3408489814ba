"""``--plot FILE.png``: memtable bytes, WAL bytes, write latency and segments over a run's time,
with every flush marked by the policy that triggered it.

matplotlib is an optional extra (``pip install 'proxistore[plot]'``) and is imported only here,
only when a plot is asked for; :func:`require` says so clearly before a long run starts. The
figure is drawn with matplotlib's object API on the Agg canvas, so no GUI backend or global
pyplot state is involved.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["PlotUnavailable", "require", "plot_run", "plot_ab"]

INSTALL_HINT = "pip install 'proxistore[plot]' (or: pip install matplotlib)"
#: One colour per policy name, in order of first appearance; the built-in names keep theirs.
_COLOURS = {"size": "tab:blue", "global_memory": "tab:red", "time": "tab:green", "wal_size": "tab:purple",
            "manual": "tab:orange"}
_SPARE = ("tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")
_ROWS = ("memtable", "wal", "latency", "segments")


class PlotUnavailable(RuntimeError):
    """``--plot`` was asked for but matplotlib is not installed."""


def require() -> None:
    """Raise :class:`PlotUnavailable` with the install command if matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable(f"--plot needs matplotlib, which is not installed: {INSTALL_HINT}") from None


def _figure(ncols: int) -> Tuple[Any, Any, Any]:
    require()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5 * ncols, 10), layout="constrained")
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(len(_ROWS), ncols, sharex="col", sharey="row", squeeze=False)
    return fig, canvas, axes


def _colour(policy: str, seen: Dict[str, str]) -> str:
    if policy not in seen:
        seen[policy] = _COLOURS.get(policy) or _SPARE[len([p for p in seen if p not in _COLOURS]) % len(_SPARE)]
    return seen[policy]


def _draw(axes: Sequence[Any], record: Mapping[str, Any], title: str, colours: Dict[str, str]) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ing = record["ingest"]
    s, w = ing["samples"], ing["writes"]
    mb = 1e6
    ax_mem, ax_wal, ax_lat, ax_seg = axes
    ax_mem.step(s["t"], [v / mb for v in s["memtable_bytes"]], where="post", color="black", lw=1.2,
                label="sampled (db.stats())")
    ax_mem.plot(w["t"], [v / mb for v in w["memtable"]], ".", ms=2.5, color="0.55", label="after each ack")
    ax_mem.set_ylabel("memtable MB")
    ax_mem.set_title(title, fontsize=10, loc="left")
    ax_wal.step(s["t"], [v / mb for v in s["wal_bytes"]], where="post", color="black", lw=1.2)
    ax_wal.set_ylabel("WAL MB on disk")
    kinds = {"insert": "tab:blue", "upsert": "tab:green", "delete": "tab:red"}
    for kind, colour in kinds.items():
        pts = [(t, lat * 1e3) for t, lat, k in zip(w["t"], w["latency"], w["kind"]) if k == kind]
        if pts:
            ax_lat.plot([p[0] for p in pts], [p[1] for p in pts], ".", ms=3, color=colour, label=f"{kind} ack")
    ax_lat.set_yscale("log")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax_lat.yaxis.set_major_formatter(plain)
    ax_lat.yaxis.set_minor_formatter(plain)
    ax_lat.set_ylabel("write latency ms (log)")
    ax_seg.step(s["t"], [v if v is not None else float("nan") for v in s["segments"]], where="post",
                color="black", lw=1.2)
    ax_seg.set_ylabel("segments")
    ax_seg.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax_seg.set_xlabel("seconds since the first write")
    for f in ing["flushes"]:
        colour = _colour(f["policy"], colours)
        for ax in axes:
            ax.axvline(f["start"], color=colour, lw=0.8, alpha=0.7)
            ax.axvspan(f["start"], f["start"] + f["seconds"], color=colour, alpha=0.08, lw=0)
    for ax in axes:
        ax.axvline(ing["write_end"], color="black", ls="--", lw=0.8)
        ax.grid(True, alpha=0.3)
    ax_lat.legend(loc="upper right", fontsize=8)


def _legend(axes: Any, colours: Dict[str, str], flushes: Optional[List[Mapping[str, Any]]] = None) -> None:
    """The flush colours (with counts for a single run) and the last-ack line, on the top panel."""
    from matplotlib.lines import Line2D

    counts: Dict[str, int] = {}
    for f in flushes or []:
        counts[f["policy"]] = counts.get(f["policy"], 0) + 1
    handles = [Line2D([], [], color=c, lw=1.5, label=f"flush: {p}" + (f" ({counts[p]})" if p in counts else ""))
               for p, c in colours.items()]
    handles.append(Line2D([], [], color="black", ls="--", lw=0.8, label="last acknowledged write"))
    top = axes[0][0]
    top.legend(handles=top.get_legend_handles_labels()[0] + handles, fontsize=8, loc="upper left")


def plot_run(record: Mapping[str, Any], path: str, title: Optional[str] = None) -> str:
    """Write the four panels of one run to ``path`` (PNG); returns ``path``."""
    fig, canvas, axes = _figure(1)
    colours: Dict[str, str] = {}
    wl = record["workload"]
    _draw([row[0] for row in axes], record, title or f"workload {wl['name']}, config {record['config']}", colours)
    _legend(axes, colours, record["ingest"]["flushes"])
    canvas.print_png(path)
    return path


def plot_ab(result: Any, path: str) -> str:
    """A (left) and B (right): for each, the run with the median write throughput."""
    fig, canvas, axes = _figure(2)
    colours: Dict[str, str] = {}
    for col, (side, config) in enumerate((("a", result.config_a), ("b", result.config_b))):
        record = result.representative(side)
        _draw([row[col] for row in axes], record, f"{side.upper()}: {config} (median-throughput run)", colours)
    _legend(axes, colours)
    fig.suptitle(f"proxistore ab, workload {result.workload.name}", fontsize=11)
    canvas.print_png(path)
    return path
