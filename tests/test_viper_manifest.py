"""Viper durability: the manifest commit protocol, deletion vectors, orphans, failed writes."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from proxistore.contracts import CollectionInfo
from proxistore.errors import CollectionExists, ConfigError, StorageError
from proxistore.plugins.viper import ViperEngine

from test_viper_helpers import (FailingFileSystem, RecordingFileSystem, collection_dir, ids, make_rows,
                                open_store, reopen, vectors)


def manifest_of(root):
    with open(os.path.join(collection_dir(root), "MANIFEST.json")) as f:
        return json.load(f)


def test_create_collection_durably_writes_an_empty_manifest(tmp_path):
    fs = RecordingFileSystem()
    engine, store = open_store(tmp_path / "root", fs=fs)
    doc = manifest_of(tmp_path / "root")
    assert doc["flushed_lsn"] == 0 and doc["segments"] == [] and doc["dim"] == 8
    d = os.path.abspath(collection_dir(tmp_path / "root"))
    manifest = os.path.join(d, "MANIFEST.json")
    assert ("fsync_dir", os.path.dirname(d)) in fs.ops           # the new directory's entry
    assert fs.ops.index(("rename", manifest)) < fs.ops.index(("fsync_dir", d), fs.ops.index(("rename", manifest)))
    with pytest.raises(CollectionExists):
        engine.create_collection(CollectionInfo("c", 8, "l2"))


def test_every_file_is_fsynced_and_its_entry_made_durable_before_the_manifest_references_it(tmp_path):
    fs = RecordingFileSystem()
    engine, store = open_store(tmp_path, fs=fs, indexing_threshold=40, compaction_min_segments=2,
                               compaction_base_rows=16)
    v = vectors(200)
    for i in range(5):
        store.write_segment(make_rows(ids(40, 40 * i), v[40 * i:40 * (i + 1)], 40 * i + 1,
                                      deleted=[f"id{i}"] if i else ()))
        store.maintain()
    store.write_segment(make_rows(ids(3), v[:3], 201, deleted=["id100"]))
    d = os.path.abspath(collection_dir(tmp_path))
    manifest = os.path.join(d, "MANIFEST.json")
    commits = [i for i, op in enumerate(fs.ops) if op == ("rename", manifest)]
    assert len(commits) >= 6
    assert len(fs.manifests) == len(commits)             # one temp file per commit
    checked = 0
    for n, (commit, content) in enumerate(zip(commits, fs.manifests)):
        doc = json.loads(content)
        referenced = [os.path.join(d, f) for s in doc["segments"]
                      for f in [s["file"], s["deletes_file"], (s["index"] or {}).get("file")] if f]
        for path in referenced:
            writes = [i for i, op in enumerate(fs.ops[:commit]) if op == ("open_write", path)]
            assert writes, f"{path} was not written through the FileSystem seam"
            fsyncs = [i for i, op in enumerate(fs.ops[:commit]) if op == ("fsync", path) and i > writes[-1]]
            assert fsyncs, f"{path} not fsynced before manifest commit {n}"
            dir_syncs = [i for i, op in enumerate(fs.ops[:commit]) if op == ("fsync_dir", d) and i > fsyncs[-1]]
            assert dir_syncs, f"directory not fsynced after {path} and before manifest commit {n}"
            checked += 1
    assert checked > 10
    tmp = manifest + ".tmp"
    for commit in commits:   # the manifest itself: temp written, fsynced, renamed, dir fsynced
        before = fs.ops[:commit]
        assert ("fsync", tmp) in before and fs.ops[commit + 1] == ("fsync_dir", d)
    # nothing in the directory was created behind the seam's back
    written = {os.path.basename(p) for op, p in fs.ops if op in ("open_write", "rename")}
    assert set(os.listdir(d)) <= written


def test_deletion_vectors_persist_across_reopen(tmp_path):
    engine, store = open_store(tmp_path, auto_compaction=False)
    v = vectors(50)
    store.write_segment(make_rows(ids(50), v, 1))
    store.write_segment(make_rows(["id3"], v[:1], 51, deleted=["id7", "id9"]))
    doc = manifest_of(tmp_path)
    first = doc["segments"][0]
    assert first["deleted"] == 3 and first["deletes_file"].endswith(".del")
    engine, store = reopen(tmp_path, auto_compaction=False)
    assert store.count() == 48 and store.existing(["id3", "id7", "id9"]) == {"id3"}
    assert store.get(["id3"])["id3"].lsn == 51
    hits = store.search(v[[7, 9]], 50)
    assert not ({"id7", "id9"} & set(hits.ids.ravel()))


def test_a_corrupt_deletion_vector_is_a_storage_error_naming_the_file(tmp_path):
    engine, store = open_store(tmp_path)
    store.write_segment(make_rows(ids(10), vectors(10), 1))
    store.write_segment(make_rows([], np.zeros((0, 8)), 11, deleted=["id1"]))
    dfile = manifest_of(tmp_path)["segments"][0]["deletes_file"]
    path = os.path.join(collection_dir(tmp_path), dfile)
    data = bytearray(open(path, "rb").read())
    data[-6] ^= 0xFF
    open(path, "wb").write(bytes(data))
    with pytest.raises(StorageError, match=dfile):
        reopen(tmp_path)


def test_an_unreadable_manifest_is_a_storage_error(tmp_path):
    engine, store = open_store(tmp_path)
    with open(os.path.join(collection_dir(tmp_path), "MANIFEST.json"), "wb") as f:
        f.write(b"{not json")
    with pytest.raises(StorageError, match="MANIFEST.json"):
        reopen(tmp_path)


def test_a_collection_opened_with_another_dimension_is_refused(tmp_path):
    open_store(tmp_path, dim=8)
    with pytest.raises(StorageError, match="dim"):
        reopen(tmp_path, dim=16)


def test_orphans_of_a_crashed_flush_are_removed_on_open(tmp_path):
    engine, store = open_store(tmp_path)
    v = vectors(20)
    store.write_segment(make_rows(ids(10), v[:10], 1))
    failing = FailingFileSystem(lambda op, name: op == "rename" and name == "MANIFEST.json")
    engine2, crashed = open_store(tmp_path, fs=failing, create=False)
    with pytest.raises(StorageError, match="manifest commit failed"):
        crashed.write_segment(make_rows(ids(10, 10), v[10:], 11, deleted=["id0"]))
    d = collection_dir(tmp_path)
    left = set(os.listdir(d))
    assert any(n.endswith(".parquet") for n in left - {manifest_of(tmp_path)["segments"][0]["file"]})
    assert crashed.count() == 10 and crashed.flushed_lsn == 10     # nothing half-applied in memory
    engine, store = reopen(tmp_path)
    assert set(os.listdir(d)) == {"MANIFEST.json", manifest_of(tmp_path)["segments"][0]["file"]}
    assert store.count() == 10 and store.flushed_lsn == 10 and store.existing(["id0"]) == {"id0"}
    assert store.stats()["orphans_removed_on_open"] >= 2


def test_a_failed_segment_write_is_raised_and_the_flush_can_be_retried(tmp_path):
    attempts = {"n": 0}

    def fail_first_parquet(op, name):
        if op == "open_write" and name.endswith(".parquet") and attempts["n"] == 0:
            attempts["n"] += 1
            return True
        return False

    engine, store = open_store(tmp_path, fs=FailingFileSystem(fail_first_parquet))
    rows = make_rows(ids(5), vectors(5), 1)
    with pytest.raises(StorageError, match="No space left"):
        store.write_segment(rows)
    assert store.flushed_lsn == 0 and store.count() == 0
    store.write_segment(rows)
    assert store.flushed_lsn == 5 and store.count() == 5


def test_drop_collection_removes_its_directory(tmp_path):
    engine, store = open_store(tmp_path)
    store.write_segment(make_rows(ids(3), vectors(3), 1))
    engine.drop_collection("c")
    assert not os.path.exists(collection_dir(tmp_path))
    assert engine.list_collections() == []


@pytest.mark.parametrize("config, key", [
    ({"index": "ivf", "index_backend": "hnswlib"}, "index_backend"),
    ({"hnsw_mm": 3}, "hnsw_mm"),
    ({"index": "lsh"}, "index"),
    ({"compaction_min_segments": 1}, "compaction_min_segments"),
    ({"compaction_deleted_fraction": 1.5}, "compaction_deleted_fraction"),
])
def test_bad_engine_config_is_a_config_error_naming_the_key(tmp_path, config, key):
    with pytest.raises(ConfigError, match=key):
        ViperEngine(config, fs=RecordingFileSystem(), root=str(tmp_path))


def test_per_collection_overrides_are_validated_at_open(tmp_path):
    engine, store = open_store(tmp_path)
    with pytest.raises(ConfigError, match="index_backend"):
        engine.open_collection(CollectionInfo("c", 8, "l2"), {"index": "flat", "index_backend": "hnswlib"})


def test_manifest_bytes_round_trip_and_a_changed_entry_is_encoded_anew():
    from dataclasses import replace

    from proxistore.plugins.viper.manifest import IndexRef, Manifest, SegmentEntry
    a = SegmentEntry(name="seg-1", file="seg-1.parquet", rows=10, bytes=100, min_lsn=1, max_lsn=10)
    b = SegmentEntry(name="seg-2", file="seg-2.parquet", rows=5, bytes=50, min_lsn=11, max_lsn=15,
                     index=IndexRef("seg-2.i", "hnsw", "faiss", {"m": 16}, 7, 9))
    m = Manifest("c", 8, "l2", flushed_lsn=15, generation=3, segments=(a, b))
    assert Manifest.from_bytes(m.to_bytes(), "test") == m
    # entries encode their line once; a commit that changes a segment makes a new entry,
    # whose line must say the change
    m.to_bytes()
    changed = replace(a, deleted=4, deletes_file="seg-1.del", deletes_bytes=3)
    m2 = m.with_segments([changed, b])
    back = Manifest.from_bytes(m2.to_bytes(), "test")
    assert back.segments[0].deleted == 4 and back.segments[0].deletes_file == "seg-1.del"
    assert back == m2 and json.loads(m2.to_bytes())["generation"] == 4


def _manifest_with_two_segments():
    from proxistore.plugins.viper.manifest import IndexRef, Manifest, SegmentEntry
    a = SegmentEntry(name="seg-1", file="seg-1.parquet", rows=10, bytes=100, min_lsn=1, max_lsn=10)
    b = SegmentEntry(name="seg-2", file="seg-2.parquet", rows=5, bytes=50, min_lsn=11, max_lsn=15,
                     index=IndexRef("seg-2.i", "hnsw", "faiss", {"m": 16}, 7, 9))
    return Manifest("c", 8, "l2", flushed_lsn=15, generation=3, segments=(a, b))


def test_any_flipped_bit_in_a_manifest_is_a_storage_error_never_a_different_manifest():
    from proxistore.plugins.viper.manifest import Manifest
    m = _manifest_with_two_segments()
    data = m.to_bytes()
    assert json.loads(data)["crc32"] > 0                # still plain JSON, for any tool
    silently_different = []
    for offset in range(len(data)):
        for bit in (0x01, 0x10):
            damaged = bytearray(data)
            damaged[offset] ^= bit
            try:
                back = Manifest.from_bytes(bytes(damaged), "test")
            except StorageError:
                continue
            if back != m:
                silently_different.append((offset, bit, bytes(damaged[max(0, offset - 10):offset + 10])))
    assert silently_different == []


def test_a_manifest_written_before_checksums_is_still_read():
    from proxistore.plugins.viper.manifest import Manifest
    m = _manifest_with_two_segments()
    doc = json.loads(m.to_bytes())
    del doc["crc32"]
    doc["format"] = 1
    assert Manifest.from_bytes(json.dumps(doc).encode(), "test") == m
    doc["format"] = 2                                     # format 2 without its checksum: damage
    with pytest.raises(StorageError, match="checksum"):
        Manifest.from_bytes(json.dumps(doc).encode(), "test")
