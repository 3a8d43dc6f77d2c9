"""`prefect deployment run build-plantmix/demo` against a real Prefect server on 127.0.0.1.

Exactly the README's commands: start a server, serve the deployments, run one, watch it finish, list the
artifacts it published. The serving process trusts a private recipe folder whose ``demo.yaml`` builds into the
test's folder (a deployed run cannot name a build folder); runs that ask for a path or a build folder fail.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.conftest import DEMO_RECIPE, REPO
from tests.flows.conftest import BIN, stop

pytestmark = [pytest.mark.server, pytest.mark.slow]


def private_demo_recipe(folder: Path, output_dir: Path) -> Path:
    """The demo recipe under the same name, building into ``output_dir`` (its other paths: from the repo root)."""
    recipe = yaml.safe_load(Path(DEMO_RECIPE).read_text())
    recipe["output_dir"] = str(output_dir)
    folder.mkdir()
    (folder / "demo.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    return folder


def deployment_run(deployment: str, *params: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    args = [a for p in params for a in ("--param", p)]
    return subprocess.run(
        [BIN / "prefect", "deployment", "run", deployment, *args, "--watch"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_deployment_run_builds_the_demo(tmp_path, prefect_server):
    env, logs = prefect_server.env, tmp_path
    out = tmp_path / "build"
    recipes = private_demo_recipe(tmp_path / "recipes", out)
    served = None
    try:
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "demo", "--recipe-dir", str(recipes)],
            env=env, cwd=REPO, stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # the deployment exists once `serve` has registered it
            ls = subprocess.run([BIN / "prefect", "deployment", "ls"], env=env, capture_output=True, text=True)
            if "build-plantmix/demo" in ls.stdout and "fit-mixing-law/demo" in ls.stdout:
                break
            assert served.poll() is None, (logs / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"deployment never appeared:\n{ls.stdout}\n{ls.stderr}"
            time.sleep(1)
        # The documented order: the proxy runs and the fit first, then the build reuses every finished stage.
        for deployment in ("fit-mixing-law/demo", "build-plantmix/demo"):
            run = deployment_run(deployment, env=env)
            assert run.returncode == 0, (
                run.stdout[-3000:] + run.stderr[-3000:] + (logs / "serve.log").read_text()[-3000:]
            )
            assert "Completed" in run.stdout + run.stderr
            if deployment.startswith("fit-mixing-law"):
                fit = json.loads((out / "mixing_law.json").read_text())
                assert set(fit["fit"]) == {"general", "plant"} and (out / "mixing_law.png").exists()
                assert not (out / "release").exists()  # it stops after the mix stage
        assert "![mixing law](plots/mixing_law.png)" in (out / "release" / "RELEASE.md").read_text()
        summary = json.loads((out / "summary.json").read_text())
        assert (out / "manifest.parquet").exists()
        assert summary["candidates"] == 200 and sum(summary["by_status"].values()) == 200
        assert summary["by_status"]["ok"] == 174
        # The build is visible in the UI: every stage's counts, progress and the summary card are artifacts.
        wide = {**env, "COLUMNS": "250"}  # rich shortens the keys to the terminal width otherwise
        listed = subprocess.run([BIN / "prefect", "artifact", "ls"], env=wide, capture_output=True, text=True)
        assert listed.returncode == 0, listed.stderr[-2000:]
        for key in ("crawl", "download", "embed", "judge", "summary", "download-progress", "mixing-law", "release"):
            assert f"plantmix-demo-{key}" in listed.stdout, listed.stdout[-3000:]
        # A run may name a trusted recipe and nothing else: a path or a build folder fails it, and nothing is written.
        run = deployment_run("build-plantmix/demo", "recipe=../../etc/passwd", env=env)
        shown = run.stdout + run.stderr + (logs / "serve.log").read_text()
        assert run.returncode != 0 and "Completed" not in run.stdout + run.stderr, shown[-3000:]
        assert "recipe '../../etc/passwd': a deployed run takes a recipe name" in shown, shown[-3000:]
        assert f"trusted recipe folders: {recipes.resolve()}, {REPO / 'manifests' / 'recipes'}" in shown
        elsewhere = tmp_path / "elsewhere"
        run = deployment_run("build-plantmix/demo", f"output_dir={elsewhere}", env=env)  # the CLI refuses it
        assert run.returncode != 0 and "not found on the deployment" in run.stdout + run.stderr
        with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):  # the API, past the CLI
            flow_run = run_deployment("build-plantmix/demo", parameters={"output_dir": str(elsewhere)}, timeout=300)
        assert flow_run.state.is_failed() or flow_run.state.is_crashed(), flow_run.state  # refused before it runs
        mismatch = "expects parameters ['recipe', 'workers'] but was provided with parameters ['recipe', 'output_dir']"
        assert mismatch in (logs / "serve.log").read_text()
        assert not elsewhere.exists()
    finally:
        if served is not None:
            stop(served)
