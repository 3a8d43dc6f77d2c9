"""`prefect deployment run build-plantmix/demo` against a real Prefect server on 127.0.0.1.

Exactly the README's commands: start a server, serve the deployments, run one, watch it finish.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


def test_deployment_run_builds_the_demo(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    server = subprocess.Popen(
        [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, cwd=REPO, stdout=open(logs / "server.log", "w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    served = None
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/api/health", server)
        served = subprocess.Popen(
            [sys.executable, "-m", "flows.serve", "manifests/recipes/demo.yaml"],
            env=env, cwd=REPO, stdout=open(logs / "serve.log", "w"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        out = tmp_path / "build"
        deadline = time.monotonic() + 120
        while True:  # the deployment exists once `serve` has registered it
            ls = subprocess.run([BIN / "prefect", "deployment", "ls"], env=env, capture_output=True, text=True)
            if "build-plantmix/demo" in ls.stdout:
                break
            assert served.poll() is None, (logs / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"deployment never appeared:\n{ls.stdout}\n{ls.stderr}"
            time.sleep(1)
        run = subprocess.run(
            [BIN / "prefect", "deployment", "run", "build-plantmix/demo", "--param", f"output_dir={out}", "--watch"],
            env=env, cwd=REPO, capture_output=True, text=True, timeout=420,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + (logs / "serve.log").read_text()[-3000:]
        assert "Completed" in run.stdout + run.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert (out / "manifest.parquet").exists()
        assert summary["candidates"] == 200 and sum(summary["by_status"].values()) == 200
        assert summary["by_status"]["ok"] == 174
    finally:
        if served is not None:
            _stop(served)
        _stop(server)
