"""The hooks proxistore calls. Plugins implement them with ``@proxistore.hookimpl``.

Three registration hooks return typed specs (selected later by config name, never by hook order);
four observer hooks tell plugins (metrics exporters, auditors) what the core did.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    from .events import CompactionEvent, FlushEvent, RecoveryEvent
    from .specs import FlushPolicySpec, StorageEngineSpec, WalStrategySpec

PROJECT_NAME = "proxistore"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def proxistore_wal_strategies() -> "List[WalStrategySpec]":
    """Return the WAL strategies this plugin provides."""


@hookspec
def proxistore_flush_policies() -> "List[FlushPolicySpec]":
    """Return the flush policies this plugin provides."""


@hookspec
def proxistore_storage_engines() -> "List[StorageEngineSpec]":
    """Return the storage engines this plugin provides."""


@hookspec
def proxistore_flush_started(event: "FlushEvent") -> None:
    """A flush of ``event.collection`` started, for ``event.reason``."""


@hookspec
def proxistore_flush_finished(event: "FlushEvent") -> None:
    """A flush finished (``event.error`` is set when it failed and will be retried)."""


@hookspec
def proxistore_wal_recovered(event: "RecoveryEvent") -> None:
    """A collection's WAL was replayed on open (records, torn tail, set-aside bytes)."""


@hookspec
def proxistore_compaction_finished(event: "CompactionEvent") -> None:
    """A storage compaction of ``event.collection`` finished."""
