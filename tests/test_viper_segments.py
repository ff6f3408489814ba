"""Viper segments: Parquet files any reader understands, typed metadata columns, write results."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proxistore.errors import StorageError
from proxistore.plugins.viper import parquet
from proxistore.plugins.viper.parquet import column_for_key

from test_viper_helpers import collection_dir, ids, make_rows, open_store, vectors


def segment_files(root):
    manifest = json.loads(open(os.path.join(collection_dir(root), "MANIFEST.json")).read())
    return [os.path.join(collection_dir(root), s["file"]) for s in manifest["segments"]]


def test_segments_read_with_plain_pyarrow_give_back_the_same_rows(tmp_path):
    engine, store = open_store(tmp_path, auto_compaction=False)
    v = vectors(30)
    meta = [{"module": "json" if i % 2 else "re", "n": i} for i in range(30)]
    store.write_segment(make_rows(ids(20), v[:20], 1, metadata=meta[:20]))
    store.write_segment(make_rows(ids(10, 20), v[20:], 21, metadata=[{**m, "extra": 1.5} for m in meta[20:]]))
    files = segment_files(tmp_path)
    assert len(files) == 2 and all(f.endswith(".parquet") for f in files)
    tables = [pq.read_table(f) for f in files]
    schema = pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
    table = pa.concat_tables(tables, promote_options="permissive")
    assert schema.field("vector").type == pa.list_(pa.float32(), 8)
    assert schema.field("id").type == pa.string() and schema.field("lsn").type == pa.int64()
    got = table.to_pylist()
    stored = store.get(ids(30))
    assert len(got) == 30
    for row in got:
        rec = stored[row["id"]]
        assert row["lsn"] == rec.lsn
        assert np.array_equal(np.asarray(row["vector"], dtype=np.float32), rec.vector)
        assert {k: v for k, v in row.items() if k not in ("id", "vector", "lsn") and v is not None} == rec.metadata


def test_new_metadata_keys_become_new_nullable_columns(tmp_path):
    engine, store = open_store(tmp_path, auto_compaction=False)
    store.write_segment(make_rows(["a"], vectors(1), 1, metadata=[{"x": 1}]))
    store.write_segment(make_rows(["b", "c"], vectors(2), 2, metadata=[{"x": 2, "y": "new"}, None]))
    first, second = (pq.read_schema(f) for f in segment_files(tmp_path))
    assert "y" not in first.names and second.field("y").type == pa.string()
    assert second.field("y").nullable and second.field("x").type == pa.int64()
    assert store.get(["c"])["c"].metadata is None
    assert store.get(["b"])["b"].metadata == {"x": 2, "y": "new"}


def test_int_and_float_values_of_one_key_unify_to_float(tmp_path):
    engine, store = open_store(tmp_path, auto_compaction=False)
    store.write_segment(make_rows(["a"], vectors(1), 1, metadata=[{"x": 1}]))
    assert store.metadata_types() == {"x": "int"}
    store.write_segment(make_rows(["b"], vectors(1), 2, metadata=[{"x": 2.5, "flag": True}]))
    assert store.metadata_types() == {"x": "float", "flag": "bool"}
    store.compact()
    (merged,) = segment_files(tmp_path)
    assert pq.read_schema(merged).field("x").type == pa.float64()
    assert store.get(["a"])["a"].metadata == {"x": 1.0}


def test_metadata_keys_named_like_reserved_columns_round_trip(tmp_path):
    engine, store = open_store(tmp_path)
    meta = {"id": "user-id", "lsn": 7, "vector": "v", "meta:id": "escaped"}
    store.write_segment(make_rows(["a"], vectors(1), 1, metadata=[meta]))
    (path,) = segment_files(tmp_path)
    names = pq.read_schema(path).names
    assert names[:3] == ["id", "vector", "lsn"] and column_for_key("id") in names
    assert store.get(["a"])["a"].metadata == meta
    assert pq.read_table(path).column("id").to_pylist() == ["a"]


def test_write_segment_reports_rows_bytes_and_phase_timings(tmp_path):
    engine, store = open_store(tmp_path)
    result = store.write_segment(make_rows(ids(50), vectors(50), 1))
    assert result.rows == 50 and result.segment.startswith("seg-")
    assert result.bytes == os.path.getsize(segment_files(tmp_path)[0])
    assert {"encode", "write", "deletion_vectors", "fsync_dir", "manifest"} <= set(result.phases)
    assert all(s >= 0 for s in result.phases.values())


def test_rows_at_or_below_flushed_lsn_are_refused(tmp_path):
    engine, store = open_store(tmp_path)
    store.write_segment(make_rows(ids(5), vectors(5), 1))
    with pytest.raises(StorageError, match="flushed_lsn"):
        store.write_segment(make_rows(["z"], vectors(1), 5))
    assert store.count() == 5 and store.flushed_lsn == 5


def test_duplicate_ids_and_batch_tombstones_keep_one_newest_row(tmp_path):
    engine, store = open_store(tmp_path)
    v = vectors(3)
    rows = make_rows(["a", "a", "b"], v, 1, deleted=["b"])     # b deleted after it was written
    store.write_segment(rows)
    assert store.count() == 1
    got = store.get(["a", "b"])
    assert set(got) == {"a"} and got["a"].lsn == 2
    assert np.array_equal(got["a"].vector, v[1])


def test_a_segment_larger_than_the_encoding_estimate_is_still_encoded_whole(monkeypatch):
    rng = np.random.default_rng(5)
    table = parquet.table_from_rows([f"r{i}" for i in range(300)], rng.standard_normal((300, 8)).astype(np.float32),
                                    np.arange(300), [{"text": "x" * (i % 50)} for i in range(300)], 8)
    grown = parquet.encode(table)                      # small: a growing buffer
    monkeypatch.setattr(parquet, "_PRESIZE_FROM_BYTES", 0)
    sized = parquet.encode(table)                      # into a buffer sized from the table
    assert sized.size == grown.size < parquet._encoded_size_bound(table)
    monkeypatch.setattr(parquet, "_encoded_size_bound", lambda t: 64)     # far too small: falls back
    fallen_back = parquet.encode(table)
    for buf in (grown, sized, fallen_back):
        assert pq.read_table(pa.BufferReader(buf)).equals(table)
    assert fallen_back.size == grown.size


def test_a_flipped_bit_in_a_segment_file_is_a_storage_error_not_a_wrong_row(tmp_path):
    """Every page carries a CRC32 that is checked on read. Without one, most single-bit flips
    of a segment file read back as a different vector, id or LSN."""
    engine, store = open_store(tmp_path)
    v = vectors(200)
    store.write_segment(make_rows(ids(200), v, 1))
    [name] = [f for f in os.listdir(collection_dir(tmp_path)) if f.endswith(".parquet")]
    path = os.path.join(collection_dir(tmp_path), name)
    good = open(path, "rb").read()
    original = pq.read_table(path)
    silently_different = 0
    tried = range(4, len(good) - 8, max(1, len(good) // 300))
    for offset in tried:
        damaged = bytearray(good)
        damaged[offset] ^= 0x10
        with open(path, "wb") as f:
            f.write(bytes(damaged))
        try:
            ids_, lsns, meta = parquet.read_columns(path)
            vecs = parquet.read_vectors(path, 8)
        except StorageError:
            continue
        if (list(ids_) != original.column("id").to_pylist() or list(lsns) != original.column("lsn").to_pylist()
                or not np.array_equal(vecs, v)):
            silently_different += 1
    assert len(tried) >= 250 and silently_different == 0
