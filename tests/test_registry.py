"""The plugin manager: built-ins through entry points, selection by name, clashes and breakage."""
from __future__ import annotations

import types

import pytest

import proxistore
from proxistore.contracts import FlushPolicy
from proxistore.errors import PluginError
from proxistore.registry import Registry, build_registry
from proxistore.specs import ConfigKey, FlushPolicySpec


class NeverPolicy(FlushPolicy):
    def due(self, state):
        return []

    def readings(self, state, collection):
        return []


def plugin_with(*specs, name="extra"):
    mod = types.SimpleNamespace(__name__=name)

    @proxistore.hookimpl
    def proxistore_flush_policies():
        return list(specs)

    mod.proxistore_flush_policies = proxistore_flush_policies
    return mod


def test_builtins_register_through_the_proxistore_entry_point_group():
    reg = build_registry(include_external=False)
    by_name = {p.name: p for p in reg.plugins}
    assert {"wal_avro", "viper", "flush_policies"} <= set(by_name)
    assert all(by_name[n].package == "proxistore" and by_name[n].version == proxistore.__version__
               for n in ("wal_avro", "viper", "flush_policies"))
    assert set(reg.specs("flush")) >= {"size", "global_memory", "time", "wal_size", "manual"}
    assert "avro" in reg.specs("wal") and "viper" in reg.specs("storage")


def test_lookup_of_an_unknown_name_lists_the_choices():
    reg = build_registry(include_external=False)
    with pytest.raises(PluginError, match="choose one of: .*avro"):
        reg.wal_strategy("rocks")


def test_clashing_names_are_rejected_naming_both_packages():
    reg = build_registry(include_external=False)
    clash = plugin_with(FlushPolicySpec("size", NeverPolicy, ()), name="my_size")
    with pytest.raises(PluginError) as e:
        reg.register(clash, package="acme-policies")
    assert "'proxistore'" in str(e.value) and "'acme-policies'" in str(e.value)


def test_a_plugin_whose_hook_raises_is_reported_and_skipped():
    reg = build_registry(include_external=False)

    bad = types.SimpleNamespace(__name__="bad")

    @proxistore.hookimpl
    def proxistore_flush_policies():
        raise RuntimeError("kaput")

    bad.proxistore_flush_policies = proxistore_flush_policies
    loaded = reg.register(bad, package="acme-bad")
    assert loaded.error and "kaput" in loaded.error
    assert reg.broken == [loaded]
    assert "size" in reg.specs("flush")


def test_strict_mode_makes_a_broken_plugin_fatal():
    reg = Registry(strict=True)
    bad = plugin_with("not a spec", name="bad")
    with pytest.raises(PluginError, match="FlushPolicySpec"):
        reg.register(bad, package="acme-bad")


def test_an_extra_plugin_can_be_selected_by_config_name(tmp_path):
    extra = plugin_with(FlushPolicySpec("never", NeverPolicy, (
        ConfigKey("patience", "duration", 1.0, "How long it does nothing.", unit="seconds"),)))
    reg = build_registry(include_external=False, extra_plugins=(extra,))
    with proxistore.open(tmp_path / "db", {"flush": {"policies": ["never", "manual"], "never": {"patience": "5s"}}},
                         registry=reg) as db:
        assert [p.name for p in db.policies] == ["never", "manual"]
        assert db.policies[0].config == {"patience": 5.0}


def test_public_api_is_exactly_what_all_says():
    assert sorted(proxistore.__all__) == sorted(
        ["open", "Database", "Collection", "Hit", "Record", "hookimpl", "errors", "__version__"])
    for name in proxistore.__all__:
        assert hasattr(proxistore, name)


def test_every_error_has_one_base_and_input_errors_are_value_errors():
    from proxistore import errors
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ProxistoreError)
    assert issubclass(errors.InputError, ValueError) and issubclass(errors.ConfigError, ValueError)
