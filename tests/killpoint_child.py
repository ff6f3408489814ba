"""Child process of the kill-point tests: a deterministic workload of writes, flushes and
compactions, run on a :class:`killpoints.KillPointFileSystem` until the kill point kills it.

    python killpoint_child.py DB MODE    (MODE: manual | background | reopen; rule in PROXISTORE_KILLPOINT)

Prints ``ack B`` after batch B is acknowledged, ``phase NAME`` when it enters a phase, and
``done`` if it finished without being killed (the kill point was never reached). The filesystem
prints ``KILLPOINT {...}`` just before it SIGKILLs the process.

``manual``: background maintenance is paused and the script below drives every flush and
compaction itself, in named phases, so a kill rule can name the exact flush or compaction
(writes run in phase ``write``):

    flush            batches 0-7, one db.flush() after each (upserts and deletes of batches in
                     older segments write deletion vectors; delete-only flushes write no segment)
    compact          db.compact(): two merges of three segments each, each merged segment indexed
    flush-big        batches 8-11 then one flush: one segment big enough to be full and indexed
    compact-index    db.compact(): nothing to merge, builds the big segment's index
    flush-cross      batches 12-13, a flush after each: upsert and delete rows of the merged
                     and indexed segments (deletion vectors on them)
    compact-rewrite  db.compact(): rewrites the segments with deleted rows, with new indexes

``background``: small flush threshold, automatic size-tiered compaction with fan-in 2 and a 5 ms
maintenance tick; batches are written one after another and the background workers flush,
merge and index concurrently (phase is always None).

``reopen``: only opens the existing database (recovery: orphan removal, WAL replay) and closes it.

The workload (:func:`batch`) and the configs are imported by the parent test for its model.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import proxistore  # noqa: E402

from killpoints import from_env  # noqa: E402

SIZE = 12
DIM = 16
COLLECTION = "c"

STORAGE = {
    "index": "hnsw",
    "indexing_threshold": 20,          # merged segments (>= 24 rows) and the big flush get an index
    "compaction_min_segments": 2,
    "compaction_base_rows": 16,
    "compaction_target_rows": 24,      # manual compaction packs groups of about 24 live rows
}

MANUAL_CONFIG: Dict[str, Any] = {
    "wal": {"avro": {"sync_mode": "always"}},
    "storage": {"viper": {**STORAGE, "auto_compaction": False}},
    "flush": {"size": {"memory_flush_size_bytes": "64MB"}},   # only the script flushes
}

BACKGROUND_CONFIG: Dict[str, Any] = {
    "wal": {"avro": {"sync_mode": "always"}},
    "storage": {"viper": {**STORAGE, "auto_compaction": True}},
    "flush": {"size": {"memory_flush_size_bytes": "3kB"}},    # a flush every few batches
    "maintenance": {"check_interval": "5ms"},
}

BACKGROUND_BATCHES = 400


def batch(b: int) -> Tuple[str, List[str], Optional[np.ndarray], Optional[List[dict]]]:
    """Batch ``b`` of the workload: (op, ids, vectors or None, metadata or None).

    b % 4 == 2 upserts half of batch b-1 and adds six new ids; b % 4 == 3 deletes three ids of
    batch b-3 and one id the upsert b-1 created. Batches 12 and 13 (the ``flush-cross`` phase of
    the manual script) reach back into the merged segments instead.
    """
    rng = np.random.default_rng(1000 + b)
    vecs = rng.standard_normal((SIZE, DIM)).astype(np.float32)
    meta = [{"batch": b, "pos": i} for i in range(SIZE)]
    new = [f"b{b}-{i}" for i in range(SIZE)]
    if b == 12:    # upsert two ids of each of batches 0, 4 and 8 (in merged and big segments)
        ids = [f"b{src}-{i}" for src in (0, 4, 8) for i in (5, 6)] + new[6:]
        return "upsert", ids, vecs, meta
    if b == 13:    # delete ids of batches 1, 6 and 9
        return "delete", ["b1-7", "b1-8", "b6-7", "b9-3", "b9-4"], None, None
    if b % 4 == 2:
        return "upsert", [f"b{b - 1}-{i}" for i in range(SIZE // 2)] + new[SIZE // 2:], vecs, meta
    if b % 4 == 3:
        return "delete", [f"b{b - 3}-{i}" for i in range(3)] + [f"b{b - 1}-{SIZE - 1}"], None, None
    return "insert", new, vecs, meta


def apply(model: Dict[str, Tuple[np.ndarray, dict]], b: int) -> None:
    """Apply batch ``b`` to ``model`` (id -> (vector, metadata)) as the database must."""
    op, ids, vecs, meta = batch(b)
    if op == "delete":
        for id_ in ids:
            model.pop(id_, None)
        return
    for id_, v, m in zip(ids, vecs, meta):
        model[id_] = (v, m)


def model_after(last: int) -> Dict[str, Tuple[np.ndarray, dict]]:
    model: Dict[str, Tuple[np.ndarray, dict]] = {}
    for b in range(last + 1):
        apply(model, b)
    return model


# The manual script: (phase, batches written first, then what the phase runs).
MANUAL_SCRIPT = (
    [("flush", [b], "flush") for b in range(8)]
    + [("compact", [], "compact")]
    + [("flush-big", [8, 9, 10, 11], "flush")]
    + [("compact-index", [], "compact")]
    + [("flush-cross", [b], "flush") for b in (12, 13)]
    + [("compact-rewrite", [], "compact")]
)
MANUAL_LAST_BATCH = 13


def say(line: str) -> None:
    """One line to stdout in one write(2), so it never interleaves with the filesystem's lines."""
    os.write(1, (line + "\n").encode())


def write(col, b: int) -> None:
    op, ids, vecs, meta = batch(b)
    if op == "insert":
        col.insert(ids, vecs, meta)
    elif op == "upsert":
        col.upsert(ids, vecs, meta)
    else:
        col.delete(ids)
    say(f"ack {b}")


def main() -> None:
    path, mode = sys.argv[1], sys.argv[2]
    fs = from_env(path)
    config = BACKGROUND_CONFIG if mode == "background" else MANUAL_CONFIG
    db = proxistore.open(path, config, fs=fs)
    if mode == "reopen":
        db.close()
        say("done")
        return
    if mode == "manual":
        db.maintenance.pause()
    col = db.create_collection(COLLECTION, dim=DIM, metric="l2")
    say("ready")
    if mode == "manual":
        for phase, batches, action in MANUAL_SCRIPT:
            fs.phase = "write"
            for b in batches:
                write(col, b)
            say(f"phase {phase}")
            fs.phase = phase
            if action == "flush":
                db.flush(COLLECTION)
            else:
                db.compact(COLLECTION)
            fs.phase = "write"
    else:
        for b in range(BACKGROUND_BATCHES):
            write(col, b)
            time.sleep(0.002)
        db.wait_idle()
    db.close()
    say("done")


if __name__ == "__main__":
    main()
