"""Conformance suites for plugin authors: subclass one class per plugin kind and name your
implementation; every behavioural check of the contract is inherited.

    from proxistore.testing import FlushPolicyContract, StorageEngineContract, WalStrategyContract

Requires pytest (``pip install proxistore[test]``).
"""
from .flush import FlushPolicyContract
from .storage import StorageEngineContract
from .wal import WalStrategyContract

__all__ = ["FlushPolicyContract", "StorageEngineContract", "WalStrategyContract"]
