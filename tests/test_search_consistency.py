"""A search under concurrent writes answers from one moment: each hit's metadata is the version
the hit was found with (found by the crash soak: metadata read after the search could be a newer
version that fails the filter, or None after a delete)."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import proxistore


@pytest.mark.parametrize("flush_every", [0, 25], ids=["memtable", "memtable+storage"])
def test_filtered_search_hits_keep_the_metadata_they_matched_under_concurrent_upserts(tmp_path, flush_every):
    rng = np.random.default_rng(0)
    n = 200
    ids = [f"r{i}" for i in range(n)]
    vecs = rng.standard_normal((n, 8)).astype(np.float32)
    with proxistore.open(tmp_path / "db", {"flush": {"policies": ["manual"]}}) as db:
        col = db.create_collection("c", dim=8, metric="l2")
        col.insert(ids, vecs, [{"k": "a", "v": 0}] * n)
        stop = threading.Event()
        bad = []

        def writer():
            v = 0
            while not stop.is_set():
                v += 1
                rows = rng.choice(n, 20, replace=False)
                kind = "b" if v % 2 else "a"
                if v % 7 == 0:
                    col.delete([ids[r] for r in rows[:3]])
                    col.upsert([ids[r] for r in rows[:3]], vecs[rows[:3]], [{"k": "a", "v": v}] * 3)
                col.upsert([ids[r] for r in rows], vecs[rows], [{"k": kind, "v": v}] * 20)
                if flush_every and v % flush_every == 0:
                    db.flush("c")

        t = threading.Thread(target=writer)
        t.start()
        searches = 0
        deadline = time.monotonic() + 3
        try:
            while time.monotonic() < deadline:
                for h in col.search(vecs[searches % n], k=20, filter={"k": "a"}):
                    if h.metadata is None or h.metadata.get("k") != "a":
                        bad.append((h.id, h.metadata))
                searches += 1
        finally:
            stop.set()
            t.join()
        assert searches > 50
        assert not bad, f"{len(bad)} hits carry metadata that fails the filter, e.g. {bad[:3]}"


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_memtable_search_with_its_kept_norms_equals_an_exact_search_after_upserts_and_deletes(metric):
    from proxistore.contracts import OP_DELETE, OP_UPSERT, WalBatch
    from proxistore.distance import exact_topk
    from proxistore.memtable import Memtable

    rng = np.random.default_rng(1)
    mt = Memtable(16, metric)
    live = {}
    lsn = 1
    for step in range(60):
        ids = [f"r{i}" for i in rng.choice(300, 12, replace=False)]
        if step % 5 == 4:
            mt.apply(WalBatch(OP_DELETE, lsn, ids))
            for i in ids:
                live.pop(i, None)
        else:
            vecs = (rng.standard_normal((12, 16)) * rng.uniform(0.1, 10)).astype(np.float32)
            mt.apply(WalBatch(OP_UPSERT, lsn, ids, vecs))
            live.update(zip(ids, vecs))
        lsn += len(ids)
    q = rng.standard_normal((5, 16)).astype(np.float32)
    hits = mt.search(q, 10)
    names = sorted(live)
    pos, dist = exact_topk(q, np.stack([live[n] for n in names]), 10, metric)
    assert hits.ids.tolist() == [[names[p] for p in row] for row in pos.tolist()]
    np.testing.assert_allclose(hits.distances, dist, rtol=1e-4, atol=1e-4)


def test_a_search_overlapping_the_first_metadata_write_returns_that_metadata(tmp_path):
    """Found by the crash soak: a search decided whether to read metadata before it searched,
    so the collection's first row with metadata could come back with ``metadata=None``."""
    import sys
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)            # switch threads often, so the race shows in a few trials
    try:
        with proxistore.open(tmp_path / "db", {"wal": {"avro": {"sync_mode": "none"}}}) as db:
            for trial in range(60):
                col = db.create_collection(f"c{trial}", dim=4, metric="l2")
                stop = threading.Event()
                seen = []

                def search():
                    while not stop.is_set():
                        seen.extend(col.search(np.zeros(4, np.float32), k=1))

                th = threading.Thread(target=search)
                th.start()
                col.insert(["a"], np.zeros((1, 4), np.float32), [{"k": 1}])   # the first row with metadata
                stop.set()
                th.join()
                assert all(h.metadata == {"k": 1} for h in seen), f"trial {trial}: {seen[:3]}"
    finally:
        sys.setswitchinterval(old)


@pytest.mark.parametrize("rows", [1, 3])
def test_normalize_scales_rows_to_unit_norm_and_keeps_zero_rows_zero(rows):
    from proxistore.distance import normalize
    x = np.random.default_rng(rows).standard_normal((rows, 384)).astype(np.float32) * 7
    x[-1] = 0 if rows > 1 else x[-1]
    got = normalize(x)
    assert got.dtype == np.float32 and got.shape == x.shape
    want = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert not np.shares_memory(got, x)
    np.testing.assert_array_equal(normalize(np.zeros((1, 8), np.float32)), np.zeros((1, 8)))
