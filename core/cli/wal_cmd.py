"""``proxistore wal inspect DIR`` and ``proxistore wal verify DIR``: read-only looks at a WAL.

DIR is a data directory; the commands read ``DIR/wal`` with the Avro WAL plugin's own reader
(the same framing, CRC and torn-tail rules as replay) and never open the database, so they work
on a directory that cannot be opened (corrupt) or is open in another process. ``verify`` exits
1 and names the first bad file and byte offset when a record before the tail is corrupt.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from .common import UsageError
from .output import Output, fmt_bytes

__all__ = ["cmd_wal_inspect", "cmd_wal_verify"]


def _wal_root(args: argparse.Namespace) -> str:
    data = args.dir if args.dir is not None else args.data
    root = os.path.join(data, "wal")
    if not os.path.isdir(root):
        raise UsageError(f"no WAL directory at {root} (DIR must be a proxistore data directory)")
    return root


def cmd_wal_inspect(args: argparse.Namespace, out: Output) -> int:
    """Per collection: segments with bytes, records, rows, LSN range, format version, problems."""
    from proxistore.plugins.wal_avro import inspect_wal

    info = inspect_wal(_wal_root(args))
    out.emit(info, lambda: _render_inspect(out, info))
    return 0


def _render_inspect(out: Output, info: Mapping[str, Any]) -> None:
    out.print(f"WAL {info['root']}: {len(info['collections'])} collection(s), {fmt_bytes(info['bytes'])} "
              f"(reader format {info['reader_format_version']})")
    for name, col in sorted(info["collections"].items()):
        rows = []
        for seg in col["segments"]:
            problem = seg.get("problem")
            rows.append([seg["file"], fmt_bytes(seg["bytes"]), seg["records"], seg["rows"],
                         _lsn_range(seg["first_lsn"], seg["last_lsn"]), seg.get("format_version") or "?",
                         "" if not problem else f"{problem['kind']} at byte {problem['offset']}: {problem['reason']}"])
        out.table(["segment", "bytes", "records", "rows", "LSNs", "format", "problem"], rows,
                  title=f"{name}: {col['records']} records, {col['rows']} rows, LSNs "
                        f"{_lsn_range(col['first_lsn'], col['last_lsn'])}",
                  right=("bytes", "records", "rows"), empty="(no segments)")
        if col.get("corrupt_files"):
            out.print(f"  set aside as corrupt: {', '.join(col['corrupt_files'])}")


def _lsn_range(first: Any, last: Any) -> str:
    return "—" if first is None else f"{first}..{last}"


def cmd_wal_verify(args: argparse.Namespace, out: Output) -> int:
    """Decode and CRC-check every record; exit 1 at the first corrupt one, naming file and offset."""
    from proxistore.plugins.wal_avro import verify_wal

    result = verify_wal(_wal_root(args))
    data = result.to_dict()

    def render() -> None:
        summary = (f"{result.collections} collection(s), {result.segments} segment(s), {result.records} "
                   f"records, {result.rows} rows, {fmt_bytes(result.bytes)}")
        for torn in result.torn_tails:
            out.print(f"torn tail (repaired on next open, holds no acknowledged write): {torn.file} "
                      f"at byte {torn.offset}, {torn.bytes_dropped} bytes")
        if result.ok:
            out.print(f"ok: {summary}")
        else:
            out.print(f"CORRUPT: first bad record in {result.first_bad_file} at byte {result.first_bad_offset}; "
                      f"read before it: {summary}")
    out.emit(data, render)
    if not result.ok:
        out.error(f"WAL corrupt: {result.error}")
        return 1
    return 0
