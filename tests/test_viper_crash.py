"""SIGKILL of a real child process at precise points of flush and compaction.

Each test runs ``killpoint_child.py`` on a :class:`killpoints.KillPointFileSystem` that kills the
child just before or just after one operation of the durable data path: the segment's Parquet
fsync, a deletion vector or index file write, the manifest rename, the WAL checkpoint unlink, the
removal of a compaction's input files. The test asserts the child died by SIGKILL at exactly that
point, then reopens the data directory with the normal filesystem and checks that

* every acknowledged batch is there with its exact vectors and metadata, deleted ids are gone,
  nothing is duplicated (the count equals the model's, every result row has unique ids);
* the collection's storage directory holds exactly the files the committed manifest references
  (the kill's orphans are removed) and no temporary file is left anywhere;
* searches (with and without a metadata filter) return an exact top-k over the model
  (:func:`proxistore.distance.exact_topk`);
* the store keeps working: insert, upsert, delete, flush (which checkpoints every stale WAL
  segment), compact, reopen, all still exact.

Flushes never write index files (indexes are built by maintenance or compaction, never on the
flush path), so the "index write" kill points are those of a merge, of compact()'s index build
and of background maintenance.
"""
from __future__ import annotations

import fnmatch
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest

import proxistore
from proxistore.distance import exact_topk
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.viper.manifest import MANIFEST_NAME, load_manifest

from killpoint_child import (BACKGROUND_BATCHES, COLLECTION, DIM, MANUAL_CONFIG, MANUAL_LAST_BATCH,
                             apply, batch, model_after)
from killpoints import ENV, MARKER, KillRule

HERE = Path(__file__).resolve().parent
Model = Dict[str, Tuple[np.ndarray, dict]]

PARQUET = "storage/*/seg-*.parquet"
DELETES = "storage/*/*.del"
INDEX = "storage/*/*.hnsw.*"                     # the HNSW index file, of either library
MANIFEST = "storage/*/" + MANIFEST_NAME + "*"      # the temp file and the manifest itself
WAL = "wal/*/wal-*.avro"
SEGMENT_FILE = "storage/*/seg-*"                   # any file of a segment


# -- running the child ------------------------------------------------------------------------


def run_child(db_path: Path, mode: str, rule: KillRule, env: dict) -> Tuple[List[int], dict]:
    """Run the child until the kill point kills it; return (acknowledged batches, kill marker)."""
    env = dict(env, **{ENV: rule.to_json()})
    proc = subprocess.run([sys.executable, str(HERE / "killpoint_child.py"), str(db_path), mode],
                          capture_output=True, text=True, env=env, cwd=HERE, timeout=120)
    lines = proc.stdout.splitlines()
    assert "done" not in lines, f"the kill point {rule} was never reached:\n{proc.stderr[-3000:]}"
    assert proc.returncode == -signal.SIGKILL, (
        f"child exited with {proc.returncode}, not by SIGKILL at {rule}:\n{proc.stderr[-3000:]}")
    markers = [json.loads(l[len(MARKER):]) for l in lines if l.startswith(MARKER)]
    assert len(markers) == 1, f"expected one kill marker, got {markers}\n{proc.stderr[-3000:]}"
    marker = markers[0]
    assert (marker["op"], marker["when"]) == (rule.op, rule.when), marker
    assert rule.phase is None or marker["phase"] == rule.phase, marker
    assert any(fnmatch.fnmatchcase(p, rule.path) for p in marker["paths"]), marker
    acked = [int(l.split()[1]) for l in lines if l.startswith("ack ")]
    assert mode == "reopen" or "ready" in lines, proc.stderr[-3000:]
    assert acked == list(range(len(acked))), f"acknowledgements out of order: {acked}"
    return acked, marker


# -- what the directory and the database must look like ------------------------------------------


def storage_dir(db_path: Path) -> Path:
    return db_path / "storage" / COLLECTION


def unreferenced_files(db_path: Path) -> List[str]:
    """Files in the collection's storage directory that the committed manifest does not list."""
    directory = storage_dir(db_path)
    manifest = load_manifest(LocalFileSystem(), str(directory))
    return sorted(set(os.listdir(directory)) - manifest.files())


def assert_storage_consistent(db_path: Path) -> None:
    """No orphan, no missing file, no temp file anywhere in the data directory."""
    directory = storage_dir(db_path)
    manifest = load_manifest(LocalFileSystem(), str(directory))
    present = set(os.listdir(directory))
    assert present - manifest.files() == set(), f"orphan files remain: {sorted(present - manifest.files())}"
    assert manifest.files() - present == set(), f"manifest references missing files: {sorted(manifest.files() - present)}"
    temps = [str(p.relative_to(db_path)) for p in db_path.rglob("*.tmp")]
    assert temps == [], f"temporary files remain: {temps}"


def assert_matches_model(col, model: Model, gone: Sequence[str]) -> None:
    """Exactly the model: count, every id's vector and metadata, deleted ids absent."""
    assert col.count() == len(model), f"count {col.count()} != model {len(model)} (lost or duplicated rows)"
    ids = sorted(model)
    for id_, rec in zip(ids, col.get(ids)):
        assert rec is not None, f"acknowledged id {id_} is missing"
        assert np.array_equal(rec.vector, model[id_][0]), f"{id_}: wrong vector"
        assert rec.metadata == model[id_][1], f"{id_}: metadata {rec.metadata} != {model[id_][1]}"
    dead = sorted(set(gone) - set(model))
    for id_, rec in zip(dead, col.get(dead)):
        assert rec is None, f"deleted or superseded id {id_} is back: {rec}"


def assert_one_live_row_per_id(col, model: Model, gone: Sequence[str], *, all_flushed: bool) -> None:
    """The storage invariant behind "nothing duplicated": each id has at most one live stored
    row, and no stored row is live for an id the model does not hold (unless a newer memtable
    version hides it, which only happens before the data is flushed)."""
    views = col._db._runtime(COLLECTION).store._state.views
    live: List[str] = []
    for view in views:
        live.extend(view.data.ids[view.live_positions()].tolist())
    dupes = sorted(i for i, n in Counter(live).items() if n > 1)
    assert dupes == [], f"ids with several live stored rows: {dupes[:10]}"
    if all_flushed:
        assert sorted(live) == sorted(model), "stored live rows differ from the model after a flush"
    else:
        stale = sorted(set(live) - set(model))
        hidden = [i for i in stale if i not in gone]
        assert hidden == [], f"stored rows for ids never written: {hidden[:10]}"


def assert_search_exact(col, model: Model, k: int = 10) -> None:
    """search_batch equals an exact top-k over the model, with and without a filter."""
    ids = sorted(model)
    if not ids:
        got_ids, _ = col.search_batch(np.ones((1, DIM), np.float32), k=k)
        assert all(i is None for i in got_ids[0]), f"hits in an empty collection: {got_ids[0]}"
        return
    vectors = np.stack([model[i][0] for i in ids])
    rng = np.random.default_rng(len(model))
    queries = np.concatenate([rng.standard_normal((6, DIM)).astype(np.float32), vectors[:: max(1, len(ids) // 3)][:3]])
    pos_mask = np.array([model[i][1].get("pos") == 3 for i in ids])
    for flt, mask in ((None, None), ({"pos": 3}, pos_mask)):
        got_ids, got_d = col.search_batch(queries, k=k, filter=flt, ef=4096)
        want_pos, want_d = exact_topk(queries, vectors, k, "l2", mask=mask)
        for q in range(len(queries)):
            row = [i for i in got_ids[q] if i is not None]
            want = [ids[p] for p in want_pos[q] if p >= 0]
            assert len(row) == len(set(row)), f"duplicate ids in a result: {row}"
            assert len(row) == len(want), f"filter={flt}: {len(row)} hits, expected {len(want)}"
            # an exact top-k (up to the order of ties): the reference's distances, each the true
            # distance of the id it is reported for
            np.testing.assert_allclose(got_d[q][:len(row)], want_d[q][:len(want)], rtol=1e-4, atol=1e-4)
            for id_, d in zip(row, got_d[q]):
                assert id_ in model and (mask is None or mask[ids.index(id_)]), f"hit {id_} should not match"
                true = float(((model[id_][0] - queries[q]) ** 2).sum())
                assert abs(true - d) <= 1e-4 * max(1.0, true), f"{id_}: distance {d} != {true}"


def ids_ever_written(last: int) -> List[str]:
    return sorted({i for b in range(last + 1) for i in batch(b)[1]})


def recovered_state(col, acked_last: int, may_have_inflight: bool) -> Tuple[Model, int]:
    """The model the reopened collection holds: batches 0..acked_last, plus the in-flight batch
    whole when a background kill hit while it was being written (never part of it)."""
    model = model_after(acked_last)
    if may_have_inflight and col.count() != len(model):
        with_next = dict(model)
        apply(with_next, acked_last + 1)
        if col.count() == len(with_next):
            return with_next, acked_last + 1
    return model, acked_last


def check_recovery(db_path: Path, acked: List[int], *, may_have_inflight: bool = False) -> None:
    """Reopen with the normal filesystem and check everything; then keep using the store."""
    acked_last = acked[-1] if acked else -1
    with proxistore.open(db_path, MANUAL_CONFIG) as db:
        db.maintenance.pause()          # nothing writes files behind the checks' back
        assert_storage_consistent(db_path)
        col = db.collection(COLLECTION)
        model, last = recovered_state(col, acked_last, may_have_inflight)
        gone = ids_ever_written(last + 1)
        assert_matches_model(col, model, gone)
        assert_one_live_row_per_id(col, model, gone, all_flushed=False)
        assert_search_exact(col, model)

        # the store keeps working: new rows, replaced rows, deleted rows, flush, compact
        rng = np.random.default_rng(99)
        new_ids = [f"post-{i}" for i in range(12)]
        new_vecs = rng.standard_normal((12, DIM)).astype(np.float32)
        col.insert(new_ids, new_vecs, [{"batch": -1, "pos": i} for i in range(12)])
        old = sorted(model)
        replaced, deleted = old[:3], old[3:5]
        rep_vecs = rng.standard_normal((len(replaced), DIM)).astype(np.float32)
        if replaced:
            col.upsert(replaced, rep_vecs, [{"batch": -2, "pos": 3}] * len(replaced))
        if deleted:
            col.delete(deleted)
        for id_, v, i in zip(new_ids, new_vecs, range(12)):
            model[id_] = (v, {"batch": -1, "pos": i})
        for id_, v in zip(replaced, rep_vecs):
            model[id_] = (v, {"batch": -2, "pos": 3})
        for id_ in deleted:
            del model[id_]
        gone = gone + deleted
        db.flush(COLLECTION)
        wal = db.stats()["collections"][COLLECTION]["wal"]
        assert wal["segments"] == 0, f"stale WAL segments survive a flush after recovery: {wal}"
        assert_one_live_row_per_id(col, model, gone, all_flushed=True)
        db.compact(COLLECTION)
        assert_storage_consistent(db_path)
        assert_one_live_row_per_id(col, model, gone, all_flushed=True)
        assert_matches_model(col, model, gone)
        assert_search_exact(col, model)
    with proxistore.open(db_path, MANUAL_CONFIG) as db:
        db.maintenance.pause()
        col = db.collection(COLLECTION)
        assert_matches_model(col, model, gone)
        assert_search_exact(col, model)
        assert_storage_consistent(db_path)


def kill_manual(db_path: Path, env: dict, rule: KillRule, *, leaves: Sequence[str] = ()) -> List[int]:
    """Run the manual script to ``rule``'s kill point and check recovery. ``leaves``: file-name
    patterns of which the kill must have left at least one unreferenced file each (proof that
    the kill point interrupted the protocol where the test says it did)."""
    acked, _ = run_child(db_path, "manual", rule, env)
    orphans = unreferenced_files(db_path)
    for pattern in leaves:
        assert fnmatch.filter(orphans, pattern), f"expected an orphan {pattern!r}, found {orphans}"
    check_recovery(db_path, acked)
    return acked


# -- flush kill points (manual script, phase "flush": one flush after each of batches 0-7) ----------
# The third flush (batch 2, an upsert of half of batch 1) writes a segment and a deletion vector
# for batch 1's segment; the fourth (batch 3) deletes only: deletion vectors, no segment.


def test_kill_after_segment_parquet_fsync_during_flush_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("fsync", PARQUET, "after", 3, "flush"),
                leaves=["seg-*.parquet"])


def test_kill_after_deletion_vector_write_during_flush_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("fsync", DELETES, "after", 1, "flush"),
                leaves=["seg-*.parquet", "*.del"])


def test_kill_before_manifest_rename_during_flush_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "before", 3, "flush"),
                leaves=[MANIFEST_NAME + ".tmp", "seg-*.parquet", "*.del"])


def test_kill_after_manifest_rename_during_flush_loses_nothing(tmp_path, child_env):
    acked = kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "after", 3, "flush"))
    assert acked[-1] == 2


def test_kill_after_manifest_rename_of_a_delete_only_flush_deletes_once(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "after", 4, "flush"))


def test_kill_before_wal_checkpoint_unlink_after_flush_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("unlink", WAL, "before", 3, "flush"))


def test_kill_after_wal_checkpoint_unlink_after_flush_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("unlink", WAL, "after", 3, "flush"))


def test_kill_after_first_flush_manifest_rename_replays_nothing_twice(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "after", 1, "flush"))


def test_kill_while_a_flush_removes_superseded_deletion_vectors_loses_nothing(tmp_path, child_env):
    # phase flush-cross, second flush: batch 13 re-marks three segments, then unlinks their old
    # deletion vectors; killed after the first of those three unlinks
    kill_manual(tmp_path / "db", child_env, KillRule("unlink", DELETES, "after", 1, "flush-cross"),
                leaves=["*.del"])


# -- compaction kill points (manual script, phase "compact": two merges of three segments) -------


def test_kill_after_merged_parquet_fsync_during_compaction_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("fsync", PARQUET, "after", 1, "compact"),
                leaves=["seg-*.parquet"])


def test_kill_after_merged_index_write_during_compaction_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("fsync", INDEX, "after", 1, "compact"),
                leaves=["seg-*.parquet", "*.hnsw.*"])


def test_kill_before_manifest_rename_during_compaction_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "before", 1, "compact"),
                leaves=[MANIFEST_NAME + ".tmp", "seg-*.parquet", "*.hnsw.*"])


def test_kill_after_manifest_rename_during_compaction_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "after", 1, "compact"),
                leaves=["seg-*.parquet", "*.del"])


def test_kill_before_removing_compacted_segments_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("unlink", SEGMENT_FILE, "before", 1, "compact"),
                leaves=["seg-*.parquet", "*.del"])


def test_kill_midway_through_removing_compacted_segments_loses_nothing(tmp_path, child_env):
    # the first merge's inputs: seg-1 parquet and .del, seg-2 parquet gone; the rest still there
    kill_manual(tmp_path / "db", child_env, KillRule("unlink", SEGMENT_FILE, "after", 3, "compact"),
                leaves=["seg-*.parquet", "*.del"])


def test_kill_after_second_merge_commit_during_compaction_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "after", 2, "compact"),
                leaves=["seg-*.parquet"])


# -- compact()'s index build for a segment that is not merged (phase "compact-index") ------------


def test_kill_after_index_write_of_an_index_build_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("fsync", INDEX, "after", 1, "compact-index"),
                leaves=["*.hnsw.*"])


def test_kill_after_manifest_rename_of_an_index_build_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "after", 1, "compact-index"))


# -- rewriting indexed segments with deleted rows (phase "compact-rewrite") ------------------------


def test_kill_after_rewritten_index_write_during_compaction_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("fsync", INDEX, "after", 2, "compact-rewrite"),
                leaves=["*.hnsw.*"])


def test_kill_before_second_rewrite_commit_during_compaction_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("rename", MANIFEST, "before", 2, "compact-rewrite"),
                leaves=[MANIFEST_NAME + ".tmp", "seg-*.parquet", "*.hnsw.*"])


def test_kill_while_removing_a_rewritten_segments_index_loses_nothing(tmp_path, child_env):
    kill_manual(tmp_path / "db", child_env, KillRule("unlink", INDEX, "after", 1, "compact-rewrite"),
                leaves=["seg-*.parquet"])


# -- kills around the flush path that are not inside storage --------------------------------------


def test_kill_after_creating_the_next_wal_segment_after_a_flush_loses_nothing(tmp_path, child_env):
    """Batch 1's append creates the WAL segment that follows the first flush's checkpoint; the
    kill leaves it empty (no header) and batch 1 unacknowledged and absent."""
    acked = kill_manual(tmp_path / "db", child_env, KillRule("open", WAL, "after", 2))
    assert acked == [0]


def test_kill_during_recovery_orphan_removal_then_reopen_loses_nothing(tmp_path, child_env):
    """A second crash, while the reopen of a crashed compaction removes its orphans."""
    db_path = tmp_path / "db"
    acked, _ = run_child(db_path, "manual", KillRule("rename", MANIFEST, "before", 1, "compact"), child_env)
    before = unreferenced_files(db_path)
    assert len(before) >= 3, before
    run_child(db_path, "reopen", KillRule("unlink", "storage/*", "after", 2), child_env)
    after = unreferenced_files(db_path)
    assert set(after) < set(before) and after, (before, after)
    check_recovery(db_path, acked)


def test_the_manual_script_without_a_kill_runs_to_the_end(tmp_path, child_env):
    """The baseline: no kill point, the script finishes, and the result is the full model."""
    db_path = tmp_path / "db"
    proc = subprocess.run([sys.executable, str(HERE / "killpoint_child.py"), str(db_path), "manual"],
                          capture_output=True, text=True, env=child_env, cwd=HERE, timeout=120)
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1] == "done", proc.stderr
    check_recovery(db_path, list(range(MANUAL_LAST_BATCH + 1)))


# -- background maintenance: flushes, merges and index builds on worker threads ------------------


@pytest.mark.parametrize("rule", [
    KillRule("rename", MANIFEST, "before", 5),
    KillRule("rename", MANIFEST, "after", 6),
    KillRule("fsync", PARQUET, "after", 8),
    KillRule("fsync", DELETES, "after", 4),
    KillRule("fsync", INDEX, "after", 3),
    KillRule("unlink", PARQUET, "after", 4),
    KillRule("unlink", WAL, "before", 6),
    KillRule("unlink", WAL, "after", 7),
    KillRule("unlink", INDEX, "after", 2),
    KillRule("rename", MANIFEST, "after", 60),       # later: many segments, merges of merges
    KillRule("unlink", PARQUET, "before", 40),
    KillRule("fsync", INDEX, "after", 25),
], ids=lambda r: f"{r.when}-{r.op}-{r.nth}-{r.path.rsplit('/', 1)[-1]}")
def test_kill_during_background_flush_and_compaction_loses_nothing(tmp_path, child_env, rule):
    db_path = tmp_path / "db"
    acked, marker = run_child(db_path, "background", rule, child_env)
    assert len(acked) < BACKGROUND_BATCHES
    assert marker["thread"] != "MainThread", f"killed on the writer's thread, not in the background: {marker}"
    check_recovery(db_path, acked, may_have_inflight=True)
