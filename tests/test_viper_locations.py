"""Viper's id -> live-row map (``locations.Locations``) agrees with a scan of the segments after
every kind of commit: flushes (new, superseding, deleting rows), merges, a flush racing a merge,
dropped segments, index installs, and a reopen."""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from proxistore.fileio import LocalFileSystem
from proxistore.plugins.viper.locations import find_live

from test_viper_helpers import make_rows, open_store, reopen, vectors

UNIVERSE = [f"id{i}" for i in range(400)]


def scanned(store) -> Dict[str, Tuple[str, int]]:
    """id -> (segment name, row) of its live row, by scanning the current snapshot."""
    return {id_: (view.entry.name, row) for view, pairs in find_live(store._state.views, UNIVERSE).items()
            for id_, row in pairs}


def check(store) -> None:
    want = scanned(store)
    got = {}
    for id_ in UNIVERSE:
        where = store._where.lookup(id_)
        if where is not None:
            got[id_] = (where[0].name, where[1])
    assert got == want
    assert len(store._where) == len(want) == store.count()
    assert store.existing(UNIVERSE) == set(want)
    probe = UNIVERSE[::7]
    records = store.get(probe)
    assert set(records) == set(want) & set(probe)
    assert set(store.metadata(probe)) == set(records)
    for id_, rec in records.items():
        data, row = store._where.lookup(id_)
        assert rec.lsn == int(data.lsns[row])


def test_the_map_follows_flushes_merges_drops_and_reopen(tmp_path):
    engine, store = open_store(tmp_path, compaction_min_segments=2, compaction_base_rows=16,
                               compaction_target_rows=200, indexing_threshold=64)
    rng = np.random.default_rng(3)
    lsn = 1
    check(store)
    for step in range(40):
        n = int(rng.integers(1, 30))
        ids = list(dict.fromkeys(rng.choice(UNIVERSE, n).tolist()))
        dels = [] if step % 3 else sorted(set(rng.choice(UNIVERSE, 8).tolist()) - set(ids))
        meta = [{"step": step}] * len(ids)
        rows = make_rows(ids, vectors(len(ids), seed=step), lsn, metadata=meta, deleted=dels)
        store.write_segment(rows)
        lsn = rows.max_lsn + 1
        check(store)
        if step % 5 == 4:
            store.maintain()
            check(store)
    assert store.stats()["compactions"] >= 3 and store.stats()["index_builds"] >= 1
    # a segment whose rows are all superseded is dropped by the next merge
    every = [i for i in UNIVERSE if i in store.existing(UNIVERSE)]
    rows = make_rows(every, vectors(len(every), seed=99), lsn)
    store.write_segment(rows)
    lsn = rows.max_lsn + 1
    check(store)
    before = store.stats()["compactions"]
    store.compact()
    check(store)
    assert store.stats()["compactions"] > before
    store.close()
    engine.close()
    engine, store = reopen(tmp_path)
    check(store)


def test_the_map_keeps_deletes_committed_while_a_merge_runs(tmp_path):
    fired = {"done": False, "on": False}

    class FlushDuringMerge(LocalFileSystem):
        def open(self, path, mode):
            handle = super().open(path, mode)
            if "w" in mode and path.endswith(".parquet") and fired["on"] and not fired["done"]:
                fired["done"] = True
                store.write_segment(make_rows(["id5", "id7"], vectors(2, seed=9), 301,
                                              deleted=["id150", "id299"]))
            return handle

    engine, store = open_store(tmp_path, fs=FlushDuringMerge(), auto_compaction=False)
    v = vectors(300)
    for i in range(3):
        store.write_segment(make_rows(UNIVERSE[100 * i:100 * (i + 1)], v[100 * i:100 * (i + 1)], 100 * i + 1))
    fired["on"] = True
    store.compact()
    assert fired["done"]
    check(store)
    assert store._where.lookup("id150") is None and store._where.lookup("id5")[0].lsns.max() == 302
