"""Viper search: deletions never leak, filters pushed into the index, the exact-search planner,
merging across segments, and consistent snapshots under concurrent flushes and compactions."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from proxistore.distance import distances, exact_topk
from proxistore.errors import DimensionMismatch, FilterTypeError, InvalidArgument, InvalidFilter
from proxistore.filters import compile_filter, metadata_table
from proxistore.plugins.viper.index import build_index, prepare

from test_viper_helpers import ids, make_rows, open_store, vectors

INDEXED = dict(indexing_threshold=100, auto_compaction=False)


@pytest.mark.parametrize("backend, deleted, path", [
    ("faiss", lambda j: j % 3 == 0, "ann"), ("hnswlib", lambda j: j % 3 == 0, "ann_postfiltered"),
    ("faiss", lambda j: j % 11 != 0, "ann"), ("hnswlib", lambda j: j % 11 != 0, "ann")],
    ids=["faiss-a third", "hnswlib-a third", "faiss-91%", "hnswlib-91%"])
def test_deleted_rows_never_appear_in_search(tmp_path, backend, deleted, path):
    """faiss takes the deletion vector into the walk as a bitmap; hnswlib filters the candidates
    of an unfiltered walk while a third of the rows are deleted, and takes a selector at 91%."""
    engine, store = open_store(tmp_path, index_backend=backend, **INDEXED)
    v = vectors(500)
    store.write_segment(make_rows(ids(500), v, 1))
    store.maintain()
    gone = [f"id{j}" for j in range(500) if deleted(j)]
    store.write_segment(make_rows(ids(5, 1000), vectors(5, seed=9), 501, deleted=gone))
    hits = store.search(v[:50], 20)
    assert store.stats()["searches"][path] >= 1
    assert not set(gone) & set(hits.ids.ravel())
    assert all(i is not None for i in hits.ids.ravel())       # still k results per query
    everything = store.search(v[:2], 1000, ef=1000)
    found = {i for i in everything.ids.ravel() if i is not None}
    assert found == set(ids(500)) - set(gone) | set(ids(5, 1000))
    # Deleting more after a search: the segment's next view has a new live mask, and what the
    # index derived from the old one (a faiss bitmap) is not reused.
    more = [i for i in ids(50) if i not in gone][::3]
    store.write_segment(make_rows(ids(1, 2000), vectors(1, seed=10), 1000, deleted=more))
    hits = store.search(v[:50], 20)
    assert not (set(gone) | set(more)) & set(hits.ids.ravel())
    assert all(i is not None for i in hits.ids.ravel())


def _tagged_store(tmp_path, backend="hnswlib", n=12_000, **config):
    """One indexed segment of ``n`` 16-d rows: tag "rare" on 2%, "half" on 50%, "other" else."""
    engine, store = open_store(tmp_path, dim=16, index_backend=backend, hnsw_m=8, hnsw_ef_construction=40,
                               **{**INDEXED, **config})
    v = vectors(n, dim=16, seed=11)
    meta = [{"tag": "rare" if i % 50 == 0 else ("half" if i % 2 else "other"), "i": i} for i in range(n)]
    store.write_segment(make_rows(ids(n), v, 1, metadata=meta))
    store.maintain()
    return store, v, meta


@pytest.mark.parametrize("kind, backend", [("hnsw", "faiss"), ("hnsw", "hnswlib"), ("ivf", "faiss"),
                                           ("flat", "faiss")])
def test_an_index_search_with_a_selector_returns_k_allowed_rows_whenever_k_are_allowed(kind, backend):
    x = prepare(vectors(2000, dim=16, seed=14), "l2")
    index = build_index(kind, backend, {"m": 8, "ef_construction": 40, "nlist": 16}, x, "l2")
    q = vectors(20, dim=16, seed=15)
    for every in (50, 400):                                   # 40 rows allowed, then 5
        allowed = np.zeros(2000, dtype=bool)
        allowed[::every] = True
        k = 10 if every == 50 else 8
        pos, dist = index.search(q, min(k, int(allowed.sum())), ef=16, nprobe=2, allowed=allowed,
                                 n_allowed=int(allowed.sum()))
        assert (pos >= 0).all() and allowed[pos].all()
        assert pos.shape[1] == min(k, int(allowed.sum()))
        np.testing.assert_allclose(dist, np.take_along_axis(distances(q, x, "l2"), pos, axis=1),
                                   rtol=1e-4, atol=1e-4)


def _filtered_recall(found_ids, q, v, meta, spec, k=10):
    """recall@k of ``found_ids`` (a row per query) against the exact top-k of the rows ``spec`` keeps."""
    pos, _ = exact_topk(q, v, k, "l2", mask=compile_filter(spec).mask(metadata_table(meta)))
    want = [set(f"id{p}" for p in row) for row in pos]
    return np.mean([len(set(h) & w) / k for h, w in zip(found_ids, want)])


@pytest.mark.parametrize("backend, path", [("hnswlib", "ann_postfiltered"), ("faiss", "ann_filtered")])
def test_a_filter_keeping_a_large_share_filters_the_candidates_of_an_unfiltered_hnswlib_search(
        tmp_path, backend, path):
    """hnswlib would call back into Python for each candidate; faiss tests its bitmap in C++."""
    store, v, meta = _tagged_store(tmp_path, backend, filter_exact_max_rows=0)
    q = vectors(20, dim=16, seed=12)
    hits = store.search(q, 10, filter=compile_filter({"tag": "half"}))          # 6,000 of 12,000 rows
    assert store.stats()["searches"] == {path: 1}
    assert all(i is not None for i in hits.ids.ravel())
    assert all(meta[int(i[2:])]["tag"] == "half" for i in hits.ids.ravel())
    assert _filtered_recall(hits.ids, q, v, meta, {"tag": "half"}) >= 0.9


@pytest.mark.parametrize("backend", ["faiss", "hnswlib"])
def test_a_filter_keeping_a_smaller_share_is_pushed_into_the_ann_search_as_a_selector(tmp_path, backend):
    """19% kept, at an efSearch of 10: below the post-filter share, and the raised efSearch
    (10 / 0.19**1.5 = 121, x 2M = 1,936 distances) still costs less than the 2,280 kept rows."""
    store, v, meta = _tagged_store(tmp_path, backend, filter_exact_max_rows=0)
    q = vectors(20, dim=16, seed=12)
    spec = {"i": {"$lt": 2280}}
    hits = store.search(q, 10, filter=spec, ef=10)
    assert store.stats()["searches"] == {"ann_filtered": 1}
    assert all(i is not None and int(i[2:]) < 2280 for i in hits.ids.ravel())
    assert _filtered_recall(hits.ids, q, v, meta, spec) >= 0.9


def test_a_query_whose_candidates_the_filter_excludes_is_redone_with_the_selector(tmp_path):
    """A filter keeping 98% of the rows but none of the 200 nearest the first query: none of its
    unfiltered candidates pass, so it goes through the index again with the filter pushed in;
    the second query's candidates pass and its answer stands."""
    engine, store = open_store(tmp_path, dim=16, index_backend="hnswlib", hnsw_m=8, hnsw_ef_construction=40,
                               filter_exact_max_rows=0, **INDEXED)
    v = vectors(12_000, dim=16, seed=11)
    q = v[:2] + np.float32(0.01)
    near = np.argsort(distances(q[:1], v, "l2")[0])[:200]
    meta = [{"near": False} for _ in range(12_000)]
    for row in near:
        meta[row]["near"] = True
    store.write_segment(make_rows(ids(12_000), v, 1, metadata=meta))
    store.maintain()
    hits = store.search(q, 10, filter={"near": False})
    paths = store.stats()["searches"]
    assert paths["ann_postfiltered"] == 1 and paths["ann_postfilter_short"] == 1
    assert paths.get("ann_filtered", 0) + paths.get("exact_filtered", 0) >= 1
    assert all(i is not None and not meta[int(i[2:])]["near"] for i in hits.ids.ravel())
    assert _filtered_recall(hits.ids[1:], q[1:], v, meta, {"near": False}) >= 0.9     # kept from its candidates
    assert _filtered_recall(hits.ids[:1], q[:1], v, meta, {"near": False}) >= 0.7     # the selector's walk


def test_a_filter_keeping_fewer_than_k_rows_returns_exactly_those(tmp_path):
    store, v, meta = _tagged_store(tmp_path, filter_exact_max_rows=0)
    hits = store.search(vectors(3, dim=16), 10, filter={"i": {"$in": [3, 77, 1500]}})
    for row in hits.ids:
        assert set(row[:3]) == {"id3", "id77", "id1500"} and list(row[3:]) == [None] * 7
    assert np.isinf(hits.distances[:, 3:]).all() and (hits.lsns[:, 3:] == -1).all()


@pytest.mark.parametrize("cutoff, rare_path", [(300, "exact_filtered"), (0, "exact_filtered")])
def test_the_planner_searches_exactly_when_a_filter_keeps_few_rows(tmp_path, cutoff, rare_path):
    """Below filter_exact_max_rows kept rows the search is exact; above it, still exact while the
    filtered ANN search (its efSearch raised for the 2% kept) would cost more distance evaluations
    than the kept rows; a filter keeping half the rows goes through the index."""
    store, v, meta = _tagged_store(tmp_path, filter_exact_max_rows=cutoff)
    q = vectors(5, dim=16, seed=13)
    table = metadata_table(meta)
    for spec, path in (({"tag": "rare"}, rare_path), ({"tag": "half"}, "ann_postfiltered")):
        before = store.stats()["searches"].get(path, 0)
        hits = store.search(q, 10, filter=spec)
        assert store.stats()["searches"][path] == before + 1, spec
        pos, dist = exact_topk(q, v, 10, "l2", mask=compile_filter(spec).mask(table))
        if path == "exact_filtered":
            assert (hits.ids == np.array([[f"id{p}" for p in row] for row in pos], dtype=object)).all()
            np.testing.assert_allclose(hits.distances, dist, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cutoff, path", [(6000, "exact_filtered"), (5999, "ann_postfiltered")])
def test_filter_exact_max_rows_is_enforced_at_its_threshold(tmp_path, cutoff, path):
    store, v, meta = _tagged_store(tmp_path, filter_exact_max_rows=cutoff)
    store.search(vectors(1, dim=16), 5, filter={"tag": "half"})             # keeps 6,000 rows
    assert store.stats()["searches"] == {path: 1}


def test_filtered_search_excludes_deleted_rows_on_every_path(tmp_path):
    store, v, meta = _tagged_store(tmp_path, filter_exact_max_rows=40)
    rare = [f"id{i}" for i in range(0, 12_000, 50)]
    gone = set(rare[:235] + ["id1", "id3", "id5"])
    store.write_segment(make_rows([], np.zeros((0, 16)), 12_001, deleted=sorted(gone)))
    for spec, ef in (({"tag": "rare"}, None), ({"tag": "half"}, None), ({"i": {"$lt": 2280}}, 10)):
        hits = store.search(vectors(5, dim=16), 10, filter=spec, ef=ef)
        assert not gone & set(hits.ids.ravel())
        assert spec == {"tag": "rare"} or all(i is not None for i in hits.ids.ravel())
    hits = store.search(vectors(1, dim=16), 10, filter={"tag": "rare"})
    assert sorted(i for i in hits.ids[0] if i) == sorted(rare[235:])
    assert {"exact_filtered", "ann_postfiltered", "ann_filtered"} <= set(store.stats()["searches"])


def test_a_filter_type_mismatch_is_a_clear_error(tmp_path):
    store, v, meta = _tagged_store(tmp_path)
    with pytest.raises(FilterTypeError, match="'tag'"):
        store.search(v[:1], 5, filter={"tag": {"$gt": 3}})
    with pytest.raises(InvalidFilter, match=r"\$like"):
        store.search(v[:1], 5, filter={"tag": {"$like": "r%"}})


def test_results_merge_exact_and_indexed_segments_by_distance(tmp_path):
    engine, store = open_store(tmp_path, metric="cosine", **INDEXED)
    v = vectors(700, seed=21)
    store.write_segment(make_rows(ids(400), v[:400], 1))            # indexed after maintain
    store.maintain()
    store.write_segment(make_rows(ids(250, 400), v[400:650], 401))  # exact
    store.write_segment(make_rows(ids(50, 650), v[650:], 651))      # exact
    q = vectors(10, seed=22)
    hits = store.search(q, 15, ef=700)
    paths = store.stats()["searches"]
    assert paths["ann"] == 1 and paths["exact"] == 2
    pos, dist = exact_topk(q, v, 15, "cosine")
    assert (hits.ids == np.array(ids(700), dtype=object)[pos]).all()
    np.testing.assert_allclose(hits.distances, dist, rtol=1e-5, atol=1e-5)


def test_queries_of_the_wrong_dimension_and_bad_k_are_input_errors(tmp_path):
    engine, store = open_store(tmp_path)
    store.write_segment(make_rows(ids(5), vectors(5), 1))
    with pytest.raises(DimensionMismatch):
        store.search(vectors(1, dim=4), 3)
    for k in (0, -1, 2.5, True):
        with pytest.raises(InvalidArgument):
            store.search(vectors(1), k)
    with pytest.raises(InvalidArgument):
        store.search(vectors(1), 3, ef=0)
    assert store.search(vectors(1)[0], 2).ids.shape == (1, 2)     # a single 1-d query is fine


def test_search_sees_a_consistent_snapshot_while_compaction_and_flushes_commit(tmp_path):
    engine, store = open_store(tmp_path, indexing_threshold=150, compaction_min_segments=2,
                               compaction_base_rows=32)
    v = vectors(2400, seed=31)
    errors = []
    stop = threading.Event()

    def reader():
        q = vectors(4, seed=32)
        try:
            while not stop.is_set():
                hits = store.search(q, 8)
                for row in hits.ids:
                    got = [i for i in row if i is not None]
                    assert len(got) == len(set(got)) == 8     # never fewer live rows than k
                store.get(["id5"])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    store.write_segment(make_rows(ids(60), v[:60], 1))
    for t in threads:
        t.start()
    lsn = 61
    for r in range(1, 40):
        rows = make_rows(ids(60, 60 * r), v[60 * r:60 * (r + 1)], lsn, deleted=[f"id{r}"])
        store.write_segment(rows)
        lsn = rows.max_lsn + 1
        if r % 5 == 0:
            store.maintain()
    store.compact()
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert store.count() == 2400 - 39
    assert store.stats()["compactions"] >= 3


def test_search_hits_carry_the_metadata_get_returns_with_missing_keys_and_rows_without_any(tmp_path):
    import proxistore
    metas = [{"s": "x", "n": 1}, {"n": 2.5}, None, {"s": "y", "flag": True}, {"s": "x"}]
    v = np.eye(5, dtype=np.float32)
    with proxistore.open(tmp_path / "db") as db:
        col = db.create_collection("c", dim=5, metric="l2")
        col.insert([f"r{i}" for i in range(5)], v, metadata=metas)
        db.flush()
        for i in range(5):
            (hit,) = col.search(v[i], k=1)
            assert hit.id == f"r{i}"
            assert hit.metadata == col.get([hit.id])[0].metadata == (metas[i] or None)
        hits = col.search(v[0], k=5)
        assert {h.id: h.metadata for h in hits} == {f"r{i}": metas[i] for i in range(5)}


def test_a_segment_evaluates_a_repeated_filter_once_and_keeps_the_last_eight(tmp_path, monkeypatch):
    from proxistore.filters import MetadataFilter
    from proxistore.plugins.viper.segment import FILTER_MASKS_KEPT
    store, v, meta = _tagged_store(tmp_path, filter_exact_max_rows=0)
    evaluated = []
    real_mask = MetadataFilter.mask
    monkeypatch.setattr(MetadataFilter, "mask", lambda self, table: evaluated.append(self.spec) or real_mask(self, table))
    q = vectors(3, dim=16, seed=12)
    first = store.search(q, 10, filter={"tag": "half"})
    again = store.search(q, 10, filter={"tag": "half"})
    assert evaluated == [{"tag": "half"}]
    assert (first.ids == again.ids).all()
    # same rows kept, keys in another order: one mask; a different operand type: another
    store.search(q, 10, filter={"i": {"$gte": 10, "$lt": 9000}})
    store.search(q, 10, filter={"i": {"$lt": 9000, "$gte": 10}})
    store.search(q, 10, filter={"i": {"$lt": 9000.0, "$gte": 10}})
    assert len(evaluated) == 3
    other = store.search(q, 10, filter={"tag": "other"})
    assert all(meta[int(i[2:])]["tag"] == "other" for i in other.ids.ravel())
    for j in range(FILTER_MASKS_KEPT):
        store.search(q, 10, filter={"i": {"$gte": j}})
    evaluated.clear()
    store.search(q, 10, filter={"tag": "half"})                  # pushed out by the last eight
    store.search(q, 10, filter={"i": {"$gte": FILTER_MASKS_KEPT - 1}})   # still kept
    assert evaluated == [{"tag": "half"}]


def test_a_cached_filter_mask_still_excludes_rows_deleted_after_it_was_made(tmp_path):
    store, v, meta = _tagged_store(tmp_path, filter_exact_max_rows=0)
    q = v[1:4]                                                  # rows 1 and 3 are "half"
    hits = store.search(q, 10, filter={"tag": "half"})
    assert "id1" in hits.ids[0] and "id3" in hits.ids[2]
    store.write_segment(make_rows([], np.zeros((0, 16)), 12_001, deleted=["id1", "id3"]))
    hits = store.search(q, 10, filter={"tag": "half"})
    assert not {"id1", "id3"} & set(hits.ids.ravel())
    assert all(i is not None and meta[int(i[2:])]["tag"] == "half" for i in hits.ids.ravel())
