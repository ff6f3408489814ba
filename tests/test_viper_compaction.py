"""Viper compaction: the size-tiered plan, its thresholds, what a merge drops and keeps, merges
racing flushes, and the bound on live segments under a 1 MB flush workload."""
from __future__ import annotations

import json
import os
from typing import Any, List

import numpy as np
import pytest

from proxistore.distance import exact_topk
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.viper import ViperSettings, segment_bound
from proxistore.plugins.viper.compaction import plan_full, plan_size_tiered, tier_of
from proxistore.plugins.viper.manifest import SegmentEntry
from proxistore.plugins.viper.segment import SegmentData
from proxistore.plugins.viper.snapshot import SegmentView

from test_viper_helpers import collection_dir, ids, make_rows, open_store, reopen, vectors

# -- the plan (pure) ------------------------------------------------------------------------------


def fake_views(sizes: List[Any]) -> List[SegmentView]:
    """Views with the given (rows, deleted) for planning only (no files behind them)."""
    out = []
    for i, size in enumerate(sizes):
        rows, deleted = size if isinstance(size, tuple) else (size, 0)
        entry = SegmentEntry(name=f"s{i}", file=f"s{i}.parquet", rows=rows, bytes=0, min_lsn=0,
                             max_lsn=0, deleted=deleted)
        out.append(SegmentView(entry, None))  # type: ignore[arg-type]
    return out


def names(group):
    return [v.entry.name for v in group]


S = ViperSettings(compaction_min_segments=4, compaction_base_rows=1000, compaction_target_rows=64_000,
                  compaction_deleted_fraction=0.25)


def test_size_tiers_are_powers_of_the_fanin_above_the_base():
    assert [tier_of(n, 1000, 4) for n in (0, 999, 1000, 3999, 4000, 15_999, 16_000)] == [0, 0, 1, 1, 2, 2, 3]


def test_a_tier_is_merged_once_it_holds_min_segments():
    assert plan_size_tiered(fake_views([600, 600, 600]), S) is None
    group, reason = plan_size_tiered(fake_views([600, 5000, 600, 600, 600]), S)
    assert names(group) == ["s0", "s2", "s3", "s4"] and "compaction_min_segments=4" in reason


def test_the_smallest_full_tier_goes_first():
    views = fake_views([5000, 5000, 5000, 5000, 600, 600, 600, 600])
    assert names(plan_size_tiered(views, S)[0]) == ["s4", "s5", "s6", "s7"]


def test_full_segments_are_not_merged_by_size():
    assert plan_size_tiered(fake_views([64_000, 70_000, 64_000, 100_000]), S) is None


def test_a_segment_past_the_deleted_fraction_is_rewritten():
    group, reason = plan_size_tiered(fake_views([(1000, 100), (80_000, 20_000)]), S)
    assert names(group) == ["s1"] and "compaction_deleted_fraction=0.25" in reason
    assert plan_size_tiered(fake_views([(80_000, 19_999)]), S) is None


def test_segments_without_live_rows_are_dropped_first():
    group, reason = plan_size_tiered(fake_views([(10, 10), 600, (5, 5)]), S)
    assert names(group) == ["s0", "s2"] and "every row deleted" in reason


def test_manual_compaction_packs_non_full_segments_to_about_the_target():
    views = fake_views([30_000, 30_000, 30_000, 70_000, 500, (64_000, 10)])
    groups = [names(g) for g in plan_full(views, S)]
    assert groups == [["s0", "s1", "s2"], ["s4", "s5"]]
    assert plan_full(fake_views([70_000, 600]), S) == []                 # nothing to merge with


def test_the_stated_segment_bound_for_the_defaults():
    d = ViperSettings()
    # F=4, B=1024, T=250,000: 1 + ceil(log4(244.1)) = 5 tiers of at most 3, plus floor(N / T)
    assert segment_bound(d, 200_000) == 3 * 5 + 0 == 15
    assert segment_bound(d, 1_000_000) == 3 * 5 + 4 == 19
    assert segment_bound(ViperSettings(compaction_target_rows=4096, compaction_base_rows=1024), 0) == 3 * 2


# -- merges on real files ------------------------------------------------------------------------


def segment_names(root):
    with open(os.path.join(collection_dir(root), "MANIFEST.json")) as f:
        return [s["name"] for s in json.load(f)["segments"]]


def test_compaction_drops_deleted_and_superseded_rows_and_removes_old_files(tmp_path):
    engine, store = open_store(tmp_path, auto_compaction=False)
    v = vectors(300)
    for i in range(3):
        store.write_segment(make_rows(ids(100, 100 * i), v[100 * i:100 * (i + 1)], 100 * i + 1))
    newer = vectors(10, seed=5)
    store.write_segment(make_rows(ids(10), newer, 301, deleted=["id150", "id250"]))
    before = set(os.listdir(collection_dir(tmp_path)))
    result = store.compact()
    assert (result.segments_in, result.segments_out, result.rows_in, result.rows_out) == (4, 1, 310, 298)
    assert result.reason == "manual compaction"
    st = store.stats()
    assert st["segments"] == 1 and st["stored_rows"] == st["rows"] == 298 and st["deleted_rows"] == 0
    after = set(os.listdir(collection_dir(tmp_path)))
    assert not (before - {"MANIFEST.json"}) & after                       # old files removed
    assert store.get(["id3"])["id3"].lsn == 304
    assert np.array_equal(store.get(["id3"])["id3"].vector, newer[3])
    engine, store = reopen(tmp_path)
    assert store.count() == 298 and store.existing(["id150", "id250"]) == set()


def test_compaction_builds_the_merged_segments_index(tmp_path):
    engine, store = open_store(tmp_path, indexing_threshold=250, auto_compaction=False)
    v = vectors(300)
    for i in range(3):
        store.write_segment(make_rows(ids(100, 100 * i), v[100 * i:100 * (i + 1)], 100 * i + 1))
    store.compact()
    st = store.stats()
    assert st["indexed_segments"] == 1 and st["index_builds"] == 1
    q = vectors(5, seed=2)
    pos, _ = exact_topk(q, v, 5, "l2")
    hits = store.search(q, 5, ef=300)
    assert (hits.ids == np.array(ids(300), dtype=object)[pos]).all()
    assert store.stats()["searches"] == {"ann": 1}


@pytest.mark.parametrize("backend", ["faiss", "hnswlib"])
def test_a_merge_extends_the_biggest_inputs_index_instead_of_rebuilding(tmp_path, backend):
    engine, store = open_store(tmp_path, index_backend=backend, indexing_threshold=200,
                               auto_compaction=False)
    v = vectors(400)
    store.write_segment(make_rows(ids(300), v[:300], 1))
    store.maintain()                                                    # indexes the 300-row segment
    store.write_segment(make_rows(ids(100, 300), v[300:], 301))
    store.compact()
    st = store.stats()
    assert st["index_reuses"] == 1 and st["indexed_segments"] == 1 and st["segments"] == 1
    q = vectors(10, seed=3)
    pos, _ = exact_topk(q, v, 10, "l2")
    hits = store.search(q, 10, ef=400)
    assert (hits.ids == np.array(ids(400), dtype=object)[pos]).all()


def test_deletes_committed_while_a_merge_runs_survive_it(tmp_path):
    """A flush commits between the merge's snapshot and its commit (from inside the merge's own
    file write, so the interleaving is exact): its deletes must carry over to the merged segment."""
    fired = {"done": False}

    class FlushDuringMerge(LocalFileSystem):
        def open(self, path, mode):
            handle = super().open(path, mode)
            if "w" in mode and path.endswith(".parquet") and store.stats()["segments"] == 3 \
                    and not fired["done"] and merging["on"]:
                fired["done"] = True
                store.write_segment(make_rows(["id5"], vectors(1, seed=9), 301, deleted=["id150", "id299"]))
            return handle

    merging = {"on": False}
    engine, store = open_store(tmp_path, fs=FlushDuringMerge(), auto_compaction=False)
    v = vectors(300)
    for i in range(3):
        store.write_segment(make_rows(ids(100, 100 * i), v[100 * i:100 * (i + 1)], 100 * i + 1))
    merging["on"] = True
    result = store.compact()
    assert fired["done"] and result.segments_in == 3
    assert store.existing(["id150", "id299", "id5"]) == {"id5"}
    assert store.get(["id5"])["id5"].lsn == 301
    assert store.count() == 298
    hits = store.search(v[[150, 299, 5]], 300)
    found = [i for i in hits.ids.ravel() if i is not None]
    assert "id150" not in found and "id299" not in found and found.count("id5") == 3
    engine, store = reopen(tmp_path)
    assert store.count() == 298 and store.existing(["id150", "id299"]) == set()
    assert store.stats()["segments"] == 2     # merged (with 3 carried-over deletes) + the flush


def test_maintain_leaves_segments_alone_when_auto_compaction_is_off(tmp_path):
    engine, store = open_store(tmp_path, auto_compaction=False, compaction_min_segments=2)
    for i in range(5):
        store.write_segment(make_rows(ids(10, 10 * i), vectors(10, seed=i), 10 * i + 1))
    assert store.maintain() == [] and store.stats()["segments"] == 5
    assert store.compact().segments_in == 5 and store.stats()["segments"] == 1
    assert store.compact() is None


def test_maintain_runs_the_deleted_fraction_rewrite(tmp_path):
    engine, store = open_store(tmp_path, compaction_deleted_fraction=0.3)
    store.write_segment(make_rows(ids(100), vectors(100), 1))
    store.write_segment(make_rows([], np.zeros((0, 8)), 101, deleted=ids(29)))
    assert store.maintain() == []
    store.write_segment(make_rows([], np.zeros((0, 8)), 130, deleted=["id29"]))
    (result,) = store.maintain()
    assert "compaction_deleted_fraction=0.3" in result.reason and result.rows_out == 70
    assert store.stats()["deleted_rows"] == 0 and store.count() == 70


def test_live_segments_stay_bounded_ingesting_200k_vectors_in_1mb_flushes(tmp_path):
    """A 1 MB memtable of 384-d float32 vectors flushes about 600 rows. Ingest 200,000 rows that
    way (8-d here, so the test is fast: the tiers count rows, not bytes), with maintain() after
    every flush as the core's background thread would, and check the stated bound each time."""
    engine, store = open_store(tmp_path, auto_compaction=True, indexing_threshold=1_000_000)
    bound_200k = segment_bound(store.settings, 200_000)
    assert bound_200k == 15
    per_flush, total = 600, 200_000
    rng = np.random.default_rng(0)
    lsn, written, peak, flushes = 1, 0, 0, 0
    while written < total:
        n = min(per_flush, total - written)
        rows = make_rows(ids(n, written), rng.standard_normal((n, 8)).astype(np.float32), lsn)
        store.write_segment(rows)
        lsn, written, flushes = rows.max_lsn + 1, written + n, flushes + 1
        store.maintain()
        segments = store.stats()["segments"]
        peak = max(peak, segments)
        assert segments <= segment_bound(store.settings, written) <= bound_200k
    st = store.stats()
    assert flushes == 334 and st["rows"] == total == st["stored_rows"]
    assert peak <= bound_200k
    assert len(os.listdir(collection_dir(tmp_path))) == st["segments"] + 1   # + MANIFEST.json


@pytest.mark.slow
def test_live_segments_stay_bounded_at_full_scale_384d_with_default_indexing(tmp_path):
    """The same workload at its real size: 200,000 x 384-d float32 in ~1 MB flushes of 600 rows,
    default compaction and indexing thresholds (merged segments of 10,000+ rows get their HNSW
    index as they are merged); efConstruction 40 instead of 200 only to keep it near 40 s."""
    engine, store = open_store(tmp_path, dim=384, hnsw_ef_construction=40)
    rng = np.random.default_rng(1)
    bound = segment_bound(store.settings, 200_000)
    lsn, written = 1, 0
    while written < 200_000:
        rows = make_rows(ids(600, written)[: 200_000 - written],
                         rng.standard_normal((min(600, 200_000 - written), 384)).astype(np.float32), lsn)
        assert 0.9e6 < rows.vectors.nbytes <= 1e6 or written + 600 > 200_000   # a 1 MB memtable
        store.write_segment(rows)
        lsn, written = rows.max_lsn + 1, written + len(rows.ids)
        store.maintain()
        assert store.stats()["segments"] <= bound
    st = store.stats()
    assert st["rows"] == 200_000 and st["indexed_segments"] >= 1
    q = rng.standard_normal((3, 384)).astype(np.float32)
    assert store.search(q, 10).ids.shape == (3, 10)
