"""One run of a workload against one config, on a fresh data directory.

The ingest phase (:func:`ingest`) opens the database with the config and an observer plugin that
records every flush (policy, phases, when), creates one collection, and starts:

- ``ingest.writers`` writer threads following the :mod:`~proxistore.bench.plan`; each write's
  acknowledged latency is measured from the ``insert``/``upsert``/``delete`` call to its return;
- a query thread at ``queries.rate_during_ingest`` searches per second while writers run (a fixed
  schedule; a search's latency is from the ``search`` call to its return, not from its slot);
- a sampler thread reading ``db.stats()`` every ``ingest.sample_interval`` (memtable bytes, WAL
  bytes, segments); each writer also reads the total memtable bytes after each acknowledgement.

Then the final flush or compaction, the wait for background work (``finish.settle``), one
search per query (latency and recall@k against exact results on the rows actually live).

The end (:func:`run`): with ``finish.crash`` the ingest phase runs in a child process that the
parent kills with SIGKILL once it has reported, then the parent times ``proxistore.open`` on the
directory; otherwise the parent times ``close()`` and then ``proxistore.open``. After the reopen
it checks the row count against the plan and measures recall again.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

import proxistore

from ..config import EffectiveConfig, load_config
from ..errors import ConfigError
from ..fileio import default_filesystem
from ..storage_root import resolve_storage_root
from ..hookspecs import hookimpl
from ..registry import build_registry
from .data import Dataset, load_dataset, recall_at_k
from .plan import DELETE, INSERT, UPSERT, Plan, live_rows, make_plan
from .workload import Workload

__all__ = ["run", "prepare", "ingest", "disk_bytes", "live_recall", "Progress", "COLLECTION", "BenchError"]

COLLECTION = "bench"
Progress = Callable[[int], None]


class BenchError(proxistore.errors.ProxistoreError):
    """A run could not complete (the child process failed, a write path error...)."""


class _FlushObserver:
    """An observer plugin: every finished flush, with its policy and timings, in run time."""

    def __init__(self) -> None:
        self.__name__ = "proxistore-bench"
        self.wall0 = time.time()
        self.events: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    @hookimpl
    def proxistore_flush_finished(self, event: Any) -> None:
        d = event.to_dict()
        rec = {"policy": d["reason"]["policy"], "key": d["reason"].get("key"), "start": d["started_at"] - self.wall0,
               "seconds": d["seconds"], "rows": d["rows"], "deletes": d["deletes"], "bytes": d["bytes"],
               "phases": dict(d["phases"]), "error": d["error"], "memtables": d["memtables"]}
        with self._lock:
            self.events.append(rec)


def _collection_stats(db: Any) -> Dict[str, Any]:
    """The figures the bench reads from ``db.stats()``. A read that races a finishing flush may
    raise RuntimeError ("deque mutated during iteration" in older cores); it is retried."""
    for attempt in range(5):
        try:
            s = db.stats()
            break
        except RuntimeError:
            if attempt == 4:
                raise
            time.sleep(0.001)
    c = s["collections"][COLLECTION]
    return {"memtable_bytes": s["memtable_bytes"], "wal_bytes": c["wal"].get("bytes", 0),
            "segments": c["storage"].get("segments"), "rows": c["rows"], "backpressure": s["backpressure"],
            "compactions": c["storage"].get("compactions"), "flushes": c["flushes"]["total"],
            "flush_failures": c["flushes"]["failures"], "maintenance_errors": s["maintenance"]["errors"]}


def disk_bytes(path: str) -> int:
    """Bytes of every file under ``path`` (what the data directory takes on disk, by file size)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:  # a file removed by background work meanwhile
                pass
    return total


# ------------------------------------------------------------------------------------------------
# the ingest phase
# ------------------------------------------------------------------------------------------------

def ingest(path: str, wl: Workload, config: Any, data: Dataset, plan: Plan,
           progress: Optional[Progress] = None) -> Tuple[Any, Dict[str, Any]]:
    """Run the ingest phase on a fresh ``path``; returns the (still open) database and the record."""
    observer = _FlushObserver()
    db = proxistore.open(path, config, registry=build_registry(extra_plugins=(observer,)))
    try:
        return db, _ingest(db, path, wl, data, plan, observer, progress)
    except BaseException:
        db.close()
        raise


def _ingest(db: Any, path: str, wl: Workload, data: Dataset, plan: Plan, observer: _FlushObserver,
            progress: Optional[Progress]) -> Dict[str, Any]:
    coll = db.create_collection(COLLECTION, dim=data.dim, metric=data.metric)
    q, ing = wl.queries, wl.ingest
    flt, ef = wl.filter, (q["ef"] or None)
    lock = threading.Lock()
    writes: Dict[str, List[Any]] = {"start": [], "t": [], "latency": [], "kind": [], "rows": [], "memtable": []}
    done = [0] * len(plan.writers)
    errors: List[str] = []
    writers_done = threading.Event()
    stop_sampler = threading.Event()
    samples: Dict[str, List[Any]] = {"t": [], "memtable_bytes": [], "wal_bytes": [], "segments": []}
    during: Dict[str, List[float]] = {"t": [], "latency": []}
    call = {INSERT: coll.insert, UPSERT: coll.upsert}

    def writer(w: int) -> None:
        perf = time.perf_counter
        for op in plan.writers[w]:
            ids = [data.ids[r] for r in op.rows.tolist()]
            if op.kind == DELETE:
                args: Tuple[Any, ...] = (ids,)
                fn: Callable[..., Any] = coll.delete
            else:
                meta = [data.metadata[r] for r in op.rows.tolist()] if data.metadata is not None else None
                args, fn = (ids, plan.pool[op.vec_rows], meta), call[op.kind]
            started = perf()
            try:
                fn(*args)
            except Exception as exc:  # recorded and reported; this writer stops, the others go on
                with lock:
                    errors.append(f"writer {w}: {type(exc).__name__}: {exc}")
                return
            ended = perf()
            mem = db.total_memtable_bytes()
            with lock:
                writes["start"].append(started - t0)
                writes["t"].append(ended - t0)
                writes["latency"].append(ended - started)
                writes["kind"].append(op.kind)
                writes["rows"].append(len(ids))
                writes["memtable"].append(mem)
                done[w] += 1
            if progress is not None:
                progress(len(ids))

    def querier() -> None:
        rate = q["rate_during_ingest"]
        i = 0
        while not writers_done.is_set():
            slot = t0 + i / rate
            delay = slot - time.perf_counter()
            if delay > 0 and writers_done.wait(delay):
                break
            vec = data.queries[i % len(data.queries)]
            started = time.perf_counter()
            try:
                coll.search(vec, k=q["k"], filter=flt, ef=ef)
            except Exception as exc:  # recorded; searching stops, writing goes on
                with lock:
                    errors.append(f"search during ingest: {type(exc).__name__}: {exc}")
                return
            ended = time.perf_counter()
            during["t"].append(ended - t0)
            during["latency"].append(ended - started)
            i += 1

    def sampler() -> None:
        while True:
            t = time.perf_counter() - t0
            try:
                s = _collection_stats(db)
            except Exception as exc:  # a failed read is reported; sampling goes on
                with lock:
                    errors.append(f"sampler: {type(exc).__name__}: {exc}")
                if stop_sampler.wait(ing["sample_interval"]):
                    return
                continue
            samples["t"].append(t)
            samples["memtable_bytes"].append(s["memtable_bytes"])
            samples["wal_bytes"].append(s["wal_bytes"])
            samples["segments"].append(s["segments"])
            if stop_sampler.wait(ing["sample_interval"]):
                return

    threads = [threading.Thread(target=writer, args=(w,), name=f"bench-writer-{w}") for w in range(len(plan.writers))]
    if q["rate_during_ingest"] > 0 and len(data.queries):
        threads.append(threading.Thread(target=querier, name="bench-queries"))
    observer.wall0 = time.time()
    t0 = time.perf_counter()
    sample_thread = threading.Thread(target=sampler, name="bench-sampler", daemon=True)
    sample_thread.start()
    for t in threads:
        t.start()
    for t in threads[:len(plan.writers)]:
        t.join()
    write_end = time.perf_counter() - t0
    writers_done.set()
    for t in threads[len(plan.writers):]:
        t.join()
    end_of_ingest = _collection_stats(db)
    started = time.perf_counter()
    if wl.finish["final"] in ("flush", "compact"):
        db.flush()
    if wl.finish["final"] == "compact":
        db.compact()
    final_s = time.perf_counter() - started
    started = time.perf_counter()
    settled = db.wait_idle(timeout=600.0) if wl.finish["settle"] else None
    settle_s = time.perf_counter() - started
    expected = live_rows(plan, done)
    after = _search_after(coll, data, plan, expected, wl)
    stop_sampler.set()
    sample_thread.join()
    record = {
        "t0_wall": observer.wall0, "write_end": write_end, "writes": writes, "done": done,
        "planned": [len(ops) for ops in plan.writers], "errors": errors, "samples": samples,
        "search_during": during, "search_after": after, "flushes": list(observer.events),
        "end_of_ingest": end_of_ingest, "final_seconds": final_s, "settle_seconds": settle_s,
        "settled": settled, "end": _collection_stats(db), "disk_bytes": disk_bytes(path),
        "expected_rows": len(expected), "policies": db.config.policies, "config_source": db.config.source,
    }
    return record


def _live(data: Dataset, plan: Plan, expected: Mapping[int, int]) -> Tuple[List[str], np.ndarray, np.ndarray]:
    """Ids, current vectors and data rows (for the metadata) of the live set."""
    rows = np.fromiter(expected.keys(), dtype=np.int64, count=len(expected))
    pool_rows = np.fromiter(expected.values(), dtype=np.int64, count=len(expected))
    return [data.ids[r] for r in rows.tolist()], plan.pool[pool_rows], rows


def _filter_mask(wl: Workload, data: Dataset, rows: np.ndarray) -> Optional[np.ndarray]:
    if not wl.filter:
        return None
    from ..filters import compile_filter, metadata_table

    meta = data.metadata or []
    return compile_filter(wl.filter).mask(metadata_table([meta[r] if meta else None for r in rows.tolist()]))


def live_recall(found: List[List[Optional[str]]], wl: Workload, data: Dataset, plan: Plan,
                expected: Mapping[int, int]) -> float:
    """recall@k of ``found`` (one id list per query) against exact results on the live rows."""
    ids, vectors, rows = _live(data, plan, expected)
    return recall_at_k(found, data.queries, ids, vectors, wl.queries["k"], data.metric,
                       _filter_mask(wl, data, rows))


def _search_after(coll: Any, data: Dataset, plan: Plan, expected: Mapping[int, int], wl: Workload
                  ) -> Dict[str, Any]:
    """One search per query, timed one by one, and the recall of the answers."""
    q = wl.queries
    latencies: List[float] = []
    found: List[List[Optional[str]]] = []
    started = time.perf_counter()
    for vec in data.queries:
        t = time.perf_counter()
        hits = coll.search(vec, k=q["k"], filter=wl.filter, ef=q["ef"] or None)
        latencies.append(time.perf_counter() - t)
        found.append([h.id for h in hits])
    seconds = time.perf_counter() - started
    recall = live_recall(found, wl, data, plan, expected) if len(data.queries) else None
    return {"latency": latencies, "seconds": seconds, "recall": recall}


# ------------------------------------------------------------------------------------------------
# one run, with its end (close or crash) and the reopen
# ------------------------------------------------------------------------------------------------

def prepare(wl: Workload) -> Tuple[Dataset, Plan]:
    """The workload's data and write plan (deterministic; shared by every run of ``ab``)."""
    data = load_dataset(wl)
    plan = make_plan(data, wl.ingest["batch_size"], wl.ingest["writers"], wl.ingest["upsert_share"],
                     wl.ingest["delete_share"], wl.data["seed"])
    return data, plan


def _check_storage_root_is_the_runs_own(cfg: EffectiveConfig, data_dir: str) -> None:
    """Each run starts from nothing, and its disk bytes are what it wrote: a storage root outside
    the run's data directory would be shared by every run (the second is refused, see
    proxistore.identity) and left out of the figures."""
    if not cfg.storage_root:
        return
    where = resolve_storage_root(cfg.storage_root, data_dir, default_filesystem(), source=cfg.source)
    if not where.local or not os.path.abspath(where.path).startswith(os.path.abspath(data_dir) + os.sep):
        raise ConfigError(f"bench and ab run each workload on a fresh data directory, and {cfg.storage_root!r} "
                          f"is outside it: every run would share it. Leave it empty, or give a relative path "
                          f"under the data directory", key="storage.root", file=cfg.source)


def run(wl: Workload, config: Any = None, *, workdir: Optional[str] = None, progress: Optional[Progress] = None,
        prepared: Optional[Tuple[Dataset, Plan]] = None) -> Dict[str, Any]:
    """Run ``wl`` with ``config`` (a TOML path, a dict of overrides, or None) on a fresh temp dir
    under ``workdir``; ``prepared`` is :func:`prepare`'s result, made here when not given."""
    if isinstance(config, (str, os.PathLike)):
        config = os.path.abspath(os.fspath(config))
    cfg = load_config(config)  # a bad config is reported before anything runs, also for a child process
    data, plan = prepared if prepared is not None else prepare(wl)
    root = tempfile.mkdtemp(prefix="proxistore-bench-", dir=workdir)
    path = os.path.join(root, "data")
    try:
        _check_storage_root_is_the_runs_own(cfg, path)
        end: Dict[str, Any] = {"mode": "crash" if wl.finish["crash"] else "close"}
        if wl.finish["crash"]:
            record = _ingest_in_child(path, wl, config, progress)
        else:
            db, record = ingest(path, wl, config, data, plan, progress)
            started = time.perf_counter()
            db.close()
            end["close_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        db = proxistore.open(path, config)
        end["reopen_seconds"] = time.perf_counter() - started
        try:
            coll = db.collection(COLLECTION)
            end["rows_after_reopen"] = coll.count()
            expected = live_rows(plan, record["done"])
            if len(data.queries):
                ids, _ = coll.search_batch(data.queries, k=wl.queries["k"], filter=wl.filter,
                                           ef=wl.queries["ef"] or None)
                found = [[i for i in row if i is not None] for row in ids.tolist()]
                end["recall_after_reopen"] = live_recall(found, wl, data, plan, expected)
        finally:
            db.close()
        return {"workload": wl.to_dict(), "config": record["config_source"], "plan": {
            "batches": plan.batches, "rows_by_kind": plan.rows_by_kind}, "ingest": record, "end": end}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _ingest_in_child(path: str, wl: Workload, config: Any, progress: Optional[Progress]) -> Dict[str, Any]:
    """The ingest phase in ``python -m proxistore.bench._child``, SIGKILLed once it has reported."""
    spec = {"path": path, "config": config, "workload": {"raw": wl.raw, "source": wl.source, "base_dir": wl.base_dir}}
    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen([sys.executable, "-m", "proxistore.bench._child", json.dumps(spec)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)
        record = None
        try:
            assert child.stdout is not None
            for line in child.stdout:
                msg = json.loads(line)
                if "progress" in msg and progress is not None:
                    progress(msg["progress"])
                elif "record" in msg:
                    record = msg["record"]
                    break
        finally:
            if child.poll() is None:
                os.kill(child.pid, signal.SIGKILL)
            child.wait()
            if child.stdin:
                child.stdin.close()
        if record is None:
            err.seek(0)
            tail = err.read().decode(errors="replace").strip().splitlines()[-5:]
            raise BenchError(f"the ingest child process exited {child.returncode} before reporting: "
                             + (" | ".join(tail) or "(no output)"))
    if child.returncode != -signal.SIGKILL:
        raise BenchError(f"the ingest child process ended with {child.returncode}, not by SIGKILL")
    return record
