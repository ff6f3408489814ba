"""SIGKILL a real process that appends and syncs at random moments; every acknowledged batch
must come back intact, exactly once, with at most the in-flight batches beyond.

The child (``wal_kill_child.py``) rotates and checkpoints often and uses small segments, so
kills land during appends, fsyncs, segment creation, rotation and checkpoint. The number of kills
per sync mode is ``WAL_KILLS`` (default 16, so 32 per run across ``always`` and ``group``).
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Set, Tuple

import pytest

from proxistore.fileio import LocalFileSystem
from proxistore.plugins.wal_avro import AvroWalStrategy
from proxistore.testing.wal import assert_batches_equal, make_batch

CHILD = Path(__file__).with_name("wal_kill_child.py")
KILLS = int(os.environ.get("WAL_KILLS", "16"))
sys.path.insert(0, str(CHILD.parent))
from wal_kill_child import DIM, op_for  # noqa: E402


def run_child(root: str, mode: str, next_lsn: int, flushed: int, threads: int, seed: int,
              env: Dict[str, str]) -> Tuple[Set[Tuple[int, int]], int, bool]:
    """Start the child, kill it at a random moment; return its acks, last FLUSH, and whether it
    got as far as READY."""
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), root, mode, str(next_lsn), str(flushed), str(threads),
         str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert proc.stdout is not None
    ready = proc.stdout.readline().strip() == "READY"
    if ready:
        time.sleep(random.Random(seed).uniform(0.0, 0.25))
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"child exited by itself: {err}"
    acks: Set[Tuple[int, int]] = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "ACK":
            acks.add((int(parts[1]), int(parts[2])))
        elif len(parts) == 2 and parts[0] == "FLUSH":
            flushed = max(flushed, int(parts[1]))
    return acks, flushed, ready


def recover(root: str, flushed: int):
    s = AvroWalStrategy({}, fs=LocalFileSystem(), root=root)
    if "c" not in s.list_collections():
        s.close()
        return [], None
    wal = s.open_collection("c")
    got = list(wal.replay(flushed))
    wal.close()
    s.close()
    return got, wal.recovery


@pytest.mark.parametrize("mode,threads", [("always", 1), ("group", 4)])
def test_sigkill_at_random_moments_loses_no_acknowledged_batch(tmp_path, child_env, mode, threads):
    root = str(tmp_path / "wal")
    flushed, next_lsn = 0, 1
    known: Dict[Tuple[int, int], bool] = {}   # batches recovered so far (acked or in flight)
    total_acks = torn = 0
    for i in range(KILLS):
        acks, flushed, ready = run_child(root, mode, next_lsn, flushed, threads, seed=i * 7 + 1,
                                         env=child_env)
        assert ready, "the child did not start"
        total_acks += len(acks)
        got, report = recover(root, flushed)
        torn += len(report.torn_tails) if report else 0
        spans = [(b.first_lsn, b.last_lsn) for b in got]
        # intact, in order, no duplicates, no holes: exactly the batches above the flushed LSN
        assert_batches_equal(got, [make_batch(op_for(f), f, l - f + 1, DIM) for f, l in spans])
        if spans:
            assert spans[0][0] == flushed + 1
            assert all(b[0] == a[1] + 1 for a, b in zip(spans, spans[1:]))
        present = set(spans)
        missing = [a for a in acks | set(known) if a[1] > flushed and a not in present]
        assert not missing, f"kill {i}: acknowledged batches lost: {sorted(missing)[:5]}"
        beyond = [s for s in spans if s not in acks and s not in known]
        assert len(beyond) <= threads, f"kill {i}: {len(beyond)} unacknowledged batches replayed"
        known = {s: True for s in spans}
        next_lsn = max([flushed] + [s[1] for s in spans]) + 1
    assert total_acks > KILLS * 5, "kills landed too early to test anything"
