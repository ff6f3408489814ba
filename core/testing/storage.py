"""Conformance tests for storage engines, shipped so that any implementation can prove itself.

Subclass :class:`StorageEngineContract` in a test module and set two class attributes::

    from proxistore.testing.storage import StorageEngineContract

    class TestMyEngine(StorageEngineContract):
        engine_factory = MyEngine        # called as factory(config, fs=..., root=...)
        config = {"some_key": 1}         # parsed values of your keys (a full section)

Every test uses real files under pytest's ``tmp_path`` and the real
:class:`~proxistore.fileio.LocalFileSystem` (override :meth:`make_filesystem` to run under another
:class:`~proxistore.fileio.FileSystem`). The base class itself is not collected; subclasses are.

Engines whose ANN search is approximate are searched with ``ef`` set to the row count (an
exhaustive candidate list), so their results must then equal exact search. :meth:`settle` is
called after writes where an engine may build indexes (default: ``store.maintain()``).
Override :meth:`collection_dir` if a collection's files do not live in ``root/<name>``.
"""
from __future__ import annotations

import os
import threading
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest

from proxistore.contracts import (CollectionInfo, CollectionStore, SegmentRows, StorageEngine)
from proxistore.distance import distances, exact_topk
from proxistore.fileio import FileSystem, LocalFileSystem
from proxistore.filters import compile_filter, metadata_table
from .base import ContractSuite

__all__ = ["StorageEngineContract", "make_rows"]


def make_rows(ids: Sequence[str], vectors: np.ndarray, first_lsn: int, *,
              metadata: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
              deleted: Sequence[str] = ()) -> SegmentRows:
    """A frozen-memtable stand-in: live rows get LSNs from ``first_lsn``, then the tombstones."""
    n = len(ids)
    lsns = np.arange(first_lsn, first_lsn + n, dtype=np.int64)
    dl = np.arange(first_lsn + n, first_lsn + n + len(deleted), dtype=np.int64)
    vectors = np.asarray(vectors, dtype=np.float32)
    return SegmentRows(ids=list(ids), vectors=vectors.reshape(n, vectors.shape[-1] if vectors.ndim == 2 else -1),
                       lsns=lsns, metadata=list(metadata) if metadata is not None else [None] * n,
                       deleted_ids=list(deleted), deleted_lsns=dl,
                       max_lsn=int(first_lsn + n + len(deleted) - 1))


class StorageEngineContract(ContractSuite):
    """Behavioural checks every :class:`~proxistore.contracts.StorageEngine` must pass."""

    __test__ = False  # the suite itself; its subclasses are collected

    #: the class (or callable) to test: ``factory(config, *, fs, root)``
    engine_factory: ClassVar[Any] = None
    #: its parsed config section (also passed to ``open_collection``)
    config: ClassVar[Mapping[str, Any]] = {}
    dim: ClassVar[int] = 8

    # -- helpers a subclass may override -------------------------------------------------

    def make_filesystem(self) -> FileSystem:
        return LocalFileSystem()

    def make_engine(self, root: str) -> StorageEngine:
        if self.engine_factory is None:
            raise TypeError(f"{type(self).__name__} must set engine_factory")
        return type(self).engine_factory(dict(self.config), fs=self.make_filesystem(), root=str(root))

    def collection_dir(self, root: str, name: str) -> str:
        return os.path.join(root, name)

    def settle(self, store: CollectionStore) -> None:
        """Let the engine do its background work (index builds) now, in as many turns as it
        says it needs."""
        store.maintain()
        for _ in range(1000):
            if not store.has_background_work():
                return
            store.maintain()
        raise AssertionError("has_background_work() still True after 1,000 maintain() turns")

    @pytest.fixture
    def root(self, tmp_path: Any) -> str:
        return str(tmp_path / "storage")

    def info(self, name: str = "c", metric: str = "l2") -> CollectionInfo:
        return CollectionInfo(name=name, dim=self.dim, metric=metric)

    def new_store(self, root: str, name: str = "c", metric: str = "l2") -> Tuple[StorageEngine, CollectionStore]:
        engine = self.make_engine(root)
        engine.create_collection(self.info(name, metric))
        return engine, engine.open_collection(self.info(name, metric), dict(self.config))

    def reopen(self, root: str, name: str = "c", metric: str = "l2") -> Tuple[StorageEngine, CollectionStore]:
        engine = self.make_engine(root)
        return engine, engine.open_collection(self.info(name, metric), dict(self.config))

    def vectors(self, n: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((n, self.dim)).astype(np.float32)

    def search(self, store: CollectionStore, queries: np.ndarray, k: int, **kw: Any):
        return store.search(np.asarray(queries, dtype=np.float32), k, ef=max(64, 4 * store.count()), **kw)

    # -- lifecycle ---------------------------------------------------------------------------

    def test_new_collection_is_listed_empty_with_flushed_lsn_zero(self, root: str) -> None:
        engine, store = self.new_store(root)
        assert engine.list_collections() == ["c"]
        assert store.flushed_lsn == 0 and store.count() == 0
        assert store.get(["a"]) == {} and store.existing(["a"]) == set()
        hits = store.search(self.vectors(2), 3)
        assert hits.ids.shape == (2, 3) and all(i is None for i in hits.ids.ravel())
        assert np.isinf(hits.distances).all() and (hits.lsns == -1).all()
        stats = store.stats()
        assert {"segments", "rows", "bytes"} <= set(stats)
        store.close()
        engine.close()

    def test_drop_removes_the_collection_and_a_missing_one_is_no_error(self, root: str) -> None:
        engine, store = self.new_store(root)
        store.write_segment(make_rows(["a"], self.vectors(1), 1))
        store.close()
        engine.drop_collection("c")
        assert engine.list_collections() == []
        engine.drop_collection("c")
        engine.drop_collection("never-created")

    # -- writes and reads -------------------------------------------------------------------

    def test_written_rows_are_counted_found_and_returned(self, root: str) -> None:
        engine, store = self.new_store(root)
        v = self.vectors(20)
        ids = [f"id{i}" for i in range(20)]
        meta = [{"n": i, "tag": f"t{i % 3}"} for i in range(20)]
        result = store.write_segment(make_rows(ids, v, 1, metadata=meta))
        assert result.rows == 20 and result.segment is not None and result.bytes > 0
        assert store.flushed_lsn == 20 and store.count() == 20
        assert store.existing(ids + ["nope"]) == set(ids)
        got = store.get(["id3", "nope"])
        assert set(got) == {"id3"}
        rec = got["id3"]
        assert rec.id == "id3" and rec.lsn == 4 and dict(rec.metadata) == meta[3]
        assert np.array_equal(np.asarray(rec.vector, dtype=np.float32), v[3])
        hits = self.search(store, v[5:6], 1)
        assert hits.ids[0, 0] == "id5" and hits.distances[0, 0] == pytest.approx(0.0, abs=1e-4)
        assert hits.lsns[0, 0] == 6
        assert store.metadata_types() == {"n": "int", "tag": "str"}

    def test_a_later_segment_supersedes_the_older_version(self, root: str) -> None:
        engine, store = self.new_store(root)
        v = self.vectors(10)
        store.write_segment(make_rows([f"id{i}" for i in range(10)], v, 1, metadata=[{"v": 1}] * 10))
        newer = self.vectors(2, seed=7)
        store.write_segment(make_rows(["id1", "id2"], newer, 11, metadata=[{"v": 2}] * 2))
        self.settle(store)
        assert store.count() == 10
        rec = store.get(["id1"])["id1"]
        assert rec.lsn == 11 and dict(rec.metadata) == {"v": 2}
        assert np.array_equal(np.asarray(rec.vector, dtype=np.float32), newer[0])
        hits = self.search(store, v[1:2], 10)
        found = [i for i in hits.ids[0] if i is not None]
        assert len(found) == len(set(found)) == 10
        row = list(hits.ids[0]).index("id1")
        assert hits.lsns[0, row] == 11
        want = distances(v[1:2], newer[:1], "l2")[0, 0]
        assert hits.distances[0, row] == pytest.approx(want, rel=1e-4, abs=1e-4)

    def test_metadata_read_agrees_with_get(self, root: str) -> None:
        engine, store = self.new_store(root)
        v = self.vectors(12)
        ids = [f"id{i}" for i in range(12)]
        meta = [{"n": i, "tag": f"t{i % 3}", "x": i / 2, "ok": i % 2 == 0} if i % 4 else None for i in range(12)]
        store.write_segment(make_rows(ids, v, 1, metadata=meta))
        store.write_segment(make_rows(["id1", "id5"], v[:2], 13, metadata=[{"tag": "new"}, None],
                                      deleted=["id2"]))
        self.settle(store)
        want = {i: (dict(r.metadata) if r.metadata is not None else None)
                for i, r in store.get(ids + ["nope"]).items()}
        got = {i: (dict(m) if m is not None else None) for i, m in store.metadata(ids + ["nope"]).items()}
        assert got == want
        assert set(got) == set(ids) - {"id2"}
        assert got["id1"] == {"tag": "new"} and got["id5"] is None and got["id0"] is None
        assert got["id3"] == {"n": 3, "tag": "t0", "x": 1.5, "ok": False}

    def test_tombstones_hide_stored_rows_everywhere(self, root: str) -> None:
        engine, store = self.new_store(root)
        v = self.vectors(10)
        store.write_segment(make_rows([f"id{i}" for i in range(10)], v, 1))
        result = store.write_segment(make_rows([], np.zeros((0, self.dim)), 11, deleted=["id0", "id4", "ghost"]))
        assert result.segment is None and result.rows == 0
        assert store.flushed_lsn == 13
        self.settle(store)
        assert store.count() == 8
        assert store.existing(["id0", "id4", "id5"]) == {"id5"}
        assert store.get(["id0", "id4"]) == {}
        hits = self.search(store, v[[0, 4]], 10)
        assert not ({"id0", "id4"} & set(hits.ids.ravel()))
        assert sum(i is not None for i in hits.ids[0]) == 8

    def test_flushed_lsn_rows_and_deletes_persist_across_reopen(self, root: str) -> None:
        engine, store = self.new_store(root)
        v = self.vectors(30)
        store.write_segment(make_rows([f"id{i}" for i in range(30)], v, 1, metadata=[{"i": i} for i in range(30)]))
        store.write_segment(make_rows(["id1"], v[2:3], 31, deleted=["id2"]))
        self.settle(store)
        before = self.search(store, v[:5], 5)
        store.close()
        engine.close()
        engine, store = self.reopen(root)
        assert store.flushed_lsn == 32 and store.count() == 29
        assert store.get(["id2"]) == {}
        assert store.get(["id1"])["id1"].lsn == 31
        after = self.search(store, v[:5], 5)
        assert (after.ids == before.ids).all()
        np.testing.assert_allclose(after.distances, before.distances, rtol=1e-5, atol=1e-5)

    @pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
    def test_search_matches_exact_topk(self, root: str, metric: str) -> None:
        engine, store = self.new_store(root, metric=metric)
        v = self.vectors(240, seed=3)
        ids = np.array([f"id{i}" for i in range(240)], dtype=object)
        for start in range(0, 240, 80):
            store.write_segment(make_rows(list(ids[start:start + 80]), v[start:start + 80], start + 1))
        store.write_segment(make_rows([], np.zeros((0, self.dim)), 241, deleted=list(ids[::9])))
        self.settle(store)
        live = np.ones(240, dtype=bool)
        live[::9] = False
        q = self.vectors(6, seed=4)
        pos, dist = exact_topk(q, v, 10, metric, mask=live)
        hits = self.search(store, q, 10)
        assert (hits.ids == ids[pos]).all()
        np.testing.assert_allclose(hits.distances, dist, rtol=1e-4, atol=1e-4)

    def test_filtered_search_matches_brute_force(self, root: str) -> None:
        engine, store = self.new_store(root)
        n = 200
        v = self.vectors(n, seed=5)
        ids = np.array([f"id{i}" for i in range(n)], dtype=object)
        meta: List[Dict[str, Any]] = [{"g": i % 4, "s": f"s{i % 5}", "x": i / 10.0, "b": i % 2 == 0}
                                      for i in range(n)]
        for i in range(0, n, 7):
            del meta[i]["s"]
        for start in range(0, n, 50):
            store.write_segment(make_rows(list(ids[start:start + 50]), v[start:start + 50], start + 1,
                                          metadata=meta[start:start + 50]))
        self.settle(store)
        table = metadata_table(meta)
        q = self.vectors(4, seed=6)
        specs = [{"g": 1}, {"s": {"$in": ["s1", "s3"]}}, {"x": {"$gte": 5.0, "$lt": 12.5}},
                 {"$or": [{"b": True}, {"g": {"$ne": 0}}]}, {"s": {"$exists": False}},
                 {"$not": {"g": {"$nin": [2, 3]}}}, {"g": 0, "b": False}]
        for spec in specs:
            mask = compile_filter(spec).mask(table)
            pos, dist = exact_topk(q, v, 10, "l2", mask=mask)
            hits = self.search(store, q, 10, filter=compile_filter(spec))
            assert (hits.ids == np.where(pos >= 0, ids[np.maximum(pos, 0)], None)).all(), spec
            np.testing.assert_allclose(hits.distances, dist, rtol=1e-4, atol=1e-4)

    def test_a_filter_on_a_missing_key_matches_nothing(self, root: str) -> None:
        engine, store = self.new_store(root)
        store.write_segment(make_rows(["a", "b"], self.vectors(2), 1, metadata=[{"k": 1}, None]))
        hits = store.search(self.vectors(1), 2, filter=compile_filter({"missing": 1}))
        assert all(i is None for i in hits.ids.ravel())
        hits = store.search(self.vectors(1), 2, filter=compile_filter({"k": {"$exists": False}}))
        assert [i for i in hits.ids[0] if i is not None] == ["b"]

    # -- durability ---------------------------------------------------------------------------

    def test_orphan_files_are_removed_on_open(self, root: str) -> None:
        engine, store = self.new_store(root)
        v = self.vectors(10)
        store.write_segment(make_rows([f"id{i}" for i in range(10)], v, 1))
        store.close()
        directory = self.collection_dir(root, "c")
        orphans = [os.path.join(directory, n) for n in ("orphan.parquet", "crashed-flush.tmp")]
        fs = self.make_filesystem()      # through the seam: the root may be an object store
        for path in orphans:
            fs.write_durable(path, b"left behind by a crash")
        engine, store = self.reopen(root)
        assert not any(fs.exists(p) for p in orphans)
        assert store.count() == 10 and store.flushed_lsn == 10

    # -- concurrency --------------------------------------------------------------------------

    def test_background_work_comes_to_an_end_and_keeps_every_row(self, root: str) -> None:
        engine, store = self.new_store(root)
        v = self.vectors(120, seed=12)
        lsn = 1
        for r in range(6):
            rows = make_rows([f"id{r * 20 + i}" for i in range(20)], v[r * 20:(r + 1) * 20], lsn)
            store.write_segment(rows)
            lsn = rows.max_lsn + 1
        self.settle(store)
        assert not store.has_background_work()
        assert store.maintain() == [] and not store.has_background_work()
        assert store.count() == 120
        assert sorted(store.existing([f"id{i}" for i in range(130)])) == sorted(f"id{i}" for i in range(120))

    def test_search_during_concurrent_write_segment_never_errors(self, root: str) -> None:
        engine, store = self.new_store(root)
        rounds, per = 12, 40
        v = self.vectors(rounds * per, seed=8)
        errors: List[BaseException] = []
        done = threading.Event()

        def writer() -> None:
            try:
                lsn = 1
                for r in range(rounds):
                    ids = [f"id{(r * per + i) % (rounds * per // 2)}" for i in range(per)]
                    rows = make_rows(ids, v[r * per:(r + 1) * per], lsn, deleted=[f"id{r}"] if r % 3 == 2 else ())
                    store.write_segment(rows)
                    lsn = rows.max_lsn + 1
                    if r % 4 == 3:
                        store.maintain()
            except BaseException as e:  # noqa: BLE001 - reported by the test thread below
                errors.append(e)
            finally:
                done.set()

        def reader() -> None:
            try:
                q = self.vectors(3, seed=9)
                while not done.is_set():
                    hits = store.search(q, 5)
                    found = [i for i in hits.ids.ravel() if i is not None]
                    assert all(isinstance(i, str) for i in found)
                    for row in hits.ids:
                        got = [i for i in row if i is not None]
                        assert len(got) == len(set(got)), "an id appeared twice in one result"
                    store.get(["id1", "id2"])
                    store.count()
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors[0]
        assert store.count() == len(store.existing([f"id{i}" for i in range(rounds * per)]))
