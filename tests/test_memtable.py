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
