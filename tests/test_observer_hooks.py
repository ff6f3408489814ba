"""Observer hooks: a plugin sees every flush (with its reason), recovery and compaction."""
from __future__ import annotations

import numpy as np

import proxistore
from proxistore.registry import build_registry


class Recorder:
    def __init__(self):
        self.events = []

    @proxistore.hookimpl
    def proxistore_flush_started(self, event):
        self.events.append(("flush_started", event.collection, event.reason.policy))

    @proxistore.hookimpl
    def proxistore_flush_finished(self, event):
        self.events.append(("flush_finished", event.collection, event.reason.policy, event.rows, event.error))

    @proxistore.hookimpl
    def proxistore_wal_recovered(self, event):
        self.events.append(("wal_recovered", event.collection, event.report.batches))

    @proxistore.hookimpl
    def proxistore_compaction_finished(self, event):
        self.events.append(("compaction_finished", event.collection, event.result.segments_in))


class Broken:
    @proxistore.hookimpl
    def proxistore_flush_finished(self, event):
        raise RuntimeError("observer bug")


def test_observers_see_flushes_recovery_and_compaction(tmp_path):
    rec = Recorder()
    reg = build_registry(include_external=False, extra_plugins=(rec, Broken()))
    with proxistore.open(tmp_path / "db", registry=reg) as db:
        col = db.create_collection("c", dim=4)
        for b in range(3):
            col.insert([f"{b}-{i}" for i in range(10)], np.random.rand(10, 4))
            db.flush("c")
        col.insert(["tail"], np.random.rand(1, 4))
        db.compact("c")
    assert ("flush_started", "c", "manual") in rec.events
    assert rec.events.count(("flush_finished", "c", "manual", 10, None)) == 3
    assert any(e[0] == "compaction_finished" and e[1] == "c" and e[2] >= 2 for e in rec.events)
    rec.events.clear()
    with proxistore.open(tmp_path / "db", registry=reg) as db:
        assert db.collection("c").count() == 31   # the broken observer did not break any flush
    assert ("wal_recovered", "c", 1) in rec.events
