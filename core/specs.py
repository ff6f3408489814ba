"""Typed records that plugins return from the registration hooks.

A component (WAL strategy, flush policy, storage engine, or the core itself) declares each config
key it owns once, as a :class:`ConfigKey`; that declaration drives validation, ``config explain``,
``config/default.toml`` and the docs. A key nobody declares cannot be set.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Tuple

__all__ = [
    "ConfigKey",
    "ComponentSpec",
    "WalStrategySpec",
    "FlushPolicySpec",
    "StorageEngineSpec",
    "KEY_KINDS",
]

#: The value kinds a key may declare. ``size`` parses to int bytes, ``duration`` to float seconds.
KEY_KINDS = ("size", "duration", "int", "float", "bool", "str", "choice", "str_list")


@dataclass(frozen=True)
class ConfigKey:
    """One config key: its type, default (in the parsed unit), unit, help and bounds.

    ``threshold=True`` marks a value that the owning component *enforces* (``config explain``
    lists it and the enforcement test drives a workload across it).
    ``per_collection=True`` allows overriding it at ``create_collection(..., config=...)``.
    """

    name: str
    kind: str
    default: Any
    help: str
    unit: Optional[str] = None
    minimum: Optional[float] = 0
    maximum: Optional[float] = None
    choices: Optional[Tuple[str, ...]] = None
    threshold: bool = False
    per_collection: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KEY_KINDS:
            raise ValueError(f"ConfigKey {self.name!r}: kind must be one of {KEY_KINDS}, not {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"ConfigKey {self.name!r}: a choice key needs choices")


@dataclass(frozen=True)
class ComponentSpec:
    """A named implementation and the config keys it owns.

    ``factory`` is called with the component's parsed config section (a dict of key -> value)
    plus the keyword arguments of its kind's contract (see :mod:`proxistore.contracts`).
    """

    name: str
    factory: Any
    keys: Tuple[ConfigKey, ...] = ()
    description: str = ""
    #: filled in by the plugin manager: the distribution that registered it
    package: str = field(default="", compare=False)
    version: str = field(default="", compare=False)

    kind = "component"

    def key(self, name: str) -> ConfigKey:
        for k in self.keys:
            if k.name == name:
                return k
        raise KeyError(name)

    def defaults(self) -> dict:
        return {k.name: k.default for k in self.keys}


@dataclass(frozen=True)
class WalStrategySpec(ComponentSpec):
    """Registers a write-ahead log; ``factory(config, *, fs, root)`` returns a :class:`~proxistore.contracts.WalStrategy`."""

    kind = "wal"


@dataclass(frozen=True)
class FlushPolicySpec(ComponentSpec):
    """Registers a flush policy; ``factory(config)`` returns a :class:`~proxistore.contracts.FlushPolicy`."""

    kind = "flush"


@dataclass(frozen=True)
class StorageEngineSpec(ComponentSpec):
    """Registers a storage engine; ``factory(config, *, fs, root)`` returns a :class:`~proxistore.contracts.StorageEngine`."""

    kind = "storage"
