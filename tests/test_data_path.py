"""The data path end to end on real plugins: writes are searchable at once and stay so through
flush, compaction and reopen; newest version wins; deletes hide older versions."""
from __future__ import annotations

import errno
import os
import threading

import numpy as np
import pytest

import proxistore
from proxistore.distance import exact_topk
from proxistore.errors import DuplicateId, WalError
from proxistore.fileio import FileHandle, LocalFileSystem

from conftest import ids_for, random_vectors

DIM = 8


def reference_search(model, query, k, metric):
    ids = sorted(model)
    vecs = np.stack([model[i] for i in ids])
    pos, dist = exact_topk(query[None, :], vecs, k, metric)
    return [ids[p] for p in pos[0] if p >= 0], dist[0]


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_search_matches_exact_reference_across_memtable_and_segments(db, rng, metric):
    col = db.create_collection("c", dim=DIM, metric=metric)
    model = {}
    for batch in range(4):
        ids = ids_for(50, f"b{batch}")
        vecs = random_vectors(rng, 50, DIM)
        col.insert(ids, vecs)
        model.update(zip(ids, vecs))
        if batch < 3:
            db.flush("c")
    for q in random_vectors(rng, 5, DIM):
        got = col.search(q, k=10)
        want_ids, want_d = reference_search(model, q, 10, metric)
        assert [h.id for h in got] == want_ids
        np.testing.assert_allclose([h.distance for h in got], want_d, rtol=1e-4, atol=1e-4)


def test_insert_is_searchable_immediately_and_after_flush_compact_and_reopen(db_path, rng):
    vecs = random_vectors(rng, 30, DIM)
    ids = ids_for(30)
    with proxistore.open(db_path) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.insert(ids, vecs, [{"i": i} for i in range(30)])
        assert all(col.search(v, k=1)[0].id == i for i, v in zip(ids, vecs))
        db.flush()
        assert all(col.search(v, k=1)[0].id == i for i, v in zip(ids, vecs))
        db.compact()
        assert all(col.search(v, k=1)[0].id == i for i, v in zip(ids, vecs))
    with proxistore.open(db_path) as db:
        col = db.collection("c")
        assert col.count() == 30
        hits = [col.search(v, k=1)[0] for v in vecs]
        assert [h.id for h in hits] == ids and [h.metadata["i"] for h in hits] == list(range(30))


def test_upsert_replaces_a_flushed_version_and_newest_wins_everywhere(db_path, rng):
    with proxistore.open(db_path) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        old = random_vectors(rng, 10, DIM)
        col.insert(ids_for(10), old, [{"v": 1}] * 10)
        db.flush()
        new = old + 100.0
        col.upsert(["id-3"], new[3:4], [{"v": 2}])
        assert col.count() == 10
        rec = col.get(["id-3"])[0]
        np.testing.assert_array_equal(rec.vector, new[3]) and rec.metadata == {"v": 2}
        hits = col.search(old[3], k=10)
        assert [h.id for h in hits].count("id-3") == 1
        assert col.search(new[3], k=1)[0].id == "id-3"
        assert col.search(new[3], k=1)[0].metadata == {"v": 2}
    with proxistore.open(db_path) as db:
        col = db.collection("c")
        db.flush()
        assert col.get(["id-3"])[0].metadata == {"v": 2}
        assert [h.id for h in col.search(old[3], k=10)].count("id-3") == 1


def test_delete_hides_flushed_and_unflushed_versions(db_path, rng):
    vecs = random_vectors(rng, 20, DIM)
    with proxistore.open(db_path) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        col.insert(ids_for(10), vecs[:10])
        db.flush()
        col.insert(ids_for(10, "m"), vecs[10:])
        col.delete(["id-0", "m-0", "never-existed"])
        assert col.count() == 18
        assert col.get(["id-0", "m-0", "id-1"])[:2] == [None, None]
        found = {h.id for h in col.search(vecs[0], k=20)}
        assert "id-0" not in found and "m-0" not in found and len(found) == 18
    with proxistore.open(db_path) as db:
        col = db.collection("c")
        assert col.count() == 18 and col.get(["id-0"]) == [None]
        db.flush()
        db.compact()
        assert col.count() == 18
        assert "id-0" not in {h.id for h in col.search(vecs[0], k=20)}


def test_reinsert_after_delete_is_allowed(db, rng):
    col = db.create_collection("c", dim=DIM)
    v = random_vectors(rng, 1, DIM)
    col.insert(["a"], v)
    db.flush()
    col.delete(["a"])
    col.insert(["a"], v * 2)
    assert col.count() == 1
    np.testing.assert_allclose(col.get(["a"])[0].vector, v[0] * 2)


@pytest.mark.parametrize("with_metadata", [False, True])
def test_search_returns_immutable_hits_and_only_live_rows_when_fewer_than_k_exist(db, rng, with_metadata):
    col = db.create_collection("c", dim=DIM)
    vecs = random_vectors(rng, 4, DIM)
    meta = [{"n": i} for i in range(4)] if with_metadata else None
    col.insert(["a", "b", "c", "d"], vecs, meta)
    col.delete(["c"])
    db.flush("c")
    col.upsert(["d"], vecs[3:4], [{"n": 9}] if with_metadata else None)    # d: in memtable and segment
    hits = col.search(vecs[0], k=10)
    assert sorted(h.id for h in hits) == ["a", "b", "d"]
    first = hits[0]
    assert first.id == "a" and first.distance == pytest.approx(0.0, abs=1e-5)
    assert first.metadata == ({"n": 0} if with_metadata else None)
    hit_id, distance, metadata = first                     # unpacks as (id, distance, metadata)
    assert (hit_id, distance, metadata) == (first.id, first.distance, first.metadata)
    with pytest.raises(AttributeError):
        first.id = "z"
    by_id = {h.id: h.metadata for h in hits}
    assert by_id["d"] == ({"n": 9} if with_metadata else None)
    if with_metadata:           # a caller's copy: changing it changes nothing stored
        first.metadata["n"] = 100
        assert col.search(vecs[0], k=1)[0].metadata == {"n": 0}
        assert col.get(["a"])[0].metadata == {"n": 0}


def test_metadata_keys_of_any_text_read_back_exactly_from_segments(db, rng):
    keys = ["module", "it's", 'say "hi"', "back\\slash", "new\nline", "}; import os; {", "ключ", "c0[row]"]
    col = db.create_collection("c", dim=DIM)
    vecs = random_vectors(rng, 20, DIM)
    meta = [{k: f"{k}-{i}" if j % 2 else i * 10 + j for j, k in enumerate(keys)} for i in range(20)]
    col.insert([f"r{i}" for i in range(20)], vecs, meta)
    db.flush("c")
    assert [r.metadata for r in col.get([f"r{i}" for i in range(20)])] == meta
    for i in (0, 7, 19):
        hit = col.search(vecs[i], k=1)[0]
        assert hit.id == f"r{i}" and hit.metadata == meta[i]


def test_search_batch_returns_numpy_arrays_padded_when_fewer_match(db, rng):
    col = db.create_collection("c", dim=DIM)
    col.insert(ids_for(3), random_vectors(rng, 3, DIM))
    ids, dists = col.search_batch(random_vectors(rng, 4, DIM), k=5)
    assert ids.shape == (4, 5) and dists.shape == (4, 5)
    assert all(row[3] is None and row[4] is None for row in ids)
    assert np.isinf(dists[:, 3:]).all()


def test_filters_apply_to_memtable_and_segments_alike(db, rng):
    col = db.create_collection("c", dim=DIM)
    vecs = random_vectors(rng, 40, DIM)
    col.insert(ids_for(20), vecs[:20], [{"module": "json" if i % 4 == 0 else "torch"} for i in range(20)])
    db.flush()
    col.insert(ids_for(20, "m"), vecs[20:], [{"module": "json" if i % 4 == 0 else "torch"} for i in range(20)])
    hits = col.search(vecs[0], k=40, filter={"module": "json"})
    assert sorted(h.id for h in hits) == sorted([f"id-{i}" for i in range(0, 20, 4)] + [f"m-{i}" for i in range(0, 20, 4)])
    assert all(h.metadata == {"module": "json"} for h in hits)


def test_create_and_drop_collection_are_durable(db_path):
    with proxistore.open(db_path) as db:
        db.create_collection("keep", dim=DIM).insert(["a"], np.ones((1, DIM)))
        db.create_collection("gone", dim=DIM).insert(["a"], np.ones((1, DIM)))
        db.drop_collection("gone")
        assert db.collections() == ["keep"]
    with proxistore.open(db_path) as db:
        assert db.collections() == ["keep"]
        assert db.create_collection("gone", dim=3).count() == 0


def test_concurrent_writers_and_readers_lose_nothing(db_path, rng):
    n_threads, batches, batch = 4, 25, 20
    errors = []
    with proxistore.open(db_path, {"flush": {"size": {"memory_flush_size_bytes": "64kB"}}}) as db:
        col = db.create_collection("c", dim=DIM, metric="l2")
        stop = threading.Event()

        def writer(t):
            r = np.random.default_rng(t)
            try:
                for b in range(batches):
                    ids = [f"t{t}-b{b}-{i}" for i in range(batch)]
                    v = r.standard_normal((batch, DIM)).astype(np.float32)
                    col.insert(ids, v)
                    hit = col.search(v[0], k=1)[0]
                    if hit.id != ids[0]:
                        errors.append(f"own write not visible: {ids[0]} -> {hit.id}")
            except Exception as exc:  # collected and asserted below
                errors.append(repr(exc))

        def reader():
            r = np.random.default_rng(99)
            while not stop.is_set():
                try:
                    ids, d = col.search_batch(r.standard_normal((3, DIM)), k=5)
                    assert not any(len(set(x for x in row if x)) != sum(1 for x in row if x) for row in ids)
                except Exception as exc:  # collected and asserted below
                    errors.append(repr(exc))

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
        readers = [threading.Thread(target=reader) for _ in range(2)]
        for th in threads + readers:
            th.start()
        for th in threads:
            th.join()
        stop.set()
        for th in readers:
            th.join()
        assert errors == []
        assert col.count() == n_threads * batches * batch
        assert db.stats()["collections"]["c"]["flushes"]["by_policy"].get("size", 0) >= 1
    with proxistore.open(db_path) as db:
        assert db.collection("c").count() == n_threads * batches * batch


class GatedWalFsyncs(LocalFileSystem):
    """The real filesystem, except that a WAL fsync waits while the gate is shut (a slow disk),
    and fails once with EIO when told to."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next = False

    def _fsync(self, handle: FileHandle) -> None:
        if "/wal/" in handle.path.replace(os.sep, "/") and not self.gate.is_set():
            self.entered.set()
            self.gate.wait(10)
            if self.fail_next:
                self.fail_next = False
                raise OSError(errno.EIO, "Input/output error (injected)")
        super()._fsync(handle)


def test_an_insert_of_an_id_still_in_flight_is_refused_and_a_failed_batch_frees_its_ids(db_path):
    fs = GatedWalFsyncs()
    with proxistore.open(db_path, fs=fs) as db:
        col = db.create_collection("c", dim=DIM)
        col.insert(["a"], random_vectors(np.random.default_rng(1), 1, DIM))
        outcome = []

        def insert(ids):
            try:
                outcome.append(col.insert(ids, random_vectors(np.random.default_rng(2), len(ids), DIM)))
            except WalError as e:
                outcome.append(e)

        for fail in (False, True):
            fs.entered.clear()
            fs.fail_next = fail
            fs.gate.clear()
            writer = threading.Thread(target=insert, args=(["x", "y"] if not fail else ["p", "q"],))
            writer.start()
            assert fs.entered.wait(10), "the in-flight batch never reached its fsync"
            with pytest.raises(DuplicateId):        # acknowledged or not, its ids are taken
                col.insert(["y" if not fail else "q"], random_vectors(np.random.default_rng(3), 1, DIM))
            fs.gate.set()
            writer.join(10)
            assert not writer.is_alive()
        assert isinstance(outcome[0], int) and isinstance(outcome[1], WalError)
        with pytest.raises(DuplicateId):             # acknowledged: in the memtable now
            col.insert(["x"], random_vectors(np.random.default_rng(4), 1, DIM))
        col.insert(["p", "q", "z"], random_vectors(np.random.default_rng(5), 3, DIM))     # the failed batch's ids are free
        assert col.count() == 6
        assert [r is not None for r in col.get(["a", "x", "y", "p", "q", "z"])] == [True] * 6
    with proxistore.open(db_path) as db:
        assert db.collection("c").count() == 6
