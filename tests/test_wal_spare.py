"""The spare WAL segment: made by ``prepare_rotation()`` off the write path, used by the first
append after a rotation, removed by close(), and harmless to recovery when a crash leaves it
behind (empty, or with a torn header) after a segment whose tail the crash tore."""
from __future__ import annotations

import os
import shutil

from proxistore.contracts import OP_INSERT
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.wal_avro import AvroWalStrategy, verify_wal
from proxistore.testing.wal import assert_batches_equal, make_batch

from test_wal_avro import open_wal, seg_files
from test_wal_recovery import record_spans


def batches(start, count, n=3):
    return [make_batch(OP_INSERT, start + i * n, n, 8) for i in range(count)]


def test_the_first_append_after_a_rotation_uses_the_prepared_segment(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="always")
    first = batches(1, 2)
    for b in first:
        wal.sync(wal.append(b))
    wal.rotate()
    wal.prepare_rotation()
    wal.prepare_rotation()                              # two spares at most
    st = wal.stats()
    assert st["segments_prepared"] == 2 and st["segments_created"] == 3
    assert len(seg_files(tmp_path)) == 3 and st["segments"] == 1      # the spares are not in use yet
    second = batches(7, 2)
    for b in second:
        wal.sync(wal.append(b))
    st = wal.stats()
    assert st["segments_created"] == 3 and st["segments"] == 2       # no file made on the write path
    assert st["active_segment"] == os.path.basename(seg_files(tmp_path)[1])
    wal.rotate()
    wal.sync(wal.append(third := batches(20, 1)[0]))     # the second spare, made a rotation earlier
    assert wal.stats()["segments_created"] == 3
    assert wal.stats()["active_segment"] == os.path.basename(seg_files(tmp_path)[2])
    second.append(third)
    wal.close()
    s.close()
    _, wal, got = open_wal(tmp_path)
    assert_batches_equal(got, first + second)
    wal.close()


def test_close_removes_an_unused_spare(tmp_path):
    s, wal, _ = open_wal(tmp_path, sync_mode="group")
    wal.sync(wal.append(batches(1, 1)[0]))
    wal.rotate()
    wal.prepare_rotation()
    assert len(seg_files(tmp_path)) == 3
    wal.close()
    assert len(seg_files(tmp_path)) == 1
    wal.prepare_rotation()                              # closed: nothing happens
    assert len(seg_files(tmp_path)) == 1
    s.close()


def test_a_torn_tail_before_a_spare_is_repaired_not_called_corruption(tmp_path):
    """Spares wait after the active segment while it takes appends (made at an earlier
    rotation): a crash then tears that segment's tail with empty spares after it."""
    s, wal, _ = open_wal(tmp_path / "live", sync_mode="always")
    want = batches(1, 5)
    for b in want:
        wal.sync(wal.append(b))
    wal.prepare_rotation()
    active, *spares = seg_files(tmp_path / "live")
    assert len(spares) == 2
    _, spans = record_spans(active)
    for n, cut in enumerate((spans[-1][0] + 7, spans[-1][1] - 1)):
        copy = tmp_path / f"crash{n}"
        shutil.copytree(tmp_path / "live", copy)
        with open(os.path.join(str(copy), "c", os.path.basename(active)), "r+b") as f:
            f.truncate(cut)                              # the last append was torn by the crash
        result = verify_wal(str(copy))
        assert result.ok and len(result.torn_tails) == 1
        s2 = AvroWalStrategy({}, fs=LocalFileSystem(), root=str(copy))
        wal2 = s2.open_collection("c")
        got = list(wal2.replay(0))
        assert_batches_equal(got, want[:-1])
        assert [(os.path.basename(t.file), t.offset) for t in wal2.recovery.torn_tails] == \
            [(os.path.basename(active), spans[-1][0])]
        more = batches(100, 2)
        for b in more:                                   # and the log goes on after the spare
            wal2.sync(wal2.append(b))
        wal2.close()
        s2.close()
        _, wal3, got = open_wal(copy)
        assert_batches_equal(got, want[:-1] + more)
        wal3.close()
    wal.close()
    s.close()


def test_a_spare_torn_while_being_made_is_removed_with_the_torn_tail_before_it(tmp_path):
    s, wal, _ = open_wal(tmp_path / "live", sync_mode="always")
    want = batches(1, 4)
    for b in want:
        wal.sync(wal.append(b))
    wal.prepare_rotation()
    active, first_spare, spare = seg_files(tmp_path / "live")
    _, spans = record_spans(active)
    copy = tmp_path / "crash"
    shutil.copytree(tmp_path / "live", copy)
    d = os.path.join(str(copy), "c")
    with open(os.path.join(d, os.path.basename(active)), "r+b") as f:
        f.truncate(spans[-1][1] - 3)
    with open(os.path.join(d, os.path.basename(spare)), "r+b") as f:
        f.truncate(11)                                   # the crash hit the spare's header too
    s2 = AvroWalStrategy({}, fs=LocalFileSystem(), root=str(copy))
    wal2 = s2.open_collection("c")
    assert_batches_equal(list(wal2.replay(0)), want[:-1])
    assert len(wal2.recovery.torn_tails) == 2
    assert not os.path.exists(os.path.join(d, os.path.basename(spare)))
    wal2.close()
    s2.close()
    wal.close()
    s.close()
