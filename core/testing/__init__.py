"""Conformance suites for plugin authors: subclass one class per plugin kind and name your
implementation; every behavioural check of the contract is inherited.

    from proxistore.testing import FlushPolicyContract, StorageEngineContract, WalStrategyContract

Requires pytest (``pip install proxistore[test]``).
"""
from .flush import FlushPolicyContract

__all__ = ["FlushPolicyContract"]

try:  # the WAL and storage suites live beside this one
    from .wal import WalStrategyContract  # noqa: F401
    __all__.append("WalStrategyContract")
except ImportError:  # pragma: no cover - during development before they exist
    pass
try:
    from .storage import StorageEngineContract  # noqa: F401
    __all__.append("StorageEngineContract")
except ImportError:  # pragma: no cover
    pass
