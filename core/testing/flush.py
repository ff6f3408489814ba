"""Conformance tests for flush policies: subclass, name the policy, inherit every check.

    from proxistore.testing import FlushPolicyContract

    class TestMyPolicy(FlushPolicyContract):
        policy_name = "my_policy"          # as registered through the `proxistore` entry points
        config = {"my_threshold": "10MB"}  # raw values, as in TOML; defaults fill the rest

The checks hold a policy to the core's promises: it flushes nothing that is empty, it owns every
key it reports, each request names a declared threshold and the value measured against it, and a
threshold it declares is actually enforced (extreme measures make it due; zero measures do not).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import pytest

from proxistore.config import parse_section
from proxistore.contracts import CollectionState, DatabaseState, FlushPolicy, FlushRequest, ThresholdReading
from proxistore.registry import get_registry
from .base import ContractSuite

__all__ = ["FlushPolicyContract"]

HUGE = 10 ** 15


class FlushPolicyContract(ContractSuite):
    """Behavioural checks every :class:`~proxistore.contracts.FlushPolicy` must pass."""

    __test__ = False  # the suite itself; its subclasses are collected
    policy_name: str = ""
    config: Mapping[str, Any] = {}

    # -- helpers ---------------------------------------------------------------------------

    @pytest.fixture
    def spec(self):
        return get_registry().flush_policy(self.policy_name)

    @pytest.fixture
    def parsed(self, spec) -> Dict[str, Any]:
        return parse_section(spec, self.config, f"flush.{self.policy_name}", "<contract test>")

    @pytest.fixture
    def policy(self, spec, parsed) -> FlushPolicy:
        p = spec.factory(parsed)
        p.name = self.policy_name
        return p

    @staticmethod
    def state(parsed: Mapping[str, Any], name: str, *, measure: int, rows: int, flushing: bool = False) -> DatabaseState:
        col = CollectionState(name=name, memtable_bytes=measure, memtable_rows=rows,
                              oldest_unflushed_age=float(measure) if rows else None, wal_bytes=measure,
                              flushing=flushing, settings={})
        return DatabaseState(collections={name: col}, total_memtable_bytes=measure, waiting_write_bytes=0,
                             now=1000.0)

    def _with_settings(self, state: DatabaseState, parsed: Mapping[str, Any]) -> DatabaseState:
        cols = {n: CollectionState(**{**c.__dict__, "settings": {self.policy_name: dict(parsed)}})
                for n, c in state.collections.items()}
        return DatabaseState(collections=cols, total_memtable_bytes=state.total_memtable_bytes,
                             waiting_write_bytes=state.waiting_write_bytes, now=state.now)

    # -- the contract ----------------------------------------------------------------------

    def test_is_registered_with_a_flush_policy_spec(self, spec):
        assert spec.name == self.policy_name and spec.kind == "flush"
        assert issubclass(spec.factory, FlushPolicy)

    def test_every_declared_key_has_help_and_a_valid_default(self, spec):
        for key in spec.keys:
            assert key.help, f"{key.name} has no help text"
            parse_section(spec, {}, "flush.x", "<contract test>")

    def test_nothing_is_due_for_an_empty_database(self, policy):
        empty = DatabaseState(collections={}, total_memtable_bytes=0, waiting_write_bytes=0, now=0.0)
        assert policy.due(empty) == []

    def test_an_empty_collection_is_never_flushed(self, policy, parsed):
        state = self._with_settings(self.state(parsed, "c", measure=HUGE, rows=0), parsed)
        assert policy.due(state) == []

    def test_nothing_is_due_when_every_measure_is_zero(self, policy, parsed):
        state = self._with_settings(self.state(parsed, "c", measure=0, rows=1), parsed)
        assert policy.due(state) == []

    def test_declared_thresholds_are_enforced_when_crossed(self, policy, spec, parsed):
        thresholds = [k for k in spec.keys if k.threshold]
        state = self._with_settings(self.state(parsed, "c", measure=HUGE, rows=HUGE), parsed)
        requests = policy.due(state)
        if not thresholds:
            return
        limit = policy.write_limit()
        if requests == [] and limit is not None:
            return  # a policy whose only threshold is a write-path cap the core enforces
        assert requests, f"{self.policy_name} declares thresholds {[k.name for k in thresholds]} but is " \
                         f"never due, even with every measure at {HUGE}"
        for r in requests:
            assert isinstance(r, FlushRequest)
            assert r.collection == "c" and r.policy == self.policy_name
            assert r.key in {k.name for k in spec.keys}, f"request names undeclared key {r.key!r}"
            assert r.measured is not None and r.threshold is not None

    def test_readings_cover_declared_thresholds_only(self, policy, spec, parsed):
        state = self._with_settings(self.state(parsed, "c", measure=HUGE, rows=HUGE), parsed)
        declared = {k.name for k in spec.keys}
        for reading in policy.readings(state, "c"):
            assert isinstance(reading, ThresholdReading)
            assert reading.key in declared and reading.policy == self.policy_name

    def test_a_write_limit_names_a_declared_key_and_its_value(self, policy, spec, parsed):
        limit = policy.write_limit()
        if limit is None:
            return
        assert limit.key in {k.name for k in spec.keys}
        assert limit.limit_bytes == parsed[limit.key] and limit.limit_bytes > 0
