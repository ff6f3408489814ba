"""The memtable applies batches in any order and keeps the newest version of each id, whether a
batch takes the vectorised path (every id new to the memtable) or the row-by-row one."""
from __future__ import annotations

import numpy as np

from proxistore.contracts import OP_DELETE, OP_INSERT, OP_UPSERT, WalBatch
from proxistore.memtable import Memtable


def _batches(rng, count=80, dim=8):
    lsn = 1
    out = []
    for step in range(count):
        n = int(rng.integers(1, 30))
        ids = [f"r{i}" for i in rng.choice(200, n, replace=False)]
        if step % 7 == 6:
            out.append(WalBatch(OP_DELETE, lsn, ids))
        else:
            vecs = rng.standard_normal((n, dim)).astype(np.float32)
            metas = [None if j % 4 == 0 else {"g": f"g{j % 3}", "n": j} for j in range(n)]
            out.append(WalBatch(OP_UPSERT if step % 2 else OP_INSERT, lsn, ids, vecs, metas))
        lsn += n
    return out


def _model(batches):
    newest = {}
    for b in batches:
        for i, id_ in enumerate(b.ids):
            lsn = b.first_lsn + i
            if id_ not in newest or newest[id_][0] < lsn:
                row = None if b.op == OP_DELETE else (b.vectors[i], b.metadata[i])
                newest[id_] = (lsn, row)
    return newest


def test_batches_applied_in_any_order_leave_the_newest_version_of_every_id():
    rng = np.random.default_rng(7)
    batches = _batches(rng)
    expected = _model(batches)
    for order in (range(len(batches)), rng.permutation(len(batches)), range(len(batches) - 1, -1, -1)):
        mt = Memtable(8, "l2")
        for i in order:
            mt.apply(batches[i])
        assert len(mt) == len(expected)
        for id_, (lsn, row) in expected.items():
            assert mt.lookup(id_) == (lsn, row is not None)
            rec = mt.get(id_)
            if row is None:
                assert rec is None
            else:
                assert np.array_equal(rec.vector, row[0]) and rec.metadata == row[1] and rec.lsn == lsn
        assert mt.nbytes == sum(mt._row_bytes) and mt.max_lsn == max(lsn for lsn, _ in expected.values())


def test_bytes_count_metadata_and_fall_when_a_row_loses_it():
    mt = Memtable(4, "l2")
    ids = [f"id{i}" for i in range(100)]
    vecs = np.ones((100, 4), dtype=np.float32)
    mt.apply(WalBatch(OP_INSERT, 1, ids, vecs))                         # every id new: one step
    bare = mt.nbytes
    mt.apply(WalBatch(OP_UPSERT, 101, ids, vecs, [{"text": "x" * 200}] * 100))   # row by row
    assert mt.nbytes >= bare + 100 * 200
    mt.apply(WalBatch(OP_UPSERT, 201, ids, vecs))
    assert mt.nbytes == bare


def test_a_memtable_of_many_small_chunks_answers_like_one_of_a_single_chunk():
    """Vectors live in chunks (so that growing a large memtable never copies all of it): gets,
    searches (filtered or not, any metric) and the rows handed to a flush must not depend on
    where the chunk boundaries fall."""
    from proxistore.filters import compile_filter

    rng = np.random.default_rng(11)
    batches = _batches(rng, count=120)
    queries = rng.standard_normal((5, 8)).astype(np.float32)
    for metric in ("l2", "ip", "cosine"):
        whole, chunked = Memtable(8, metric), Memtable(8, metric, capacity=3, chunk_rows=7)
        for b in batches:
            whole.apply(b)
            chunked.apply(b)
        assert len(chunked._chunks) > 10
        for id_ in whole.ids():
            a, b = whole.get(id_), chunked.get(id_)
            assert (a is None) == (b is None)
            assert a is None or (np.array_equal(a.vector, b.vector) and a.lsn == b.lsn)
        for flt in (None, compile_filter({"g": "g1"})):
            for k in (1, 10, 500):
                x = whole.search(queries, k, filter=flt, with_metadata=True)
                y = chunked.search(queries, k, filter=flt, with_metadata=True)
                assert np.array_equal(x.ids, y.ids) and np.allclose(x.distances, y.distances)
                assert np.array_equal(x.lsns, y.lsns) and x.metadata == y.metadata
        r, s = whole.to_segment_rows(), chunked.to_segment_rows()
        assert r.ids == s.ids and np.array_equal(r.vectors, s.vectors) and np.array_equal(r.lsns, s.lsns)
        assert r.deleted_ids == s.deleted_ids and r.metadata == s.metadata
        assert whole.nbytes == chunked.nbytes and chunked.allocated_bytes >= chunked.nbytes


def test_a_large_memtable_grows_without_copying_its_full_chunks():
    mt = Memtable(4, "l2", chunk_rows=100)
    mt.apply(WalBatch(OP_INSERT, 1, [f"a{i}" for i in range(250)], np.ones((250, 4), dtype=np.float32)))
    full = mt._chunks[:2]
    mt.apply(WalBatch(OP_INSERT, 251, [f"b{i}" for i in range(500)], np.full((500, 4), 2, dtype=np.float32)))
    assert all(a is b for a, b in zip(full, mt._chunks[:2]))      # the same arrays, not copies
    assert [len(c) for c in mt._chunks[:-1]] == [100] * 7 and len(mt) == 750
    assert mt.get("a249").vector.tolist() == [1.0] * 4 and mt.get("b499").vector.tolist() == [2.0] * 4


def test_a_frozen_memtable_lets_go_of_its_prefaulted_chunk():
    mt = Memtable(4, "l2", chunk_rows=100)
    mt.apply(WalBatch(OP_INSERT, 1, [f"a{i}" for i in range(150)], np.ones((150, 4), dtype=np.float32)))
    assert mt._spare is not None            # a second chunk in use: the third is being mapped
    mt.drop_spare()
    assert mt._spare is None
    mt.apply(WalBatch(OP_INSERT, 151, [f"b{i}" for i in range(100)], np.ones((100, 4), dtype=np.float32)))
    assert len(mt) == 250 and mt.get("b99") is not None
