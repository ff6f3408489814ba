"""Background maintenance under failure: a failed flush loses nothing and is retried with
back-off; close() never hangs; the memory cap holds under a writer flood."""
from __future__ import annotations

import errno
import fnmatch
import logging
import os
import subprocess
import sys
import threading
import time
import types

import numpy as np
import pytest

import proxistore
from proxistore.cli.admin import _render_database, _why
from proxistore.cli.output import Output
from proxistore.errors import CloseTimeout, MaintenanceStopped
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.flush_policies.size import SIZE_KEYS, SizePolicy
from proxistore.registry import build_registry
from proxistore.specs import FlushPolicySpec


class FailingFileSystem(LocalFileSystem):
    """The real filesystem, except that writes to files matching ``pattern`` fail with ENOSPC
    while ``failing`` is set (a full disk), and their fsyncs can be slowed down."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.failing = threading.Event()
        self.fsync_delay = 0.0
        self.failures = 0

    def _matches(self, path: str) -> bool:
        return fnmatch.fnmatch(os.path.basename(path), self.pattern)

    def _write(self, handle, data):
        if self.failing.is_set() and self._matches(handle.path):
            self.failures += 1
            raise OSError(errno.ENOSPC, "No space left on device (injected)", handle.path)
        return super()._write(handle, data)

    def _fsync(self, handle):
        if self.fsync_delay and self._matches(handle.path):
            time.sleep(self.fsync_delay)
        super()._fsync(handle)


def rows(n, seed=0, dim=32):
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


CONFIG = {"flush": {"size": {"memory_flush_size_bytes": "20kB"}},
          "maintenance": {"check_interval": "20ms", "retry_initial_backoff": "20ms", "retry_max_backoff": "200ms"}}


def test_failed_background_flush_keeps_data_retries_with_backoff_and_recovers(tmp_path, caplog):
    fs = FailingFileSystem("*.parquet")
    fs.failing.set()
    caplog.set_level(logging.WARNING, logger="proxistore")
    with proxistore.open(tmp_path / "db", CONFIG, fs=fs) as db:
        col = db.create_collection("c", dim=32)
        vecs = rows(300)
        col.insert([f"r{i}" for i in range(300)], vecs)
        deadline = time.monotonic() + 10
        while db.stats()["collections"]["c"]["flushes"]["failures"] < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        s = db.stats()["collections"]["c"]
        assert s["flushes"]["failures"] >= 3 and "No space left" in s["flushes"]["last_error"]
        assert s["storage"]["segments"] == 0 and s["memtable"]["rows"] == 300
        assert any("retrying in" in r.getMessage() for r in caplog.records)
        assert db.stats()["maintenance"]["retry_in_seconds"] or db.stats()["maintenance"]["flushing"]
        # everything stays readable while the disk is full
        assert col.count() == 300 and col.search(vecs[5], k=1)[0].id == "r5"
        failures_before = fs.failures
        time.sleep(0.3)
        assert fs.failures - failures_before <= 6, "retries are not backing off"
        fs.failing.clear()                                   # space comes back
        deadline = time.monotonic() + 10
        while db.stats()["collections"]["c"]["storage"]["rows"] < 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        db.wait_idle()
        s = db.stats()["collections"]["c"]
        assert s["storage"]["rows"] == 300 and s["flushes"]["by_policy"].get("size", 0) >= 1
    with proxistore.open(tmp_path / "db") as db:
        col = db.collection("c")
        assert col.count() == 300
        ids, _ = col.search_batch(vecs, k=1)
        assert list(ids[:, 0]) == [f"r{i}" for i in range(300)]


def test_data_written_while_flushes_fail_survives_a_crash(tmp_path):
    fs = FailingFileSystem("*.parquet")
    fs.failing.set()
    db = proxistore.open(tmp_path / "db", CONFIG, fs=fs)
    col = db.create_collection("c", dim=32)
    col.insert([f"r{i}" for i in range(300)], rows(300))
    time.sleep(0.2)
    # no close(): the process "dies" here; drop the lock the way the kernel would
    db.maintenance.pause()
    db._lock.release()
    with proxistore.open(tmp_path / "db") as again:
        assert again.collection("c").count() == 300


def test_manual_flush_reports_its_flush_when_a_background_worker_wrote_it(tmp_path):
    fs = FailingFileSystem("*.parquet")
    fs.fsync_delay = 0.5
    with proxistore.open(tmp_path / "db", CONFIG, fs=fs) as db:
        col = db.create_collection("c", dim=32)
        col.insert([f"a{i}" for i in range(200)], rows(200))      # 25.6 kB > 20 kB: a slow background flush
        deadline = time.monotonic() + 10
        while "c" not in db.stats()["maintenance"]["flushing"]:
            assert time.monotonic() < deadline, "no background flush started"
            time.sleep(0.005)
        col.insert([f"b{i}" for i in range(10)], rows(10, seed=1))
        done = db.flush("c")      # the worker, still draining, writes this memtable before the call can
        mine = [e for e in done if e["reason"]["policy"] == "manual"]
        assert len(mine) == 1 and mine[0]["rows"] == 10 and mine[0]["segment"], done
        assert mine[0]["waited_seconds"] > 0.1      # frozen while the worker wrote the older one
        assert col.count() == 210 and db.stats()["collections"]["c"]["memtable"]["rows"] == 0


class SlowToAnswer(SizePolicy):
    """A third-party size policy that takes 300 ms to say which collections are due."""

    def due(self, state):
        time.sleep(0.3)
        return super().due(state)


def slow_policy_plugin():
    plugin = types.SimpleNamespace(__name__="slow_policy")
    plugin.proxistore_flush_policies = proxistore.hookimpl(
        lambda: [FlushPolicySpec("slow_size", SlowToAnswer, SIZE_KEYS)])
    return plugin


def test_wait_idle_returns_only_after_the_policies_have_seen_the_last_write(tmp_path):
    reg = build_registry(include_external=False, extra_plugins=(slow_policy_plugin(),))
    cfg = {"flush": {"policies": ["slow_size", "manual"], "slow_size": {"memory_flush_size_bytes": "20kB"}},
           "maintenance": {"check_interval": "5s"}}
    with proxistore.open(tmp_path / "db", cfg, registry=reg) as db:
        col = db.create_collection("c", dim=32)
        for batch in range(3):
            col.insert([f"{batch}-{i}" for i in range(200)], rows(200, seed=batch))   # 25.6 kB > 20 kB
            assert db.wait_idle(10)
            flushes = db.stats()["collections"]["c"]["flushes"]
            assert flushes["total"] == batch + 1, flushes
            assert db.stats()["collections"]["c"]["memtable"]["rows"] == 0


def test_close_waits_for_a_running_flush_but_never_hangs(tmp_path):
    fs = FailingFileSystem("*.parquet")
    fs.fsync_delay = 2.0
    cfg = {**CONFIG, "maintenance": {**CONFIG["maintenance"], "close_timeout": "300ms"}}
    db = proxistore.open(tmp_path / "db", cfg, fs=fs)
    col = db.create_collection("c", dim=32)
    col.insert([f"r{i}" for i in range(300)], rows(300))
    deadline = time.monotonic() + 5
    while not db.stats()["maintenance"]["flushing"] and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(CloseTimeout, match="recoverable"):
        db.close()
    assert time.monotonic() - started < 1.5
    time.sleep(2.5)  # let the slow fsync finish before reopening the same directory
    with proxistore.open(tmp_path / "db") as again:
        assert again.collection("c").count() == 300


def test_writer_flood_never_takes_memtables_past_the_memory_limit(tmp_path):
    psutil = pytest.importorskip("psutil")
    limit = 64_000_000
    cfg = {"flush": {"global_memory": {"global_flush_threshold": "48MB", "global_memory_limit": "64MB"}},
           "maintenance": {"check_interval": "20ms"}}
    proc = psutil.Process()
    with proxistore.open(tmp_path / "db", cfg) as db:
        cols = [db.create_collection(f"c{i}", dim=384) for i in range(2)]
        peak = {"mem": 0, "rss": 0}
        stop = threading.Event()
        baseline = proc.memory_info().rss

        def sample():
            while not stop.is_set():
                peak["mem"] = max(peak["mem"], db.stats()["memtable_bytes"])
                peak["rss"] = max(peak["rss"], proc.memory_info().rss)
                time.sleep(0.005)

        def writer(w):
            for b in range(60):
                cols[w].insert([f"{w}-{b}-{i}" for i in range(1000)], rows(1000, seed=w * 1000 + b, dim=384))

        sampler = threading.Thread(target=sample)
        sampler.start()
        writers = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        sampler.join()
        assert sum(c.count() for c in cols) == 120_000          # ~ 185 MB of vectors, 3x the limit
        assert peak["mem"] <= limit
        assert db.stats()["backpressure"]["timeouts"] == 0
        overhead = peak["rss"] - baseline
        assert overhead < limit + 400_000_000, f"RSS grew by {overhead / 1e6:.0f} MB under a 64 MB memtable limit"



def test_a_flush_is_not_queued_behind_storage_work_of_other_collections(tmp_path):
    """Storage work (here index builds slowed to 2 s each by their fsync) runs on at most
    workers - 1 workers, so a collection that must flush finds a worker at once; every
    collection's storage work still gets done."""
    fs = FailingFileSystem("*.hnsw.*")
    fs.fsync_delay = 2.0
    slow = threading.Event()
    fsync = fs._fsync

    def noting_fsync(handle):
        if fs._matches(handle.path):
            slow.set()
        fsync(handle)
    fs._fsync = noting_fsync
    cfg = {**CONFIG, "maintenance": {**CONFIG["maintenance"], "workers": 2},
           "storage": {"viper": {"indexing_threshold": 50, "auto_compaction": False}}}
    with proxistore.open(tmp_path / "db", cfg, fs=fs) as db:
        a, b, c = (db.create_collection(n, dim=32) for n in "abc")
        a.insert([f"a{i}" for i in range(300)], rows(300, seed=1))
        b.insert([f"b{i}" for i in range(300)], rows(300, seed=2))
        assert slow.wait(5), "no index build started"
        time.sleep(0.2)    # both a's and b's storage jobs have been scheduled by now
        started = time.monotonic()
        c.insert([f"c{i}" for i in range(300)], rows(300, seed=3))
        while db.stats()["collections"]["c"]["flushes"]["total"] == 0 and time.monotonic() - started < 10:
            time.sleep(0.01)
        waited = time.monotonic() - started
        assert db.stats()["collections"]["c"]["flushes"]["total"] >= 1
        assert waited < 1.0, f"c's flush waited {waited:.2f}s behind storage work"
        fs.fsync_delay = 0.0
        assert db.wait_idle(60)
        for name in "abc":
            st = db.stats()["collections"][name]["storage"]
            assert st["segments"] >= 1 and st["indexed_segments"] == st["segments"], (name, st)



def test_storage_work_of_collections_runs_in_turns(tmp_path, monkeypatch):
    """One collection with a backlog of index builds does not keep the storage worker to itself:
    its maintain() ends after a turn (here: one build) and another collection's work goes next."""
    from proxistore.plugins.viper import maintenance as viper_maintenance
    monkeypatch.setattr(viper_maintenance, "MAINTAIN_TURN_SECONDS", 0.0)
    fs = FailingFileSystem("*.hnsw.*")
    fs.fsync_delay = 0.4
    cfg = {**CONFIG, "flush": {"policies": ["manual"]}, "maintenance": {**CONFIG["maintenance"], "workers": 2},
           "storage": {"viper": {"indexing_threshold": 50, "auto_compaction": False}}}
    with proxistore.open(tmp_path / "db", cfg, fs=fs) as db:
        a, b = db.create_collection("a", dim=32), db.create_collection("b", dim=32)
        for k in range(8):
            a.insert([f"a{k}-{i}" for i in range(100)], rows(100, seed=k))
            db.flush("a")                                 # 8 segments, each needing an index
        b.insert([f"b{i}" for i in range(100)], rows(100, seed=99))
        db.flush("b")
        deadline = time.monotonic() + 20
        while db.stats()["collections"]["b"]["storage"]["indexed_segments"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        a_indexed = db.stats()["collections"]["a"]["storage"]["indexed_segments"]
        assert db.stats()["collections"]["b"]["storage"]["indexed_segments"] == 1
        assert a_indexed <= 3, f"b waited for {a_indexed} of a's 8 index builds"
        fs.fsync_delay = 0.0
        assert db.wait_idle(60)
        for name in "ab":
            st = db.stats()["collections"][name]["storage"]
            assert st["indexed_segments"] == st["segments"] >= 1, (name, st)


_EXIT_WITHOUT_CLOSE = """
import sys
import numpy as np
import proxistore
db = proxistore.open(sys.argv[1])
col = db.create_collection("c", dim=8)
rng = np.random.default_rng(0)
for i in range(300):
    col.insert([f"{i}-{j}" for j in range(10)], rng.random((10, 8), dtype=np.float32))
"""


def test_a_process_that_exits_without_close_prints_nothing_and_loses_nothing(tmp_path):
    # Python shuts every thread pool when the main thread ends; the scheduler's next tick used to
    # report each refused submit as "maintenance tick failed" with a traceback, on every such exit.
    for attempt in range(3):
        path = tmp_path / f"db{attempt}"
        proc = subprocess.run([sys.executable, "-c", _EXIT_WITHOUT_CLOSE, str(path)],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        with proxistore.open(path) as db:
            assert db.collection("c").count() == 3000


class BrokenPolicy(SizePolicy):
    """A third-party policy with a bug: while ``broken``, asking it which collections are due raises."""

    broken = True

    def due(self, state):
        if BrokenPolicy.broken:
            raise RuntimeError("bug in a third-party policy")
        return []

    def readings(self, state, collection):
        return []

    def request(self, state):
        if BrokenPolicy.broken:
            raise RuntimeError("bug in a third-party policy")
        return None


def test_a_policy_that_raises_does_not_stop_the_others_from_being_enforced(tmp_path, caplog, capsys):
    plugin = types.SimpleNamespace(__name__="broken_policy")
    plugin.proxistore_flush_policies = proxistore.hookimpl(lambda: [FlushPolicySpec("broken", BrokenPolicy, ())])
    reg = build_registry(include_external=False, extra_plugins=(plugin,))
    cfg = {"flush": {"policies": ["broken", "size", "manual"], "size": {"memory_flush_size_bytes": "20kB"}},
           "maintenance": {"check_interval": "20ms"}}
    caplog.set_level(logging.INFO, logger="proxistore")
    with proxistore.open(tmp_path / "db", cfg, registry=reg) as db:
        col = db.create_collection("c", dim=32)
        col.insert([f"r{i}" for i in range(200)], rows(200))           # 25.6 kB > 20 kB
        deadline = time.monotonic() + 5
        while db.stats()["collections"]["c"]["flushes"]["by_policy"].get("size", 0) == 0:
            assert time.monotonic() < deadline, "the size policy was not enforced beside a failing policy"
            time.sleep(0.01)
        time.sleep(0.5)                                                  # ~25 more ticks
        m = db.stats()["maintenance"]
        assert m["policy_failures"]["broken"] >= 10, m
        assert any("broken" in e and "bug in a third-party policy" in e for e in m["errors"]), m["errors"]
        # said once, not on every tick
        said = [r for r in caplog.records if "broken" in r.getMessage() and r.levelno >= logging.ERROR]
        assert len(said) == 1, [r.getMessage() for r in said]
        # stats --why says so
        why = {r["policy"]: r for r in db.why("c")}
        assert "bug in a third-party policy" in why["broken"]["failing"] and why["size"]["failing"] is None
        _why("c", db.why("c"), db.stats(), Output())                  # what `proxistore stats --why c` prints
        assert "policy 'broken' is failing (RuntimeError: bug in a third-party policy)" in capsys.readouterr().out
        _render_database(Output(), db.stats())                        # and `proxistore stats`
        assert "policy 'broken' is failing (RuntimeError: bug in a third-party policy)" in capsys.readouterr().out
        policy = next(p for p in db.policies if p.name == "broken")
        policy.readings = lambda state, collection: 1 / 0
        why = {r["policy"]: r for r in db.why("c")}
        assert "ZeroDivisionError" in why["broken"]["failing"] and why["size"]["key"] == "memory_flush_size_bytes"
        col.insert(["late"], rows(1, seed=5))
        assert [e["reason"]["policy"] for e in db.flush("c")] == ["manual"]   # db.flush() still answered
        BrokenPolicy.broken = False
        try:
            deadline = time.monotonic() + 5
            while not any("works again" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the policy's recovery was not reported"
                time.sleep(0.01)
        finally:
            BrokenPolicy.broken = True


class ExitingPolicy(SizePolicy):
    """A third-party policy that calls sys.exit() from the scheduler's thread."""

    def due(self, state):
        raise SystemExit("a plugin called sys.exit()")


def test_a_scheduler_that_dies_says_so_in_the_log_and_in_stats(tmp_path, caplog, capsys):
    plugin = types.SimpleNamespace(__name__="exiting_policy")
    plugin.proxistore_flush_policies = proxistore.hookimpl(lambda: [FlushPolicySpec("exiting", ExitingPolicy, ())])
    reg = build_registry(include_external=False, extra_plugins=(plugin,))
    cfg = {"flush": {"policies": ["exiting", "manual"]}, "maintenance": {"check_interval": "20ms"}}
    caplog.set_level(logging.INFO, logger="proxistore")
    with proxistore.open(tmp_path / "db", cfg, registry=reg) as db:
        col = db.create_collection("c", dim=32)
        assert db.stats()["maintenance"]["scheduler"] in ("running", "died: SystemExit: a plugin called sys.exit()")
        col.insert(["a"], rows(1))
        deadline = time.monotonic() + 5
        while db.stats()["maintenance"]["scheduler"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert db.stats()["maintenance"]["scheduler"] == "died: SystemExit: a plugin called sys.exit()"
        assert any(r.levelno == logging.CRITICAL and "no flush policy is enforced" in r.getMessage()
                   for r in caplog.records)
        _render_database(Output(), db.stats())
        assert "background maintenance is NOT running (died: SystemExit" in capsys.readouterr().out
        # no threshold would be enforced for a new write: refused, and nothing of it is kept
        with pytest.raises(MaintenanceStopped, match="SystemExit: a plugin called sys.exit"):
            col.insert(["b"], rows(1))
        assert col.get(["b"]) == [None]
        assert col.count() == 1 and db.flush("c")[0]["rows"] == 1    # reads and flush() still work
        assert col.search(rows(1)[0], k=1)[0].id == "a"
    with proxistore.open(tmp_path / "db") as db:
        assert db.stats()["maintenance"]["scheduler"] == "running"
        assert db.collection("c").count() == 1
        db.collection("c").insert(["b"], rows(1))                   # reopened: writes are taken again


def test_a_storage_engine_whose_has_background_work_raises_is_reported_once(tmp_path, caplog):
    cfg = {"flush": {"policies": ["manual"]}, "maintenance": {"check_interval": "20ms"},
           "storage": {"viper": {"indexing_threshold": 50, "auto_compaction": False}}}
    caplog.set_level(logging.INFO, logger="proxistore")
    with proxistore.open(tmp_path / "db", cfg) as db:
        a, b = db.create_collection("a", dim=32), db.create_collection("b", dim=32)
        db.runtime_or_none("a").store.has_background_work = lambda: 1 / 0     # a third-party engine's bug
        for col, seed in ((a, 1), (b, 2)):
            col.insert([f"{col.name}{i}" for i in range(100)], rows(100, seed=seed))
            db.flush(col.name)
        deadline = time.monotonic() + 10
        while any(db.stats()["collections"][n]["storage"]["indexed_segments"] < 1 for n in "ab"):
            assert time.monotonic() < deadline, "storage work did not run beside the failing probe"
            time.sleep(0.01)
        time.sleep(0.5)                                   # ~25 ticks, each asking a again
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len([m for m in said if "has_background_work() of a failed" in m]) == 1, said
        assert not [m for m in said if "tick failed" in m], said
        assert any("ZeroDivisionError" in e for e in db.stats()["maintenance"]["errors"])


def test_a_tick_that_keeps_failing_is_logged_once_and_counted(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="proxistore")
    with proxistore.open(tmp_path / "db", {"maintenance": {"check_interval": "20ms"}}) as db:
        db.create_collection("c", dim=32)
        state = db.database_state
        db.database_state = lambda: 1 / 0
        time.sleep(0.5)                                   # ~25 ticks
        m = db.stats()["maintenance"]
        said = [r for r in caplog.records if "tick failed" in r.getMessage()]
        assert m["failed_ticks"] >= 10 and len(said) == 1, (m["failed_ticks"], len(said))
        assert m["errors"] == ["tick failed: ZeroDivisionError: division by zero"]
        db.database_state = state
        deadline = time.monotonic() + 5
        while not any("ticks work again" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "the recovery was not reported"
            time.sleep(0.01)
