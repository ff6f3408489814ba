"""A collection's recent flushes and compactions, kept on disk so that "why?" outlives the process.

The failure this project was born from went unseen because nothing told the operator what the
flush manager did. ``stats()`` answers for the running process; these files answer after a
restart, and for ``proxistore stats`` run later from another process. They sit with the
collection's record in the catalog (and go with it when it is dropped):
``collections/<name>/flushes.jsonl`` (one JSON line per flush attempt) and
``compactions.jsonl`` (one per merge or index-build run), appended when the work ends.

They are a record, not data: an append is not fsynced, so a power loss may take the last lines
(never a row), and a torn or unreadable line is skipped on load. A file is rewritten with the
newest ``keep`` lines once it holds twice that many, so it stays small.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional

from .fileio import FileSystem
from .jsonable import jsonable

__all__ = ["EventHistory", "RecentEvents", "FLUSHES_FILE", "COMPACTIONS_FILE"]

log = logging.getLogger("proxistore.history")

FLUSHES_FILE = "flushes.jsonl"
COMPACTIONS_FILE = "compactions.jsonl"


class EventHistory:
    """One on-disk event record of one collection (see the module docstring)."""

    def __init__(self, fs: FileSystem, path: str, keep: int) -> None:
        self.fs = fs
        self.path = path
        self.keep = keep
        self.skipped_lines = 0
        self._lines = 0
        self._rewrite = False   # the file holds a torn or foreign line: the next append replaces it

    def load(self) -> List[Dict[str, Any]]:
        """The newest ``keep`` records, oldest first; [] when there is no file yet.

        An OSError is raised to the caller, which decides whether a missing record matters."""
        if not self.fs.exists(self.path):
            return []
        records = []
        data = self.fs.read_bytes(self.path)
        lines = data.splitlines()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:      # a torn last line, or bytes that are not ours
                self.skipped_lines += 1
                continue
            if isinstance(record, dict):
                records.append(record)
            else:
                self.skipped_lines += 1
        self._lines = len(lines)
        self._rewrite = self.skipped_lines > 0 or (data != b"" and not data.endswith(b"\n"))
        return records[-self.keep:] if self.keep else []

    def append(self, record: Mapping[str, Any], newest: List[Dict[str, Any]]) -> None:
        """Add ``record``; ``newest`` (the records kept in memory, ``record`` last) replaces the
        file's content once it has grown to twice ``keep`` lines, or when it held a torn line.
        Raises OSError."""
        if self.keep <= 0:
            return
        if self._rewrite or self._lines + 1 > 2 * self.keep:
            body = b"".join(_line(r) for r in newest[-self.keep:])
            self.fs.write_atomic(self.path, body)
            self._lines = min(len(newest), self.keep)
            self._rewrite = False
            return
        with self.fs.open(self.path, "ab") as f:
            f.write(_line(record))
        self._lines += 1


class RecentEvents:
    """The newest ``keep`` events of one kind for one collection: in memory for ``stats()``,
    and, with an :class:`EventHistory`, on disk too, starting from what earlier opens recorded.

    A record that cannot be read or written is counted in ``history_errors`` and logged; it
    never fails the flush or compaction it describes."""

    def __init__(self, keep: int, history: Optional[EventHistory] = None) -> None:
        self._events: Deque[Dict[str, Any]] = deque(maxlen=keep)
        self.history = history
        self.history_errors = 0
        if history is not None:
            try:
                self._events.extend(history.load())
            except OSError as exc:
                self._failed("read", exc)

    def record(self, event: Dict[str, Any]) -> None:
        self._events.append(event)
        if self.history is None:
            return
        try:
            self.history.append(event, list(self._events))
        except OSError as exc:
            self._failed("append to", exc)

    def list(self) -> List[Dict[str, Any]]:
        """The events, oldest first (a copy made in one C call: safe while a worker records)."""
        return list(self._events)

    def _failed(self, what: str, exc: OSError) -> None:
        self.history_errors += 1
        log.warning("cannot %s the event history %s (the work it records is not affected): %s",
                    what, self.history.path if self.history else "", exc)


def _line(record: Mapping[str, Any]) -> bytes:
    return json.dumps(jsonable(dict(record)), separators=(",", ":")).encode() + b"\n"
