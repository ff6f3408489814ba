"""The built-in flush policies pass the conformance suite shipped to plugin authors."""
from proxistore.testing import FlushPolicyContract


class TestSizePolicy(FlushPolicyContract):
    policy_name = "size"


class TestGlobalMemoryPolicy(FlushPolicyContract):
    policy_name = "global_memory"
    config = {"global_flush_threshold": "1MB", "global_memory_limit": "2MB"}


class TestTimePolicy(FlushPolicyContract):
    policy_name = "time"


class TestWalSizePolicy(FlushPolicyContract):
    policy_name = "wal_size"


class TestManualPolicy(FlushPolicyContract):
    policy_name = "manual"
