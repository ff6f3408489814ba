"""``proxistore plugins``: what is loaded, from which package and version, with which hooks and keys.

Why: plugins are chosen by config name from whatever is installed; when a name is missing or a
plugin is broken, this inventory is the first thing to look at. Broken plugins (import errors,
bad specs) are listed with their error instead of being hidden.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List

from proxistore.registry import KIND_LABELS, get_registry

from .output import Output

__all__ = ["cmd_plugins"]


def _plugin_record(p: Any) -> Dict[str, Any]:
    return {
        "name": p.name, "package": p.package, "version": p.version, "hooks": list(p.hooks),
        "error": p.error,
        "provides": [{"kind": s.kind, "name": s.name, "description": s.description,
                      "keys": [{"name": k.name, "kind": k.kind, "default": k.default, "unit": k.unit,
                                "threshold": k.threshold, "per_collection": k.per_collection,
                                "help": k.help} for k in s.keys]}
                     for s in p.specs],
    }


def cmd_plugins(args: argparse.Namespace, out: Output) -> int:
    """List every plugin of the ``proxistore`` entry-point group, broken ones with their error."""
    registry = get_registry()
    records = [_plugin_record(p) for p in registry.plugins]

    def render() -> None:
        rows: List[List[Any]] = []
        for rec in records:
            origin = f"{rec['package']} {rec['version']}".strip()
            hooks = ", ".join(h.replace("proxistore_", "") for h in rec["hooks"])
            if rec["error"]:
                rows.append([rec["name"], "BROKEN", "", origin, hooks, "(not loaded: see the error below)"])
                continue
            if not rec["provides"]:
                rows.append([rec["name"], "observer" if rec["hooks"] else "(nothing)", "", origin, hooks, ""])
            for i, spec in enumerate(rec["provides"]):
                keys = ", ".join(k["name"] + ("*" if k["threshold"] else "") for k in spec["keys"]) or "(no keys)"
                rows.append([rec["name"] if i == 0 else "", KIND_LABELS.get(spec["kind"], spec["kind"]),
                             spec["name"], origin if i == 0 else "", hooks if i == 0 else "", keys])
        out.table(["plugin", "kind", "name", "package", "hooks", "config keys (* = enforced threshold)"], rows,
                  nowrap=("plugin", "kind", "name", "package"),
                  empty="no plugins registered in the 'proxistore' entry-point group")
        broken = [r for r in records if r["error"]]
        for rec in broken:  # on their own lines: an error message must never be cut by a table cell
            out.print(f"BROKEN {rec['name']} ({rec['package']} {rec['version']}): {rec['error']}".replace("  ", " "))
        if broken:
            out.print(f"{len(broken)} broken plugin(s) skipped; set PROXISTORE_STRICT_PLUGINS=1 to make this fatal")
    out.emit(records, render)
    return 0
