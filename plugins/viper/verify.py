"""``verify_storage``: read back every file the committed manifests reference and check it.

The checks an open or a search would make only when it meets a file, made on all of them now:
the manifest's checksum; each segment's size, every Parquet page's CRC32, its row count, unique
ids and LSNs within the manifest's range; each deletion vector's CRC and count; each index
file's size and CRC32. Files no manifest references are listed (the next open removes them).

Read-only, through the storage root's FileSystem, so it works on an object store and beside a
running database: a collection whose manifest changed while it was read (a flush or compaction
committed, removing the files it replaced) is read again from the new manifest.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from proxistore.errors import StorageError
from proxistore.fileio import FileSystem, default_filesystem

from . import parquet
from .deletions import decode_deletions
from .manifest import Manifest, SegmentEntry, load_manifest, manifest_exists, manifest_file, orphans

__all__ = ["StorageProblem", "StorageVerifyResult", "verify_storage", "segment_problems", "changed",
           "collection_dirs"]

#: Times a collection is read again when its manifest changed under the check.
ATTEMPTS = 3


@dataclass(frozen=True)
class StorageProblem:
    collection: str
    file: str
    reason: str


@dataclass
class _Tally:
    """What was checked, and what was wrong with it."""

    segments: int = 0
    rows: int = 0
    live_rows: int = 0
    bytes: int = 0
    indexes: int = 0
    problems: List[StorageProblem] = field(default_factory=list)

    def add(self, other: "_Tally") -> None:
        for f in fields(_Tally):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclass
class StorageVerifyResult(_Tally):
    root: str = ""
    names: List[str] = field(default_factory=list)       # the collections found (with a manifest)
    collections: int = 0
    unreferenced: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def missing(self, name: str, reason: str) -> None:
        """Record a collection that should be here and is not (the caller knows which)."""
        self.problems.append(StorageProblem(name, name, reason))

    def to_dict(self) -> Dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def collection_dirs(fs: FileSystem, root: str,
                    collections: Optional[Sequence[str]] = None) -> Iterator[Tuple[str, str]]:
    """``(name, directory)`` of each collection under ``root`` with a committed manifest (only
    those in ``collections`` when given), by name."""
    for name in (sorted(fs.listdir(root)) if fs.isdir(root) else []):
        directory = os.path.join(root, name)
        if (collections is None or name in collections) and manifest_exists(fs, directory):
            yield name, directory


def verify_storage(root: str, fs: Optional[FileSystem] = None,
                   collections: Optional[Sequence[str]] = None) -> StorageVerifyResult:
    """Check every collection under viper's ``root`` (only ``collections`` when given; see the
    module)."""
    fs = fs or default_filesystem()
    result = StorageVerifyResult(root=root)
    for name, directory in collection_dirs(fs, root, collections):
        result.collections += 1
        result.names.append(name)
        tally, manifest = _verify_collection(fs, name, directory)
        result.add(tally)
        if manifest is not None:
            result.unreferenced += [os.path.join(name, f) for f in sorted(orphans(fs, directory, manifest))]
    return result


def _verify_collection(fs: FileSystem, name: str, directory: str):
    """Check one collection against its manifest, again if a commit replaced it meanwhile."""
    for _ in range(ATTEMPTS):
        try:
            manifest = load_manifest(fs, directory)
        except StorageError as e:
            return _Tally(problems=[StorageProblem(name, os.path.join(name, manifest_file(fs, directory)),
                                                   str(e))]), None
        tally = _Tally()
        for entry in manifest.segments:
            tally.segments += 1
            tally.rows += entry.rows
            tally.live_rows += entry.live_rows
            tally.bytes += entry.total_bytes()
            tally.indexes += int(entry.index is not None)
            tally.problems += segment_problems(fs, name, directory, manifest, entry)
        if not tally.problems or not changed(fs, directory, manifest):
            return tally, manifest
    return tally, manifest


def changed(fs: FileSystem, directory: str, manifest: Manifest) -> bool:
    """Whether a commit replaced ``manifest`` since it was read (its files may be gone)."""
    try:
        return load_manifest(fs, directory).generation != manifest.generation
    except StorageError:
        return False


def segment_problems(fs: FileSystem, name: str, directory: str, manifest: Manifest,
                     entry: SegmentEntry) -> List[StorageProblem]:
    """What is wrong with the files of one segment entry of collection ``name`` (none: healthy).
    A problem's ``file`` is ``<name>/<file name>``: the segment's, its deletion vector's or its
    index's."""
    found: List[StorageProblem] = []

    def problem(file: str, reason: str) -> None:
        found.append(StorageProblem(name, os.path.join(name, file), reason))

    _check_segment(fs, directory, manifest, entry, problem)
    return found


def _check_segment(fs: FileSystem, directory: str, manifest: Manifest, entry: SegmentEntry, problem) -> None:
    path = os.path.join(directory, entry.file)
    if not _same_size(fs, path, entry.bytes, entry.file, problem):
        return
    try:
        table = parquet.read_table(path, fs.pyarrow_fs)
    except StorageError as e:
        problem(entry.file, str(e))
        return
    lsns = table.column("lsn").to_numpy()
    ids = table.column("id").to_pylist()
    if table.num_rows != entry.rows:
        problem(entry.file, f"{table.num_rows} rows, the manifest says {entry.rows}")
    elif len(lsns) and (lsns.min() < entry.min_lsn or lsns.max() > entry.max_lsn):
        problem(entry.file, f"LSNs {lsns.min()}..{lsns.max()} outside the manifest's "
                            f"{entry.min_lsn}..{entry.max_lsn}")
    elif len(set(ids)) != len(ids):
        problem(entry.file, "an id appears twice")
    else:
        try:
            parquet.vectors_of(table, manifest.dim)
        except (StorageError, ValueError) as e:
            problem(entry.file, f"vectors are not {entry.rows} x {manifest.dim}: {e}")
    if entry.deletes_file:
        dpath = os.path.join(directory, entry.deletes_file)
        if _same_size(fs, dpath, entry.deletes_bytes, entry.deletes_file, problem):
            try:
                deleted = decode_deletions(fs.read_bytes(dpath), entry.rows, dpath)
                if int(deleted.sum()) != entry.deleted:
                    problem(entry.deletes_file, f"{int(deleted.sum())} rows deleted, the manifest says {entry.deleted}")
            except (StorageError, OSError) as e:
                problem(entry.deletes_file, str(e))
    if entry.index is not None:
        ipath = os.path.join(directory, entry.index.file)
        if _same_size(fs, ipath, entry.index.bytes, entry.index.file, problem):
            try:
                crc = zlib.crc32(fs.read_bytes(ipath))
            except OSError as e:
                problem(entry.index.file, f"cannot read: {e}")
                return
            if crc != entry.index.crc32:
                problem(entry.index.file, "checksum mismatch (searched exactly until maintenance rebuilds it)")


def _same_size(fs: FileSystem, path: str, expected: int, file: str, problem) -> bool:
    try:
        size = fs.size(path)
    except FileNotFoundError:
        problem(file, "missing")
        return False
    except OSError as e:
        problem(file, f"cannot stat: {e}")
        return False
    if size != expected:
        problem(file, f"{size} bytes, the manifest says {expected}")
        return False
    return True
