"""SIGKILL of a real writing process at random moments: every acknowledged batch survives,
the in-flight batch is all or nothing, nothing is duplicated."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import proxistore

from expected_state import check_database

HERE = Path(__file__).resolve().parent
SIZE, DIM = 20, 16


def run_and_kill(db_path, config, first, child_env, kill_after_s):
    """Start the writer at batch ``first``, SIGKILL it after ``kill_after_s``; return acked batches."""
    proc = subprocess.Popen([sys.executable, str(HERE / "crash_writer.py"), str(db_path), json.dumps(config),
                             str(first), "100000", str(SIZE), str(DIM)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env, cwd=HERE)
    line = proc.stdout.readline()
    assert line.strip() == "ready", proc.stderr.read()
    time.sleep(kill_after_s)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    acked = [int(l.split()[1]) for l in out.splitlines() if l.startswith("ack ")]
    return acked, err


@pytest.mark.parametrize("sync_mode", ["always", "group"])
def test_kill_at_random_moments_loses_no_acknowledged_batch(tmp_path, child_env, sync_mode):
    rnd = random.Random(sync_mode)
    config = {"wal": {"avro": {"sync_mode": sync_mode}},
              "flush": {"size": {"memory_flush_size_bytes": "40kB"}},
              "maintenance": {"check_interval": "5ms"}}
    db_path = tmp_path / "db"
    next_batch = 0
    kills = 0
    for _ in range(8):
        acked, err = run_and_kill(db_path, config, next_batch, child_env, rnd.uniform(0.05, 0.6))
        kills += 1
        assert acked == list(range(next_batch, next_batch + len(acked))), err
        last_acked = acked[-1] if acked else next_batch - 1
        with proxistore.open(db_path, config) as db:
            col = db.collection("c")
            last = check_database(col, last_acked, SIZE, DIM)
        next_batch = last + 1
    assert kills == 8 and next_batch > 8


def test_incident_scenario_flushes_at_1MB_and_survives_sigkill(tmp_path, child_env):
    """5,000 vectors of dim 384 in 50 batches with a 1 MB threshold: flushed by `size`, on disk,
    searchable, and all back after SIGKILL."""
    db_path = tmp_path / "db"
    code = f"""
import json, os, signal, time, numpy as np, proxistore
db = proxistore.open({str(db_path)!r}, {{"flush": {{"size": {{"memory_flush_size_bytes": "1MB"}}}}}})
col = db.create_collection("incident", dim=384, metric="cosine")
rng = np.random.default_rng(7)
for b in range(50):
    col.insert([f"v{{b}}-{{i}}" for i in range(100)], rng.standard_normal((100, 384)).astype(np.float32))
deadline = time.time() + 30
while time.time() < deadline:
    s = db.stats()["collections"]["incident"]
    if s["memtable"]["active_bytes"] < 1_000_000 and not db.maintenance.stats()["flushing"]:
        break
    time.sleep(0.05)
db.wait_idle()
print(json.dumps(db.stats()["collections"]["incident"]), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stats["flushes"]["by_policy"].get("size", 0) >= 5
    assert all(f["reason"]["key"] == "memory_flush_size_bytes" and f["reason"]["measured"] > 1_000_000
               for f in stats["flushes"]["last"] if f["reason"]["policy"] == "size")
    assert stats["memtable"]["active_bytes"] < 1_000_000
    assert stats["wal"]["segments"] < 2 or stats["wal"]["bytes"] < 2 * 16_000_000
    parquet = list((db_path / "storage").rglob("*.parquet"))
    assert len(parquet) >= 1
    rng = np.random.default_rng(7)
    vectors = np.concatenate([rng.standard_normal((100, 384)).astype(np.float32) for _ in range(50)])
    with proxistore.open(db_path) as db:
        col = db.collection("incident")
        assert col.count() == 5000
        ids, _ = col.search_batch(vectors, k=1)
        expected = [f"v{b}-{i}" for b in range(50) for i in range(100)]
        assert list(ids[:, 0]) == expected
