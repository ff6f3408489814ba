"""Whatever bytes a segment holds, the reader answers with batches, a repair, WalCorruption or
WalVersionError, never with another exception, and never with a batch nobody wrote."""
from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxistore.contracts import OP_DELETE, OP_INSERT, OP_UPSERT
from proxistore.errors import WalCorruption, WalVersionError
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.wal_avro import AvroWalStrategy, inspect_wal, verify_wal
from proxistore.testing.wal import assert_batches_equal, make_batch

OPS = (OP_INSERT, OP_UPSERT, OP_DELETE)
WRITTEN = [make_batch(OPS[i % 3], 1 + 3 * i, 3, 4) for i in range(5)]


#: one large record (~260 kB)
BIG = [make_batch(OP_UPSERT, 1, 170, 384)]


def _valid_segment(batches) -> bytes:
    with tempfile.TemporaryDirectory() as root:
        s = AvroWalStrategy({"sync_mode": "none"}, fs=LocalFileSystem(), root=root)
        s.create_collection("c")
        wal = s.open_collection("c")
        list(wal.replay(0))
        for b in batches:
            wal.append(b)
        wal.close()
        with open(os.path.join(root, "c", "wal-0000000001.avro"), "rb") as f:
            return f.read()


VALID = _valid_segment(WRITTEN)
VALID_BIG = _valid_segment(BIG)
PROFILE = settings(max_examples=int(os.environ.get("WAL_HYPOTHESIS_EXAMPLES", "150")),
                   deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def replay_files(files, mode="strict"):
    """Replay a log made of ``files`` (bytes, in order) with the strategy and the tools."""
    with tempfile.TemporaryDirectory() as root:
        d = os.path.join(root, "c")
        os.makedirs(d)
        for i, data in enumerate(files):
            with open(os.path.join(d, f"wal-{i + 1:010d}.avro"), "wb") as f:
                f.write(data)
        for tool in (inspect_wal, verify_wal):
            try:
                tool(root)
            except WalVersionError:
                pass
        s = AvroWalStrategy({"recovery_mode": mode}, fs=LocalFileSystem(), root=root)
        wal = s.open_collection("c")
        try:
            return list(wal.replay(0))
        except (WalCorruption, WalVersionError):
            return None
        finally:
            wal.close()
            s.close()


def assert_only_written(got):
    """Every replayed batch is one that was written, in order, from the first (a prefix)."""
    if got:
        assert_batches_equal(got, WRITTEN[:len(got)])


@PROFILE
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_crash_the_reader(data):
    got = replay_files([data])
    assert not got


@PROFILE
@given(st.binary(max_size=500), st.sampled_from(["strict", "point_in_time"]))
def test_arbitrary_bytes_before_a_valid_segment_never_crash_the_reader(data, mode):
    got = replay_files([data, VALID], mode)
    assert got is None if mode == "strict" else got == []


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, len(VALID) - 1), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, len(VALID)), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, len(VALID) - 1), st.integers(1, 40)),
)


def mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for kind, pos, arg in mutations:
        pos = min(pos, len(buf))
        if kind == "flip" and pos < len(buf):
            buf[pos] ^= arg
        elif kind == "cut":
            del buf[pos:]
        elif kind == "insert":
            buf[pos:pos] = bytes([arg])
        elif kind == "delete":
            del buf[pos:pos + arg]
    return bytes(buf)


@PROFILE
@given(st.lists(mutation, min_size=1, max_size=4), st.sampled_from(["strict", "point_in_time"]),
       st.booleans())
def test_mutated_segments_yield_only_written_batches_or_corruption(mutations, mode, older):
    data = mutate(VALID, mutations)
    files = [data, VALID] if older else [data]
    got = replay_files(files, mode)      # (the second segment repeats the LSNs: skipped)
    if got is not None:
        assert_only_written(got)


@settings(PROFILE, max_examples=max(10, PROFILE.max_examples // 4))
@given(st.lists(st.tuples(st.integers(0, len(VALID_BIG) - 1), st.integers(1, 255)),
                min_size=1, max_size=3))
def test_flipped_bytes_in_a_large_record_yield_it_intact_or_corruption(flips):
    data = bytearray(VALID_BIG)
    for pos, x in flips:
        data[pos] ^= x
    got = replay_files([bytes(data), VALID], "strict")   # not the last segment: no torn tails
    if got is not None:
        assert_batches_equal(got[:1], BIG)
