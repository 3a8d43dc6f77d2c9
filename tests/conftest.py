"""Shared test set-up: hermetic environment (no network, no telemetry) and a loopback image host."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Before anything imports albumentations / huggingface_hub / prefect.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_TO_API_ENABLED", "false")  # tests read results, not the API's log store
# A private Prefect home: in-process flows get their own temporary server and database.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="plantmix-test-prefect-")
os.environ.pop("PREFECT_API_URL", None)


DEMO_RECIPE = str(REPO / "manifests" / "recipes" / "demo.yaml")


def is_loopback(address) -> bool:
    """A socket address (or a Unix socket path) that stays on this machine."""
    if not isinstance(address, tuple):
        return True  # AF_UNIX
    import ipaddress

    try:
        return ipaddress.ip_address(str(address[0]).split("%")[0]).is_loopback
    except ValueError:
        return False  # a name: Python sockets resolve it themselves, so it could go anywhere


@pytest.fixture(autouse=True)
def connections_stay_on_loopback(monkeypatch):
    """No test sends a packet beyond loopback, not even to prove it is refused.

    Every ``connect`` in the test process is checked: one to a non-loopback address is refused before it
    leaves (it raises) and, since the code under test may swallow that error into a row's error text, also
    fails the test at teardown. Child processes are not covered; tests reach them only through loopback hosts.
    """
    attempts: list[object] = []
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guarded(original):
        def connect(sock, address):
            if not is_loopback(address):
                attempts.append(address)
                raise ConnectionRefusedError(f"test guard: connect to non-loopback {address!r} attempted")
            return original(sock, address)

        return connect

    monkeypatch.setattr(socket.socket, "connect", guarded(original_connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(original_connect_ex))
    yield attempts
    assert not attempts, f"a connection beyond loopback was attempted: {attempts}"


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """``make demo``'s build (crawl -> ... -> publish) through the in-process flow, once per test session.

    Tests that change the build work on a copy (:func:`copy_build`).
    """
    from flows.build_plantmix import build_from_file

    out = tmp_path_factory.mktemp("demo") / "build"
    cwd = os.getcwd()
    os.chdir(REPO)  # the recipe's relative paths are relative to the repository root
    try:
        build_from_file(DEMO_RECIPE, output_dir=str(out))
    finally:
        os.chdir(cwd)
    return out


def copy_build(build: Path, dest: Path) -> Path:
    """A private copy of a finished build (hard links would share the tars a test may rewrite)."""
    shutil.copytree(build, dest, symlinks=True)
    return dest


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a server a test started: terminate, then kill if it does not exit within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pytest_sessionfinish(session, exitstatus) -> None:
    """Stop Prefect's temporary in-process server while pytest's output streams are still open.

    Otherwise Prefect stops it from an atexit hook after pytest closed them, and logs a noisy traceback.
    """
    try:
        from prefect.server.api.server import SubprocessASGIServer
    except ImportError:
        return
    for server in list(SubprocessASGIServer._instances.values()):
        server.stop()
