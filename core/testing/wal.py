"""Conformance tests for WAL strategies, shipped so that any implementation can prove itself.

Subclass :class:`WalStrategyContract` in a test module and set two class attributes::

    from proxistore.testing.wal import WalStrategyContract

    class TestMyWal(WalStrategyContract):
        strategy_factory = MyWalStrategy          # called as factory(config, fs=..., root=...)
        config = {"sync_mode": "always"}          # parsed values of your keys

Every test uses real files under pytest's ``tmp_path`` and the real
:class:`~proxistore.fileio.LocalFileSystem` (override :meth:`make_filesystem` to run under another
:class:`~proxistore.fileio.FileSystem`). The base class itself is not collected; subclasses are.
Override :meth:`tail_file` if the newest file in a collection's directory is not where your log
appends.
"""
from __future__ import annotations

import os
import threading
from typing import Any, ClassVar, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pytest

from proxistore.contracts import (OP_DELETE, OP_INSERT, OP_UPSERT, CollectionWal, WalBatch,
                                  WalStrategy)
from proxistore.errors import ProxistoreError
from proxistore.fileio import FileSystem, LocalFileSystem
from .base import ContractSuite

__all__ = ["WalStrategyContract", "make_batch", "assert_batches_equal"]

REQUIRED_STATS = ("bytes", "segments", "records", "append_seconds", "fsync_seconds", "fsyncs")


def make_batch(op: str, first_lsn: int, n: int, dim: int = 8, *,
               metadata: bool = True) -> WalBatch:
    """A deterministic batch whose content is a function of its LSNs (for checking replay)."""
    lsns = np.arange(first_lsn, first_lsn + n, dtype=np.float32)
    ids = [f"id-{first_lsn + i}" for i in range(n)]
    if op == OP_DELETE:
        return WalBatch(op=op, first_lsn=first_lsn, ids=ids)
    vectors = (lsns[:, None] + np.arange(dim, dtype=np.float32)[None, :] / 1000).astype(np.float32)
    meta = [{"lsn": first_lsn + i, "tag": f"t{(first_lsn + i) % 7}"} for i in range(n)] \
        if metadata else None
    return WalBatch(op=op, first_lsn=first_lsn, ids=ids, vectors=vectors, metadata=meta,
                    timestamp=1_700_000_000.0 + first_lsn)


def assert_batches_equal(got: Sequence[WalBatch], want: Sequence[WalBatch]) -> None:
    """Replayed batches equal the appended ones (op, LSNs, ids, vectors bit-exact, metadata)."""
    assert [(b.op, b.first_lsn, b.last_lsn) for b in got] == \
        [(b.op, b.first_lsn, b.last_lsn) for b in want]
    for g, w in zip(got, want):
        assert list(g.ids) == list(w.ids)
        if w.vectors is None:
            assert g.vectors is None
        else:
            assert g.vectors is not None
            assert g.vectors.dtype == np.float32 and g.vectors.flags.c_contiguous
            assert g.vectors.shape == w.vectors.shape
            assert np.array_equal(g.vectors, w.vectors)
        if w.metadata is None or w.op == OP_DELETE:
            assert not g.metadata
        else:
            assert [dict(m) if m is not None else None for m in (g.metadata or [])] == \
                [dict(m) if m is not None else None for m in w.metadata]


class WalStrategyContract(ContractSuite):
    """Behavioural checks every :class:`~proxistore.contracts.WalStrategy` must pass."""

    __test__ = False  # the suite itself; its subclasses are collected

    #: the class (or callable) to test: ``factory(config, *, fs, root)``
    strategy_factory: ClassVar[Any] = None
    #: its parsed config section
    config: ClassVar[Mapping[str, Any]] = {}
    dim: ClassVar[int] = 8

    # -- helpers a subclass may override -------------------------------------------------

    def make_filesystem(self) -> FileSystem:
        return LocalFileSystem()

    def make_strategy(self, root: str) -> WalStrategy:
        if self.strategy_factory is None:
            raise TypeError(f"{type(self).__name__} must set strategy_factory")
        return type(self).strategy_factory(dict(self.config), fs=self.make_filesystem(),
                                           root=str(root))

    def tail_file(self, collection_dir: str) -> str:
        """The file the log appends to: by default the newest regular file in the directory."""
        files = [os.path.join(collection_dir, n) for n in os.listdir(collection_dir)]
        files = [f for f in files if os.path.isfile(f) and os.path.getsize(f) > 0]
        return max(files, key=lambda f: (os.stat(f).st_mtime_ns, f))

    @pytest.fixture
    def root(self, tmp_path: Any) -> str:
        return str(tmp_path / "wal")

    def new_wal(self, root: str, name: str = "c") -> Tuple[WalStrategy, CollectionWal]:
        strategy = self.make_strategy(root)
        strategy.create_collection(name)
        wal = strategy.open_collection(name)
        assert list(wal.replay(0)) == []
        return strategy, wal

    def reopen(self, root: str, name: str = "c",
               after_lsn: int = 0) -> Tuple[WalStrategy, CollectionWal, List[WalBatch]]:
        strategy = self.make_strategy(root)
        wal = strategy.open_collection(name)
        return strategy, wal, list(wal.replay(after_lsn))

    def write(self, wal: CollectionWal, batches: Sequence[WalBatch]) -> None:
        for b in batches:
            wal.sync(wal.append(b))

    def batches(self, start: int = 1, count: int = 6, n: int = 5) -> List[WalBatch]:
        ops = (OP_INSERT, OP_UPSERT, OP_DELETE)
        return [make_batch(ops[i % 3], start + i * n, n, self.dim) for i in range(count)]

    @staticmethod
    def close(strategy: WalStrategy, wal: Optional[CollectionWal] = None) -> None:
        if wal is not None:
            wal.close()
        strategy.close()

    # -- the contract ----------------------------------------------------------------------

    def test_new_collection_is_listed_and_replays_nothing(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        assert strategy.list_collections() == ["c"]
        assert wal.recovery.batches == 0
        self.close(strategy, wal)

    def test_insert_upsert_delete_round_trip_through_reopen(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        want = self.batches()
        self.write(wal, want)
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root)
        assert_batches_equal(got, want)
        assert wal.recovery.batches == len(want)
        assert wal.recovery.rows == sum(len(b) for b in want)
        assert wal.recovery.torn_tails == []
        self.close(strategy, wal)

    def test_replay_yields_only_batches_above_after_lsn(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        want = self.batches(count=6, n=5)         # LSNs 1..30
        self.write(wal, want)
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root, after_lsn=15)
        assert_batches_equal(got, [b for b in want if b.last_lsn > 15])
        assert wal.recovery.skipped_batches == 3
        self.close(strategy, wal)

    def test_appends_continue_after_reopen(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        first = self.batches(count=3)
        self.write(wal, first)
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root)
        more = self.batches(start=first[-1].last_lsn + 1, count=3)
        self.write(wal, more)
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root)
        assert_batches_equal(got, first + more)
        self.close(strategy, wal)

    def test_concurrent_syncs_make_every_batch_durable(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        lock = threading.Lock()
        next_lsn = [1]
        written: List[WalBatch] = []
        errors: List[BaseException] = []

        def writer() -> None:
            try:
                for _ in range(10):
                    with lock:   # the core appends under the collection lock, in LSN order
                        b = make_batch(OP_INSERT, next_lsn[0], 2, self.dim)
                        next_lsn[0] += 2
                        token = wal.append(b)
                        written.append(b)
                    wal.sync(token)
            except Exception as e:  # reported below, in the test thread
                errors.append(e)

        threads = [threading.Thread(target=writer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root)
        assert_batches_equal(got, sorted(written, key=lambda b: b.first_lsn))
        self.close(strategy, wal)

    def test_rotate_then_checkpoint_frees_closed_segments(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        old = self.batches(count=4)
        self.write(wal, old)
        wal.rotate()
        before = wal.size_bytes()
        assert before > 0
        freed = wal.checkpoint(old[-1].last_lsn)
        assert freed > 0
        assert wal.size_bytes() == before - freed
        new = self.batches(start=old[-1].last_lsn + 1, count=2)
        self.write(wal, new)
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root)
        assert_batches_equal(got, new)
        self.close(strategy, wal)

    def test_checkpoint_never_frees_unflushed_batches(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        want = self.batches(count=6, n=5)
        self.write(wal, want[:3])
        wal.rotate()
        self.write(wal, want[3:])
        wal.rotate()
        wal.checkpoint(want[2].last_lsn + 2)      # inside the second closed segment
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root, after_lsn=want[2].last_lsn + 2)
        assert_batches_equal(got, [b for b in want if b.last_lsn > want[2].last_lsn + 2])
        self.close(strategy, wal)

    def test_checkpoint_keeps_the_active_segment(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        want = self.batches(count=3)
        self.write(wal, want)
        assert wal.checkpoint(want[-1].last_lsn) == 0
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root)
        assert_batches_equal(got, want)
        self.close(strategy, wal)

    def test_torn_tail_is_repaired_and_reported(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        want = self.batches(count=5)
        self.write(wal, want)
        self.close(strategy, wal)
        tail = self.tail_file(os.path.join(root, "c"))
        size = os.path.getsize(tail)
        with open(tail, "r+b") as f:
            f.truncate(size - 3)
        strategy, wal, got = self.reopen(root)
        assert_batches_equal(got, want[:-1])
        assert len(wal.recovery.torn_tails) == 1
        torn = wal.recovery.torn_tails[0]
        assert torn.bytes_dropped > 0 and os.path.samefile(torn.file, tail)
        self.close(strategy, wal)
        strategy, wal, got = self.reopen(root)           # the repair is durable and idempotent
        assert_batches_equal(got, want[:-1])
        assert wal.recovery.torn_tails == []
        self.close(strategy, wal)

    def test_stats_report_required_keys_and_real_timings(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        self.write(wal, self.batches(count=3))
        stats: Dict[str, Any] = wal.stats()
        for key in REQUIRED_STATS:
            assert key in stats, f"stats() lacks {key!r}"
        assert stats["bytes"] == wal.size_bytes() > 0
        assert stats["records"] == 3 and stats["segments"] >= 1
        assert stats["append_seconds"] > 0 and stats["fsync_seconds"] >= 0
        self.close(strategy, wal)

    def test_drop_collection_removes_the_log(self, root: str) -> None:
        strategy, wal = self.new_wal(root)
        self.write(wal, self.batches(count=2))
        wal.close()
        strategy.drop_collection("c")
        assert strategy.list_collections() == []
        assert not os.path.exists(os.path.join(root, "c"))
        strategy.drop_collection("c")                    # missing is not an error
        with pytest.raises(ProxistoreError):
            strategy.open_collection("c")
        strategy.close()
