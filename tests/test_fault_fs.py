"""The fault-injecting filesystem's model of durability: what survives a simulated power loss,
and which operation fails when told to."""
from __future__ import annotations

import errno
import os

import pytest

from proxistore.testing.faultfs import Fault, FaultInjectingFileSystem, PowerLoss, SeamViolation


def survivors(fs, tmp_path, name="after"):
    dest = fs.crash().materialize(str(tmp_path / name))
    out = {}
    for d, _, files in os.walk(dest):
        for f in files:
            with open(os.path.join(d, f), "rb") as h:
                out[os.path.relpath(os.path.join(d, f), dest)] = h.read()
    return out


def test_a_synced_file_whose_directory_was_not_synced_is_lost(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"))
    with fs.open(os.path.join(fs.root, "a"), "wb") as f:
        f.write(b"hello")
        f.fsync()
    assert survivors(fs, tmp_path) == {}


def test_a_synced_file_in_a_synced_directory_survives_without_its_unsynced_tail(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"))
    with fs.open(os.path.join(fs.root, "a"), "wb") as f:
        f.write(b"hello")
        f.fsync()
        fs.fsync_dir(fs.root)
        f.write(b" world")
        f.flush()
    assert survivors(fs, tmp_path) == {"a": b"hello"}


def test_torn_mode_keeps_a_prefix_of_the_unsynced_tail(tmp_path):
    seen = set()
    for seed in range(20):
        fs = FaultInjectingFileSystem(str(tmp_path / f"root{seed}"), unsynced="torn", seed=seed)
        with fs.open(os.path.join(fs.root, "a"), "wb") as f:
            f.write(b"hello")
            f.fsync()
            fs.fsync_dir(fs.root)
            f.write(b" world")
        data = survivors(fs, tmp_path, f"after{seed}")["a"]
        assert (b"hello world").startswith(data) and data.startswith(b"hello")
        seen.add(len(data))
    assert len(seen) > 2


def test_an_overwrite_of_synced_bytes_is_undone_until_synced(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"))
    path = os.path.join(fs.root, "a")
    with fs.open(path, "wb") as f:
        f.write(b"0123456789")
        f.fsync()
    fs.fsync_dir(fs.root)
    with fs.open(path, "r+b") as f:
        f.truncate(4)
        f.seek(4)
        f.write(b"xy")
    assert survivors(fs, tmp_path) == {"a": b"0123456789"}


def test_a_rename_or_unlink_without_a_directory_fsync_is_undone(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "old").write_bytes(b"v1")
    (root / "gone").write_bytes(b"g")
    fs = FaultInjectingFileSystem(str(root))          # what is there already counts as durable
    fs.write_durable(os.path.join(fs.root, "new.tmp"), b"v2")
    fs.rename(os.path.join(fs.root, "new.tmp"), os.path.join(fs.root, "old"))
    fs.unlink(os.path.join(fs.root, "gone"))
    assert survivors(fs, tmp_path) == {"old": b"v1", "gone": b"g"}


def test_an_atomic_write_survives_once_its_directory_is_synced(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"))
    fs.write_atomic(os.path.join(fs.root, "m"), b"v1")
    fs.makedirs_durable(os.path.join(fs.root, "x", "y"))
    fs.write_durable(os.path.join(fs.root, "x", "y", "f"), b"data")
    fs.fsync_dir(os.path.join(fs.root, "x", "y"))
    assert survivors(fs, tmp_path) == {"m": b"v1", os.path.join("x", "y", "f"): b"data"}


def test_a_directory_rename_moves_its_durable_contents(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"))
    fs.makedirs(os.path.join(fs.root, ".tmp-c"))
    fs.write_durable(os.path.join(fs.root, ".tmp-c", "info"), b"i")
    fs.fsync_dir(os.path.join(fs.root, ".tmp-c"))
    fs.fsync_dir(fs.root)
    fs.rename(os.path.join(fs.root, ".tmp-c"), os.path.join(fs.root, "c"))
    assert survivors(fs, tmp_path, "before") == {os.path.join(".tmp-c", "info"): b"i"}
    fs2 = FaultInjectingFileSystem(str(tmp_path / "root2"))
    fs2.makedirs(os.path.join(fs2.root, ".tmp-c"))
    fs2.write_durable(os.path.join(fs2.root, ".tmp-c", "info"), b"i")
    fs2.fsync_dir(os.path.join(fs2.root, ".tmp-c"))
    fs2.rename(os.path.join(fs2.root, ".tmp-c"), os.path.join(fs2.root, "c"))
    fs2.fsync_dir(fs2.root)
    assert survivors(fs2, tmp_path, "after2") == {os.path.join("c", "info"): b"i"}


def test_crash_at_stops_before_the_nth_operation_and_fails_every_later_one(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"), crash_at=3)
    f = fs.open(os.path.join(fs.root, "a"), "wb")          # op 1
    f.write(b"x")                                          # op 2
    with pytest.raises(PowerLoss):
        f.fsync()                                          # op 3: never happens
    with pytest.raises(PowerLoss):
        fs.fsync_dir(fs.root)
    f.close()
    assert fs.crashed and fs.ops == 3
    assert survivors(fs, tmp_path) == {}


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC])
def test_a_fault_fails_the_nth_matching_operation_once(tmp_path, code):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"), faults=[Fault("write", nth=2, errno=code)])
    with fs.open(os.path.join(fs.root, "a"), "wb") as f:
        f.write(b"1")
        with pytest.raises(OSError) as info:
            f.write(b"2")
        assert info.value.errno == code
        f.write(b"3")
    assert fs.injected == [(3, "write", "a", code)]


def test_a_persistent_fault_fails_until_cleared(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"),
                                  faults=[Fault("fsync", nth=1, errno=errno.ENOSPC, persistent=True, path="w*")])
    with fs.open(os.path.join(fs.root, "other"), "wb") as f:
        f.fsync()                                          # path does not match
    with fs.open(os.path.join(fs.root, "wal"), "wb") as f:
        for _ in range(3):
            with pytest.raises(OSError):
                f.fsync()
        fs.clear_faults()
        f.fsync()
    assert len(fs.injected) == 3


def test_a_file_changed_behind_the_seam_is_reported(tmp_path):
    fs = FaultInjectingFileSystem(str(tmp_path / "root"))
    with open(os.path.join(fs.root, "sneaky"), "wb") as f:
        f.write(b"x")
    with pytest.raises(SeamViolation, match="sneaky"):
        fs.rename(os.path.join(fs.root, "sneaky"), os.path.join(fs.root, "b"))
