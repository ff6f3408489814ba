"""``proxistore config check FILE`` and ``proxistore config explain FILE``.

Why: a threshold that no code enforces is the failure this project exists to end. ``check``
validates a file against the installed plugins exactly as ``proxistore.open`` would (unknown keys,
wrong types, sections of policies that are not enabled...) and exits 2 naming the key and file;
``explain`` lists every key with its effective value, unit, the component that owns it, and
whether it is a threshold that component enforces.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional

from proxistore.config import load_config
from proxistore.errors import ConfigError

from .output import Output

__all__ = ["cmd_config_check", "cmd_config_explain"]


def _source(args: argparse.Namespace) -> Optional[str]:
    """The file named on the command line, else ``--config``, else None (the built-in defaults)."""
    return args.file if args.file is not None else args.config


def cmd_config_check(args: argparse.Namespace, out: Output) -> int:
    """Validate a config file; exit 0 with "ok", or 2 with the error naming key and file."""
    source = _source(args)
    try:
        cfg = load_config(source)
    except ConfigError as exc:
        out.emit({"ok": False, "file": exc.file or source, "key": exc.key, "line": exc.line,
                  "error": str(exc)}, lambda: None)
        out.error(str(exc))
        return 2
    result = {"ok": True, "file": cfg.source, "wal_strategy": cfg.wal_spec.name,
              "storage_engine": cfg.storage_spec.name, "flush_policies": cfg.policies}
    out.emit(result, lambda: out.print(
        f"ok: {cfg.source} (WAL {cfg.wal_spec.name}, storage {cfg.storage_spec.name}, "
        f"flush policies: {', '.join(cfg.policies) or 'none'})"))
    return 0


def _is_set(raw: Dict[str, Any], path: str) -> bool:
    node: Any = raw
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _display(value: Any, display: str) -> str:
    return ", ".join(map(str, value)) if isinstance(value, list) else display


def cmd_config_explain(args: argparse.Namespace, out: Output) -> int:
    """Every key: path, effective value, unit, owner, enforced threshold or not, set or default."""
    cfg = load_config(_source(args))
    rows = [{"key": r.path, "value": r.value, "display": r.display, "unit": r.unit, "owner": r.component,
             "threshold": r.threshold, "source": "file" if _is_set(cfg.raw, r.path) else "default",
             "help": r.help} for r in cfg.explain()]
    result = {"file": cfg.source, "keys": rows}

    def render() -> None:
        out.print(f"effective config from {cfg.source}: {len(rows)} keys, "
                  f"{sum(r['threshold'] for r in rows)} enforced thresholds")
        out.table(["key", "value", "unit", "owner", "enforced threshold", "set by"],
                  [[r["key"], _display(r["value"], r["display"]), r["unit"] or "", r["owner"],
                    "yes" if r["threshold"] else "no", cfg.source if r["source"] == "file" else "default"]
                   for r in rows], nowrap=("key",))
    out.emit(result, render)
    return 0
