"""Live status across processes (core/status.py): the open database's scheduler answers
requests left in <data>/status/, and an asker hears clearly when nobody answers."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

import proxistore
from proxistore.errors import CollectionNotFound, StatusUnanswered
from proxistore.fileio import default_filesystem
from proxistore.status import STATUS_DIR, StatusResponder, ask

FS = default_filesystem()


def test_the_open_database_answers_with_its_live_memtable(tmp_path):
    with proxistore.open(tmp_path / "d") as db:
        db.create_collection("v", dim=4).insert(["a", "b", "c"], np.eye(3, 4, dtype=np.float32))
        live = ask(FS, str(tmp_path / "d"), {"what": "why", "collection": "v"}, timeout=5)
        assert live["pid"] == os.getpid()
        assert live["result"]["stats"]["collections"]["v"]["memtable"]["rows"] == 3
        size = next(r for r in live["result"]["why"] if r["key"] == "memory_flush_size_bytes")
        assert size["measured"] == db.stats()["collections"]["v"]["memtable"]["bytes"]


def test_a_paused_database_still_answers_and_says_it_is_paused(tmp_path):
    with proxistore.open(tmp_path / "d") as db:
        db.maintenance.pause(True)
        live = ask(FS, str(tmp_path / "d"), {"what": "stats"}, timeout=5)
        assert live["result"]["stats"]["maintenance"]["paused"] is True


def test_an_unknown_collection_comes_back_as_collection_not_found(tmp_path):
    with proxistore.open(tmp_path / "d") as db:
        db.create_collection("v", dim=4)
        with pytest.raises(CollectionNotFound, match=r"no collection named 'w'.*collections: \['v'\]"):
            ask(FS, str(tmp_path / "d"), {"what": "why", "collection": "w"}, timeout=5)
        assert ask(FS, str(tmp_path / "d"), {"what": "stats"}, timeout=5)["result"]["stats"]["collections"]


def test_without_an_answer_the_asker_raises_and_takes_its_request_back(tmp_path):
    nobody = tmp_path / "d"
    nobody.mkdir()
    started = time.monotonic()
    with pytest.raises(StatusUnanswered, match="did not answer a status request within 0.3 s"):
        ask(FS, str(nobody), {"what": "stats"}, timeout=0.3)
    assert time.monotonic() - started < 3
    assert os.listdir(nobody / STATUS_DIR) == []


def test_a_malformed_request_gets_an_error_answer_and_the_scheduler_goes_on(tmp_path):
    d = tmp_path / "d"
    with proxistore.open(d):
        (d / STATUS_DIR).mkdir()
        token = f"{int(time.time() * 1000)}-1-bad"
        (d / STATUS_DIR / f"{token}.ask").write_text("{not json")
        answer = d / STATUS_DIR / f"{token}.answer"
        deadline = time.monotonic() + 5
        while not answer.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        reply = json.loads(answer.read_text())
        assert reply["ok"] is False and "bad status request" in reply["message"]
        assert ask(FS, str(d), {"what": "stats"}, timeout=5)["result"]["stats"]["path"] == str(d)


def test_files_nobody_collected_are_removed_after_a_minute(tmp_path):
    status = tmp_path / STATUS_DIR
    status.mkdir()
    old = int((time.time() - 61) * 1000)
    new = int(time.time() * 1000)
    for name in (f"{old}-1-a.answer", f"{old}-1-b.ask.tmp", f"{new}-1-c.answer"):
        (status / name).write_text("{}")
    responder = StatusResponder(FS, str(tmp_path), lambda request: {})
    assert responder.poll() == 0
    assert sorted(os.listdir(status)) == [f"{new}-1-c.answer"]


def test_a_request_withdrawn_while_the_responder_looks_is_skipped(tmp_path):
    status = tmp_path / STATUS_DIR
    status.mkdir()
    (status / f"{int(time.time() * 1000)}-1-gone.ask").write_text('{"what": "stats"}')

    def withdrawn_first(request):   # not reached: the request vanished before it was read
        raise AssertionError("answered a withdrawn request")

    class Withdrawing(type(FS)):
        def read_bytes(self, path):
            os.unlink(path)          # the asker gave up between the listing and the read
            return super().read_bytes(path)

    assert StatusResponder(Withdrawing(), str(tmp_path), withdrawn_first).poll() == 0
    assert os.listdir(status) == []
