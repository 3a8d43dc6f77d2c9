"""A real Prefect server on 127.0.0.1 for the tests that need one (deployments, Dask workers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, stop

BIN = Path(sys.executable).parent


@dataclass
class PrefectServer:
    api_url: str
    env: dict[str, str]  # environment for processes that talk to this server
    logs: Path


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> PrefectServer:
    """``prefect server start`` on a free loopback port with its own PREFECT_HOME; stopped at the end."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api_url}
    logs = home / "logs"
    logs.mkdir()
    with open(logs / "server.log", "w") as log:
        server = subprocess.Popen(
            [BIN / "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_healthy(f"{api_url}/health", server)
        yield PrefectServer(api_url, env, logs)
    finally:
        stop(server)
