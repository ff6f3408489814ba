"""Every error proxistore raises, under one base class.

Input errors also subclass ``ValueError`` so that callers who validate generically keep working.
Each error carries the context a user needs to act on it (the key, the file, the collection).
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "ProxistoreError",
    "InputError",
    "DimensionMismatch",
    "InvalidVector",
    "InvalidId",
    "DuplicateId",
    "InvalidMetadata",
    "InvalidCollectionName",
    "InvalidArgument",
    "InvalidFilter",
    "FilterTypeError",
    "CollectionNotFound",
    "CollectionExists",
    "ConfigError",
    "PluginError",
    "DatabaseClosed",
    "DatabaseLocked",
    "HolderUnresponsive",
    "MaintenanceStopped",
    "StorageError",
    "WalError",
    "WalCorruption",
    "WalVersionError",
    "BackpressureTimeout",
    "FlushError",
    "CloseTimeout",
    "PolicyNotEnabled",
]


class ProxistoreError(Exception):
    """Base class of every proxistore error."""


class InputError(ProxistoreError, ValueError):
    """A caller passed something proxistore cannot accept; nothing of the call was persisted."""


class DimensionMismatch(InputError):
    """A vector or query does not have the collection's dimension."""


class InvalidVector(InputError):
    """Vectors are not a finite numeric (n, dim) array."""


class InvalidId(InputError):
    """An id is empty, not a string, or ids and vectors do not line up."""


class DuplicateId(InputError):
    """An id appears twice in one batch, or an insert names an id that already exists."""


class InvalidMetadata(InputError):
    """Metadata is not a list of JSON-serialisable dicts matching the batch length and key types."""


class InvalidCollectionName(InputError):
    """A collection name outside ``[A-Za-z0-9_-]{1,64}``."""


class InvalidArgument(InputError):
    """Any other bad argument (k <= 0, dim <= 0, unknown metric, ...)."""


class InvalidFilter(InputError):
    """A metadata filter uses an unknown operator or is malformed."""


class FilterTypeError(InvalidFilter):
    """A filter compares a metadata key with a value of another type."""


class CollectionNotFound(InputError, KeyError):
    """The named collection does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CollectionExists(InputError):
    """A collection of that name already exists."""


class ConfigError(ProxistoreError, ValueError):
    """The configuration is invalid; the message names the key path and the file."""

    def __init__(self, message: str, *, key: Optional[str] = None, file: Optional[str] = None,
                 line: Optional[int] = None, column: Optional[int] = None) -> None:
        self.key = key
        self.file = file
        self.line = line
        self.column = column
        self.reason = message  # the message without the file and key prefix
        where = []
        if file:
            where.append(str(file))
            if line is not None:
                where[-1] += f":{line}" + (f":{column}" if column is not None else "")
        if key:
            where.append(f"key '{key}'")
        prefix = (", ".join(where) + ": ") if where else ""
        super().__init__(prefix + message)


class PolicyNotEnabled(ConfigError):
    """An operation needs a flush policy that the configuration does not enable."""


class PluginError(ProxistoreError):
    """A plugin failed to load, clashed with another, or broke its contract."""

    def __init__(self, message: str, *, plugin: Optional[str] = None) -> None:
        self.plugin = plugin
        super().__init__(message)


class DatabaseClosed(ProxistoreError):
    """The database (or a collection handle of it) was used after ``close()``."""


class DatabaseLocked(ProxistoreError):
    """Another process (or another handle in this one) has the data directory open."""


class HolderUnresponsive(ProxistoreError):
    """The process that has the data directory open did not take a request from the
    ``proxistore`` command in time (its background maintenance, which takes them, is not
    running), or exited before answering it."""


class MaintenanceStopped(ProxistoreError):
    """Background maintenance, which enforces the flush policies, has stopped in this process
    (``stats()["maintenance"]["scheduler"]`` says why): writes are refused until the database
    is reopened, since no threshold would be enforced for them. Reads and ``flush()`` work."""


class DataDirectoryError(ProxistoreError):
    """The data directory or its catalog of collections could not be read or written (the
    operating system's error is the ``__cause__``); nothing of the failed call was committed."""


class StorageError(ProxistoreError):
    """The storage engine failed to read or write its files."""


class WalError(ProxistoreError):
    """The write-ahead log failed."""


class WalCorruption(WalError):
    """A WAL record before the tail is unreadable; names the file and byte offset."""

    def __init__(self, message: str, *, file: Optional[str] = None, offset: Optional[int] = None) -> None:
        self.file = file
        self.offset = offset
        super().__init__(message)


class WalVersionError(WalError):
    """A WAL file was written by a newer, incompatible major version of its format."""


class BackpressureTimeout(ProxistoreError):
    """A write waited ``stall_timeout`` for memory under ``global_memory_limit`` and gave up."""


class FlushError(ProxistoreError):
    """A flush failed; the WAL and memtable were kept and nothing was lost."""


class CloseTimeout(ProxistoreError):
    """``close()`` gave up waiting for background work; acknowledged writes stay recoverable."""
