"""The layout's rules hold: arrows point one way, no stage imports another, heavy libraries load only where used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from pipeline.core.version import code_version
from tests.conftest import REPO

PIPELINE = REPO / "pipeline"


def imports_of(path: Path) -> set[str]:
    """Absolute module names a file imports (module level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def modules(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_the_library_never_imports_prefect():
    for path in modules(PIPELINE):
        assert not any(n.split(".")[0] in ("prefect", "prefect_dask", "flows") for n in imports_of(path)), path


def test_core_depends_on_nothing_above_it_and_sources_only_on_core():
    for path in modules(PIPELINE / "core"):
        above = {n for n in imports_of(path) if n.startswith(("pipeline.stages", "pipeline.sources", "pipeline.query"))}
        assert not above, f"{path} imports {above}"
    for path in modules(PIPELINE / "sources"):
        above = {n for n in imports_of(path) if n.startswith(("pipeline.stages", "pipeline.query", "pipeline.runner"))}
        assert not above, f"{path} imports {above}"


def test_no_stage_imports_another_stage():
    listing = ("__init__.py", "registry.py", "__pycache__")  # the package and its list of every stage
    stages = [p for p in (PIPELINE / "stages").iterdir() if p.name not in listing]
    for stage in stages:
        own = f"pipeline.stages.{stage.stem}"
        files = modules(stage) if stage.is_dir() else [stage]
        for path in files:
            other = {n for n in imports_of(path) if n.startswith("pipeline.stages") and not n.startswith(own)}
            assert not other, f"{path} imports another stage: {other}"


def test_the_driver_loads_neither_img2dataset_nor_torch():
    """Planning and judging a build (the driver's work) must not pay for the downloader or the model."""
    code = (
        "import sys, pipeline.runner, pipeline.query.cli; from pipeline.stages import STAGES; "
        "print(sorted(m for m in ('img2dataset', 'torch', 'open_clip', 'prefect') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_markers_record_the_git_commit_in_a_checkout():
    if not (REPO / ".git").exists():
        return  # e.g. a source tarball: the installed version is recorded instead (tests/test_packaging.py)
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code_version().removeprefix("git:").removesuffix("+dirty") == head
