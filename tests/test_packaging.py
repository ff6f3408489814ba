"""The wheel installs into a fresh virtual environment, and a third-party plugin package
pip-installed beside it is found, listed, configured and enforced."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow
FIXTURE = REPO / "tests" / "fixtures" / "proxistore_rowcount"


def run(cmd, **kw):
    kw.setdefault("cwd", "/")
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv with the wheel built from this repo installed (with its dependencies)."""
    tmp = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "build", "--wheel", "--outdir", tmp / "dist", REPO], cwd=str(REPO))
    wheels = list((tmp / "dist").glob("proxistore-*.whl"))
    assert len(wheels) == 1
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv])
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheels[0]])
    return venv, wheels[0]


def test_wheel_contains_proxistore_and_no_top_level_core_or_plugins(wheel_venv):
    import zipfile
    _, wheel = wheel_venv
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert "proxistore" in tops and "core" not in tops and "plugins" not in tops
    names = zipfile.ZipFile(wheel).namelist()
    assert "proxistore/plugins/wal_avro/__init__.py" in names
    assert any(n.startswith("proxistore/demo_data/") for n in names)
    shipped = {p.name for p in (REPO / "config" / "workloads").glob("*.toml")}
    assert {n.split("/")[-1] for n in names if n.startswith("proxistore/workloads/")} == shipped


def test_installed_wheel_finds_the_shipped_workloads_by_name(wheel_venv, tmp_path):
    venv, _ = wheel_venv
    script = ("from proxistore.bench.workload import load_workload, find_workload; "
              "w = load_workload('incident'); print(find_workload('incident')); "
              "print(w.data['vectors'], w.ingest['batch_size'])")
    out = run([venv / "bin" / "python", "-c", script], cwd=str(tmp_path)).stdout.split()
    assert out[0].startswith(str(venv)) and out[0].endswith("proxistore/workloads/incident.toml")
    assert out[1:] == ["5000", "100"]


def test_installed_wheel_imports_runs_and_finds_the_builtin_plugins(wheel_venv):
    venv, _ = wheel_venv
    py = venv / "bin" / "python"
    out = run([py, "-c", "import importlib.util as u, proxistore; print(proxistore.__file__); "
                         "print(u.find_spec('core'), u.find_spec('plugins'))"]).stdout
    assert str(venv) in out.splitlines()[0] and out.splitlines()[1] == "None None"
    assert "usage" in run([venv / "bin" / "proxistore", "--help"]).stdout.lower()
    plugins = json.loads(run([venv / "bin" / "proxistore", "--json", "plugins"]).stdout)
    text = json.dumps(plugins)
    for name in ("avro", "viper", "size", "global_memory", "time", "wal_size", "manual"):
        assert f'"{name}"' in text


def test_third_party_policy_is_listed_configured_and_enforced(wheel_venv, tmp_path):
    venv, _ = wheel_venv
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", FIXTURE])
    listing = run([venv / "bin" / "proxistore", "plugins"]).stdout
    assert "row_count" in listing and "proxistore-rowcount" in listing and "max_memtable_rows" in listing
    cfg = tmp_path / "rowcount.toml"
    cfg.write_text(textwrap.dedent("""
        [flush]
        policies = ["row_count", "manual"]
        [flush.row_count]
        max_memtable_rows = 50
        [maintenance]
        check_interval = "20ms"
    """))
    assert run([venv / "bin" / "proxistore", "config", "check", cfg]).returncode == 0
    script = textwrap.dedent(f"""
        import json, time, numpy as np, proxistore
        with proxistore.open({str(tmp_path / 'db')!r}, {str(cfg)!r}) as db:
            c = db.create_collection("c", dim=4)
            for b in range(20):
                c.insert([f"{{b}}-{{i}}" for i in range(10)], np.random.rand(10, 4))
                time.sleep(0.01)
            db.wait_idle()
            time.sleep(0.3)
            db.wait_idle()
            s = db.stats()["collections"]["c"]
            print(json.dumps({{"by_policy": s["flushes"]["by_policy"], "mem_rows": s["memtable"]["rows"],
                               "count": c.count(), "why": db.why("c")}}))
    """)
    out = json.loads(run([venv / "bin" / "python", "-c", script]).stdout)
    assert out["count"] == 200
    assert out["by_policy"].get("row_count", 0) >= 3
    assert out["mem_rows"] <= 60
    assert any(r["policy"] == "row_count" and r["threshold"] == 50 for r in out["why"])
    # a section for it without enabling it is refused
    cfg.write_text('[flush]\npolicies = ["manual"]\n[flush.row_count]\nmax_memtable_rows = 5\n')
    bad = subprocess.run([venv / "bin" / "proxistore", "config", "check", cfg], capture_output=True, text=True)
    assert bad.returncode == 2 and "flush.row_count" in bad.stderr


def test_third_party_policy_passes_the_shipped_conformance_suite(wheel_venv, tmp_path):
    venv, _ = wheel_venv
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", FIXTURE, "pytest"])
    test = tmp_path / "test_rowcount_contract.py"
    test.write_text(textwrap.dedent("""
        from proxistore.testing import FlushPolicyContract

        class TestRowCount(FlushPolicyContract):
            policy_name = "row_count"
            config = {"max_memtable_rows": 10}
    """))
    out = run([venv / "bin" / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=str(tmp_path)).stdout
    assert "passed" in out and "failed" not in out


def test_a_broken_plugin_is_reported_with_its_package_and_skipped(wheel_venv, tmp_path):
    venv, _ = wheel_venv
    pkg = tmp_path / "broken"
    (pkg / "src" / "proxistore_broken").mkdir(parents=True)
    (pkg / "src" / "proxistore_broken" / "__init__.py").write_text("raise RuntimeError('boom at import')\n")
    (pkg / "pyproject.toml").write_text(textwrap.dedent("""
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"
        [project]
        name = "proxistore-broken"
        version = "0.0.1"
        [project.entry-points.proxistore]
        broken = "proxistore_broken"
        [tool.setuptools.packages.find]
        where = ["src"]
    """))
    run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", pkg])
    try:
        listing = run([venv / "bin" / "proxistore", "plugins"]).stdout
        assert "proxistore-broken" in listing and "boom at import" in listing
        assert "avro" in listing  # the rest still loads
        strict = subprocess.run([venv / "bin" / "proxistore", "plugins"], capture_output=True, text=True,
                                env={**os.environ, "PROXISTORE_STRICT_PLUGINS": "1"})
        assert strict.returncode != 0 and "boom at import" in strict.stderr
        off = run([venv / "bin" / "proxistore", "plugins"],
                  env={**os.environ, "PROXISTORE_DISABLE_EXTERNAL_PLUGINS": "1"}).stdout
        assert "proxistore-broken" not in off and "row_count" not in off
    finally:
        run([venv / "bin" / "python", "-m", "pip", "uninstall", "--quiet", "-y", "proxistore-broken"])
