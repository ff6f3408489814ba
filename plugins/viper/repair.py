"""``repair_storage``: set damaged segments aside so that a collection opens again, and say
exactly what was lost.

A damaged segment file or deletion vector cannot be read back as it was written, and by the time
it is found the WAL has long been checkpointed past its rows: those rows are gone. What is left
to decide is whether the rest of the collection stays out of reach with them. Repair takes the
segment (its Parquet file, deletion vector and index, one unit: a segment without a trustworthy
deletion vector would resurrect deleted rows) out of the manifest and moves its files into
``<collection>/damaged/<stamp>/`` beside a ``REPAIR.json`` that lists the lost ids and LSN range.
A damaged index is derived data: its file is set aside and maintenance builds it again.

What repair never does: lower ``flushed_lsn`` (the WAL no longer holds those records, and a
replay of newer records must not be repeated), bring back an older version of a lost id (it was
superseded; serving it would be wrong, not recovered), or touch a damaged manifest (which
segments a collection holds is then unknown; that needs an operator).

Order, for a crash at any point: the report is written first, then the files are moved, then
the manifest is committed. Interrupted after the move, the manifest references missing files,
which a second repair sets aside in turn (the first report keeps the ids).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

from proxistore.errors import StorageError
from proxistore.fileio import FileSystem, default_filesystem

from . import parquet
from .deletions import decode_deletions
from .files import fsync_dir
from .manifest import Manifest, SegmentEntry, commit_manifest, load_manifest
from .verify import ATTEMPTS, StorageProblem, changed, collection_dirs, segment_problems

__all__ = ["DAMAGED_DIR", "REPORT_NAME", "SetAside", "StorageRepairResult", "repair_storage"]

DAMAGED_DIR = "damaged"
REPORT_NAME = "REPAIR.json"


@dataclass
class SetAside:
    """One segment (or one index) taken out of a collection's manifest."""

    collection: str
    segment: str
    what: str                         # "segment" (rows lost) | "index" (rebuilt by maintenance)
    files: List[str]                  # moved into ``moved_to``
    reasons: List[str]
    rows: int = 0
    lost_rows: int = 0                # live rows the manifest counted in the segment
    min_lsn: int = 0
    max_lsn: int = 0
    lost_ids: Optional[List[str]] = None   # None: the id column could not be read
    lost_ids_exact: bool = False           # False: the deletion vector was unreadable, so some of
                                           # these ids may have been deleted before the damage
    moved_to: str = ""


@dataclass
class StorageRepairResult:
    root: str
    applied: bool
    collections: int = 0
    set_aside: List[SetAside] = field(default_factory=list)
    unrepairable: List[StorageProblem] = field(default_factory=list)

    @property
    def lost_rows(self) -> int:
        return sum(s.lost_rows for s in self.set_aside)

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "lost_rows": self.lost_rows}


def repair_storage(root: str, fs: Optional[FileSystem] = None, *, collections: Optional[Sequence[str]] = None,
                   apply: bool = True, stamp: Optional[str] = None) -> StorageRepairResult:
    """Set aside every damaged segment and index under viper's ``root`` (only in ``collections``
    when given); with ``apply=False``, report what would be set aside and change nothing.

    The caller holds the database's lock: repair commits manifests."""
    fs = fs or default_filesystem()
    stamp = stamp or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    result = StorageRepairResult(root=root, applied=apply)
    for name, directory in collection_dirs(fs, root, collections):
        result.collections += 1
        for _ in range(ATTEMPTS):   # a dry run may read beside a running database (see verify)
            try:
                manifest = load_manifest(fs, directory)
            except StorageError as e:
                result.unrepairable.append(StorageProblem(name, name, f"{e} (repair does not rebuild a manifest)"))
                plan = []
                break
            plan = _plan(fs, name, directory, manifest)
            if not plan or not changed(fs, directory, manifest):
                break
        if plan and apply:
            _apply(fs, directory, manifest, plan, _new_folder(fs, os.path.join(directory, DAMAGED_DIR), stamp))
        result.set_aside += [s for s, _ in plan]
    return result


def _plan(fs: FileSystem, name: str, directory: str, manifest: Manifest) -> List[Tuple[SetAside, SegmentEntry]]:
    """``(SetAside, entry)`` for each segment entry with damage."""
    plan = []
    for entry in manifest.segments:
        problems = segment_problems(fs, name, directory, manifest, entry)
        if not problems:
            continue
        damaged = {os.path.basename(p.file) for p in problems}
        reasons = [p.reason if os.path.basename(p.file) in p.reason else f"{os.path.basename(p.file)}: {p.reason}"
                   for p in problems]
        if damaged & {entry.file, entry.deletes_file}:
            ids, exact = _live_ids(fs, directory, entry)
            plan.append((SetAside(name, entry.name, "segment", entry.files(), reasons, rows=entry.rows,
                                  lost_rows=entry.live_rows, min_lsn=entry.min_lsn, max_lsn=entry.max_lsn,
                                  lost_ids=ids, lost_ids_exact=exact), entry))
        else:
            plan.append((SetAside(name, entry.name, "index", [entry.index.file], reasons), entry))
    return plan


def _live_ids(fs: FileSystem, directory: str, entry: SegmentEntry) -> Tuple[Optional[List[str]], bool]:
    """The ids of the segment's live rows, read from whatever of it still reads."""
    try:
        ids = parquet.read_ids(os.path.join(directory, entry.file), fs.pyarrow_fs)
    except (StorageError, OSError):
        return None, False
    if not entry.deletes_file:
        return ids, True
    try:
        deleted = decode_deletions(fs.read_bytes(os.path.join(directory, entry.deletes_file)), len(ids),
                                   entry.deletes_file)
    except (StorageError, OSError):
        return ids, False
    return [i for i, gone in zip(ids, deleted) if not gone], True


def _new_folder(fs: FileSystem, parent: str, stamp: str) -> str:
    """``parent/stamp``, or ``stamp-2``, ``-3``... when an earlier repair (interrupted, and run
    again within the second) used it: its report must not be overwritten."""
    path, n = os.path.join(parent, stamp), 1
    while fs.exists(path):
        n += 1
        path = os.path.join(parent, f"{stamp}-{n}")
    return path


def _apply(fs: FileSystem, directory: str, manifest: Manifest, plan: List[Tuple[SetAside, SegmentEntry]],
           dest: str) -> None:
    try:
        fs.makedirs_durable(dest, within=directory)
    except OSError as e:
        raise StorageError(f"{dest}: cannot create: {e}") from e
    for item, _ in plan:
        item.moved_to = os.path.relpath(dest, os.path.dirname(directory))
    report = {"collection": manifest.collection, "generation": manifest.generation,
              "flushed_lsn": manifest.flushed_lsn, "set_aside": [asdict(s) for s, _ in plan]}
    try:
        fs.write_durable(os.path.join(dest, REPORT_NAME), (json.dumps(report, indent=1) + "\n").encode())
        for item, _ in plan:
            for file in item.files:
                if fs.exists(os.path.join(directory, file)):
                    fs.rename(os.path.join(directory, file), os.path.join(dest, file))
        fs.fsync_dir(dest)
    except OSError as e:
        raise StorageError(f"{dest}: cannot set damaged files aside (the manifest is unchanged): {e}") from e
    fsync_dir(fs, directory)
    dropped = {entry.name for item, entry in plan if item.what == "segment"}
    unindexed = {entry.name for item, entry in plan if item.what == "index"}
    kept = [replace(e, index=None) if e.name in unindexed else e for e in manifest.segments if e.name not in dropped]
    commit_manifest(fs, directory, manifest.with_segments(kept))
