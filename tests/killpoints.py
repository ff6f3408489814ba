"""A FileSystem that SIGKILLs its own process at a precise point of the durable data path.

:class:`KillPointFileSystem` is the real local filesystem (it subclasses
:class:`proxistore.fileio.LocalFileSystem`) plus one :class:`KillRule`: just before or just after
the Nth operation of a given kind on a path matching a pattern (optionally only while the child
is in a named phase, such as ``"flush"`` or ``"compact"``), it writes a ``KILLPOINT {...}`` line
to stdout and sends itself SIGKILL. Nothing is cleaned up, no buffer is flushed, no ``finally``
runs: exactly what ``kill -9`` at that instruction leaves behind.

Operation kinds: ``open`` (open for writing: modes with ``w``, ``a``, ``x`` or ``+``), ``write``,
``fsync``, ``fsync_dir``, ``rename``, ``unlink``, ``truncate``, ``makedirs``, ``rmtree``.
Paths are matched with :func:`fnmatch.fnmatchcase` against the path relative to the data
directory with ``/`` separators (``storage/c/seg-00000003.parquet``, ``wal/c/wal-0000000001.avro``,
``storage/c/MANIFEST.json.tmp``); a rename matches on its source or its destination.

A rule is JSON, e.g. ``{"op": "rename", "path": "storage/*/MANIFEST.json*", "when": "after",
"nth": 1, "phase": "compact"}``, given to a child in the ``PROXISTORE_KILLPOINT`` environment
variable (:func:`from_env`). When ``PROXISTORE_KILLPOINT_TRACE`` is set, every operation is also
printed as ``FSOP {...}`` (to see what a new kill point should name).
"""
from __future__ import annotations

import fnmatch
import json
import os
import signal
import threading
from dataclasses import asdict, dataclass
from typing import Optional

from proxistore.fileio import FileHandle, LocalFileSystem

__all__ = ["KillRule", "KillPointFileSystem", "from_env", "ENV", "TRACE_ENV", "MARKER", "TRACE"]

ENV = "PROXISTORE_KILLPOINT"
TRACE_ENV = "PROXISTORE_KILLPOINT_TRACE"
MARKER = "KILLPOINT "
TRACE = "FSOP "
OPS = ("open", "write", "fsync", "fsync_dir", "rename", "unlink", "truncate", "makedirs", "rmtree")


@dataclass(frozen=True)
class KillRule:
    """Kill ``when`` ("before" or "after") the ``nth`` (1-based) ``op`` on a path matching ``path``,
    counting only operations made while the phase is ``phase`` (None: any phase)."""

    op: str
    path: str
    when: str = "after"
    nth: int = 1
    phase: Optional[str] = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown operation {self.op!r}; one of {OPS}")
        if self.when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {self.when!r}")
        if self.nth < 1:
            raise ValueError(f"nth counts from 1, not {self.nth!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "KillRule":
        return cls(**json.loads(text))


class KillPointFileSystem(LocalFileSystem):
    """The local filesystem, killed by SIGKILL at the point its rule names (if any)."""

    def __init__(self, root: str, rule: Optional[KillRule] = None, *, trace: bool = False) -> None:
        self.root = os.path.abspath(root)
        self.rule = rule
        self.trace = trace
        self.phase: Optional[str] = None
        self.matched = 0
        self._lock = threading.Lock()

    # -- the kill ----------------------------------------------------------------------------

    def _rel(self, path: str) -> str:
        rel = os.path.relpath(os.path.abspath(path), self.root)
        return rel.replace(os.sep, "/")

    def _before(self, op: str, *paths: str) -> bool:
        """Called before every operation: trace it, count it if the rule matches it, and kill
        here if it is the rule's Nth match and the rule says "before". Returns whether this call
        is the Nth match (so that :meth:`_after` kills after it, whatever other threads do)."""
        rels = [self._rel(p) for p in paths]
        if self.trace:
            self._emit(TRACE, {"op": op, "path": rels[-1], "paths": rels, "phase": self.phase,
                               "thread": threading.current_thread().name})
        rule = self.rule
        if rule is None or op != rule.op:
            return False
        if rule.phase is not None and rule.phase != self.phase:
            return False
        if not any(fnmatch.fnmatchcase(r, rule.path) for r in rels):
            return False
        with self._lock:
            self.matched += 1
            nth = self.matched == rule.nth
        if nth and rule.when == "before":
            self._kill(op, "before", rels)
        return nth

    def _after(self, nth: bool, op: str, *paths: str) -> None:
        if nth and self.rule is not None and self.rule.when == "after":
            self._kill(op, "after", [self._rel(p) for p in paths])

    def _kill(self, op: str, when: str, rels) -> None:
        self._emit(MARKER, {"op": op, "when": when, "nth": self.rule.nth, "path": rels[-1],
                            "paths": list(rels), "phase": self.phase,
                            "thread": threading.current_thread().name})
        os.kill(os.getpid(), signal.SIGKILL)

    @staticmethod
    def _emit(prefix: str, doc: dict) -> None:
        os.write(1, (prefix + json.dumps(doc, sort_keys=True) + "\n").encode())

    # -- the seam --------------------------------------------------------------------------

    def open(self, path: str, mode: str) -> FileHandle:
        writing = any(c in mode for c in "wax+")      # reads are not part of the durable path
        k = self._before("open", path) if writing else False
        handle = super().open(path, mode)
        self._after(k, "open", path)
        return handle

    def fsync_dir(self, path: str) -> None:
        k = self._before("fsync_dir", path)
        super().fsync_dir(path)
        self._after(k, "fsync_dir", path)

    def rename(self, src: str, dst: str) -> None:
        k = self._before("rename", src, dst)
        super().rename(src, dst)
        self._after(k, "rename", src, dst)

    def unlink(self, path: str) -> None:
        k = self._before("unlink", path)
        super().unlink(path)
        self._after(k, "unlink", path)

    def makedirs(self, path: str) -> None:
        k = self._before("makedirs", path)
        super().makedirs(path)
        self._after(k, "makedirs", path)

    def rmtree(self, path: str) -> None:
        k = self._before("rmtree", path)
        super().rmtree(path)
        self._after(k, "rmtree", path)

    def _write(self, handle: FileHandle, data) -> int:
        k = self._before("write", handle.path)
        n = super()._write(handle, data)
        self._after(k, "write", handle.path)
        return n

    def _fsync(self, handle: FileHandle) -> None:
        k = self._before("fsync", handle.path)
        super()._fsync(handle)
        self._after(k, "fsync", handle.path)

    def _truncate(self, handle: FileHandle, size: int) -> None:
        k = self._before("truncate", handle.path)
        super()._truncate(handle, size)
        self._after(k, "truncate", handle.path)


def from_env(root: str) -> KillPointFileSystem:
    """The filesystem a child should open ``root`` with, configured from its environment."""
    text = os.environ.get(ENV)
    rule = KillRule.from_json(text) if text else None
    return KillPointFileSystem(root, rule, trace=bool(os.environ.get(TRACE_ENV)))
