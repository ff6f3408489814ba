"""Freed heap memory goes back to the OS after storage work, so resident memory falls after a
merge or an index build instead of staying at its peak."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import proxistore
from proxistore.heap import can_release

FRAGMENTED_HEAP = textwrap.dedent("""
    import os
    from proxistore.heap import release_free_heap

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    blocks = [bytearray(64 * 1024) for _ in range(3200)]    # ~200 MB of heap, below the mmap threshold
    kept = blocks[::16]                                       # every 16th stays: the heap cannot shrink from the top
    del blocks
    after_free = rss()
    seconds = release_free_heap()
    print(after_free, rss(), seconds, len(kept))
""")


@pytest.mark.skipif(not can_release() or not sys.platform.startswith("linux"),
                    reason="the C library has no malloc_trim (not glibc): release_free_heap does nothing here")
def test_release_free_heap_returns_freed_blocks_to_the_os():
    out = subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True,
                         timeout=60, check=True).stdout.split()
    after_free, after_release, seconds = int(out[0]), int(out[1]), float(out[2])
    assert after_free - after_release > 100e6, (after_free, after_release)   # ~188 MB were freed
    assert 0 < seconds < 1


def test_background_storage_work_is_followed_by_a_heap_release(tmp_path):
    cfg = {"storage": {"viper": {"compaction_min_segments": 2, "compaction_base_rows": 64}}}
    with proxistore.open(tmp_path / "db", cfg) as db:
        col = db.create_collection("c", dim=16)
        rng = np.random.default_rng(0)
        for b in range(6):      # six segments of one size tier: merges are due
            col.insert([f"{b}-{i}" for i in range(400)], rng.standard_normal((400, 16)).astype(np.float32))
            db.flush("c")
        assert db.wait_idle(30)
        stats = db.stats()
        assert stats["collections"]["c"]["storage"]["compactions"] >= 1
        assert stats["maintenance"]["heap_releases"] >= 1
        assert stats["maintenance"]["heap_release_seconds"] >= 0
        assert col.count() == 2400
