"""The manifest: the one file that says what a collection is made of.

The manifest lists the live segments, each with its deletion-vector file and index file, plus
``flushed_lsn``, the file counter and a ``generation`` that every commit raises by one. It is
committed only after every file it references is durable. Anything in the collection directory
that the committed manifest does not reference is an orphan of a crashed flush or compaction and
is removed on open (:func:`remove_orphans`).

How a commit is made atomic depends on what the FileSystem offers (``fs.atomic_rename``):

- **Local disk** (atomic rename): ``MANIFEST.json`` is replaced through
  :meth:`FileSystem.write_atomic` (temp file, fsync, rename, fsync directory), exactly as before
  object stores were supported: one file name, so existing data directories, the crash tests'
  kill points and every tool that reads ``MANIFEST.json`` keep working, and a commit costs one
  rename rather than a write plus a delete.
- **Object store** (no atomic rename; a rename is a copy and a delete): each commit writes a new
  object ``MANIFEST-<generation>.json``, whole, once, and never replaces one. Writing an object
  is atomic there (it appears whole or not at all) and durable when the write returns, so the
  commit point is that write. The reader takes the highest generation that parses and whose
  content says that generation; older manifests are removed after the commit (and, if a crash
  came first, as orphans on the next open).

The reader accepts both forms on any FileSystem (versioned manifests win), so the format of a
collection directory is decided by where it lives, not by a setting.

Format 2 ends the document with ``"crc32"``: the CRC32 of the file as it would read without that
member. The file stays plain JSON; a damaged one is a StorageError, never a manifest that says a
wrong ``flushed_lsn`` (which would skip acknowledged writes in the WAL) or names wrong files.
Format 1 (no checksum) is still read.
"""
from __future__ import annotations

import json
import logging
import os
import re
import zlib
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from typing import Any, Dict, List, Optional, Set, Tuple

from proxistore.errors import StorageError
from proxistore.fileio import FileSystem

__all__ = ["MANIFEST_NAME", "FORMAT_VERSION", "IndexRef", "SegmentEntry", "Manifest",
           "load_manifest", "commit_manifest", "remove_orphans", "orphans", "manifest_exists", "manifest_file",
           "versioned_name", "manifest_name"]

log = logging.getLogger("proxistore.viper")

MANIFEST_NAME = "MANIFEST.json"
FORMAT_VERSION = 2
_READABLE = (1, 2)        # format 1: the same document without its checksum
_CHECKSUM = re.compile(rb', "crc32": (\d+)\}\n$')
_VERSIONED = re.compile(r"^MANIFEST-(\d{20})\.json$")


def versioned_name(generation: int) -> str:
    """The object name of the manifest of ``generation`` on a store without atomic rename."""
    return f"MANIFEST-{generation:020d}.json"


def manifest_name(fs: FileSystem, generation: int) -> str:
    """The file a commit of ``generation`` writes on ``fs``."""
    return MANIFEST_NAME if fs.atomic_rename else versioned_name(generation)


def _versions(names: List[str]) -> List[Tuple[int, str]]:
    """The versioned manifests among ``names``, newest first."""
    out = [(int(m.group(1)), n) for n in names for m in [_VERSIONED.match(n)] if m]
    return sorted(out, reverse=True)


@dataclass(frozen=True)
class IndexRef:
    """An ANN index file of a segment: what it is, how it was built, and its checksum."""

    file: str
    kind: str            # hnsw | ivf | flat
    backend: str         # faiss | hnswlib
    params: Dict[str, Any]
    bytes: int
    crc32: int

    def signature(self) -> Tuple[str, str, Tuple[Tuple[str, Any], ...]]:
        return (self.kind, self.backend, tuple(sorted(self.params.items())))


@dataclass(frozen=True)
class SegmentEntry:
    """One live segment: its Parquet file, row range, deletion vector and index."""

    name: str
    file: str
    rows: int
    bytes: int
    min_lsn: int
    max_lsn: int
    deleted: int = 0
    deletes_file: Optional[str] = None
    deletes_bytes: int = 0
    index: Optional[IndexRef] = None

    @property
    def live_rows(self) -> int:
        return self.rows - self.deleted

    def files(self) -> List[str]:
        out = [self.file]
        if self.deletes_file:
            out.append(self.deletes_file)
        if self.index:
            out.append(self.index.file)
        return out

    def total_bytes(self) -> int:
        return self.bytes + self.deletes_bytes + (self.index.bytes if self.index else 0)

    @cached_property
    def json_line(self) -> str:
        """This entry's line in the manifest file. Encoded once: an entry never changes (a
        commit that changes a segment makes a new entry), and re-encoding every entry on every
        commit cost ~1.7 ms of GIL-holding work per flush with ~130 segments."""
        return json.dumps(_entry_doc(self), sort_keys=True)


@dataclass(frozen=True)
class Manifest:
    """A committed state of a collection (immutable: each commit builds a new one)."""

    collection: str
    dim: int
    metric: str
    flushed_lsn: int = 0
    generation: int = 0
    next_file: int = 1
    compactions: int = 0
    segments: Tuple[SegmentEntry, ...] = field(default_factory=tuple)

    def files(self) -> Set[str]:
        """Every file name in the collection directory this manifest references."""
        return {MANIFEST_NAME} | {f for s in self.segments for f in s.files()}

    def with_segments(self, segments, **changes: Any) -> "Manifest":
        return replace(self, segments=tuple(segments), generation=self.generation + 1, **changes)

    def to_bytes(self) -> bytes:
        """The manifest file: JSON, one line per segment.

        Built by hand rather than with ``dataclasses.asdict`` and ``json.dumps(indent=...)``,
        which deep-copy every entry and run the pure-Python encoder: 2-3 ms of GIL-holding work
        per commit with a hundred segments, on the thread of a flush, while writers wait for
        the GIL. Each line goes through json's C encoder."""
        head = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "segments"}
        head["format"] = FORMAT_VERSION
        lines = [e.json_line for e in self.segments]
        body = json.dumps(head, sort_keys=True)[:-1]
        segments = "[]" if not lines else "[\n  " + ",\n  ".join(lines) + "\n ]"
        payload = body + ', "segments": ' + segments
        crc = zlib.crc32((payload + "}\n").encode("utf-8"))
        return (payload + f', "crc32": {crc}}}\n').encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> "Manifest":
        try:
            doc = json.loads(data.decode("utf-8"))
            version = doc.pop("format")
            if version not in _READABLE:
                raise StorageError(f"{where}: manifest format {version} is not supported (reads {_READABLE})")
            crc = doc.pop("crc32", None)
            if crc is not None or version >= 2:
                _verify(data, where)
            segments = []
            for s in doc.pop("segments"):
                index = s.pop("index")
                segments.append(SegmentEntry(**s, index=IndexRef(**index) if index else None))
            return cls(**doc, segments=tuple(segments))
        except StorageError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise StorageError(f"{where}: unreadable manifest ({type(e).__name__}: {e})") from e


def _verify(data: bytes, where: str) -> None:
    m = _CHECKSUM.search(data)
    if m is None:
        raise StorageError(f"{where}: damaged manifest (its checksum member is missing or malformed)")
    if zlib.crc32(data[:m.start()] + b"}\n") != int(m.group(1)):
        raise StorageError(f"{where}: damaged manifest (checksum mismatch)")


def _entry_doc(entry: SegmentEntry) -> Dict[str, Any]:
    doc = {f.name: getattr(entry, f.name) for f in fields(entry)}
    if entry.index is not None:
        doc["index"] = {f.name: getattr(entry.index, f.name) for f in fields(entry.index)}
        doc["index"]["params"] = dict(entry.index.params)
    return doc


def manifest_exists(fs: FileSystem, directory: str) -> bool:
    """True when ``directory`` holds a committed manifest (either form)."""
    if fs.exists(os.path.join(directory, MANIFEST_NAME)):
        return True
    return fs.isdir(directory) and bool(_versions(fs.listdir(directory)))


def load_manifest(fs: FileSystem, directory: str) -> Manifest:
    """Read a collection's committed manifest (a StorageError if missing or unreadable).

    Versioned manifests first: the newest is the committed state. An object store writes an
    object whole or not at all, so a newest manifest that does not parse or does not name its
    own generation is damage, not a torn write: it is a StorageError naming the object, never a
    silent fall back to an older generation (whose WAL may already be checkpointed away). An
    operator who accepts that loss removes the object to open the previous generation.
    Else ``MANIFEST.json``."""
    path = os.path.join(directory, MANIFEST_NAME)
    try:
        versions = _versions(fs.listdir(directory)) if fs.isdir(directory) else []
    except OSError as e:
        raise StorageError(f"{directory}: cannot list manifests: {e}") from e
    if versions:
        generation, name = versions[0]
        vpath = os.path.join(directory, name)
        try:
            manifest = Manifest.from_bytes(fs.read_bytes(vpath), vpath)
        except OSError as e:
            raise StorageError(f"{vpath}: cannot read manifest: {e}") from e
        except StorageError as e:
            raise StorageError(f"{e}; it is the newest manifest, so the collection's committed state is "
                               f"unknown (remove it to open the previous generation and lose what it added)") from e
        if manifest.generation != generation:
            raise StorageError(f"{vpath}: says generation {manifest.generation}; the newest manifest must name "
                               f"its own generation")
        return manifest
    if not fs.exists(path):
        raise StorageError(f"{path}: no manifest; the collection was never created or its files were removed")
    try:
        data = fs.read_bytes(path)
    except OSError as e:
        raise StorageError(f"{path}: cannot read manifest: {e}") from e
    return Manifest.from_bytes(data, path)


def commit_manifest(fs: FileSystem, directory: str, manifest: Manifest) -> Manifest:
    """Commit ``manifest`` atomically and durably (callers make referenced files durable
    first); return the manifest as committed.

    With atomic rename: replace ``MANIFEST.json`` (temp, fsync, rename, fsync directory).
    Without: write ``MANIFEST-<generation>.json`` once, whole (the commit point), then remove
    the older versions; a failure to remove them does not undo the commit (they are orphans,
    removed on the next open). The generation is raised above any manifest object already
    there: a commit whose write failed may still have landed (a timeout after the store kept
    it), and a retry must neither overwrite it nor be hidden by it."""
    if fs.atomic_rename:
        path = os.path.join(directory, MANIFEST_NAME)
        try:
            fs.write_atomic(path, manifest.to_bytes())
        except OSError as e:
            raise StorageError(f"{path}: manifest commit failed: {e}") from e
        return manifest
    try:
        present = _versions(fs.listdir(directory)) if fs.isdir(directory) else []
    except OSError as e:
        raise StorageError(f"{directory}: manifest commit failed: cannot list manifests: {e}") from e
    if present and present[0][0] >= manifest.generation:
        manifest = replace(manifest, generation=present[0][0] + 1)
    path = os.path.join(directory, versioned_name(manifest.generation))
    try:
        fs.write_durable(path, manifest.to_bytes())
    except OSError as e:
        raise StorageError(f"{path}: manifest commit failed: {e}") from e
    for _, old in present:
        try:
            fs.unlink(os.path.join(directory, old))
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("viper: could not remove %s after commit (removed on next open): %s", old, e)
    return manifest


def orphans(fs: FileSystem, directory: str, manifest: Manifest) -> List[str]:
    """The files in ``directory`` that ``manifest`` (the committed one) does not reference."""
    keep = manifest.files() | {manifest_name(fs, manifest.generation)}
    return [name for name in fs.listdir(directory)
            if name not in keep and not fs.isdir(os.path.join(directory, name))]


def manifest_file(fs: FileSystem, directory: str) -> str:
    """The name of the file that holds ``directory``'s committed manifest (what load reads)."""
    versions = _versions(fs.listdir(directory)) if fs.isdir(directory) else []
    return versions[0][1] if versions else MANIFEST_NAME


def remove_orphans(fs: FileSystem, directory: str, manifest: Manifest) -> List[str]:
    """Delete every file in ``directory`` the manifest does not reference; return their names."""
    removed = []
    try:
        for name in orphans(fs, directory, manifest):
            fs.unlink(os.path.join(directory, name))
            removed.append(name)
        if removed:
            fs.fsync_dir(directory)
    except OSError as e:
        raise StorageError(f"{directory}: cannot remove orphan files: {e}") from e
    return removed
