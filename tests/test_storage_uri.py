"""The storage root as a pyarrow filesystem URI: viper on a real S3-compatible server (moto).

moto's server is a real HTTP endpoint speaking the S3 protocol; pyarrow's S3 client talks to it
exactly as it would to AWS (dummy credentials from the environment). The WAL and the catalog stay
in the local data directory; segments, deletion vectors, indexes and versioned manifests go to
``s3://<bucket>/<prefix>``. Also here: the local forms of the root (a path, a ``file://`` URI),
bad URIs as config errors, and the ArrowFileSystem's write-on-close contract.
"""
from __future__ import annotations

import logging
import os
import socket
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import proxistore
from proxistore.arrowfs import ArrowFileSystem
from proxistore.contracts import CollectionInfo
from proxistore.errors import ConfigError, StorageError
from proxistore.plugins.viper import ViperEngine
from proxistore.plugins.viper.manifest import load_manifest, versioned_name
from proxistore.testing.storage import StorageEngineContract, make_rows

from conftest import ids_for, random_vectors

moto_server = pytest.importorskip("moto.server", reason="moto[server] (the 'test' extra) runs the S3 endpoint")

BUCKET = "proxistore-test"
DIM = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on a free port with one bucket; dummy credentials in the environment."""
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    endpoint = f"127.0.0.1:{port}"
    pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                      allow_bucket_creation=True).create_dir(BUCKET)
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_uri(s3_endpoint):
    """A fresh prefix of the bucket, as the URI a user would configure."""
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/store?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"


def store_of(uri):
    """The pyarrow filesystem and root path of ``uri`` (what a plain pyarrow user would open)."""
    return pafs.FileSystem.from_uri(uri)


def objects(uri, sub=""):
    fs, root = store_of(uri)
    base = f"{root}/{sub}".rstrip("/")
    infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(os.path.relpath(i.path, base) for i in infos if i.type == pafs.FileType.File)


def config(uri, **viper):
    return {"flush": {"policies": ["manual"]},
            "storage": {"root": uri, "viper": {"indexing_threshold": 150, "index": "flat", **viper}}}


def exact_l2(base_ids, base, queries, k):
    d = ((queries[:, None, :] - base[None, :, :]) ** 2).sum(-1)
    order = np.argsort(d, axis=1)[:, :k]
    return [[base_ids[j] for j in row] for row in order], np.take_along_axis(d, order, axis=1)


def check_search(col, live, queries, k=5):
    ids = sorted(live)
    base = np.stack([live[i] for i in ids])
    want_ids, want_d = exact_l2(ids, base, queries, k)
    got_ids, got_d = col.search_batch(queries, k=k)
    assert [list(r) for r in got_ids] == want_ids
    np.testing.assert_allclose(got_d, want_d, rtol=1e-4, atol=1e-4)


# -- the data path on S3 ---------------------------------------------------------------------------


def test_create_insert_flush_compact_delete_reopen_on_s3(tmp_path, rng, s3_uri):
    data_dir = tmp_path / "db"
    vecs = random_vectors(rng, 600, DIM)
    names = ids_for(600)
    live = dict(zip(names[:500], vecs[:500]))
    queries = random_vectors(rng, 20, DIM)
    with proxistore.open(data_dir, config(s3_uri)) as db:
        col = db.create_collection("docs", dim=DIM, metric="l2")
        for start in range(0, 500, 100):           # five flushed segments on the object store
            col.insert(names[start:start + 100], vecs[start:start + 100],
                       metadata=[{"n": i} for i in range(start, start + 100)])
            db.flush("docs")
        check_search(col, live, queries)
        col.delete(names[:40])                     # deletion vectors, written on the next flush
        for i in names[:40]:
            del live[i]
        db.flush("docs")
        db.compact("docs")                         # merged segment + its flat index on S3
        db.wait_idle()
        st = db.stats()["collections"]["docs"]["storage"]
        assert st["segments"] == 1 and st["indexed_segments"] == 1 and st["rows"] == 460
        check_search(col, live, queries)
        col.insert(names[500:], vecs[500:])        # acknowledged, only in the WAL (local)
        check_search(col, live | dict(zip(names[500:], vecs[500:])), queries)
    live.update(zip(names[500:], vecs[500:]))

    # Nothing of the storage engine is local; the WAL is.
    assert not (data_dir / "storage").exists() and (data_dir / "wal").is_dir()
    files = objects(s3_uri, "docs")
    manifests = [f for f in files if f.startswith("MANIFEST")]
    assert len(manifests) == 1 and manifests[0].startswith("MANIFEST-")   # older versions removed
    assert any(f.endswith(".flat.faiss") for f in files)

    with proxistore.open(data_dir, config(s3_uri)) as db:
        col = db.collection("docs")
        assert col.count() == 560
        check_search(col, live, queries)           # segments + index from S3, the tail from the WAL
        got = col.get([names[100], names[0], names[550]])
        assert got[1] is None
        np.testing.assert_array_equal(got[0].vector, vecs[100])
        assert got[0].metadata == {"n": 100}
        np.testing.assert_array_equal(got[2].vector, vecs[550])
        st = db.stats()["collections"]["docs"]["storage"]
        assert st["orphans_removed_on_open"] == 0


def test_a_second_data_directory_on_the_same_prefix_is_refused_and_deletes_nothing(tmp_path, rng, s3_uri):
    with proxistore.open(tmp_path / "a", config(s3_uri)) as db:
        db.create_collection("docs", dim=DIM, metric="l2").insert(ids_for(30), random_vectors(rng, 30, DIM))
        db.flush()
    before = objects(s3_uri)
    assert ".proxistore-database.json" in before
    with pytest.raises(ConfigError, match="another database") as e:
        proxistore.open(tmp_path / "b", config(s3_uri))
    assert e.value.key == "storage.root" and str(tmp_path / "a") in str(e.value)
    assert objects(s3_uri) == before and not (tmp_path / "b").exists()
    with proxistore.open(tmp_path / "a", config(s3_uri)) as db:
        assert db.collection("docs").count() == 30


def test_storage_repair_sets_a_damaged_segment_aside_on_the_object_store(tmp_path, rng, s3_uri):
    """The repair's moves are copies and deletes there, its commit a new manifest version."""
    from test_cli import cli_json

    data_dir = tmp_path / "db"
    vecs = random_vectors(rng, 200, DIM)
    with proxistore.open(data_dir, config(s3_uri)) as db:
        col = db.create_collection("docs", dim=DIM, metric="l2")
        for start in (0, 100):
            col.insert(ids_for(200)[start:start + 100], vecs[start:start + 100])
            db.flush("docs")
    fs, root = store_of(s3_uri)
    segment = sorted(f for f in objects(s3_uri, "docs") if f.endswith(".parquet"))[1]
    path = f"{root}/docs/{segment}"
    with fs.open_input_stream(path) as f:
        raw = bytearray(f.read())
    raw[len(raw) // 3] ^= 0x10                     # a bit in the vector column
    with fs.open_output_stream(path) as f:
        f.write(bytes(raw))

    result = cli_json("storage", "repair", data_dir, env=dict(os.environ))   # with the S3 credentials
    (item,) = result["set_aside"]
    assert item["lost_rows"] == 100 and sorted(item["lost_ids"]) == sorted(ids_for(200)[100:])
    assert result["verified_after"] is True
    with proxistore.open(data_dir, config(s3_uri)) as db:
        col = db.collection("docs")
        assert col.count() == 100
        check_search(col, dict(zip(ids_for(200)[:100], vecs[:100])), random_vectors(rng, 5, DIM))
    kept = [f for f in objects(s3_uri, "docs") if f.startswith("damaged/")]
    assert sorted(os.path.basename(f) for f in kept) == ["REPAIR.json", segment]   # an open leaves them


def test_hnswlib_index_is_loaded_back_from_the_object_store(tmp_path, rng, s3_uri):
    """hnswlib loads only from a local file: from an object store it goes through a scratch copy."""
    vecs = random_vectors(rng, 300, DIM)
    names = ids_for(300)
    cfg = config(s3_uri, index="hnsw", index_backend="hnswlib", hnsw_ef_search=300)
    with proxistore.open(tmp_path / "db", cfg) as db:
        col = db.create_collection("h", dim=DIM, metric="l2")
        col.insert(names, vecs)
        db.flush()
        db.compact()
        db.wait_idle()
    assert any(f.endswith(".hnsw.hnswlib") for f in objects(s3_uri, "h"))
    with proxistore.open(tmp_path / "db", cfg) as db:
        col = db.collection("h")
        ids, _ = col.search_batch(vecs[:50], k=1)
        assert [r[0] for r in ids] == names[:50]
        st = db.stats()["collections"]["h"]["storage"]
        assert st["indexed_segments"] == 1 and st["searches"]


def test_plain_pyarrow_reads_the_segments_from_the_store(tmp_path, rng, s3_uri):
    vecs = random_vectors(rng, 250, DIM)
    names = ids_for(250)
    with proxistore.open(tmp_path / "db", config(s3_uri)) as db:
        col = db.create_collection("docs", dim=DIM, metric="l2")
        col.insert(names[:120], vecs[:120], metadata=[{"tag": f"t{i % 3}"} for i in range(120)])
        db.flush()
        col.insert(names[120:], vecs[120:])
        db.flush()
        db.wait_idle()
    fs, root = store_of(s3_uri)
    segments = [f for f in objects(s3_uri, "docs") if f.endswith(".parquet")]
    assert segments
    table = pa.concat_tables([pq.read_table(f"{root}/docs/{f}", filesystem=fs) for f in segments],
                             promote_options="permissive")
    order = np.argsort(np.asarray(table.column("id").to_pylist(), dtype=object))
    got_ids = [table.column("id")[int(i)].as_py() for i in order]
    got_vecs = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)[order]
    want = sorted(range(250), key=lambda i: names[i])
    assert got_ids == [names[i] for i in want]
    np.testing.assert_array_equal(got_vecs, vecs[want])
    tags = dict(zip(table.column("id").to_pylist(), table.column("tag").to_pylist()))
    assert tags[names[4]] == "t1" and tags[names[200]] is None


# -- crashes and orphans ---------------------------------------------------------------------------


def test_files_of_an_uncommitted_flush_are_orphans_removed_on_open(tmp_path, rng, s3_uri):
    """A crash between writing a segment and committing the manifest leaves objects no manifest
    names (and, after a crash between a commit and the removal of the older manifest, that one):
    open removes them and the collection is the committed state."""
    vecs = random_vectors(rng, 100, DIM)
    names = ids_for(100)
    with proxistore.open(tmp_path / "db", config(s3_uri)) as db:
        col = db.create_collection("docs", dim=DIM, metric="l2")
        col.insert(names, vecs)
        db.flush()
    fs, root = store_of(s3_uri)
    d = f"{root}/docs"
    committed = load_manifest(ArrowFileSystem(fs), d)
    segment = f"{d}/{committed.segments[0].file}"
    with fs.open_input_stream(segment) as src, fs.open_output_stream(f"{d}/seg-99999999.parquet") as dst:
        dst.write(src.readall())                                 # an uncommitted flush's segment
    stale = versioned_name(committed.generation - 1)             # a superseded manifest not yet removed
    with fs.open_output_stream(f"{d}/{stale}") as dst:
        dst.write(b'{"stale": true}')
    with proxistore.open(tmp_path / "db", config(s3_uri)) as db:
        col = db.collection("docs")
        st = db.stats()["collections"]["docs"]["storage"]
        assert st["orphans_removed_on_open"] == 2
        assert col.count() == 100
        check_search(col, dict(zip(names, vecs)), vecs[:5])
    left = objects(s3_uri, "docs")
    assert "seg-99999999.parquet" not in left and stale not in left


class ManifestPutFails(ArrowFileSystem):
    """The real S3 store, except that writing a manifest object fails (the process dies, or the
    network goes, between the segment's PUT and the commit's)."""

    def _close(self, handle):
        if os.path.basename(handle.path).startswith("MANIFEST-") and not handle.raw.closed:
            handle.raw.close()
            raise OSError(5, "connection reset (injected)", handle.path)
        super()._close(handle)


def test_a_failed_manifest_put_commits_nothing_and_its_segment_is_an_orphan(rng, s3_uri):
    fs, root = store_of(s3_uri)
    engine = ViperEngine({}, fs=ArrowFileSystem(fs), root=root)
    info = CollectionInfo(name="c", dim=DIM, metric="l2")
    engine.create_collection(info)
    store = engine.open_collection(info, {})
    store.write_segment(make_rows(ids_for(10), random_vectors(rng, 10, DIM), 1))
    store.close()
    failing = ViperEngine({}, fs=ManifestPutFails(fs), root=root)
    store = failing.open_collection(info, {})
    with pytest.raises(StorageError, match="manifest commit failed"):
        store.write_segment(make_rows(ids_for(5, "new"), random_vectors(rng, 5, DIM), 11))
    assert store.flushed_lsn == 10
    assert len([f for f in objects(s3_uri, "c") if f.endswith(".parquet")]) == 2   # the uncommitted one
    store = ViperEngine({}, fs=ArrowFileSystem(fs), root=root).open_collection(info, {})
    assert store.flushed_lsn == 10 and store.count() == 10
    assert [o for o in store.orphans_removed if o.endswith(".parquet")]
    assert len([f for f in objects(s3_uri, "c") if f.endswith(".parquet")]) == 1


class ManifestPutLandsThenFails(ArrowFileSystem):
    """The manifest's PUT reaches the store, then the client sees an error (a timeout): the
    commit failed as far as the caller knows, yet its object is there."""

    failing = True

    def _close(self, handle):
        landing = self.failing and os.path.basename(handle.path).startswith("MANIFEST-")
        super()._close(handle)
        if landing:
            raise OSError(110, "timed out waiting for the response (injected)", handle.path)


def test_a_retried_commit_goes_above_a_manifest_that_landed_unacknowledged(rng, s3_uri):
    fs, root = store_of(s3_uri)
    afs = ManifestPutLandsThenFails(fs)
    afs.failing = False
    engine = ViperEngine({}, fs=afs, root=root)
    info = CollectionInfo(name="c", dim=DIM, metric="l2")
    engine.create_collection(info)
    store = engine.open_collection(info, {})
    store.write_segment(make_rows(ids_for(10), random_vectors(rng, 10, DIM), 1))
    afs.failing = True
    rows = make_rows(ids_for(5, "new"), random_vectors(rng, 5, DIM), 11)
    with pytest.raises(StorageError, match="manifest commit failed"):
        store.write_segment(rows)
    afs.failing = False
    store.write_segment(rows)                     # the flush is retried: a new, higher generation
    assert store.flushed_lsn == 15 and store.count() == 15
    manifests = [f for f in objects(s3_uri, "c") if f.startswith("MANIFEST")]
    assert manifests == [versioned_name(3)]       # 0 create, 1 first flush, 2 landed, 3 the retry
    store = ViperEngine({}, fs=ArrowFileSystem(fs), root=root).open_collection(info, {})
    assert store.flushed_lsn == 15 and store.count() == 15 and len(store.orphans_removed) == 1


def test_a_newest_manifest_that_does_not_parse_is_an_error_not_a_silent_fall_back(tmp_path, rng, s3_uri):
    vecs = random_vectors(rng, 50, DIM)
    with proxistore.open(tmp_path / "db", config(s3_uri)) as db:
        db.create_collection("docs", dim=DIM, metric="l2").insert(ids_for(50), vecs)
        db.flush()
    fs, root = store_of(s3_uri)
    d = f"{root}/docs"
    good = load_manifest(ArrowFileSystem(fs), d)
    with fs.open_output_stream(f"{d}/{versioned_name(good.generation + 1)}") as dst:
        dst.write(b'{"format": 1, "collection": "do')                # damaged: object PUTs are whole
    with pytest.raises(StorageError, match="newest manifest"):
        load_manifest(ArrowFileSystem(fs), d)
    with pytest.raises(StorageError, match="newest manifest"):
        proxistore.open(tmp_path / "db", config(s3_uri))
    fs.delete_file(f"{d}/{versioned_name(good.generation + 1)}")    # the operator accepts the loss
    assert load_manifest(ArrowFileSystem(fs), d) == good


def test_a_failed_writer_publishes_no_object(s3_uri):
    fs, root = store_of(s3_uri)
    afs = ArrowFileSystem(fs)
    afs.makedirs(root)
    with pytest.raises(RuntimeError):
        with afs.open(f"{root}/half", "wb") as f:
            f.write(b"partial")
            raise RuntimeError("writer failed")
    assert not afs.exists(f"{root}/half")
    with afs.open(f"{root}/whole", "wb") as f:
        f.write(b"abc")
        f.fsync()
        assert not afs.exists(f"{root}/whole")                  # durable (and visible) on close
    assert afs.read_bytes(f"{root}/whole") == b"abc" and afs.size(f"{root}/whole") == 3
    with afs.open(f"{root}/whole", "rb") as f:
        assert f.read() == b"abc"
    assert afs.listdir(root) == ["whole"]
    afs.unlink(f"{root}/whole")
    with pytest.raises(FileNotFoundError):
        afs.unlink(f"{root}/whole")
    with pytest.raises(ValueError, match="not supported"):
        afs.open(f"{root}/whole", "ab")


# -- configuration ---------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["nosuchscheme://bucket/prefix", "s3:/no-bucket", "s3://",
                                 "s3://bucket/prefix?no_such_option=1", "s3://b u/p"])
def test_a_bad_storage_uri_is_a_config_error_and_creates_nothing(tmp_path, uri):
    with pytest.raises(ConfigError) as e:
        proxistore.open(tmp_path / "db", {"storage": {"root": uri}})
    assert e.value.key == "storage.root" and repr(uri) in str(e.value)
    assert not (tmp_path / "db").exists()


def test_a_non_string_root_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="storage.root"):
        proxistore.open(tmp_path / "db", {"storage": {"root": 3}})


@pytest.mark.parametrize("form", ["relative", "absolute", "file-uri"])
def test_a_local_root_outside_the_data_directory(tmp_path, rng, form):
    target = tmp_path / "elsewhere" / "storage"
    root = {"relative": "../elsewhere/storage", "absolute": str(target), "file-uri": target.as_uri()}[form]
    cfg = {"storage": {"root": root}}
    vecs = random_vectors(rng, 30, DIM)
    with proxistore.open(tmp_path / "db", cfg) as db:
        db.create_collection("docs", dim=DIM, metric="l2").insert(ids_for(30), vecs)
        db.flush()
    assert (target / "docs" / "MANIFEST.json").is_file()          # local: the renamed manifest
    assert not (tmp_path / "db" / "storage").exists()
    with proxistore.open(tmp_path / "db", cfg) as db:
        assert db.collection("docs").count() == 30


def test_an_unreadable_object_store_is_a_storage_error_not_silence(tmp_path, s3_endpoint):
    uri = f"s3://no-such-bucket/p?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    with pytest.raises(StorageError, match="no-such-bucket"):
        with proxistore.open(tmp_path / "db", {"storage": {"root": uri}}) as db:
            db.create_collection("docs", dim=DIM, metric="l2")


# -- the shipped storage-engine contract, on S3 ------------------------------------------------------


class TestViperContractOnS3(StorageEngineContract):
    """Every behavioural check of the conformance suite, with viper's root on the S3 server."""

    engine_factory = ViperEngine
    config = {"indexing_threshold": 32, "filter_exact_max_rows": 8, "compaction_base_rows": 16}

    @pytest.fixture
    def root(self, s3_uri):
        self._pyarrow_fs, path = store_of(s3_uri)
        return path

    def make_filesystem(self):
        return ArrowFileSystem(self._pyarrow_fs)
