"""Operator commands: ``flush``, ``compact`` and ``stats`` (with ``--why``).

Why they exist: the failure this project was born from was a flush threshold that nothing
enforced and nobody could see. ``flush`` says what it wrote and which policy asked for it,
``stats`` shows each collection's memtable, WAL, segments and flush history with reasons, and
``stats --why NAME`` answers "why has this not flushed yet?" threshold by threshold. While
another process (the application) has the database open, each of them is answered, or done, by
that process (control.py).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Mapping, Optional, Tuple

from proxistore.catalog import CATALOG_DIR, collection_file
from proxistore.config import EffectiveConfig, load_config
from proxistore.control import ask
from proxistore.errors import DatabaseLocked, HolderUnresponsive
from proxistore.fileio import default_filesystem
from proxistore.history import COMPACTIONS_FILE, FLUSHES_FILE, EventHistory

from .common import FlushRecorder, UsageError, open_database
from .output import Output, fmt_bytes, fmt_seconds, fmt_time, fmt_value, shorten

__all__ = ["cmd_flush", "cmd_compact", "cmd_stats", "ask_holder", "flush_line", "compaction_line", "threshold_units",
           "flush_counts"]


# ------------------------------------------------------------------------------------------------
# describing flushes
# ------------------------------------------------------------------------------------------------

def threshold_units(cfg: EffectiveConfig) -> Dict[Tuple[str, str], Optional[str]]:
    """``(policy, key) -> unit`` for every flush threshold, from the config's own declarations."""
    units: Dict[Tuple[str, str], Optional[str]] = {}
    for row in cfg.explain():
        parts = row.path.split(".")
        if len(parts) == 3 and parts[0] == "flush":
            units[(parts[1], parts[2])] = row.unit
    return units


def flush_reason(reason: Mapping[str, Any], units: Mapping[Tuple[str, str], Optional[str]]) -> str:
    """``size: memory_flush_size_bytes = 1.00 MB crossed, measured 1.01 MB`` (or the detail)."""
    policy, key = reason.get("policy"), reason.get("key")
    if key is None:
        return f"{policy}: {reason.get('detail') or 'requested'}"
    unit = units.get((policy, key))
    text = (f"{policy}: {key} = {fmt_value(reason.get('threshold'), unit)} crossed, "
            f"measured {fmt_value(reason.get('measured'), unit)}")
    return text + (f" ({reason['detail']})" if reason.get("detail") else "")


def flush_line(ev: Mapping[str, Any], units: Mapping[Tuple[str, str], Optional[str]]) -> str:
    """One flush event as one line: reason, rows, segment, bytes, seconds, the wait for a worker
    and per-phase seconds."""
    why = flush_reason(ev["reason"], units)
    if ev.get("error"):
        return f"flush of {ev['collection']} FAILED (attempt {ev.get('attempt', 1)}; {why}): {ev['error']}"
    what = f"{ev['rows']:,} rows"
    if ev.get("deletes"):
        what += f" + {ev['deletes']:,} deletes"
    if ev.get("memtables", 1) > 1:
        what += f" from {ev['memtables']} queued memtables"
    seg = f"segment {ev['segment']} ({fmt_bytes(ev.get('bytes'))})" if ev.get("segment") else "no new segment"
    phases = ", ".join(f"{name} {fmt_seconds(sec)}" for name, sec in (ev.get("phases") or {}).items())
    waited = f" after waiting {fmt_seconds(ev['waited_seconds'])}" if ev.get("waited_seconds") else ""
    return (f"flush {ev['collection']} [{why}] -> {what}, {seg} in {fmt_seconds(ev.get('seconds'))}{waited}"
            + (f"; phases: {phases}" if phases else ""))


def flush_counts(events: List[Mapping[str, Any]]) -> Dict[str, int]:
    counts: Dict[str, int] = {}
    for ev in events:
        if not ev.get("error"):
            counts[ev["reason"]["policy"]] = counts.get(ev["reason"]["policy"], 0) + 1
    return counts


# ------------------------------------------------------------------------------------------------
# flush and compact
# ------------------------------------------------------------------------------------------------

def cmd_flush(args: argparse.Namespace, out: Output) -> int:
    """Flush one collection (or all) now, and print every flush that ran meanwhile, with its reason.
    If another process has the database open, that process flushes (control.py)."""
    recorder = FlushRecorder()
    try:
        db = open_database(args, recorder=recorder)
    except DatabaseLocked:
        cfg = load_config(args.config)
        events, units = ask_holder(args, cfg, "flush", out)["flushes"], threshold_units(cfg)
    else:
        with db:
            units = threshold_units(db.config)
            db.flush(args.collection)
        events = recorder.drain()  # after close(): background flushes it waited for are included
    result = {"collection": args.collection, "flushes": events}

    def render() -> None:
        if not events:
            target = repr(args.collection) if args.collection else "any collection"
            out.print(f"nothing to flush: the memtable of {target} is empty (everything is in segments)")
        for ev in events:
            out.print(flush_line(ev, units))
    out.emit(result, render)
    return 0


def cmd_compact(args: argparse.Namespace, out: Output) -> int:
    """Compact one collection (or all) now: merge segments, drop deleted rows, build indexes.
    If another process has the database open, that process compacts (control.py)."""
    try:
        db = open_database(args)
    except DatabaseLocked:
        results = ask_holder(args, load_config(args.config), "compact", out)["compactions"]
    else:
        with db:
            results = db.compact(args.collection)
    out.emit({"collection": args.collection, "compactions": results}, lambda: out.table(
        ["collection", "segments in", "segments out", "rows in", "rows out", "time", "reason"],
        [[r.get("collection"), r.get("segments_in"), r.get("segments_out"), r.get("rows_in"),
          r.get("rows_out"), fmt_seconds(r.get("seconds")), r.get("reason", "")] for r in results],
        right=("segments in", "segments out", "rows in", "rows out", "time"),
        empty="nothing to compact"))
    return 0


_TAKE_TIMEOUT = 2.0   # seconds; an open database takes a request within its check_interval (100 ms by default)


def ask_holder(args: argparse.Namespace, cfg: EffectiveConfig, what: str, out: Output,
               collection: Optional[str] = None, **fields: Any) -> Any:
    """The result of ``what`` (with ``fields``) done by the process that has the database open;
    for a flush, a compaction or a delete, waits as long as that process lives and works on it."""
    name = collection or getattr(args, "collection", None)
    request = {"what": what, **({"collection": name} if name else {}), **fields}
    take = max(_TAKE_TIMEOUT, 5 * cfg.maintenance["check_interval"])
    quick = what not in ("flush", "compact", "delete")
    if not quick:
        out.note(f"another process has the database open: asking it to {what}")
    live = ask(default_filesystem(), args.data, request, take, answer_timeout=take if quick else None)
    out.note(f"answered by process {live['pid']}, which has the database open")
    return live["result"]


# ------------------------------------------------------------------------------------------------
# stats
# ------------------------------------------------------------------------------------------------

def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    """Database or collection statistics; ``--why NAME`` explains why NAME has not flushed."""
    why = args.why
    if why is True:  # `stats NAME --why`
        if not args.collection:
            raise UsageError("--why needs a collection: `stats --why NAME` or `stats NAME --why`")
        why = args.collection
    elif why and args.collection and why != args.collection:
        raise UsageError(f"name the collection once: `stats --why {why}`")
    try:
        db = open_database(args)
    except DatabaseLocked:
        return _stats_of_open_database(args, why, out)
    with db:
        if why:
            db.collection(why)  # CollectionNotFound names the collections that exist
            return _why(why, db.why(why), db.stats(), out)
        if args.collection:
            db.collection(args.collection)
        return _show_stats(args.collection, db.stats(), threshold_units(db.config), out)


def _stats_of_open_database(args: argparse.Namespace, why: Optional[str], out: Output) -> int:
    """Stats of a database another process has open, as that process answers them (control.py);
    if it does not answer, the flushes and compactions recorded on disk, and for ``--why`` an error."""
    cfg = load_config(args.config)
    try:
        answer = ask_holder(args, cfg, "why" if why else "stats", out, collection=why)
    except HolderUnresponsive as unresponsive:
        if why:      # the readings exist only in that process
            raise
        return _recorded_events(args, cfg, str(unresponsive), out)
    if why:
        return _why(why, answer["why"], answer["stats"], out)
    return _show_stats(args.collection, answer["stats"], threshold_units(cfg), out)


def _show_stats(name: Optional[str], stats: Mapping[str, Any], units: Mapping, out: Output) -> int:
    if name:
        col = stats["collections"][name]
        out.emit(col, lambda: _render_collection(out, name, col, units))
    else:
        out.emit(stats, lambda: _render_database(out, stats))
    return 0


def compaction_line(comp: Mapping[str, Any]) -> str:
    """One compaction record as one line: when, segments and rows in and out, seconds, why."""
    return (f"{fmt_time(comp.get('finished_at'))}  compaction: {comp.get('segments_in')} segments "
            f"({comp.get('rows_in', 0):,} rows) -> {comp.get('segments_out')} ({comp.get('rows_out', 0):,} rows) "
            f"in {fmt_seconds(comp.get('seconds'))}" + (f"; {comp['reason']}" if comp.get("reason") else ""))


def _recorded_events(args: argparse.Namespace, cfg: EffectiveConfig, why_not_live: str, out: Output) -> int:
    """What ``stats`` shows when the process that has the database open does not answer: the
    flushes and compactions each collection recorded on disk (read without the lock; a torn last
    line is skipped)."""
    keep = cfg.maintenance["flush_history"]
    root = os.path.join(args.data, CATALOG_DIR)
    names = sorted(n for n in os.listdir(root) if not n.startswith(".")) if os.path.isdir(root) else []
    if args.collection:
        if args.collection not in names:
            raise UsageError(f"no collection named {args.collection!r} in {args.data!r}; "
                             f"collections: {names or 'none'}")
        names = [args.collection]
    fs = default_filesystem()
    def recorded(name: str, filename: str) -> List[Dict[str, Any]]:
        return EventHistory(fs, collection_file(root, name, filename), keep).load()
    cols = {n: {"flushes": {"last": recorded(n, FLUSHES_FILE)}, "compactions": recorded(n, COMPACTIONS_FILE)[-5:]}
            for n in names}
    result = {"path": args.data, "open_elsewhere": why_not_live, "collections": cols}

    def render() -> None:
        out.note(f"only the flushes and compactions recorded on disk are shown: {why_not_live}")
        units = threshold_units(cfg)
        for name, c in cols.items():
            recent = c["flushes"]["last"][-5:]
            out.heading(f"collection {name}: " + ("no flush recorded" if not recent else
                                                   f"last {len(recent)} of the recorded flushes"))
            for ev in recent:
                out.print(f"{fmt_time(ev.get('started_at'))}  {flush_line(ev, units)}")
            for comp in c["compactions"]:
                out.print(compaction_line(comp))
    out.emit(result, render)
    return 0


def _render_database(out: Output, s: Mapping[str, Any]) -> None:
    out.print(f"database {s['path']}  (config {s['config']})")
    out.print(f"WAL {s['wal_strategy']}, storage {s['storage_engine']} at {s['storage_root']}, flush policies: "
              f"{', '.join(s['flush_policies'])}; all memtables: {fmt_bytes(s['memtable_bytes'])}")
    rows = []
    for name, c in sorted(s["collections"].items()):
        fl = c["flushes"]
        last = (f"{fmt_time(fl['last'][-1]['started_at'])} {fl['last'][-1]['reason']['text']}"
                if fl.get("last") else "")
        by = ", ".join(f"{p} {n}" for p, n in sorted(fl.get("by_policy", {}).items()))
        rows.append([name, f"{c['rows']:,}", f"{c['memtable']['rows']:,}", fmt_bytes(c["memtable"]["bytes"]),
                     fmt_bytes(c["wal"].get("bytes")), _count(c["storage"].get("segments")),
                     f"{fl.get('total', 0)}" + (f" ({by})" if by else ""), shorten(last, 60)])
    out.table(["collection", "rows", "unflushed rows", "memtable", "WAL", "segments",
               "flushes this session", "last flush"], rows,
              right=("rows", "unflushed rows", "memtable", "WAL", "segments"), empty="no collections")
    _render_maintenance_problems(out, s.get("maintenance") or {})


def _render_maintenance_problems(out: Output, m: Mapping[str, Any]) -> None:
    """What is wrong with background maintenance, if anything: the operator's first question."""
    state = m.get("scheduler", "running")
    if state not in ("running", "paused"):
        out.print(f"background maintenance is NOT running ({state}): no flush policy is enforced and "
                  f"nothing is flushed or compacted until the database is reopened")
    for policy, error in (m.get("failing_policies") or {}).items():
        out.print(f"policy {policy!r} is failing ({error}): its thresholds are not enforced until it works again")
    for name, seconds in (m.get("storage_retry_in_seconds") or {}).items():
        out.print(f"storage work (merges, index builds) of {name!r} failed; retrying in {fmt_seconds(seconds)}")
    if m.get("error_count"):
        out.print(f"background errors since open: {m['error_count']}; the last: {shorten(m['errors'][-1], 200)}")


def _render_collection(out: Output, name: str, c: Mapping[str, Any], units: Mapping) -> None:
    out.heading(f"collection {name}: {c['rows']:,} rows, dim {c['dim']}, {c['metric']}")
    mt = c["memtable"]
    out.table(["part", "values"], [
        ["memtable", f"{mt['rows']:,} rows, {fmt_bytes(mt['bytes'])} ({mt['frozen']} frozen)"],
        ["WAL", _pairs(c["wal"])],
        ["storage", _pairs(c["storage"])],
        ["recovery", _pairs(c.get("recovery") or {})],
        ["overrides", json.dumps(c.get("overrides") or {})],
    ])
    fl = c["flushes"]
    out.print(f"flushes since open: {fl.get('total', 0)} "
              f"({', '.join(f'{p} {n}' for p, n in sorted(fl.get('by_policy', {}).items())) or 'none'}); "
              f"in {fl.get('writes', 0)} segment writes; failures: {fl.get('failures', 0)}" + (f"; last error: {fl['last_error']}" if fl.get("last_error") else ""))
    recent = (fl.get("last") or [])[-5:]
    if recent:
        out.print("last flushes (recorded across restarts):")
    for ev in recent:
        out.print(f"{fmt_time(ev.get('started_at'))}  {flush_line(ev, units)}")
    if fl.get("history_errors"):
        out.note(f"note: {fl['history_errors']} flush(es) could not be recorded in the flush history file; see the log")
    for comp in c.get("compactions") or []:
        out.print(compaction_line(comp))


def _why(name: str, readings: List[Dict[str, Any]], stats: Mapping[str, Any], out: Output) -> int:
    """``stats --why NAME``: every enabled threshold of NAME (``readings``, from ``Database.why``)
    and what it measures now, read against that database's ``stats``."""
    mt = stats["collections"][name]["memtable"]
    due = [r for r in readings if r["due"]]
    result = {"collection": name, "memtable_rows": mt["rows"], "memtable_bytes": mt["bytes"],
              "due": [f"{r['policy']}.{r['key']}" for r in due], "readings": readings}

    def render() -> None:
        out.table(["policy", "threshold key", "threshold", "measured now", "crossed"],
                  [[r["policy"], r["key"] or "(no threshold: flushes on request)",
                    fmt_value(r["threshold"], r["unit"]), fmt_value(r["measured"], r["unit"]),
                    "yes" if r["due"] else "no"] for r in readings],
                  title=f"why has {name!r} not flushed yet?")
        _render_maintenance_problems(out, {
            "scheduler": stats["maintenance"].get("scheduler", "running"),
            "failing_policies": {r["policy"]: r["failing"] for r in readings if r.get("failing")}})
        if mt["rows"] == 0:
            out.print(f"nothing to flush: the memtable of {name!r} is empty; every acknowledged row is in a segment")
        elif due:
            out.print(f"due now: {', '.join(result['due'])}; background maintenance starts the flush "
                      f"within {fmt_seconds(stats['maintenance']['check_interval'])}")
        else:
            manual = "manual" in stats["flush_policies"]
            out.print(f"{mt['rows']:,} rows ({fmt_bytes(mt['bytes'])}) wait in the memtable and the WAL because no "
                      f"enabled threshold is crossed yet; "
                      + (f"`proxistore flush {name}` flushes them now" if manual
                         else "the manual policy is not enabled, so only a threshold will flush them"))
        if mt["rows"] and any(r["unit"] == "seconds" for r in readings):
            out.note("note: ages are counted from when the database was last opened; rows replayed "
                     "from the WAL start a new clock")
    out.emit(result, render)
    return 0


def _count(value: Any) -> Any:
    return len(value) if isinstance(value, (list, tuple, dict)) else value


def _pairs(d: Mapping[str, Any]) -> str:
    """``key=value`` pairs, sizes and seconds made readable by their key names."""
    parts = []
    for k, v in d.items():
        if isinstance(v, float) and k.endswith("seconds"):
            v = fmt_seconds(v)
        elif isinstance(v, int) and not isinstance(v, bool) and k.endswith("bytes"):
            v = fmt_bytes(v)
        elif isinstance(v, (dict, list)):
            v = json.dumps(v, default=str) if len(json.dumps(v, default=str)) < 80 else f"<{len(v)} items>"
        parts.append(f"{k}={v}")
    return ", ".join(parts)
