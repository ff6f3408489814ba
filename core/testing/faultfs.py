"""A fault-injecting filesystem: power loss and failing I/O under the real WAL and storage code.

:class:`FaultInjectingFileSystem` is the real local filesystem (it subclasses
:class:`proxistore.fileio.LocalFileSystem`, so every operation really happens) plus a model of
what the disk has made durable, kept beside it:

- **file data** is durable up to the last ``fsync`` of the file (a later overwrite of synced
  bytes keeps the synced version as the durable one);
- **directory entries** (a file's or directory's name in its parent, including the result of a
  rename or an unlink) are durable as of the last ``fsync_dir`` of that directory.

:meth:`crash` (or ``crash_at=N``: just before the Nth operation) simulates a power loss: the
durable state is captured, and from then on every operation raises :class:`PowerLoss` (an
``OSError``, so the code under test unwinds the way it does on a dead disk). :meth:`image`
returns what survived and :meth:`DiskImage.materialize` writes it to a fresh directory to reopen.
Unsynced data is dropped (``unsynced="drop"``), or a random prefix of each file's unsynced tail
is kept (``unsynced="torn"``: a partly written last block, as after a real power cut).

:class:`Fault` rules make the Nth operation of a kind (optionally on a path pattern) fail with
``EIO`` or ``ENOSPC``, once or persistently until :meth:`clear_faults` (space returns).

Operation kinds: ``open`` (any mode), ``write``, ``fsync``, ``fsync_dir``, ``rename``,
``unlink``, ``truncate``, ``makedirs``, ``rmtree``. Operations are counted from 1 in the order
they start; :attr:`trace` lists them (kind, path relative to the root).

Everything under ``root`` that the durable path changes must go through this filesystem: a
write to a file the model does not know (created behind the seam's back) raises
:class:`SeamViolation`, since such a file's durability could not be tested.
"""
from __future__ import annotations

import errno as errno_codes
import fnmatch
import os
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from proxistore.fileio import FileHandle, LocalFileSystem

__all__ = ["Fault", "FaultInjectingFileSystem", "PowerLoss", "SeamViolation", "DiskImage", "OPS"]

OPS = ("open", "write", "fsync", "fsync_dir", "rename", "unlink", "truncate", "makedirs", "rmtree")


class PowerLoss(OSError):
    """Raised by every operation once the simulated machine has lost power."""

    def __init__(self, op: str, path: str) -> None:
        super().__init__(errno_codes.EIO, f"simulated power loss ({op})", path)


class SeamViolation(RuntimeError):
    """A file under the root was changed without going through the filesystem seam."""


@dataclass
class Fault:
    """Fail the ``nth`` (1-based) operation of kind ``op`` (None: any kind) on a path matching
    ``path`` (a glob on the root-relative path; a rename matches on either side) with ``errno``;
    with ``persistent``, every later matching operation fails too, until cleared."""

    op: Optional[str] = None
    nth: int = 1
    errno: int = errno_codes.EIO
    persistent: bool = False
    path: str = "*"
    seen: int = 0
    fired: int = 0

    def __post_init__(self) -> None:
        if self.op is not None and self.op not in OPS:
            raise ValueError(f"unknown operation {self.op!r}; one of {OPS}")
        if self.nth < 1:
            raise ValueError(f"nth counts from 1, not {self.nth!r}")

    def matches(self, op: str, rels: Tuple[str, ...]) -> bool:
        return (self.op is None or self.op == op) and any(fnmatch.fnmatchcase(r, self.path) for r in rels)


class _Node:
    """A file or directory: what it holds now, and what of it is durable."""

    __slots__ = ("is_dir", "children", "durable_children", "data", "synced_len", "frozen")

    def __init__(self, is_dir: bool) -> None:
        self.is_dir = is_dir
        self.children: Dict[str, "_Node"] = {}                     # directories: live entries
        self.durable_children: Dict[str, "_Node"] = {}             # ... as of the last fsync_dir
        self.data = bytearray()                                    # files: live content
        self.synced_len = 0                                        # ... data[:synced_len] is durable
        self.frozen: Optional[bytes] = None                        # ... unless an overwrite froze it here

    def durable_data(self) -> bytes:
        return self.frozen if self.frozen is not None else bytes(self.data[:self.synced_len])

    def unsynced_tail(self) -> bytes:
        """Bytes appended after the durable content (empty when the file was overwritten)."""
        return b"" if self.frozen is not None else bytes(self.data[self.synced_len:])

    def before_change(self, start: int) -> None:
        """Keep the durable version when a change reaches into the synced bytes."""
        if self.frozen is None and start < self.synced_len:
            self.frozen = bytes(self.data[:self.synced_len])


@dataclass
class DiskImage:
    """What survived a simulated power loss: files (root-relative path -> bytes) and directories."""

    files: Dict[str, bytes] = field(default_factory=dict)
    dirs: List[str] = field(default_factory=list)

    def materialize(self, dest: str) -> str:
        """Write the image into the new directory ``dest`` (a real, ordinary directory) and return it."""
        os.makedirs(dest, exist_ok=False)
        for d in sorted(self.dirs):
            os.makedirs(os.path.join(dest, d), exist_ok=True)
        for rel, data in self.files.items():
            with open(os.path.join(dest, rel), "wb") as f:
                f.write(data)
        return dest


class FaultInjectingFileSystem(LocalFileSystem):
    """The local filesystem under ``root``, with a durability model, power loss and I/O faults."""

    def __init__(self, root: str, *, crash_at: Optional[int] = None, faults: Optional[List[Fault]] = None,
                 unsynced: str = "drop", seed: int = 0, keep_trace: bool = True) -> None:
        if unsynced not in ("drop", "torn"):
            raise ValueError(f"unsynced must be 'drop' or 'torn', not {unsynced!r}")
        self.root = os.path.abspath(root)
        self.crash_at = crash_at
        self.faults: List[Fault] = list(faults or [])
        self.unsynced = unsynced
        self.keep_trace = keep_trace
        self.ops = 0
        self.trace: List[Tuple[str, str]] = []
        self.injected: List[Tuple[int, str, str, int]] = []     # (op number, kind, path, errno)
        self.crashed = False
        self.crash_time: Optional[float] = None      # time.monotonic() of the power loss
        self._image: Optional[DiskImage] = None
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._root = _Node(is_dir=True)
        os.makedirs(self.root, exist_ok=True)
        self._adopt(self.root, self._root)

    # -- the model -------------------------------------------------------------------------------

    def _adopt(self, path: str, node: _Node) -> None:
        """Take what is already on disk as durable (the state before the test's first operation)."""
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isdir(full):
                child = _Node(is_dir=True)
                self._adopt(full, child)
            else:
                child = _Node(is_dir=False)
                with open(full, "rb") as f:
                    child.data = bytearray(f.read())
                child.synced_len = len(child.data)
            node.children[name] = child
        node.durable_children = dict(node.children)

    def _rel(self, path: str) -> str:
        return os.path.relpath(os.path.abspath(path), self.root).replace(os.sep, "/")

    def _parts(self, path: str) -> Optional[List[str]]:
        rel = self._rel(path)
        if rel == ".":
            return []
        if rel.startswith(".."):
            return None                       # outside the root: not modelled
        return rel.split("/")

    def _lookup(self, path: str) -> Optional[_Node]:
        parts = self._parts(path)
        if parts is None:
            return None
        node = self._root
        for p in parts:
            node = node.children.get(p) if node.is_dir else None
            if node is None:
                return None
        return node

    def _parent(self, path: str) -> Tuple[Optional[_Node], str]:
        parts = self._parts(path)
        if not parts:
            return None, ""
        parent = self._lookup(os.path.dirname(os.path.abspath(path)))
        return parent, parts[-1]

    def _known(self, path: str, what: str) -> Optional[_Node]:
        """The node of ``path``; SeamViolation when it exists on disk under the root but not in
        the model; None when outside the root."""
        if self._parts(path) is None:
            return None
        node = self._lookup(path)
        if node is None and os.path.exists(path):
            raise SeamViolation(f"{what} {self._rel(path)}: created under {self.root} without going "
                                f"through the FileSystem seam")
        return node

    # -- counting, faults and the crash -----------------------------------------------------------

    def _begin(self, op: str, *paths: str) -> None:
        """Count the operation; crash or fail it as the rules say (called with the lock held)."""
        rels = tuple(self._rel(p) for p in paths)
        if self.crashed:
            raise PowerLoss(op, paths[-1])
        self.ops += 1
        if self.keep_trace:
            self.trace.append((op, rels[-1]))
        if self.crash_at is not None and self.ops >= self.crash_at:
            self.crash()
            raise PowerLoss(op, paths[-1])
        for fault in self.faults:
            if not fault.matches(op, rels):
                continue
            fault.seen += 1
            if fault.seen == fault.nth or (fault.persistent and fault.seen > fault.nth):
                fault.fired += 1
                self.injected.append((self.ops, op, rels[-1], fault.errno))
                raise OSError(fault.errno, f"{os.strerror(fault.errno)} (injected at {op} #{self.ops})",
                              paths[-1])

    def clear_faults(self) -> None:
        """The fault goes away (the disk has space again, the cable is fixed)."""
        with self._lock:
            self.faults = []

    def crash(self) -> DiskImage:
        """Lose power now: capture what is durable; every later operation raises PowerLoss."""
        with self._lock:
            if not self.crashed:
                self.crashed = True
                self.crash_time = time.monotonic()
                self._image = self._capture()
            return self._image

    def image(self) -> DiskImage:
        """What survived the crash (crashes now if it has not happened)."""
        return self.crash()

    def _capture(self) -> DiskImage:
        image = DiskImage()

        def walk(node: _Node, prefix: str) -> None:
            for name, child in node.durable_children.items():
                rel = f"{prefix}{name}"
                if child.is_dir:
                    image.dirs.append(rel)
                    walk(child, rel + "/")
                else:
                    data = child.durable_data()
                    tail = child.unsynced_tail()
                    if self.unsynced == "torn" and tail:
                        data += tail[:self._rng.randint(0, len(tail))]
                    image.files[rel] = data

        walk(self._root, "")
        return image

    # -- the seam --------------------------------------------------------------------------------

    def open(self, path: str, mode: str) -> FileHandle:
        with self._lock:
            self._begin("open", path)
            writing = any(c in mode for c in "wax+")
            node = self._known(path, "open") if writing else None
            handle = super().open(path, mode)
            if writing and self._parts(path) is not None:
                if node is None:
                    parent, name = self._parent(path)
                    if parent is None:
                        raise SeamViolation(f"open {self._rel(path)}: its directory was not made "
                                            f"through the FileSystem seam")
                    node = _Node(is_dir=False)
                    parent.children[name] = node
                elif "w" in mode:
                    node.before_change(0)
                    del node.data[:]
                    node.synced_len = 0
            handle.fault_node = node                 # type: ignore[attr-defined]
            handle.fault_append = "a" in mode        # type: ignore[attr-defined]
            return handle

    def _write(self, handle: FileHandle, data) -> int:
        with self._lock:
            self._begin("write", handle.path)
            node: Optional[_Node] = getattr(handle, "fault_node", None)
            if node is None:
                return super()._write(handle, data)
            pos = len(node.data) if handle.fault_append else handle.raw.tell()
            n = super()._write(handle, data)
            chunk = bytes(memoryview(data).cast("B")[:n])
            node.before_change(pos)
            if pos > len(node.data):
                node.data.extend(b"\0" * (pos - len(node.data)))
            node.data[pos:pos + len(chunk)] = chunk
            return n

    def _fsync(self, handle: FileHandle) -> None:
        with self._lock:
            self._begin("fsync", handle.path)
            super()._fsync(handle)
            node: Optional[_Node] = getattr(handle, "fault_node", None)
            if node is not None:
                node.synced_len = len(node.data)
                node.frozen = None

    def _truncate(self, handle: FileHandle, size: int) -> None:
        with self._lock:
            self._begin("truncate", handle.path)
            super()._truncate(handle, size)
            node: Optional[_Node] = getattr(handle, "fault_node", None)
            if node is not None:
                node.before_change(size)
                if size < len(node.data):
                    del node.data[size:]
                else:
                    node.data.extend(b"\0" * (size - len(node.data)))

    def _close(self, handle: FileHandle) -> None:
        handle.raw.close()      # closing is not an operation on durable state; never fails

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._begin("fsync_dir", path)
            super().fsync_dir(path)
            node = self._known(path, "fsync_dir")
            if node is not None:
                node.durable_children = dict(node.children)

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._begin("rename", src, dst)
            node = self._known(src, "rename")
            super().rename(src, dst)
            if node is None:
                return
            src_parent, src_name = self._parent(src)
            dst_parent, dst_name = self._parent(dst)
            if dst_parent is None:
                raise SeamViolation(f"rename to {self._rel(dst)}: target directory unknown to the seam")
            del src_parent.children[src_name]
            dst_parent.children[dst_name] = node

    def unlink(self, path: str) -> None:
        self._remove("unlink", path, super().unlink)

    def _remove(self, op: str, path: str, remove) -> None:
        """Unlink a file or remove a tree: gone from its directory's live entries (the durable
        ones keep it until that directory is fsynced)."""
        with self._lock:
            self._begin(op, path)
            self._known(path, op)
            remove(path)
            parent, name = self._parent(path)
            if parent is not None:
                parent.children.pop(name, None)

    def makedirs(self, path: str) -> None:
        with self._lock:
            self._begin("makedirs", path)
            super().makedirs(path)
            parts = self._parts(path)
            if parts is None:
                return
            node = self._root
            for p in parts:
                child = node.children.get(p)
                if child is None:
                    child = _Node(is_dir=True)
                    node.children[p] = child
                node = child

    def rmtree(self, path: str) -> None:
        self._remove("rmtree", path, super().rmtree)
