"""Shared test set-up: hermetic environment (no network, no telemetry) and a loopback image host."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

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
