"""Crash soak (issue 7, item 4): SIGKILL a writing process over and over, check every reopen.

Each cycle starts a fresh child process (this script with ``--child``) on one of four databases
("lanes", one per configuration, taken in turn). The child opens the database (recovering from
the previous kill), checks it against the expected-state model the parent passes in, prints what
it found, then runs a mixed load with background maintenance until the parent SIGKILLs it at a
random moment, sometimes during open and recovery, sometimes after hundreds of batches:

* three writer threads, each with its own id space and its own deterministic batch sequence
  (inserts, upserts of earlier ids including deleted ones, deletes), content derived from
  (seed, lane, thread, batch) so the parent can recompute it, printing ``ack T B`` per batch;
* a DDL thread that creates collections, writes into them and drops them (``ack D I``);
* a searcher that runs plain and filtered searches, ``search_batch``, ``get``, ``stats`` and
  explicit ``db.flush()`` / ``db.compact()`` and checks that every hit obeys its filter.

The check, per thread: every acknowledged batch is applied; the at most one batch in flight at
the kill is applied whole or not at all (never in part); nothing else is there; vectors and
metadata are exact; ``count()`` matches; stored vectors find themselves at rank 1. The child
reports whether each in-flight batch landed, and the next cycle continues from there. After the
last cycle every lane is checked once more (``--check-only`` does just that on a kept workdir).

Usage:
    python benchmarks/crash_soak.py --cycles 50            # what CI runs (tests/test_crash_soak.py)
    python benchmarks/crash_soak.py --minutes 30 --json /tmp/soak30.json
    python benchmarks/crash_soak.py --cycles 5 --seed 3 --workdir /tmp/soak --keep
    python benchmarks/crash_soak.py --check-only --workdir /tmp/soak

Exit 0 when every check passed, 1 on any failure (the cycle, seed, lane and what differed are
printed, and the workdir is kept for inspection), 2 on a usage error.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

THIS = Path(__file__).resolve()
THREADS = 3              # writer threads per child
DIM = 16                 # dim of the main collection
SIDE_DIM = 8             # dim of the collections the DDL thread creates
WINDOW = 12              # a thread's ids of group g are deleted for good at group g + WINDOW
MAIN = "main"

# Small thresholds so that flushes, WAL rotations, checkpoints, index builds and compactions
# all happen many times per cycle.
BASE_CONFIG: Dict[str, Any] = {
    "wal": {"avro": {"segment_size": "16kB"}},
    "flush": {"size": {"memory_flush_size_bytes": "24kB"},
              "wal_size": {"max_wal_bytes": "96kB"},
              "time": {"max_unflushed_age": "300ms"}},
    "storage": {"viper": {"indexing_threshold": 200, "compaction_min_segments": 3,
                          "compaction_base_rows": 64, "compaction_target_rows": 4000,
                          "compaction_deleted_fraction": 0.2}},
    "maintenance": {"check_interval": "20ms"},
}
# name: (sync_mode, index, index_backend, metric)
LANES: Dict[str, Tuple[str, str, str, str]] = {
    "A": ("group", "hnsw", "faiss", "l2"),
    "B": ("always", "flat", "faiss", "l2"),
    "C": ("group", "ivf", "faiss", "cosine"),
    "D": ("always", "hnsw", "hnswlib", "cosine"),
}


def lane_config(lane: str) -> Dict[str, Any]:
    sync, index, backend, _ = LANES[lane]
    cfg = json.loads(json.dumps(BASE_CONFIG))
    cfg["wal"]["avro"]["sync_mode"] = sync
    cfg["storage"]["viper"].update(index=index, index_backend=backend)
    return cfg


# -- the expected-state model -----------------------------------------------------------------
# Thread t's batch b belongs to group g = b // 4; the ids of group g are "t{t}-{g}-{i}", i < 24.
#   b % 4 == 0  insert ids 0..11 of group g
#   b % 4 == 1  insert ids 12..23 of group g
#   b % 4 == 2  upsert ids 0..7 of group g, ids 0..3 of group g-1, and id 8 of group g-1
#               (deleted at the previous batch: it comes back)
#   b % 4 == 3  delete ids 8..11 of group g, 20..23 of group g-2, and all of group g-WINDOW
# Every batch changes the state, so a batch in flight is seen to have landed or not. The ids of
# group h are touched only by groups h..h+WINDOW, so the state after n batches is the replay of
# the last WINDOW+2 groups alone, and the live set stays bounded however long the soak runs.

Row = Tuple[np.ndarray, Dict[str, Any]]


def _rid(t: int, g: int, i: int) -> str:
    return f"t{t}-{g}-{i}"


def _meta(t: int, g: int, i: int, b: int, x: float) -> Dict[str, Any]:
    return {"t": t, "g": g, "i": i, "b": b, "odd": bool(i % 2), "k": "abc"[i % 3], "x": x}


def main_batch(seed: int, lane: int, t: int, b: int):
    """(op, ids, vectors or None, metadata or None) of thread t's batch b."""
    g, p = divmod(b, 4)
    if p == 3:
        keys = [(g, i) for i in range(8, 12)]
        keys += [(g - 2, i) for i in range(20, 24)] if g >= 2 else []
        keys += [(g - WINDOW, i) for i in range(24)] if g >= WINDOW else []
        return "delete", [_rid(t, h, i) for h, i in keys], None, None
    if p == 2:
        op, keys = "upsert", [(g, i) for i in range(8)] + ([(g - 1, i) for i in (0, 1, 2, 3, 8)] if g else [])
    else:
        op, keys = "insert", [(g, i) for i in range(12 * p, 12 * p + 12)]
    rng = np.random.default_rng([seed, lane, t, b])
    vecs = rng.standard_normal((len(keys), DIM)).astype(np.float32)
    xs = rng.random(len(keys))
    metas = [_meta(t, h, i, b, float(x)) for (h, i), x in zip(keys, xs)]
    return op, [_rid(t, h, i) for h, i in keys], vecs, metas


def apply_batch(state: Dict[str, Row], batch) -> None:
    op, ids, vecs, metas = batch
    if op == "delete":
        for id_ in ids:
            state.pop(id_, None)
        return
    for id_, v, m in zip(ids, vecs, metas):
        state[id_] = (v, m)


def thread_state(seed: int, lane: int, t: int, n: int, start_group: Optional[int] = None) -> Dict[str, Row]:
    """Thread t's live rows after its batches 0..n-1 (replaying only the groups that matter)."""
    if start_group is None:
        start_group = max(0, (n - 1) // 4 - WINDOW - 1) if n else 0
    state: Dict[str, Row] = {}
    for b in range(4 * start_group, n):
        apply_batch(state, main_batch(seed, lane, t, b))
    return state


def thread_window(t: int, n: int) -> List[str]:
    """Every id thread t may have touched in the groups that matter after n (+1) batches."""
    last = n // 4
    return [_rid(t, g, i) for g in range(max(0, last - WINDOW - 3), last + 1) for i in range(24)]


# The DDL thread's operations: 0 create side0, 1 insert into side0; then for j >= 1:
# create side{j}, insert into side{j}, drop side{j-1}. At most two side collections exist.

def ddl_op(i: int) -> Tuple[str, str]:
    if i < 2:
        return ("create", "insert")[i], "side0"
    j, k = (i - 2) // 3 + 1, (i - 2) % 3
    return ("create", f"side{j}") if k == 0 else ("insert", f"side{j}") if k == 1 else ("drop", f"side{j - 1}")


def side_rows(seed: int, lane: int, name: str):
    rng = np.random.default_rng([seed, lane, 1000 + int(name[4:])])
    ids = [f"{name}-{i}" for i in range(6)]
    return ids, rng.standard_normal((6, SIDE_DIM)).astype(np.float32), [{"side": name, "i": i} for i in range(6)]


def ddl_state(seed: int, lane: int, n: int) -> Dict[str, Dict[str, Row]]:
    """Side collection name -> its rows after DDL operations 0..n-1."""
    sides: Dict[str, Optional[bool]] = {}
    for i in range(max(0, n - 12), n):   # the last four blocks decide which sides exist
        op, name = ddl_op(i)
        if op == "create":
            sides[name] = False
        elif op == "insert":
            sides[name] = True
        else:
            sides.pop(name, None)
    out: Dict[str, Dict[str, Row]] = {}
    for name, filled in sides.items():
        out[name] = {}
        if filled:
            ids, vecs, metas = side_rows(seed, lane, name)
            out[name] = {id_: (v, m) for id_, v, m in zip(ids, vecs, metas)}
    return out


# -- the check (runs in the child, right after open) ----------------------------------------

def _describe(found, want: Optional[Row]) -> str:
    if found is None:
        return "absent"
    meta = found.metadata or {}
    tag = f"batch {meta.get('b')}" if "b" in meta else f"metadata {meta}"
    if want is not None:
        if not np.array_equal(found.vector, want[0]):
            tag += ", vector differs"
        if found.metadata != want[1]:
            tag += f", metadata {found.metadata} != {want[1]}"
    return tag


def _diff(actual: Dict[str, Any], state: Dict[str, Row], limit: int = 8) -> List[str]:
    out = []
    for id_ in sorted(actual):
        rec, want = actual[id_], state.get(id_)
        same = (rec is None and want is None) or (
            rec is not None and want is not None and np.array_equal(rec.vector, want[0])
            and rec.metadata == want[1])
        if not same:
            exp = "absent" if want is None else f"batch {want[1].get('b', want[1])}"
            out.append(f"{id_}: expected {exp}, found {_describe(rec, want)}")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])


def _matches(actual: Dict[str, Any], state: Dict[str, Row]) -> bool:
    for id_, rec in actual.items():
        want = state.get(id_)
        if (rec is None) != (want is None):
            return False
        if rec is not None and (not np.array_equal(rec.vector, want[0]) or rec.metadata != want[1]):
            return False
    return all(id_ in actual for id_ in state)


def check_database(db, spec: Dict[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
    """Compare an open database with the model; returns (what was found, failures)."""
    seed, lane, li = spec["seed"], spec["lane"], spec["lane_index"]
    metric = LANES[lane][3]
    found: Dict[str, Any] = {"threads": {}, "ddl": None}
    failures: List[str] = []
    names = set(db.collections())
    threads = {int(t): v for t, v in spec["threads"].items()}
    if MAIN not in names:
        if any(known for known, _ in threads.values()):
            failures.append(f"collection {MAIN!r} is missing, but batches were acknowledged: "
                            f"{ {t: k for t, (k, _) in threads.items()} }")
        for t, (known, _) in threads.items():
            found["threads"][t] = known
    else:
        col = db.collection(MAIN)
        expected_total = 0
        live: Dict[str, Row] = {}
        for t, (known, maybe) in sorted(threads.items()):
            window = thread_window(t, known + 1)
            recs = col.get(window)
            actual = dict(zip(window, recs))
            candidates = [(known, thread_state(seed, li, t, known))]
            if maybe:
                candidates.append((known + 1, thread_state(seed, li, t, known + 1)))
            hit = next(((n, s) for n, s in candidates if _matches(actual, s)), None)
            if hit is None:
                lines = [f"thread {t}: {known} batches acknowledged or found before"
                         + (f", batch {known} in flight" if maybe else "")
                         + "; the database matches neither " + " nor ".join(
                             f"batches 0..{n - 1}" for n, _ in candidates)]
                for n, s in candidates:
                    lines.append(f"  against batches 0..{n - 1}: " + "; ".join(_diff(actual, s)))
                failures.append("\n".join(lines))
                continue
            found["threads"][t] = hit[0]
            expected_total += len(hit[1])
            live.update(hit[1])
        if not failures:
            count = col.count()
            if count != expected_total:
                failures.append(f"{MAIN}.count() = {count}, expected {expected_total} "
                                f"(threads at batches {found['threads']})")
        if not failures and live:
            rng = random.Random(spec["check_seed"])
            ef = 128 if LANES[lane][1] == "hnsw" else None
            for id_ in rng.sample(sorted(live), min(6, len(live))):
                vec, meta = live[id_]
                for flt in (None, {"t": meta["t"]}):
                    hits = col.search(vec, k=3, filter=flt, ef=ef)
                    if not hits or hits[0].id != id_ or abs(hits[0].distance) > 1e-4:
                        failures.append(f"search for the stored vector of {id_} (filter {flt}, metric "
                                        f"{metric}) returned {[(h.id, h.distance) for h in hits]}")
    # The DDL thread's collections.
    known, maybe = spec["ddl"]
    sides = sorted(names - {MAIN})
    candidates = [(known, ddl_state(seed, li, known))]
    if maybe:
        candidates.append((known + 1, ddl_state(seed, li, known + 1)))
    seen: Dict[str, Dict[str, Any]] = {}
    for name in sides:
        col = db.collection(name)
        ids = [f"{name}-{i}" for i in range(6)]
        seen[name] = {"count": col.count(), "rows": dict(zip(ids, col.get(ids)))}
    for n, state in candidates:
        if sorted(state) == sides and all(
                seen[name]["count"] == len(rows) and _matches(seen[name]["rows"], rows)
                for name, rows in state.items()):
            found["ddl"] = n
            break
    else:
        failures.append(f"DDL thread: {known} operations acknowledged or found before"
                        + (f", operation {known} {ddl_op(known)} in flight" if maybe else "")
                        + f"; collections {sides} with counts "
                        + str({k: v['count'] for k, v in seen.items()}) + " match neither "
                        + " nor ".join(f"{sorted(s)} after operations 0..{n - 1}" for n, s in candidates))
    return found, failures


# -- the child ------------------------------------------------------------------------------

class Out:
    """Whole lines to stdout from any thread, each flushed at once."""

    lock = threading.Lock()

    @classmethod
    def say(cls, *parts: Any) -> None:
        line = " ".join(str(p) for p in parts) + "\n"
        with cls.lock:
            sys.stdout.write(line)
            sys.stdout.flush()


def _guard(name: str, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:  # noqa: BLE001 - every failure of a load thread is reported
        Out.say("error", name, json.dumps(f"{exc!r}\n{traceback.format_exc()}"))


def writer(db, spec, t: int, start: int) -> None:
    col = db.collection(MAIN)
    b = start
    while True:
        op, ids, vecs, metas = main_batch(spec["seed"], spec["lane_index"], t, b)
        if op == "delete":
            col.delete(ids)
        elif op == "upsert":
            col.upsert(ids, vecs, metas)
        else:
            col.insert(ids, vecs, metas)
        Out.say("ack", t, b)
        b += 1


def ddl_worker(db, spec, start: int) -> None:
    rng = random.Random(spec["check_seed"] + 1)
    i = start
    while True:
        time.sleep(rng.uniform(0.02, 0.12))
        op, name = ddl_op(i)
        if op == "create":
            db.create_collection(name, dim=SIDE_DIM, metric="l2")
        elif op == "insert":
            db.collection(name).insert(*side_rows(spec["seed"], spec["lane_index"], name))
        else:
            db.drop_collection(name)
        Out.say("ack", "D", i)
        i += 1


def searcher(db, spec) -> None:
    col = db.collection(MAIN)
    rng = np.random.default_rng(spec["check_seed"] + 2)
    ef = 64 if LANES[spec["lane"]][1] == "hnsw" else None
    n = 0
    while True:
        n += 1
        q = rng.standard_normal(DIM).astype(np.float32)
        t = int(rng.integers(THREADS))
        flt = [None, {"t": t}, {"$and": [{"t": t}, {"odd": True}]}, {"k": {"$in": ["a", "c"]}},
               {"x": {"$lt": 0.5}}][n % 5]
        hits = col.search(q, k=10, filter=flt, ef=ef)
        dists = [h.distance for h in hits]
        if dists != sorted(dists):
            raise AssertionError(f"hits not in distance order: {dists}")
        for h in hits:
            if not h.id.startswith(f"t{t}-") and n % 5 in (1, 2):
                raise AssertionError(f"hit {h} is not a row of thread {t}: filter {flt} ignored")
            m = h.metadata
            ok = m is not None and {0: True, 1: m.get("t") == t, 2: m.get("t") == t and m.get("odd") is True,
                                    3: m.get("k") in ("a", "c"),
                                    4: isinstance(m.get("x"), float) and m["x"] < 0.5}[n % 5]
            if not ok:
                raise AssertionError(f"hit {h} has metadata that does not satisfy filter {flt}")
        if n % 7 == 0:
            col.search_batch(rng.standard_normal((4, DIM)).astype(np.float32), k=5, ef=ef)
        if n % 11 == 0:
            col.get([f"t{t}-{g}-{i}" for g in range(5) for i in range(0, 24, 5)])
            col.count()
        if n % 50 == 0:
            db.stats()
        if n % 400 == 0:
            (db.flush if n % 800 else db.compact)(MAIN)


def stats_printer(db, start: Dict[str, Any]) -> None:
    while True:
        time.sleep(0.2)
        Out.say("stats", json.dumps(_counters(db, start)))


def _counters(db, start: Optional[Dict[str, Any]] = None) -> Dict[str, int]:
    s = db.stats()["collections"].get(MAIN)
    if s is None:
        return {}
    out = {"flushes": s["storage"]["flushes"], "rotations": s["wal"].get("rotations", 0),
           "checkpoints": s["wal"].get("checkpoints", 0), "index_builds": s["storage"]["index_builds"],
           "compactions": s["storage"]["compactions"], "segments": s["storage"]["segments"],
           "wal_segments": s["wal"]["segments"], "rows": s["rows"]}
    if start is not None:
        out["compactions"] -= start.get("compactions", 0)
    return out


def child(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import proxistore  # imported here so that the parent never loads it
    Out.say("opening")
    t0 = time.perf_counter()
    db = proxistore.open(spec["db"], spec["config"])
    Out.say("opened", f"{time.perf_counter() - t0:.3f}")
    found, failures = check_database(db, spec)
    if failures:
        Out.say("FAIL", json.dumps(failures))
        os._exit(3)
    for t, n in found["threads"].items():
        Out.say("state", t, n)
    Out.say("state", "D", found["ddl"])
    if MAIN not in db.collections():
        db.create_collection(MAIN, dim=DIM, metric=LANES[spec["lane"]][3])
    start = _counters(db)
    Out.say("checked")
    if spec.get("check_only"):
        Out.say("stats", json.dumps(_counters(db)))
        db.close()
        Out.say("done")
        return 0
    workers = [threading.Thread(target=_guard, args=(f"writer-{t}", writer, db, spec, t, n), daemon=True)
               for t, n in found["threads"].items()]
    workers.append(threading.Thread(target=_guard, args=("ddl", ddl_worker, db, spec, found["ddl"]), daemon=True))
    workers.append(threading.Thread(target=_guard, args=("searcher", searcher, db, spec), daemon=True))
    workers.append(threading.Thread(target=_guard, args=("stats", stats_printer, db, start), daemon=True))
    for w in workers:
        w.start()
    time.sleep(spec.get("max_seconds", 120))   # the parent kills us long before this
    Out.say("error", "child", json.dumps("was not killed"))
    os._exit(4)


# -- the parent -----------------------------------------------------------------------------

class Soak:
    """The model of every lane, the counters of the report, and one cycle at a time."""

    def __init__(self, workdir: Path, seed: int, lanes: List[str]) -> None:
        self.workdir, self.seed, self.lanes = workdir, seed, lanes
        self.model: Dict[str, Dict[str, Any]] = {
            lane: {"threads": {str(t): [0, False] for t in range(THREADS)}, "ddl": [0, False],
                   "unchecked_acks": 0} for lane in lanes}
        self.totals = {"cycles": 0, "kills": 0, "acked_batches": 0, "acked_batches_checked": 0,
                       "acked_ddl_ops": 0, "inflight_landed": 0, "inflight_absent": 0, "checks": 0,
                       "kills_before_open_returned": 0, "kills_during_check": 0, "kills_under_load": 0}
        self.lane_stats = {lane: {"cycles": 0, "flushes": 0, "rotations": 0, "checkpoints": 0,
                                  "index_builds": 0, "compactions": 0, "open_seconds_max": 0.0}
                           for lane in lanes}
        self.kill_modes: Dict[str, int] = {}
        self.failures: List[Dict[str, Any]] = []

    def save(self) -> None:
        (self.workdir / "model.json").write_text(json.dumps({"seed": self.seed, "model": self.model}, indent=1))

    @classmethod
    def load(cls, workdir: Path) -> "Soak":
        data = json.loads((workdir / "model.json").read_text())
        soak = cls(workdir, data["seed"], list(data["model"]))
        soak.model = data["model"]
        return soak

    def spec(self, lane: str, cycle: int, check_only: bool) -> Dict[str, Any]:
        m = self.model[lane]
        return {"db": str(self.workdir / f"lane-{lane}"), "config": lane_config(lane), "seed": self.seed,
                "lane": lane, "lane_index": list(LANES).index(lane),
                "cycle": cycle, "check_seed": self.seed * 1_000_003 + cycle,
                "threads": m["threads"], "ddl": m["ddl"], "check_only": check_only}

    def run_cycle(self, cycle: int, lane: str, check_only: bool = False) -> Optional[Dict[str, Any]]:
        """One child: returns a failure record, or None."""
        spec = self.spec(lane, cycle, check_only)
        spec_path = self.workdir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        err_path = self.workdir / "child.stderr"
        rnd = random.Random(f"{self.seed}-{cycle}")
        u = rnd.random()
        if check_only:
            mode, trigger, delay = "none", None, None
        elif u < 0.12:
            mode, trigger, delay = "open", "opening", rnd.uniform(0.0, 0.08)
        elif u < 0.22:
            mode, trigger, delay = "early", "checked", rnd.uniform(0.0, 0.03)
        elif u < 0.40:
            mode, trigger, delay = "acks", None, None
        else:
            mode, trigger, delay = "load", "checked", rnd.uniform(0.05, 1.6)
        kill_after_acks = rnd.randint(1, 400)
        with open(err_path, "w") as err:
            proc = subprocess.Popen([sys.executable, str(THIS), "--child", str(spec_path)],
                                    stdout=subprocess.PIPE, stderr=err, text=True, cwd=str(THIS.parent))
        lines: "queue.Queue[Optional[str]]" = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        got: List[str] = []
        kill_at: Optional[float] = None
        hang_at = time.monotonic() + 60.0
        acks = 0
        eof = hung = False
        while True:
            now = time.monotonic()
            if kill_at is not None and now >= kill_at:
                break
            if now >= hang_at:
                hung = mode != "acks" or "checked" not in got
                break
            wait = min(kill_at if kill_at is not None else hang_at, hang_at) - now
            try:
                line = lines.get(timeout=max(0.0, wait))
            except queue.Empty:
                continue
            if line is None:
                eof = True
                break
            if not line.endswith("\n"):
                continue  # a line cut by the kill
            line = line.rstrip("\n")
            got.append(line)
            if line == trigger and kill_at is None:
                kill_at = time.monotonic() + delay
            if line.startswith("ack ") and not line.startswith("ack D"):
                acks += 1
                if mode == "acks" and acks >= kill_after_acks:
                    kill_at = time.monotonic()
            if line == "checked" and mode == "acks":
                hang_at = time.monotonic() + 3.0    # too few acks in 3 s: kill anyway
            if line.startswith("FAIL") or line.startswith("error"):
                break
        alive = proc.poll() is None
        if alive:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join()
        while not eof:   # lines still in the pipe when the kill landed
            line = lines.get()
            if line is None:
                break
            if line.endswith("\n"):
                got.append(line.rstrip("\n"))
        killed = alive and proc.returncode == -signal.SIGKILL
        failure = self.absorb(cycle, lane, mode, got, killed, proc.returncode, eof, check_only, err_path)
        if hung and failure is None:
            failure = self.failure(cycle, lane, mode, [f"child hung: no {trigger or 'exit'} within 60 s; "
                                                       f"last lines {got[-3:]}"], err_path)
        return failure

    def absorb(self, cycle: int, lane: str, mode: str, got: List[str], killed: bool, rc: int, eof: bool,
               check_only: bool, err_path: Path) -> Optional[Dict[str, Any]]:
        """Update the model from a child's output; return a failure record or None."""
        m = self.model[lane]
        st = self.lane_stats[lane]
        problems: List[str] = []
        acks: Dict[str, List[int]] = {}
        last_stats: Dict[str, int] = {}
        checked = False
        for line in got:
            parts = line.split(" ", 2)
            if parts[0] == "FAIL":
                problems += json.loads(line[5:])
            elif parts[0] == "error":
                problems.append(f"child thread {parts[1]} failed: {json.loads(parts[2])}")
            elif parts[0] == "opened":
                st["open_seconds_max"] = max(st["open_seconds_max"], float(parts[1]))
            elif parts[0] == "state":
                who, n = parts[1], int(parts[2])
                known, maybe = m["ddl"] if who == "D" else m["threads"][who]
                if maybe:
                    self.totals["inflight_landed" if n == known + 1 else "inflight_absent"] += 1
                if who == "D":
                    m["ddl"] = [n, False]
                else:
                    m["threads"][who] = [n, False]
            elif parts[0] == "checked":
                checked = True
                self.totals["checks"] += 1
                self.totals["acked_batches_checked"] += m["unchecked_acks"]
                m["unchecked_acks"] = 0
            elif parts[0] == "ack":
                acks.setdefault(parts[1], []).append(int(parts[2]))
            elif parts[0] == "stats":
                last_stats = json.loads(line[len("stats "):])

        if not checked and not problems and not killed:
            problems.append(f"child exited with code {rc} before checking")
        if checked and not check_only:
            # Every thread may have a batch in flight now, acknowledged ones or not.
            for who in list(m["threads"]) + ["D"]:
                known = m["ddl"][0] if who == "D" else m["threads"][who][0]
                mine = acks.get(who, [])
                if mine != list(range(known, known + len(mine))):
                    problems.append(f"thread {who}: acknowledgements {mine[:5]}... do not follow batch {known}")
                entry = [known + len(mine), True]
                if who == "D":
                    m["ddl"] = entry
                    self.totals["acked_ddl_ops"] += len(mine)
                else:
                    m["threads"][who] = entry
                    self.totals["acked_batches"] += len(mine)
                    m["unchecked_acks"] += len(mine)
        if not check_only:
            if killed:
                self.totals["kills"] += 1
                phase = ("kills_under_load" if checked else "kills_during_check"
                         if any(x.startswith("opened") for x in got) else "kills_before_open_returned")
                self.totals[phase] += 1
                self.kill_modes[mode] = self.kill_modes.get(mode, 0) + 1
            elif not problems:
                problems.append(f"child was not killed (exit code {rc}, end of output: {eof})")
            self.totals["cycles"] += 1
            st["cycles"] += 1
        for key in ("flushes", "rotations", "checkpoints", "index_builds", "compactions"):
            st[key] += last_stats.get(key, 0)

        self.save()
        return self.failure(cycle, lane, mode, problems, err_path) if problems else None

    def failure(self, cycle: int, lane: str, mode: str, problems: List[str], err_path: Path) -> Dict[str, Any]:
        stderr = err_path.read_text()[-3000:] if err_path.exists() else ""
        return {"cycle": cycle, "lane": lane, "seed": self.seed, "kill_mode": mode, "problems": problems,
                "child_stderr_tail": stderr, "db": str(self.workdir / f"lane-{lane}")}


def report(soak: Soak, wall: float, args) -> Dict[str, Any]:
    out = dict(soak.totals)
    out.update(failures=len(soak.failures), failure_details=soak.failures, wall_seconds=round(wall, 1),
               seed=soak.seed, kill_modes=soak.kill_modes, workdir=str(soak.workdir),

               lanes={lane: {"config": {"sync_mode": LANES[lane][0], "index": LANES[lane][1],
                                        "index_backend": LANES[lane][2], "metric": LANES[lane][3]},
                             **soak.lane_stats[lane],
                             "batches_per_thread": {t: v[0] for t, v in soak.model[lane]["threads"].items()},
                             "ddl_ops": soak.model[lane]["ddl"][0]}
                      for lane in soak.lanes},
               base_config=BASE_CONFIG, threads=THREADS, dim=DIM, window_groups=WINDOW)
    try:
        sys.path.insert(0, str(THIS.parent))
        from _report import machine
        out["machine"] = machine()
    except Exception:  # noqa: BLE001 - the machine record is a nicety
        pass
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=THIS.parent,
                                       capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, help="run cycles until this much time has passed")
    ap.add_argument("--cycles", type=int, help="run exactly this many cycles (default 50 without --minutes)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--lanes", default="ABCD", help="which configurations to run, in turn (default ABCD)")
    ap.add_argument("--json", nargs="?", const="-", metavar="FILE", help="write the report as JSON (- or no FILE: stdout)")
    ap.add_argument("--workdir", help="where the databases go (default: a new temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the workdir after a successful run")
    ap.add_argument("--check-only", action="store_true", help="check the lanes of --workdir against its model.json")

    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child)

    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table
    console = Console(stderr=args.json == "-", highlight=False, width=int(os.environ.get("BENCH_WIDTH", "150")))

    if args.check_only:
        if not args.workdir:
            ap.error("--check-only needs --workdir")
        soak = Soak.load(Path(args.workdir))
        args.keep = True
    else:
        lanes = [c for c in args.lanes if c in LANES]
        if not lanes or len(lanes) != len(args.lanes):
            ap.error(f"--lanes takes letters from {''.join(LANES)}")
        if args.cycles is None and args.minutes is None:
            args.cycles = 50
        workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="proxistore-soak-"))
        workdir.mkdir(parents=True, exist_ok=True)
        soak = Soak(workdir, args.seed, lanes)
    console.print(f"crash soak: seed {soak.seed}, lanes "
                  + ", ".join(f"{lane} ({'/'.join(LANES[lane])})" for lane in soak.lanes)
                  + f", {THREADS} writer threads + DDL + searcher; workdir {soak.workdir}")

    t0 = time.monotonic()
    deadline = t0 + args.minutes * 60 if args.minutes else None
    cycle = 0
    total = args.cycles if args.cycles is not None else None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        task = progress.add_task("", total=total if total is not None else int(args.minutes * 60)
                                 if args.minutes else 0)
        while not args.check_only:
            if total is not None and cycle >= total:
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
            lane = soak.lanes[cycle % len(soak.lanes)]
            failure = soak.run_cycle(cycle, lane)
            cycle += 1
            tot = soak.totals
            progress.update(task, completed=cycle if total is not None else int(time.monotonic() - t0),
                            description=f"cycle {cycle} lane {lane}: kills {tot['kills']}, acked batches "
                                        f"{tot['acked_batches']:,}, in flight landed/absent "
                                        f"{tot['inflight_landed']}/{tot['inflight_absent']}, failures "
                                        f"{len(soak.failures) + bool(failure)}")
            if failure:
                soak.failures.append(failure)
                break
    if not soak.failures:   # a last check of every lane covers the last cycle's acknowledgements
        for lane in soak.lanes:
            failure = soak.run_cycle(cycle, lane, check_only=True)
            if failure:
                soak.failures.append(failure)
                break
    wall = time.monotonic() - t0
    rep = report(soak, wall, args)

    table = Table(title="crash soak", show_header=True)
    table.add_column("lane")
    table.add_column("config")
    for col in ("cycles", "flushes", "WAL rotations", "checkpoints", "index builds", "compactions",
                "batches/thread"):
        table.add_column(col, justify="right")
    for lane in soak.lanes:
        s = rep["lanes"][lane]
        table.add_row(lane, "/".join(LANES[lane]), str(s["cycles"]), f"{s['flushes']:,}", f"{s['rotations']:,}",
                      f"{s['checkpoints']:,}", f"{s['index_builds']:,}", f"{s['compactions']:,}",
                      ", ".join(f"{v:,}" for v in s["batches_per_thread"].values()))
    console.print(table)
    console.print(f"cycles {rep['cycles']}, kills {rep['kills']} (before open returned "
                  f"{rep['kills_before_open_returned']}, during the check {rep['kills_during_check']}, under "
                  f"load {rep['kills_under_load']}), acknowledged batches checked "
                  f"{rep['acked_batches_checked']:,} of {rep['acked_batches']:,} (+ {rep['acked_ddl_ops']:,} "
                  f"DDL operations), in-flight batches landed {rep['inflight_landed']:,} / not landed "
                  f"{rep['inflight_absent']:,}, checks {rep['checks']}, failures {rep['failures']}, wall time "
                  f"{wall:.1f} s")
    for f in soak.failures:
        console.print(f"[bold red]FAILURE[/] in cycle {f['cycle']} (seed {f['seed']}, lane {f['lane']}, kill "
                      f"mode {f['kill_mode']}); database kept at {f['db']}")
        for p in f["problems"]:
            console.print(p, markup=False)
        if f["child_stderr_tail"].strip():
            console.print("child stderr (tail):\n" + f["child_stderr_tail"], markup=False)
    if args.json:
        text = json.dumps(rep, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if soak.failures or args.keep:
        console.print(f"workdir kept: {soak.workdir}")
    else:
        shutil.rmtree(soak.workdir, ignore_errors=True)
    return 1 if soak.failures else 0


if __name__ == "__main__":
    sys.exit(main())
