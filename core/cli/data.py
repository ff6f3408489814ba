"""Commands on the data: ``collections``, ``insert``, ``search``, ``get``, ``delete``.

Each opens ``--data`` for the length of one command, does its work through the public API
(:mod:`proxistore`), reports any flush that happened meanwhile, and closes the database, so
everything it acknowledged is in the WAL (and comes back on the next open). When another process
has the database open, ``collections``, ``search``, ``get`` and ``delete`` ask that process
(:mod:`.live`); ``insert`` refuses.
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager
from typing import Any, Iterator, List, Mapping, Optional, Union

from proxistore.collection import Collection
from proxistore.config import load_config
from proxistore.errors import CollectionNotFound, DatabaseLocked, ProxistoreError

from .admin import ask_holder, flush_counts, flush_line, threshold_units
from .live import LiveCollection
from .common import FlushRecorder, UsageError, open_database, parse_json_option
from .output import Output, shorten
from .sources import open_source

__all__ = ["cmd_collections", "cmd_insert", "cmd_search", "cmd_get", "cmd_delete", "metadata_summary"]


def _segments(storage: Mapping[str, Any]) -> Any:
    segs = storage.get("segments")
    return len(segs) if isinstance(segs, (list, tuple, dict)) else segs


@contextmanager
def _collection(args: argparse.Namespace, out: Output) -> Iterator[Union[Collection, LiveCollection]]:
    """``args.collection``: opened here, or asked of the process that has the database open."""
    try:
        db = open_database(args)
    except DatabaseLocked:
        yield LiveCollection(args, load_config(args.config), args.collection, out)
        return
    with db:
        yield db.collection(args.collection)


def cmd_collections(args: argparse.Namespace, out: Output) -> int:
    """List collections: name, dim, metric, rows, segments."""
    try:
        db = open_database(args)
    except DatabaseLocked:
        stats = ask_holder(args, load_config(args.config), "stats", out)["stats"]["collections"]
    else:
        with db:
            stats = db.stats()["collections"]
    rows = [{"name": name, "dim": s["dim"], "metric": s["metric"], "rows": s["rows"],
             "segments": _segments(s.get("storage", {})), "memtable_rows": s["memtable"]["rows"]}
            for name, s in sorted(stats.items())]
    out.emit(rows, lambda: out.table(
        ["name", "dim", "metric", "rows", "segments", "unflushed rows"],
        [[r["name"], r["dim"], r["metric"], f"{r['rows']:,}", r["segments"], f"{r['memtable_rows']:,}"]
         for r in rows], right=("dim", "rows", "segments", "unflushed rows"),
        empty=f"no collections in {args.data}"))
    return 0


def cmd_insert(args: argparse.Namespace, out: Output) -> int:
    """Load a .npy, .parquet or .jsonl file into a collection, in batches, with a progress bar."""
    if args.batch_size <= 0:
        raise UsageError("--batch-size must be a positive integer")
    source = open_source(args.file, args.id_prefix)
    for col in source.skipped_columns:
        out.note(f"note: column {col!r} is not a scalar type; it is not stored as metadata")
    recorder = FlushRecorder()
    created = False
    done = 0
    with open_database(args, create=args.create, recorder=recorder) as db:
        units = threshold_units(db.config)
        if args.collection not in db.collections():
            if not args.create:
                raise CollectionNotFound(f"no collection named {args.collection!r} in {args.data!r}; "
                                         f"pass --create (and --dim N if the file does not tell) to create it")
            dim = args.dim or source.dim
            if dim is None:
                raise UsageError(f"cannot tell the dimension of {args.file}; pass --dim N")
            if args.dim and source.dim and args.dim != source.dim:
                raise UsageError(f"--dim {args.dim} but the vectors in {args.file} have {source.dim} values")
            db.create_collection(args.collection, dim=dim, metric=args.metric)
            created = True
            out.note(f"created collection {args.collection!r} (dim {dim}, {args.metric})")
        col = db.collection(args.collection)
        write = col.upsert if args.upsert else col.insert
        verb = "upserted" if args.upsert else "inserted"
        try:
            with out.progress(f"{verb[:-2]}ing {args.collection}", source.rows) as advance:
                for batch in source.batches(args.batch_size):
                    write(batch.ids, batch.vectors, batch.metadata)
                    done += len(batch.ids)
                    advance(len(batch.ids))
                    for ev in recorder.drain():
                        out.print(flush_line(ev, units))
        except (ProxistoreError, UsageError) as exc:
            if done:
                exc.cli_context = (f"{done:,} rows before the failing batch were written and are durable; "
                                   f"rerun with --upsert to resume")  # type: ignore[attr-defined]
            raise
        count = col.count()
    for ev in recorder.drain():  # including flushes that close() waited for
        out.print(flush_line(ev, units))
    flushes = flush_counts(recorder.seen)
    result = {"collection": args.collection, "file": args.file, "op": "upsert" if args.upsert else "insert",
              "rows": done, "created": created, "count": count, "flushes": recorder.seen}

    def render() -> None:
        how = ", ".join(f"{n} by {p}" for p, n in sorted(flushes.items())) or "none (below every threshold)"
        out.print(f"{verb} {done:,} rows into {args.collection!r} from {args.file}; "
                  f"the collection now has {count:,} rows; flushes while writing: {how}")
    out.emit(result, render)
    return 0


def cmd_search(args: argparse.Namespace, out: Output) -> int:
    """The k nearest neighbours of a vector given as JSON, or of a stored id's vector."""
    flt = parse_json_option(args.filter, "--filter", dict) if args.filter else None
    vector: Optional[List[float]] = None
    if args.vector is not None:
        vector = parse_json_option(args.vector, "--vector", list)
    with _collection(args, out) as col:
        k = args.k
        if args.from_id is not None:
            record = col.get([args.from_id])[0]
            if record is None:
                raise UsageError(f"--from-id: no id {args.from_id!r} in collection {args.collection!r}")
            vector = record.vector
            k += 1  # the id itself is its own nearest neighbour; it is left out below
        hits = col.search(vector, k=k, filter=flt, ef=args.ef)
    if args.from_id is not None:
        hits = [h for h in hits if h.id != args.from_id][: args.k]
    result = {"collection": args.collection, "k": args.k, "from_id": args.from_id, "filter": flt,
              "hits": [{"rank": i + 1, "id": h.id, "distance": h.distance, "metadata": h.metadata}
                       for i, h in enumerate(hits)]}
    out.emit(result, lambda: out.table(
        ["rank", "id", "distance", "metadata"],
        [[i + 1, h.id, f"{h.distance:.4f}", metadata_summary(h.metadata)] for i, h in enumerate(hits)],
        right=("rank", "distance"), empty="no hits"))
    return 0


def cmd_get(args: argparse.Namespace, out: Output) -> int:
    """Stored records by id; unknown or deleted ids are reported as not found (exit 0)."""
    with _collection(args, out) as col:
        records = col.get(args.ids)
    result = [{"id": id_, "found": r is not None, "vector": None if r is None else r.vector,
               "metadata": None if r is None else r.metadata} for id_, r in zip(args.ids, records)]

    def render() -> None:
        rows = []
        for id_, r in zip(args.ids, records):
            if r is None:
                rows.append([id_, "not found", "", ""])
            else:
                head = ", ".join(f"{v:.4f}" for v in r.vector[:4])
                rows.append([id_, "yes", f"dim {len(r.vector)}: [{head}{', …' if len(r.vector) > 4 else ''}]",
                             metadata_summary(r.metadata)])
        out.table(["id", "found", "vector", "metadata"], rows)
    out.emit(result, render)
    return 0


def cmd_delete(args: argparse.Namespace, out: Output) -> int:
    """Delete ids (unknown ids are ignored, as in the API) and say how many were live."""
    with _collection(args, out) as col:
        before = col.count()
        col.delete(args.ids)
        after = col.count()
    result = {"collection": args.collection, "requested": len(args.ids), "deleted": before - after,
              "count": after}
    out.emit(result, lambda: out.print(
        f"deleted {before - after} of {len(args.ids)} id(s) from {args.collection!r}"
        + (f" ({len(args.ids) - (before - after)} were not present)" if before - after < len(args.ids) else "")
        + f"; {after:,} rows left"))
    return 0


def metadata_summary(meta: Optional[Mapping[str, Any]], width: int = 100) -> str:
    """``key=value`` pairs on one line, long values shortened (``text`` last, as it is longest)."""
    if not meta:
        return ""
    keys = sorted(meta, key=lambda k: (k == "text", k))
    return shorten(" ".join(f"{k}={meta[k]}" for k in keys), width)
