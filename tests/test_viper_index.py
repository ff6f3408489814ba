"""Viper ANN indexes: built off the write path, saved beside the segment, loaded lazily, rebuilt
when missing or corrupt, per config and per collection, distances in proxistore's convention."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from proxistore.distance import distances, exact_topk

from test_viper_helpers import collection_dir, ids, make_rows, open_store, reopen, vectors

SMALL = dict(indexing_threshold=100, auto_compaction=False)


def manifest_of(root):
    with open(os.path.join(collection_dir(root), "MANIFEST.json")) as f:
        return json.load(f)


def index_file(root):
    (seg,) = manifest_of(root)["segments"]
    return os.path.join(collection_dir(root), seg["index"]["file"]) if seg["index"] else None


def recall(hits, pos, all_ids):
    want = [set(all_ids[p] for p in row if p >= 0) for row in pos]
    return np.mean([len(set(h) & w) / len(w) for h, w in zip(hits.ids, want)])


def test_write_segment_never_builds_an_index_maintain_does(tmp_path):
    engine, store = open_store(tmp_path, **SMALL)
    v = vectors(300)
    store.write_segment(make_rows(ids(300), v, 1))
    assert index_file(tmp_path) is None and store.stats()["indexed_segments"] == 0
    assert store.search(v[:1], 1).ids[0, 0] == "id0"          # exact meanwhile
    assert store.stats()["searches"] == {"exact": 1}
    store.maintain()
    path = index_file(tmp_path)
    assert path and os.path.exists(path)
    assert os.path.dirname(path) == collection_dir(tmp_path)   # beside the segment
    ref = manifest_of(tmp_path)["segments"][0]["index"]
    assert ref["kind"] == "hnsw" and ref["backend"] == "hnswlib" and ref["params"] == {"m": 16, "ef_construction": 200}
    assert ref["bytes"] == os.path.getsize(path)
    assert store.search(v[:1], 1).ids[0, 0] == "id0"
    assert store.stats()["searches"]["ann"] == 1
    assert store.stats()["index_kinds"] == {"hnsw/hnswlib": 1}    # index_backend = "auto"


def test_segments_below_the_threshold_get_no_index(tmp_path):
    engine, store = open_store(tmp_path, **SMALL)
    store.write_segment(make_rows(ids(99), vectors(99), 1))
    store.maintain()
    assert index_file(tmp_path) is None and store.stats()["exact_segments"] == 1


def test_indexes_load_lazily_on_first_search_after_reopen(tmp_path):
    engine, store = open_store(tmp_path, **SMALL)
    v = vectors(300)
    store.write_segment(make_rows(ids(300), v, 1))
    store.maintain()
    engine, store = reopen(tmp_path, **SMALL)
    (view,) = store._state.views
    assert view.data.index_loads == 0
    store.search(v[:2], 3)
    store.search(v[:2], 3)
    assert view.data.index_loads == 1 and store.stats()["searches"] == {"ann": 2}


@pytest.mark.parametrize("damage", ["missing", "corrupt", "truncated"])
def test_a_missing_or_corrupt_index_file_is_searched_exactly_then_rebuilt(tmp_path, damage):
    engine, store = open_store(tmp_path, **SMALL)
    v = vectors(300)
    store.write_segment(make_rows(ids(300), v, 1))
    store.maintain()
    path = index_file(tmp_path)
    if damage == "missing":
        os.unlink(path)
    else:
        data = bytearray(open(path, "rb").read())
        if damage == "corrupt":
            data[len(data) // 2] ^= 0x5A
        else:
            data = data[: len(data) // 3]
        open(path, "wb").write(bytes(data))
    engine, store = reopen(tmp_path, **SMALL)
    q = vectors(5, seed=1)
    pos, dist = exact_topk(q, v, 5, "l2")
    hits = store.search(q, 5)
    assert (hits.ids == np.array(ids(300), dtype=object)[pos]).all()
    assert store.stats()["searches"] == {"exact": 1}
    store.maintain()
    new_path = index_file(tmp_path)
    assert new_path != path and os.path.exists(new_path) and not os.path.exists(path)
    store.search(q, 5)
    assert store.stats()["searches"].get("ann") == 1
    engine, store = reopen(tmp_path, **SMALL)
    store.search(q, 5)
    assert store.stats()["searches"] == {"ann": 1}


def test_changing_the_index_config_rebuilds_the_index_on_maintain(tmp_path):
    engine, store = open_store(tmp_path, **SMALL)
    store.write_segment(make_rows(ids(300), vectors(300), 1))
    store.maintain()
    old = index_file(tmp_path)
    engine, store = reopen(tmp_path, **SMALL, index="flat")
    store.search(vectors(1), 3)                     # the old index still serves meanwhile
    assert store.stats()["searches"] == {"ann": 1}
    store.maintain()
    assert manifest_of(tmp_path)["segments"][0]["index"]["kind"] == "flat"
    assert not os.path.exists(old)


def test_auto_backend_keeps_an_existing_index_of_either_library_and_an_explicit_one_rebuilds(tmp_path):
    engine, store = open_store(tmp_path, **SMALL, index_backend="faiss")
    store.write_segment(make_rows(ids(300), vectors(300), 1))
    store.maintain()
    faiss_file = index_file(tmp_path)
    engine, store = reopen(tmp_path, **SMALL)                    # auto: an HNSW index is current
    store.maintain()
    assert index_file(tmp_path) == faiss_file and store.stats()["index_kinds"] == {"hnsw/faiss": 1}
    engine, store = reopen(tmp_path, **SMALL, hnsw_m=8)          # other parameters: built again
    store.maintain()
    assert store.stats()["index_kinds"] == {"hnsw/hnswlib": 1} and not os.path.exists(faiss_file)
    engine, store = reopen(tmp_path, **SMALL, hnsw_m=8, index_backend="faiss")   # asked by name
    store.maintain()
    assert store.stats()["index_kinds"] == {"hnsw/faiss": 1}
    assert store.search(vectors(300)[:1], 1).ids[0, 0] == "id0"


def test_per_collection_config_chooses_the_index(tmp_path):
    engine, store = open_store(tmp_path, **SMALL)
    from proxistore.contracts import CollectionInfo
    info = CollectionInfo("other", 8, "cosine")
    engine.create_collection(info)
    other = engine.open_collection(info, dict(SMALL, index="ivf", ivf_nlist=4))
    for s in (store, other):
        s.write_segment(make_rows(ids(300), vectors(300), 1))
        s.maintain()
    assert store.stats()["index_kinds"] == {"hnsw/hnswlib": 1}
    assert other.stats()["index_kinds"] == {"ivf/faiss": 1}     # auto: faiss, the library that has IVF


CASES = [("hnsw", "faiss"), ("hnsw", "hnswlib"), ("ivf", "faiss"), ("flat", "faiss")]


@pytest.mark.parametrize("kind, backend", CASES)
@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_index_distances_follow_proxistores_convention(tmp_path, kind, backend, metric):
    engine, store = open_store(tmp_path, dim=16, metric=metric, index=kind, index_backend=backend,
                               ivf_nprobe=64, **SMALL)
    v = vectors(400, dim=16, seed=2) + 0.3
    store.write_segment(make_rows(ids(400), v, 1))
    store.maintain()
    assert store.stats()["index_kinds"] == {f"{kind}/{backend}": 1}
    q = vectors(8, dim=16, seed=3)
    hits = store.search(q, 10, ef=400)
    assert store.stats()["searches"] == {"ann": 1}
    rows = np.array([[int(i[2:]) for i in row] for row in hits.ids])
    want = np.take_along_axis(distances(q, v, metric), rows, axis=1)
    np.testing.assert_allclose(hits.distances, want, rtol=1e-4, atol=1e-4)
    pos, dist = exact_topk(q, v, 10, metric)
    assert recall(hits, pos, np.array(ids(400), dtype=object)) >= 0.97
    assert (np.diff(hits.distances, axis=1) >= -1e-6).all()     # best first


@pytest.mark.parametrize("backend", ["faiss", "hnswlib"])
def test_ef_overrides_ef_search_per_call(tmp_path, backend):
    engine, store = open_store(tmp_path, dim=48, index_backend=backend, hnsw_m=4, hnsw_ef_construction=8,
                               **SMALL)
    v = vectors(3000, dim=48, seed=4)
    store.write_segment(make_rows(ids(3000), v, 1))
    store.maintain()
    q = vectors(40, dim=48, seed=5)
    pos, _ = exact_topk(q, v, 10, "l2")
    all_ids = np.array(ids(3000), dtype=object)
    low = recall(store.search(q, 10, ef=10), pos, all_ids)
    high = recall(store.search(q, 10, ef=1000), pos, all_ids)
    assert low + 0.2 < high


@pytest.mark.parametrize("backend", ["faiss", "hnswlib"])
def test_concurrent_searches_at_different_ef_each_get_the_answer_of_their_own_ef(backend):
    # hnswlib keeps efSearch in the index: a search at another ef must not change what a
    # concurrent search at the pinned ef walks, nor be changed by it.
    from concurrent.futures import ThreadPoolExecutor

    from proxistore.plugins.viper.index import build_index, prepare

    v = prepare(vectors(4000, dim=48, seed=6), "l2")
    index = build_index("hnsw", backend, {"m": 4, "ef_construction": 8}, v, "l2")
    index.pin_ef(10)
    q = prepare(vectors(60, dim=48, seed=7), "l2")
    want = {ef: index.search(q, 10, ef=ef, nprobe=1)[0] for ef in (10, 800)}
    assert (want[10] != want[800]).any()       # the two ef give different answers here

    def one(i: int) -> bool:
        ef = 10 if i % 2 else 800
        row = i % len(q)
        pos, _ = index.search(q[row:row + 1], 10, ef=ef, nprobe=1)
        return bool((pos[0] == want[ef][row]).all())

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(one, range(2000)))
