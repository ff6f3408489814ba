"""Power-loss sweep: the machine loses power before each I/O operation of a workload of inserts,
upserts, deletes, flushes, compactions and WAL rotations; what survived (only what was fsynced:
file data and directory entries separately) is reopened and checked against the model.

``always`` and ``group``: every acknowledged write is present, the step in flight is there whole
or not at all, searches match brute force, and storage and WAL agree (a flush and reopen changes
nothing). ``interval``: what each collection loses is a suffix of its acknowledged writes (each
collection has its own log), all acknowledged within the sync interval (plus scheduling slack)
before the crash; never a hole; a collection whose creation was acknowledged is never lost.
"""
from __future__ import annotations

import shutil
import threading
import time
from typing import Dict, List

import numpy as np
import pytest

import proxistore
from proxistore.errors import ProxistoreError
from proxistore.testing.faultfs import FaultInjectingFileSystem

from fault_workload import Outcome, Step, check_recovered, check_searches, expected, plan, run_steps, same_state


def sweep_config(sync_mode: str, **wal) -> dict:
    """Small segments and thresholds, so that a few dozen rows rotate the WAL, flush into
    several segments, merge them and build (flat, exact) indexes; no background work, so that
    operation N is the same operation in every run."""
    return {"wal": {"avro": {"sync_mode": sync_mode, "segment_size": "1500B", **wal}},
            "storage": {"viper": {"index": "flat", "indexing_threshold": 8, "compaction_min_segments": 2,
                                  "compaction_base_rows": 4}},
            "flush": {"policies": ["manual"]},
            "maintenance": {"check_interval": "1h"}}


def run_until_crash(root, steps: List[Step], config: dict, crash_at=None, unsynced="drop", seed=0,
                    pause: float = 0.0):
    """Open ``root`` over a fault-injecting filesystem, run ``steps`` until the power goes;
    returns the filesystem (crashed) and the outcome."""
    fs = FaultInjectingFileSystem(str(root), crash_at=crash_at, unsynced=unsynced, seed=seed)
    out = Outcome()
    try:
        db = proxistore.open(root, config, fs=fs)
    except (ProxistoreError, OSError) as exc:
        out.failed, out.error = 0, exc
        fs.crash()
        return fs, out, None
    db.maintenance.pause(True)
    out = run_steps(db, steps, pause=pause)
    crash_time = time.monotonic()
    fs.crash()
    try:
        db.close()
    except (ProxistoreError, OSError):
        pass                                   # the machine is dead; what matters is on "disk"
    return fs, out, crash_time


def candidates_for(out: Outcome) -> List[int]:
    return [out.acked] if out.failed is None else [out.acked, out.acked + 1]


def sweep(tmp_path, sync_mode: str, points, steps, unsynced="drop") -> Dict[str, int]:
    config = sweep_config(sync_mode)
    found = {"points": 0, "in_flight_landed": 0}
    for n in points:
        root = tmp_path / f"db{n}"
        fs, out, _ = run_until_crash(root, steps, config, crash_at=n, unsynced=unsynced, seed=n)
        after = fs.image().materialize(str(tmp_path / f"after{n}"))
        try:
            got = check_recovered(after, steps, candidates_for(out), config)
        except Exception as exc:
            raise AssertionError(f"{sync_mode}: power lost before operation {n} "
                                 f"({fs.trace[n - 1] if n <= len(fs.trace) else 'end'}); "
                                 f"{out.acked} steps acknowledged, failed step: {out.failed} "
                                 f"({out.error!r}): {exc}") from exc
        found["points"] += 1
        found["in_flight_landed"] += int(out.failed is not None and got == out.acked + 1)
        shutil.rmtree(root)
        shutil.rmtree(after)
    return found


def count_ops(tmp_path, sync_mode: str, steps) -> FaultInjectingFileSystem:
    root = tmp_path / "dry"
    fs, out, _ = run_until_crash(root, steps, sweep_config(sync_mode))
    assert out.failed is None, out.error
    shutil.rmtree(root)
    return fs


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sync_mode", ["always", "group"])
def test_power_loss_before_every_operation_loses_no_acknowledged_write(tmp_path, sync_mode):
    steps = plan(batches=12)
    dry = count_ops(tmp_path, sync_mode, steps)
    kinds = {op for op, _ in dry.trace}
    assert {"write", "fsync", "fsync_dir", "rename", "unlink"} <= kinds, kinds
    assert any(p.startswith("storage/") and p.endswith(".parquet") for _, p in dry.trace)
    found = sweep(tmp_path, sync_mode, range(1, dry.ops + 2), steps)
    assert found["points"] == dry.ops + 1


@pytest.mark.timeout(600)
def test_power_loss_with_torn_unsynced_tails_loses_no_acknowledged_write(tmp_path):
    """Unsynced appends partly reach the disk (a torn last block): recovery cuts them off."""
    steps = plan(batches=12, seed=1)
    dry = count_ops(tmp_path, "group", steps)
    points = sorted(set(np.random.default_rng(7).integers(1, dry.ops + 2, size=60).tolist()))
    sweep(tmp_path, "group", points, steps, unsynced="torn")


#: How late the interval syncer may run on a busy 2-core machine: the loss window is
#: sync_interval plus the time to get scheduled and fsync.
SCHEDULING_SLACK = 0.25


@pytest.mark.timeout(600)
def test_interval_mode_loses_only_a_recent_suffix_of_acknowledged_writes(tmp_path):
    interval = 0.05
    config = sweep_config("interval", sync_interval=f"{int(interval * 1000)}ms")
    steps = plan(batches=12, seed=2)
    root = tmp_path / "dry"
    dry, out, _ = run_until_crash(root, steps, config, pause=0.01)
    assert out.failed is None, out.error
    points = sorted(set(np.random.default_rng(3).integers(1, dry.ops + 2, size=40).tolist()))
    lost_some = 0
    for n in points:
        root = tmp_path / f"db{n}"
        fs, out, _ = run_until_crash(root, steps, config, crash_at=n, seed=n, pause=0.01)
        after = fs.image().materialize(str(tmp_path / f"after{n}"))
        upto = out.acked + (0 if out.failed is None else 1)
        got = check_recovered(after, steps, [upto], config, per_collection=True)
        for i, step in enumerate(steps[:out.acked]):
            if step.kind == "create":
                assert step.collection in got and got[step.collection] > i, \
                    f"power lost before operation {n}: acknowledged {step.describe()} was lost"
        lost = [i for i in range(out.acked) if steps[i].writes and i >= got[steps[i].collection]]
        for i in lost:
            age = fs.crash_time - out.ack_times[i]
            assert age <= interval + SCHEDULING_SLACK, (
                f"power lost before operation {n}: step {i} ({steps[i].describe()}) was acknowledged "
                f"{age:.3f}s before the crash and lost; the window is {interval}s")
        lost_some += bool(lost)
        shutil.rmtree(root)
        shutil.rmtree(after)
    assert lost_some, "no crash point lost an acknowledged write: the sweep did not test the window"


def thread_plan(t: int, batches: int, rows: int = 5) -> List[Step]:
    """Writer ``t``'s batches on the shared collection ``c``: inserts of its own ids, every third
    an upsert of its previous batch, every fifth a delete of two of them."""
    rng = np.random.default_rng(100 + t)
    steps: List[Step] = []
    prev: List[str] = []
    for b in range(batches):
        vecs = rng.standard_normal((rows, 8)).astype(np.float32)
        if b % 5 == 4 and prev:
            steps.append(Step("delete", "c", ids=prev[:2]))
        elif b % 3 == 2 and prev:
            steps.append(Step("upsert", "c", ids=list(prev), vectors=vecs, metadata=[{"t": t, "b": b}] * rows))
        else:
            prev = [f"t{t}-{b}-{i}" for i in range(rows)]
            steps.append(Step("insert", "c", ids=prev, vectors=vecs, metadata=[{"t": t, "b": b}] * rows))
    return steps


def background_config(sync_mode: str) -> dict:
    return {"wal": {"avro": {"sync_mode": sync_mode, "segment_size": "4kB"}},
            "flush": {"size": {"memory_flush_size_bytes": "3kB"}},
            "storage": {"viper": {"index": "flat", "indexing_threshold": 16, "compaction_min_segments": 2,
                                  "compaction_base_rows": 8}},
            "maintenance": {"check_interval": "5ms"}}


def run_threads(root, plans, config, crash_at=None):
    fs = FaultInjectingFileSystem(str(root), crash_at=crash_at, keep_trace=False)
    db = proxistore.open(root, config, fs=fs)
    db.create_collection("c", dim=8, metric="l2")
    outcomes = [Outcome() for _ in plans]
    threads = [threading.Thread(target=lambda i=i: outcomes.__setitem__(i, run_steps(db, plans[i])))
               for i in range(len(plans))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    fs.crash()
    try:
        db.close()
    except (ProxistoreError, OSError):
        pass
    return fs, outcomes


@pytest.mark.timeout(600)
@pytest.mark.parametrize("sync_mode", ["always", "group"])
def test_power_loss_under_concurrent_writers_and_background_maintenance_loses_nothing(tmp_path, sync_mode):
    """The larger workload, sampled: three writers on one collection while background flushes,
    WAL checkpoints and compactions run; the crash lands wherever operation N falls."""
    plans = [thread_plan(t, 40) for t in range(3)]
    config = background_config(sync_mode)
    dry, outs = run_threads(tmp_path / "dry", plans, config)
    assert all(o.failed is None for o in outs), [o.error for o in outs]
    points = sorted(set(np.random.default_rng(11).integers(60, dry.ops + 1, size=40).tolist()))
    crashed_mid_run = 0
    for n in points:
        fs, outs = run_threads(tmp_path / f"db{n}", plans, config, crash_at=n)
        after = fs.image().materialize(str(tmp_path / f"after{n}"))
        with proxistore.open(after, config) as db:
            col = db.collection("c")
            live = {}
            for t, (steps, out) in enumerate(zip(plans, outs)):
                ids = sorted({i for s in steps for i in s.ids})
                got = {i: (np.asarray(r.vector), r.metadata) for i, r in zip(ids, col.get(ids)) if r is not None}
                diffs = {k: same_state({"c": got}, expected([Step("create", "c")] + steps, k + 1))
                         for k in candidates_for(out)}
                assert None in diffs.values(), (
                    f"{sync_mode}: power lost before operation {n}: writer {t} acknowledged "
                    f"{out.acked} batches (failed: {out.failed}: {out.error}); what survived matches "
                    f"neither: {diffs}")
                live.update(got)
            assert col.count() == len(live)
            check_searches(db, {"c": live})
            crashed_mid_run += any(o.failed is not None for o in outs)
        shutil.rmtree(tmp_path / f"db{n}")
        shutil.rmtree(after)
    assert crashed_mid_run > len(points) // 2, "most crash points should fall while writers run"
