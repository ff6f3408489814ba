"""Shared fixtures: real data directories in tmp_path, the real plugins, real files."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import proxistore

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "stdlib_minilm"


def requires_shared_data():
    """Skip (with the reason) where ../shared/data is absent, as in a user's clone."""
    return pytest.mark.skipif(not (SHARED_DATA / "base.parquet").exists(),
                              reason=f"needs the stdlib_minilm dataset at {SHARED_DATA} (present in CI, "
                                     f"not in a plain clone)")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "db"


@pytest.fixture
def db(db_path):
    database = proxistore.open(db_path)
    yield database
    database.close()


def random_vectors(rng, n, dim=8):
    return rng.standard_normal((n, dim)).astype(np.float32)


def ids_for(n, prefix="id"):
    return [f"{prefix}-{i}" for i in range(n)]


@pytest.fixture
def child_env():
    """Environment for child Python processes: same interpreter and path as this one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env
