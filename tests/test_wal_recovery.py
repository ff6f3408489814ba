"""Replay of damaged logs: torn tails are repaired, corruption is refused or set aside."""
from __future__ import annotations

import os
import random
import shutil

import pytest

from proxistore.contracts import OP_DELETE, OP_INSERT, OP_UPSERT
from proxistore.errors import WalCorruption
from proxistore.fileio import LocalFileSystem
from proxistore.plugins.wal_avro import AvroWalStrategy, inspect_wal, verify_wal
from proxistore.plugins.wal_avro.reader import SegmentReader
from proxistore.testing.wal import assert_batches_equal, make_batch

OPS = (OP_INSERT, OP_UPSERT, OP_DELETE)


def write_log(root, batches, **config):
    """Write ``batches`` (each synced) into collection ``c``; returns the segment paths."""
    s = AvroWalStrategy({"sync_mode": "always", **config}, fs=LocalFileSystem(), root=str(root))
    if "c" not in s.list_collections():
        s.create_collection("c")
    wal = s.open_collection("c")
    list(wal.replay(0))
    for b in batches:
        wal.sync(wal.append(b))
    wal.close()
    s.close()
    d = os.path.join(str(root), "c")
    return [os.path.join(d, n) for n in sorted(os.listdir(d))]


def replay(root, **config):
    s = AvroWalStrategy({"sync_mode": "always", **config}, fs=LocalFileSystem(), root=str(root))
    wal = s.open_collection("c")
    try:
        got = list(wal.replay(0))
    finally:
        wal.close()
        s.close()
    return got, wal.recovery


def record_spans(path):
    """``[(offset, end)]`` of every record of a segment, via the reader itself."""
    with open(path, "rb") as f:
        reader = SegmentReader.from_bytes(f.read(), path, last=True)
    spans = [(r.offset, r.end) for r in reader.records()]
    assert reader.stop is None
    return reader.header.end, spans


def batches(count, n=3, dim=4, start=1):
    return [make_batch(OPS[i % 3], start + i * n, n, dim) for i in range(count)]


def set_prefix(path, data, cut):
    """Make ``path`` hold ``data[:cut]``, given that it holds some prefix of ``data`` (rewriting
    only the difference keeps the disk traffic of the many-cuts tests small)."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size > cut:
            f.truncate(cut)
        else:
            f.write(data[size:cut])


def check_cut(root, seg, data, cut, spans, want):
    set_prefix(seg, data, cut)
    got, report = replay(root)
    whole = sum(1 for _, end in spans if end <= cut)
    assert_batches_equal(got, want[:whole])
    good_end = spans[whole - 1][1] if whole else None
    if cut == good_end:
        assert report.torn_tails == []
    else:
        assert len(report.torn_tails) == 1
        torn = report.torn_tails[0]
        assert torn.file == seg and torn.offset == good_end
        assert torn.bytes_dropped == cut - good_end
        assert os.path.getsize(seg) == good_end


def test_torn_tail_is_truncated_and_whole_batches_survive_at_every_offset(tmp_path):
    want = batches(8)
    [seg] = write_log(tmp_path, want)
    data = open(seg, "rb").read()
    header_end, spans = record_spans(seg)
    assert len(spans) == 8 and spans[-1][1] == len(data)
    for cut in range(spans[-2][0], len(data) + 1):      # every byte of the last two records
        check_cut(tmp_path, seg, data, cut, spans, want)


def test_torn_tail_of_large_batches_at_200_random_offsets(tmp_path):
    # 170 x 384-d rows: records of ~260 kB, larger than any read buffer
    want = [make_batch((OP_INSERT, OP_DELETE, OP_UPSERT)[i % 3], 1 + i * 170, 170, 384)
            for i in range(4)]
    [seg] = write_log(tmp_path, want)
    data = open(seg, "rb").read()
    _, spans = record_spans(seg)
    rng = random.Random(7)
    cuts = sorted(rng.sample(range(spans[-2][0], len(data) + 1), 200))
    for cut in cuts:
        check_cut(tmp_path, seg, data, cut, spans, want)


def test_zero_filled_tail_counts_as_torn(tmp_path):
    want = batches(4)
    [seg] = write_log(tmp_path, want)
    size = os.path.getsize(seg)
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)            # a crash that extended the file but lost its data
    got, report = replay(tmp_path)
    assert_batches_equal(got, want)
    assert [(t.offset, t.bytes_dropped) for t in report.torn_tails] == [(size, 4096)]


def test_torn_header_of_a_new_last_segment_removes_it(tmp_path):
    want = batches(4)
    write_log(tmp_path, want[:2])
    segs = write_log(tmp_path, want[2:])                 # reopen: a second segment
    assert len(segs) == 2
    for cut in (0, 3, 20, 200):
        segs = write_log(tmp_path, [])                  # nothing appended: no new segment
        assert len(segs) == 2
        header = open(segs[1], "rb").read()
        new = os.path.join(os.path.dirname(segs[1]), "wal-0000000009.avro")
        with open(new, "wb") as f:
            f.write(header[:cut])                        # crash while creating segment 9
        got, report = replay(tmp_path)
        assert_batches_equal(got, want)
        assert [(t.file, t.offset, t.bytes_dropped) for t in report.torn_tails] == [(new, 0, cut)]
        assert not os.path.exists(new)


def flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x5A]))


def test_flipped_byte_mid_segment_raises_corruption_naming_file_and_offset(tmp_path):
    want = batches(8)
    [seg] = write_log(tmp_path, want)
    _, spans = record_spans(seg)
    start, end = spans[3]
    for pos in (start, start + 1, (start + end) // 2, end - 17, end - 1):
        shutil.copy(seg, seg + ".bak")
        flip(seg, pos)
        with pytest.raises(WalCorruption) as info:
            replay(tmp_path)
        assert info.value.file == seg and info.value.offset == start
        assert seg in str(info.value) and str(start) in str(info.value)
        os.replace(seg + ".bak", seg)


def test_flipped_byte_in_a_large_record_is_corruption_wherever_it_lands(tmp_path):
    want = [make_batch(OP_INSERT, 1 + i * 200, 200, 384) for i in range(3)]
    [seg] = write_log(tmp_path, want)
    _, spans = record_spans(seg)
    start, end = spans[1]
    for pos in (start + 3, start + 12, start + 1000, end - 3000, end - 60, end - 18):
        shutil.copy(seg, seg + ".bak")
        flip(seg, pos)
        with pytest.raises(WalCorruption) as info:
            replay(tmp_path)
        assert (info.value.file, info.value.offset) == (seg, start)
        os.replace(seg + ".bak", seg)
    got, _ = replay(tmp_path)
    assert_batches_equal(got, want)


def test_large_records_have_their_crc_checked_before_they_are_decoded_or_yielded(tmp_path):
    # records of >= 256 KiB have their CRC computed on a helper thread while the previous one is
    # decoded: a damaged one must still be refused as a CRC mismatch, never yielded
    from proxistore.plugins.wal_avro import reader as wal_reader
    want = [make_batch(OP_UPSERT, 1 + i * 200, 200, 384) for i in range(5)]
    [seg] = write_log(tmp_path, want)
    _, spans = record_spans(seg)
    assert all(end - start > wal_reader._PIPELINE_MIN for start, end in spans)
    start, end = spans[2]
    for pos in (start + 12, start + 2000, end - 2000, end - 200, end - 18):
        shutil.copy(seg, seg + ".bak")
        flip(seg, pos)
        with open(seg, "rb") as f:
            reader = SegmentReader.from_bytes(f.read(), seg, last=False)
        assert [r.offset for r in reader.records()] == [s for s, _ in spans[:2]]
        assert (reader.stop.offset, reader.stop.reason) == (start, "CRC mismatch"), pos
        got, report = replay(tmp_path, recovery_mode="point_in_time")
        assert_batches_equal(got, want[:2])
        assert report.set_aside == [seg + ".corrupt"]
        os.replace(seg + ".bak", seg)
        os.unlink(seg + ".corrupt")
    got, _ = replay(tmp_path)
    assert_batches_equal(got, want)


def test_corrupt_last_record_of_an_older_segment_is_corruption_not_torn(tmp_path):
    want = batches(6)
    write_log(tmp_path, want[:3])
    segs = write_log(tmp_path, want[3:])
    _, spans = record_spans(segs[0])
    with open(segs[0], "r+b") as f:
        f.truncate(spans[-1][1] - 5)                    # a short, older segment
    with pytest.raises(WalCorruption) as info:
        replay(tmp_path)
    assert (info.value.file, info.value.offset) == (segs[0], spans[-1][0])


def test_point_in_time_recovery_stops_at_last_good_record_and_sets_the_rest_aside(tmp_path):
    want = batches(9)
    write_log(tmp_path, want[:3])
    write_log(tmp_path, want[3:6])
    segs = write_log(tmp_path, want[6:])
    _, spans = record_spans(segs[1])
    flip(segs[1], spans[1][0] + 6)                       # second record of the middle segment
    sizes = [os.path.getsize(p) for p in segs]
    got, report = replay(tmp_path, recovery_mode="point_in_time")
    assert_batches_equal(got, want[:4])
    assert report.set_aside == [segs[1] + ".corrupt", segs[2] + ".corrupt"]
    assert report.set_aside_bytes == (sizes[1] - spans[1][0]) + sizes[2]
    assert os.path.getsize(segs[1]) == spans[1][0] and not os.path.exists(segs[2])
    assert os.path.getsize(segs[1] + ".corrupt") == sizes[1] - spans[1][0]
    # recovery is durable: a second open is clean, and new appends continue after it
    got, report = replay(tmp_path)
    assert_batches_equal(got, want[:4]) and report.set_aside == []
    more = batches(2, start=want[3].last_lsn + 1)
    write_log(tmp_path, more)
    got, _ = replay(tmp_path)
    assert_batches_equal(got, want[:4] + more)


def test_point_in_time_with_a_bad_header_sets_the_whole_file_aside(tmp_path):
    want = batches(6)
    write_log(tmp_path, want[:3])
    segs = write_log(tmp_path, want[3:])
    flip(segs[0], 1)                                     # the magic of the first segment
    with pytest.raises(WalCorruption) as info:
        replay(tmp_path)
    assert (info.value.file, info.value.offset) == (segs[0], 0)
    got, report = replay(tmp_path, recovery_mode="point_in_time")
    assert got == [] and len(report.set_aside) == 2


def test_verify_reports_first_bad_offset_and_inspect_shows_the_problem(tmp_path):
    want = batches(6)
    [seg] = write_log(tmp_path, want)
    _, spans = record_spans(seg)
    result = verify_wal(str(tmp_path))
    assert result.ok and result.records == 6 and result.rows == 18 and result.segments == 1
    flip(seg, spans[2][0] + 9)
    result = verify_wal(str(tmp_path))
    assert not result.ok
    assert (result.first_bad_file, result.first_bad_offset) == (seg, spans[2][0])
    info = inspect_wal(os.path.join(str(tmp_path), "c"))   # a collection directory works too
    [entry] = info["collections"]["c"]["segments"]
    assert entry["records"] == 2 and entry["problem"]["offset"] == spans[2][0]
    assert entry["problem"]["kind"] == "bad"


def test_verify_lists_a_torn_tail_without_failing_and_does_not_repair_it(tmp_path):
    [seg] = write_log(tmp_path, batches(3))
    size = os.path.getsize(seg)
    with open(seg, "r+b") as f:
        f.truncate(size - 4)
    result = verify_wal(str(tmp_path))
    assert result.ok and result.records == 2 and len(result.torn_tails) == 1
    assert os.path.getsize(seg) == size - 4
