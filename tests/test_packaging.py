"""The package as a user installs it: a built wheel carries its data files and the CLI works from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.schema import MANIFEST_SCHEMA
from pipeline.sources.registry import load_registry
from tests.conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """``python -m build --wheel`` (offline: no build isolation), then the wheel alone installed into a folder."""
    dist = tmp_path_factory.mktemp("dist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = dist.glob("plantmix-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pipeline/query/views.sql" in names and "pipeline/sources/sources.yaml" in names
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
    target = tmp_path_factory.mktemp("site")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return target


def run_installed(site: Path, cwd: Path, code: str) -> subprocess.CompletedProcess:
    """Python with the installed wheel first on the path, run from a folder outside the repository."""
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_plantmix_sql_works_from_an_installed_wheel(installed_wheel, tmp_path):
    manifest = tmp_path / "build" / "manifest.parquet"
    manifest.parent.mkdir()
    rows = [dict(sample_id=str(i), source=s, domain="plant", status=st, keep=k, drop_reason=r)
            for i, (s, st, k, r) in enumerate([("a", "ok", True, None), ("a", "ok", False, "clip_score_min"),
                                               ("b", "rejected", False, "rejected")])]  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    # The console script the wheel installs (not ``python -m``): its entry point must name a real module.
    script = installed_wheel / "bin" / "plantmix"
    assert script.is_file(), sorted(p.name for p in (installed_wheel / "bin").iterdir())
    env = {**os.environ, "PYTHONPATH": str(installed_wheel)}
    done = subprocess.run(
        [str(script), "sql", "SELECT source, kept FROM by_source", "--build", str(manifest.parent), "--format", "csv"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["source,kept", "a,1", "b,0"]


def test_the_source_registry_and_code_version_come_from_the_installed_package(installed_wheel, tmp_path):
    code = (
        "from pipeline.sources.registry import load_registry; from pipeline.core.version import code_version; "
        "print(sorted(load_registry())); print(code_version())"
    )
    done = run_installed(installed_wheel, tmp_path, code)
    assert done.returncode == 0, done.stderr[-3000:]
    adapters, version = done.stdout.splitlines()
    assert adapters == str(sorted(load_registry()))  # the shipped sources.yaml, read from the wheel
    assert version.startswith("plantmix==")  # no git checkout here: the installed version
