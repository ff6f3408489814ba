"""Loading and validating configuration: every key declared once, by exactly one component.

A config is a set of overrides (a TOML file, or a dict of the same shape) on top of the
effective defaults, which are the declared defaults of the selected components. Anything that no
selected component declares is an error naming the key path and the file: there is no such thing
as a threshold that is accepted and then ignored.
"""
from __future__ import annotations

import copy
import os
import re
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from .errors import ConfigError, PluginError
from .registry import KIND_LABELS, Registry, get_registry
from .specs import ComponentSpec, ConfigKey
from .units import UnitError, format_duration, format_size, parse_duration, parse_size

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["EffectiveConfig", "load_config", "CORE_KEYS", "parse_value", "render_toml",
           "validate_collection_overrides", "ExplainRow"]

ConfigSource = Union[None, str, "os.PathLike[str]", Mapping[str, Any]]

#: Keys the core itself owns, by section.
CORE_KEYS: Dict[str, Tuple[ConfigKey, ...]] = {
    "wal": (ConfigKey("strategy", "str", "avro", "The registered WAL strategy to use."),),
    "storage": (
        ConfigKey("engine", "str", "viper", "The registered storage engine to use."),
        ConfigKey("root", "str", "", "Where the storage engine keeps its files. Empty: <data dir>/storage. "
                  "A path (relative: to the data directory) or a file:// URI: that local directory, with "
                  "real fsyncs. Any other URI pyarrow.fs.FileSystem.from_uri accepts, such as "
                  "s3://bucket/prefix?region=eu-west-1: that object store, where a file is durable once "
                  "written whole and manifests are versioned instead of renamed. The WAL stays in the "
                  "data directory (it needs fsync). Checked at open; see docs/storage.md."),
    ),
    "flush": (ConfigKey("policies", "str_list", ["size", "global_memory", "time", "wal_size", "manual"],
                        "The enabled flush policies; each enforces the keys of its [flush.NAME] section."),),
    "maintenance": (
        ConfigKey("check_interval", "duration", 0.1, "How often background maintenance asks the flush "
                  "policies (it also asks after every write).", unit="seconds", threshold=True,
                  minimum=0.001),
        ConfigKey("workers", "int", 2, "Worker threads running flushes and compactions off the write path. "
                  "Storage work (merges, index builds) runs on at most workers - 1 of them (at least one), "
                  "so that a flush always finds a worker at once, even while long index builds run.",
                  unit="threads", minimum=1, maximum=64),
        ConfigKey("worker_nice", "int", 10, "Linux nice value of the worker threads (the threads they start, "
                  "such as faiss's for index builds, inherit it), so that on a busy CPU writers and searches "
                  "run first; 0 keeps the process's priority. Ignored elsewhere. Under a writer flood held "
                  "back by global_memory_limit, writers then wait longer for the flushes that free memory.",
                  minimum=0, maximum=19),
        ConfigKey("max_flush_bytes", "size", 16_000_000, "When ingest outruns the flushes and frozen memtables "
                  "of a collection queue up, one flush writes the oldest of them (frozen by the same policy) "
                  "as one segment, up to this many memtable bytes; 0 writes each memtable as its own segment. "
                  "It bounds a flush's extra memory (a copy of its rows) and its length, not when flushes "
                  "happen: that is the policies' thresholds.", unit="bytes", minimum=0),
        ConfigKey("retry_initial_backoff", "duration", 0.1, "First wait before retrying a failed flush, or "
                  "a collection's failed background storage work (merge, index build); doubles after each "
                  "failure.", unit="seconds", minimum=0.001),
        ConfigKey("retry_max_backoff", "duration", 30.0, "Longest wait between retries of a failed flush or "
                  "of failed background storage work.", unit="seconds", minimum=0.001),
        ConfigKey("close_timeout", "duration", 60.0, "How long close() waits for running flushes before "
                  "raising CloseTimeout (acknowledged writes stay recoverable from the WAL).",
                  unit="seconds", minimum=0.0),
        ConfigKey("flush_history", "int", 100, "How many recent flush attempts stats() and `proxistore stats` show per collection, with "
                  "their reasons; they are also kept in collections/<name>/flushes.jsonl, so they survive a "
                  "restart (that file is not fsynced: it is a record, not data).",
                  unit="flushes", minimum=1),
    ),
}
_SELECTOR = {"wal": "strategy", "storage": "engine", "flush": "policies"}
_SECTION_KIND = {"wal": "wal", "storage": "storage", "flush": "flush"}


@dataclass(frozen=True)
class ExplainRow:
    """One key of the effective config: where it lives, its value, and who enforces it."""

    path: str
    value: Any
    display: str
    unit: Optional[str]
    component: str
    threshold: bool
    help: str


@dataclass
class EffectiveConfig:
    """The validated config: selected components, their parsed sections, and where it came from."""

    source: str
    wal_spec: ComponentSpec
    storage_spec: ComponentSpec
    policy_specs: Dict[str, ComponentSpec]
    wal: Dict[str, Any]
    storage: Dict[str, Any]
    flush: Dict[str, Dict[str, Any]]
    maintenance: Dict[str, Any]
    raw: Dict[str, Any] = field(default_factory=dict)
    storage_root: str = ""       # [storage] root, resolved at open (proxistore.storage_root)

    @property
    def policies(self) -> List[str]:
        return list(self.policy_specs)

    def explain(self) -> List[ExplainRow]:
        """Every key, its effective value and the component that owns (and enforces) it."""
        rows: List[ExplainRow] = []
        for section, keys in CORE_KEYS.items():
            values = {"wal": {"strategy": self.wal_spec.name},
                      "storage": {"engine": self.storage_spec.name, "root": self.storage_root},
                      "flush": {"policies": self.policies}, "maintenance": self.maintenance}[section]
            for key in keys:
                rows.append(_row(f"{section}.{key.name}", key, values[key.name], "core (proxistore)"))
        for section, spec, values in self._components():
            owner = f"{KIND_LABELS[spec.kind]} '{spec.name}' ({spec.package} {spec.version})".strip()
            for key in spec.keys:
                rows.append(_row(f"{section}.{key.name}", key, values[key.name], owner))
        return rows

    def _components(self) -> List[Tuple[str, ComponentSpec, Dict[str, Any]]]:
        out = [(f"wal.{self.wal_spec.name}", self.wal_spec, self.wal),
               (f"storage.{self.storage_spec.name}", self.storage_spec, self.storage)]
        out += [(f"flush.{name}", spec, self.flush[name]) for name, spec in self.policy_specs.items()]
        return out

    def to_toml(self) -> str:
        """This config as TOML, every key present and commented with its help and owner."""
        return render_toml(self)


def _row(path: str, key: ConfigKey, value: Any, owner: str) -> ExplainRow:
    return ExplainRow(path, value, format_value(key, value), key.unit, owner, key.threshold, key.help)


# ------------------------------------------------------------------------------------------------
# values
# ------------------------------------------------------------------------------------------------

def parse_value(key: ConfigKey, value: Any, path: str, source: str) -> Any:
    """``value`` parsed per the key's declared kind and checked against its bounds."""

    def fail(msg: str) -> ConfigError:
        return ConfigError(msg, key=path, file=source)

    kind = key.kind
    try:
        if kind == "size":
            parsed: Any = parse_size(value)
        elif kind == "duration":
            parsed = parse_duration(value)
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise fail(f"expected an integer, got {type(value).__name__} {value!r}")
            parsed = value
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise fail(f"expected a number, got {type(value).__name__} {value!r}")
            parsed = float(value)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise fail(f"expected true or false, got {type(value).__name__} {value!r}")
            parsed = value
        elif kind == "str":
            if not isinstance(value, str):
                raise fail(f"expected a string, got {type(value).__name__} {value!r}")
            parsed = value
        elif kind == "choice":
            if value not in (key.choices or ()):
                raise fail(f"{value!r} is not one of: {', '.join(key.choices or ())}")
            parsed = value
        elif kind == "str_list":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise fail(f"expected a list of strings, got {value!r}")
            if len(set(value)) != len(value):
                raise fail(f"lists {sorted(v for v in set(value) if value.count(v) > 1)} more than once")
            parsed = list(value)
        else:  # pragma: no cover - ConfigKey validates kinds
            raise fail(f"unknown kind {kind}")
    except UnitError as exc:
        raise fail(str(exc)) from None
    if kind in ("size", "duration", "int", "float"):
        if key.minimum is not None and parsed < key.minimum:
            raise fail(f"{value!r} is below the minimum {_fmt(key, key.minimum)}"
                       + (" (it cannot be negative)" if parsed < 0 else ""))
        if key.maximum is not None and parsed > key.maximum:
            raise fail(f"{value!r} is above the maximum {_fmt(key, key.maximum)}")
    return parsed


def format_value(key: ConfigKey, value: Any) -> str:
    return _fmt(key, value)


def _fmt(key: ConfigKey, value: Any) -> str:
    if key.kind == "size":
        return format_size(int(value))
    if key.kind == "duration":
        return format_duration(float(value))
    return str(value)


def _toml_value(key: ConfigKey, value: Any) -> str:
    if key.kind in ("size", "duration"):
        return f'"{_fmt(key, value)}"'
    if key.kind in ("str", "choice"):
        return _toml_str(value)
    if key.kind == "str_list":
        return "[" + ", ".join(_toml_str(v) for v in value) + "]"
    if key.kind == "bool":
        return "true" if value else "false"
    return repr(value)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# ------------------------------------------------------------------------------------------------
# loading
# ------------------------------------------------------------------------------------------------

def read_toml(path: str) -> Dict[str, Any]:
    """Parse a TOML file; syntax errors name the file, line and column."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("config file not found", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        line, col = (int(m.group(1)), int(m.group(2))) if m else (getattr(exc, "lineno", None),
                                                                   getattr(exc, "colno", None))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(exc))
        raise ConfigError(f"TOML syntax error: {msg}", file=path, line=line, column=col) from None


def load_config(config: ConfigSource = None, *, registry: Optional[Registry] = None) -> EffectiveConfig:
    """Validate ``config`` (a TOML path, a dict of overrides, or None) against the registry."""
    registry = registry or get_registry()
    if config is None:
        raw: Dict[str, Any] = {}
        source = "<defaults>"
    elif isinstance(config, Mapping):
        raw = copy.deepcopy(dict(config))
        source = "<dict>"
    else:
        source = os.fspath(config)
        raw = read_toml(source)
    return _validate(raw, source, registry)


def _validate(raw: Dict[str, Any], source: str, registry: Registry) -> EffectiveConfig:
    unknown = sorted(set(raw) - set(CORE_KEYS))
    if unknown:
        raise ConfigError(f"unknown section; valid sections are: {', '.join(CORE_KEYS)}",
                          key=unknown[0], file=source)
    for section, value in raw.items():
        if not isinstance(value, Mapping):
            raise ConfigError("expected a table (section)", key=section, file=source)

    def core_section(section: str) -> Dict[str, Any]:
        given = raw.get(section, {})
        keys = {k.name: k for k in CORE_KEYS[section]}
        out = {}
        for name, key in keys.items():
            out[name] = parse_value(key, given[name], f"{section}.{name}", source) if name in given \
                else copy.deepcopy(key.default)
        return out

    core = {s: core_section(s) for s in ("wal", "storage", "flush")}
    selected = {s: core[s][_SELECTOR[s]] for s in core}
    maintenance = core_section("maintenance")
    _reject_unknown(raw.get("maintenance", {}), "maintenance", [k.name for k in CORE_KEYS["maintenance"]],
                    source)

    def spec_for(section: str, name: str) -> ComponentSpec:
        try:
            return registry.lookup(_SECTION_KIND[section], name)
        except PluginError as exc:
            key = f"{section}.{_SELECTOR[section]}"
            raise ConfigError(str(exc), key=key, file=source) from None

    wal_spec = spec_for("wal", selected["wal"])
    storage_spec = spec_for("storage", selected["storage"])
    policy_specs = {name: spec_for("flush", name) for name in selected["flush"]}

    sections = {
        "wal": {wal_spec.name: wal_spec},
        "storage": {storage_spec.name: storage_spec},
        "flush": policy_specs,
    }
    parsed: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for section, enabled in sections.items():
        given = raw.get(section, {})
        parsed[section] = {}
        for sub, value in given.items():
            if sub in core[section]:
                continue
            if not isinstance(value, Mapping):
                takes = ", ".join(repr(k) for k in core[section])
                raise ConfigError(f"unknown key; [{section}] takes {takes} and one "
                                  f"[{section}.NAME] section per selected component",
                                  key=f"{section}.{sub}", file=source)
            if sub not in enabled:
                raise _not_enabled(section, sub, enabled, registry, source)
        for name, spec in enabled.items():
            parsed[section][name] = parse_section(spec, given.get(name, {}), f"{section}.{name}", source)
    return EffectiveConfig(source=source, wal_spec=wal_spec, storage_spec=storage_spec,
                           policy_specs=policy_specs, wal=parsed["wal"][wal_spec.name],
                           storage=parsed["storage"][storage_spec.name], flush=parsed["flush"],
                           maintenance=maintenance, raw=raw, storage_root=core["storage"]["root"])


def parse_section(spec: ComponentSpec, given: Mapping[str, Any], path: str, source: str,
                  *, base: Optional[Mapping[str, Any]] = None, per_collection_only: bool = False
                  ) -> Dict[str, Any]:
    """A component's section: declared defaults (or ``base``) overridden by ``given``, validated."""
    keys = {k.name: k for k in spec.keys}
    _reject_unknown(given, path, list(keys), source)
    out = dict(base) if base is not None else spec.defaults()
    for name, value in given.items():
        key = keys[name]
        if per_collection_only and not key.per_collection:
            raise ConfigError("cannot be set per collection; set it in the database config",
                              key=f"{path}.{name}", file=source)
        out[name] = parse_value(key, value, f"{path}.{name}", source)
    validator = getattr(spec.factory, "validate_config", None)
    if validator is not None:
        try:
            validator(out)
        except ConfigError as exc:
            raise ConfigError(exc.reason, key=f"{path}.{exc.key}" if exc.key else path, file=source) from None
    return out


def _reject_unknown(given: Mapping[str, Any], path: str, valid: List[str], source: str) -> None:
    for name in given:
        if name not in valid:
            listing = ", ".join(sorted(valid)) or "(none: this component takes no keys)"
            raise ConfigError(f"unknown key; valid keys here are: {listing}", key=f"{path}.{name}",
                              file=source)


def _not_enabled(section: str, sub: str, enabled: Mapping[str, ComponentSpec], registry: Registry,
                 source: str) -> ConfigError:
    kind = _SECTION_KIND[section]
    label = KIND_LABELS[kind]
    selector = f"{section}.{_SELECTOR[section]}"
    if sub in registry.specs(kind):
        verb = "enabled" if section == "flush" else "selected"
        return ConfigError(f"section [{section}.{sub}] configures the {label} {sub!r}, which is not {verb} "
                           f"({selector} = {sorted(enabled)}); its keys would be ignored, so this is an "
                           f"error: enable it or remove the section", key=f"{section}.{sub}", file=source)
    choices = ", ".join(sorted(registry.specs(kind))) or "(none)"
    return ConfigError(f"section [{section}.{sub}] names no registered {label}; registered: {choices}",
                       key=f"{section}.{sub}", file=source)


def validate_collection_overrides(overrides: Mapping[str, Any], effective: EffectiveConfig,
                                  collection: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """Parse per-collection overrides ``{"flush": {policy: {...}}, "storage": {engine: {...}}}``.

    Returns the effective sections for the collection: ``{"flush": {policy: {...}}, "storage": {...}}``.
    """
    source = f"<collection {collection}>"
    if not isinstance(overrides, Mapping):
        raise ConfigError("collection config must be a dict like {'flush': {'size': {...}}}", file=source)
    bad = sorted(set(overrides) - {"flush", "storage"})
    if bad:
        raise ConfigError("only 'flush' and 'storage' settings can be set per collection",
                          key=bad[0], file=source)
    out: Dict[str, Dict[str, Dict[str, Any]]] = {"flush": {}, "storage": {}}
    enabled = {"flush": effective.policy_specs, "storage": {effective.storage_spec.name: effective.storage_spec}}
    bases = {"flush": effective.flush, "storage": {effective.storage_spec.name: effective.storage}}
    registry_kind = {"flush": "flush", "storage": "storage"}
    for section in ("flush", "storage"):
        given = overrides.get(section, {})
        if not isinstance(given, Mapping):
            raise ConfigError("expected a table (section)", key=section, file=source)
        for sub in given:
            if sub not in enabled[section]:
                kind = registry_kind[section]
                raise ConfigError(f"{KIND_LABELS[kind]} {sub!r} is not enabled for this database "
                                  f"(enabled: {', '.join(enabled[section])})", key=f"{section}.{sub}",
                                  file=source)
        for name, spec in enabled[section].items():
            out[section][name] = parse_section(spec, given.get(name, {}), f"{section}.{name}", source,
                                               base=bases[section][name], per_collection_only=True)
    return out


def render_toml(cfg: EffectiveConfig) -> str:
    """``cfg`` as a TOML document with every key, its help, unit and owning component."""
    lines = ["# proxistore configuration: every key, its effective value, and who enforces it.",
             "# Sizes: kB/MB/GB are decimal, KiB/MiB/GiB binary, a bare integer is bytes.",
             "# Durations: us, ms, s, m, h; a bare number is seconds.", ""]
    by_path = {row.path: row for row in cfg.explain()}
    for section, sub, spec, values in _sections(cfg):
        lines.append(f"[{section}{'.' + sub if sub else ''}]")
        if spec is not None:
            lines.extend("# " + line for line in textwrap.wrap(
                f"{KIND_LABELS[spec.kind]} '{spec.name}': {spec.description}".rstrip(": "), 98))
        keys = CORE_KEYS[section] if spec is None else spec.keys
        prefix = f"{section}.{sub}" if sub else section
        for key in keys:
            row = by_path[f"{prefix}.{key.name}"]
            note = key.help.rstrip()
            note += ("" if note.endswith(".") else ".") + (f" Unit: {key.unit}." if key.unit else "")
            if key.threshold:
                note += " Threshold enforced by " + row.component + "."
            lines.extend("# " + line for line in textwrap.wrap(note, 98))
            lines.append(f"{key.name} = {_toml_value(key, values[key.name])}")
        lines.append("")
    return "\n".join(lines)


def _sections(cfg: EffectiveConfig):
    yield "wal", "", None, {"strategy": cfg.wal_spec.name}
    yield "wal", cfg.wal_spec.name, cfg.wal_spec, cfg.wal
    yield "storage", "", None, {"engine": cfg.storage_spec.name, "root": cfg.storage_root}
    yield "storage", cfg.storage_spec.name, cfg.storage_spec, cfg.storage
    yield "flush", "", None, {"policies": cfg.policies}
    for name, spec in cfg.policy_specs.items():
        yield "flush", name, spec, cfg.flush[name]
    yield "maintenance", "", None, cfg.maintenance
