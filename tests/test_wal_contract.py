"""The shipped WAL conformance suite, run against the built-in avro strategy."""
from proxistore.plugins.wal_avro import AvroWalStrategy
from proxistore.testing.wal import WalStrategyContract


class TestAvroWalAlways(WalStrategyContract):
    strategy_factory = AvroWalStrategy
    config = {"sync_mode": "always"}


class TestAvroWalGroup(WalStrategyContract):
    strategy_factory = AvroWalStrategy
    config = {"sync_mode": "group", "segment_size": 4096}


class TestAvroWalInterval(WalStrategyContract):
    strategy_factory = AvroWalStrategy
    config = {"sync_mode": "interval", "sync_interval": 0.01}
