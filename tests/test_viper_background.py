"""Viper's background maintenance: merges are never held up by an index build for more than one
chunk of it, and a build whose segment a merge takes is dropped for that merge."""
from __future__ import annotations

from typing import List

import numpy as np

from proxistore.plugins.viper import maintenance as vm
from proxistore.plugins.viper.index import AnnIndex

from test_viper_helpers import ids, make_rows, open_store, vectors


def test_merges_due_during_a_background_index_build_run_between_its_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "BACKGROUND_CHUNK_ROWS", 64)
    engine, store = open_store(tmp_path, indexing_threshold=500, compaction_min_segments=4,
                               compaction_base_rows=100, compaction_target_rows=100_000)
    store.write_segment(make_rows(ids(1000), vectors(1000), 1))       # needs an index: 16 chunks
    seen: List[int] = []
    lsn = [1001]
    original = AnnIndex.add

    def add(self, vecs, cancel=None, chunk_rows=None):
        def spying_cancel():
            n = len(seen)
            if n == 2:        # a flush burst mid-build: four small segments, a tier-0 merge is due
                for i in range(4):
                    store.write_segment(make_rows(ids(10, 2000 + 10 * i), vectors(10, seed=i), lsn[0]))
                    lsn[0] += 10
            seen.append(store.stats()["compactions"])
            return cancel() if cancel is not None else False
        return original(self, vecs, spying_cancel, chunk_rows)

    monkeypatch.setattr(AnnIndex, "add", add)
    results = store.maintain()
    assert len(seen) == 16                         # one check per 64-row chunk
    assert seen[2] == 0 and seen[3] == 1           # the merge ran right after the chunk it became due
    assert [r.segments_in for r in results] == [4]
    st = store.stats()
    assert st["segments"] == 2 and st["indexed_segments"] == 1 and st["index_builds"] == 1
    assert store.count() == 1040


def test_a_build_whose_segment_a_merge_takes_is_dropped_and_the_merge_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "BACKGROUND_CHUNK_ROWS", 64)
    engine, store = open_store(tmp_path, indexing_threshold=300, compaction_min_segments=2,
                               compaction_base_rows=100, compaction_target_rows=100_000)
    store.write_segment(make_rows(ids(400), vectors(400), 1))          # tier 2 (400..799 rows)
    fired = {"done": False}
    original = AnnIndex.add

    def add(self, vecs, cancel=None, chunk_rows=None):
        def spying_cancel():
            if not fired["done"] and len(vecs) == 400:
                fired["done"] = True           # a second tier-2 segment: both merge, the build's one too
                store.write_segment(make_rows(ids(400, 400), vectors(400, seed=5), 401))
            return cancel() if cancel is not None else False
        return original(self, vecs, spying_cancel, chunk_rows)

    monkeypatch.setattr(AnnIndex, "add", add)
    results = store.maintain()
    assert fired["done"] and [r.segments_in for r in results] == [2]
    assert store.events["index_builds_dropped"] == 1
    st = store.stats()
    assert st["segments"] == 1 and st["indexed_segments"] == 1 and store.count() == 800
    q = vectors(3, seed=11)
    hits = store.search(q, 5, ef=800)
    v = np.concatenate([vectors(400), vectors(400, seed=5)])
    want = np.argsort(((q[:, None, :] - v[None]) ** 2).sum(-1), axis=1)[:, :5]
    assert (hits.ids == np.array(ids(800), dtype=object)[want]).all()


def test_a_background_maintain_ends_its_turn_and_says_what_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "MAINTAIN_TURN_SECONDS", 0.0)     # every turn: at least one build, no more
    engine, store = open_store(tmp_path, indexing_threshold=100, auto_compaction=False)
    for i in range(3):
        store.write_segment(make_rows(ids(200, 200 * i), vectors(200, seed=i), 1 + 200 * i))
    assert store.has_background_work()
    turns = 0
    while store.has_background_work():
        store.maintain()
        turns += 1
        assert store.stats()["indexed_segments"] == turns
    assert turns == 3
    assert store.maintain() == [] and not store.has_background_work()


def test_a_due_merge_is_background_work_until_maintain_runs_it(tmp_path):
    engine, store = open_store(tmp_path, indexing_threshold=100_000, compaction_min_segments=4,
                               compaction_base_rows=100, compaction_target_rows=100_000)
    for i in range(3):
        store.write_segment(make_rows(ids(10, 10 * i), vectors(10, seed=i), 1 + 10 * i))
    assert not store.has_background_work()                # three tier-0 segments: no merge yet
    store.write_segment(make_rows(ids(10, 30), vectors(10, seed=3), 31))
    assert store.has_background_work()
    assert [r.segments_in for r in store.maintain()] == [4]
    assert not store.has_background_work() and store.stats()["segments"] == 1
