"""`prefect deployment run build-plantmix/demo` against a real Prefect server on 127.0.0.1.

Exactly the README's commands: start a server, serve the deployments, run one, watch it finish, list the
artifacts it published.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO
from tests.flows.conftest import BIN, stop

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_deployment_run_builds_the_demo(tmp_path, prefect_server):
    env, logs = prefect_server.env, tmp_path
    served = None
    try:
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "manifests/recipes/demo.yaml"],
            env=env, cwd=REPO, stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        out = tmp_path / "build"
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
            run = subprocess.run(
                [BIN / "prefect", "deployment", "run", deployment, "--param", f"output_dir={out}", "--watch"],
                env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
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
    finally:
        if served is not None:
            stop(served)
