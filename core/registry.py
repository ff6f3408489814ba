"""The plugin manager: loads every entry point of the ``proxistore`` group, one at a time,
and indexes the specs they register by kind and name.

Built-in plugins register through the same entry points as third-party ones. A plugin that fails
to import or to answer its hooks is reported (``Registry.broken``) and skipped, or is fatal when
``strict`` (or ``PROXISTORE_STRICT_PLUGINS=1``). ``PROXISTORE_DISABLE_EXTERNAL_PLUGINS=1`` loads
only the plugins shipped in the ``proxistore`` distribution. Two specs of one kind with the same
name are rejected, naming both packages.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field, replace
from importlib import metadata
from typing import Any, Dict, Iterable, List, Optional, Tuple

import pluggy

from . import hookspecs
from .errors import PluginError
from .specs import ComponentSpec, FlushPolicySpec, StorageEngineSpec, WalStrategySpec

__all__ = ["Registry", "LoadedPlugin", "get_registry", "build_registry", "ENTRY_POINT_GROUP",
           "STRICT_ENV", "DISABLE_EXTERNAL_ENV"]

log = logging.getLogger("proxistore.plugins")

ENTRY_POINT_GROUP = "proxistore"
STRICT_ENV = "PROXISTORE_STRICT_PLUGINS"
DISABLE_EXTERNAL_ENV = "PROXISTORE_DISABLE_EXTERNAL_PLUGINS"
BUILTIN_PACKAGE = "proxistore"

_KIND_HOOKS = (
    ("wal", "proxistore_wal_strategies", WalStrategySpec),
    ("flush", "proxistore_flush_policies", FlushPolicySpec),
    ("storage", "proxistore_storage_engines", StorageEngineSpec),
)
KIND_LABELS = {"wal": "WAL strategy", "flush": "flush policy", "storage": "storage engine"}


@dataclass
class LoadedPlugin:
    """One plugin (entry point or object) and what it provides, for ``proxistore plugins``."""

    name: str
    package: str
    version: str
    hooks: List[str] = field(default_factory=list)
    specs: List[ComponentSpec] = field(default_factory=list)
    error: Optional[str] = None


class Registry:
    """Specs by kind and name, and the inventory of loaded (and broken) plugins."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: List[LoadedPlugin] = []
        self._specs: Dict[str, Dict[str, ComponentSpec]] = {kind: {} for kind, _, _ in _KIND_HOOKS}

    # -- loading ---------------------------------------------------------------------------

    def register(self, plugin: Any, *, name: Optional[str] = None, package: str = "",
                 version: str = "") -> Optional[LoadedPlugin]:
        """Register a plugin object (a module or instance with ``proxistore_*`` hookimpls)."""
        name = name or getattr(plugin, "__name__", type(plugin).__name__)
        loaded = LoadedPlugin(name=name, package=package, version=version)
        try:
            self.pm.register(plugin, name=name)
            loaded.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            for kind, hook_name, spec_cls in _KIND_HOOKS:
                impl = getattr(plugin, hook_name, None)
                if impl is None:
                    continue
                for spec in impl() or []:
                    if not isinstance(spec, spec_cls):
                        raise PluginError(f"{hook_name} must return {spec_cls.__name__} records, got "
                                          f"{type(spec).__name__}", plugin=name)
                    if not spec.name or not isinstance(spec.name, str):
                        raise PluginError(f"{hook_name} returned a spec with an empty name", plugin=name)
                    loaded.specs.append(replace(spec, package=package or name, version=version))
        except PluginError as exc:
            return self._broken(loaded, plugin, exc)
        except Exception as exc:  # a third-party plugin may raise anything; report and skip it
            return self._broken(loaded, plugin, PluginError(f"{type(exc).__name__}: {exc}", plugin=name))
        for spec in loaded.specs:
            self._add_spec(spec)
        self.plugins.append(loaded)
        return loaded

    def load_entry_points(self, *, include_external: bool = True) -> None:
        """Load each entry point of the group on its own; a broken one is reported and skipped."""
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist is not None else ""
            version = dist.version if dist is not None else ""
            if not include_external and package != BUILTIN_PACKAGE:
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # import errors of third-party code are reported, not fatal
                self._broken(LoadedPlugin(ep.name, package, version), None,
                             PluginError(f"could not load entry point {ep.value!r} of package "
                                         f"{package or '?'}: {type(exc).__name__}: {exc}", plugin=ep.name))
                continue
            if self.pm.is_registered(plugin):
                continue
            self.register(plugin, name=ep.name, package=package, version=version)

    def _broken(self, loaded: LoadedPlugin, plugin: Any, exc: PluginError) -> LoadedPlugin:
        if plugin is not None and self.pm.is_registered(plugin):
            self.pm.unregister(plugin)
        loaded.error = str(exc)
        loaded.specs = []
        if self.strict:
            raise exc
        self.plugins.append(loaded)
        return loaded

    def _add_spec(self, spec: ComponentSpec) -> None:
        table = self._specs[spec.kind]
        other = table.get(spec.name)
        if other is not None:
            raise PluginError(
                f"two {KIND_LABELS[spec.kind]}s are named {spec.name!r}: one from package "
                f"{other.package!r}, one from package {spec.package!r}; uninstall one of them",
                plugin=spec.package)
        table[spec.name] = spec

    # -- lookup ----------------------------------------------------------------------------

    def specs(self, kind: str) -> Dict[str, ComponentSpec]:
        return dict(self._specs[kind])

    def lookup(self, kind: str, name: str) -> ComponentSpec:
        table = self._specs[kind]
        if name not in table:
            choices = ", ".join(sorted(table)) or "(none registered)"
            raise PluginError(f"no {KIND_LABELS[kind]} named {name!r} is registered; choose one of: "
                              f"{choices}", plugin=name)
        return table[name]

    def wal_strategy(self, name: str) -> WalStrategySpec:
        return self.lookup("wal", name)  # type: ignore[return-value]

    def storage_engine(self, name: str) -> StorageEngineSpec:
        return self.lookup("storage", name)  # type: ignore[return-value]

    def flush_policy(self, name: str) -> FlushPolicySpec:
        return self.lookup("flush", name)  # type: ignore[return-value]

    @property
    def broken(self) -> List[LoadedPlugin]:
        return [p for p in self.plugins if p.error]

    def notify(self, hook_name: str, event: Any) -> None:
        """Call every implementation of an observer hook with ``event``, each on its own: an
        observer that raises is logged and does not keep the others (or the data path) from running."""
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(event=event)
            except Exception:  # observers are third-party code; the event already happened
                log.exception("observer %s of plugin %s failed on %s", hook_name, impl.plugin_name,
                              type(event).__name__)


def _entry_points() -> Iterable[Any]:
    eps = metadata.entry_points()
    if hasattr(eps, "select"):
        return eps.select(group=ENTRY_POINT_GROUP)
    return eps.get(ENTRY_POINT_GROUP, [])  # Python < 3.10


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def build_registry(*, strict: Optional[bool] = None, include_external: Optional[bool] = None,
                   extra_plugins: Tuple[Any, ...] = ()) -> Registry:
    """A fresh registry from the installed entry points (and ``extra_plugins`` objects)."""
    reg = Registry(strict=_env_flag(STRICT_ENV) if strict is None else strict)
    external = (not _env_flag(DISABLE_EXTERNAL_ENV)) if include_external is None else include_external
    reg.load_entry_points(include_external=external)
    for plugin in extra_plugins:
        reg.register(plugin, package=getattr(plugin, "__name__", type(plugin).__name__))
    return reg


_cached: Optional[Registry] = None
_cache_key: Optional[Tuple[bool, bool]] = None
_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, built on first use (rebuilt if the environment switches change)."""
    global _cached, _cache_key
    key = (_env_flag(STRICT_ENV), _env_flag(DISABLE_EXTERNAL_ENV))
    with _lock:
        if _cached is None or _cache_key != key:
            _cached = build_registry()
            _cache_key = key
        return _cached
