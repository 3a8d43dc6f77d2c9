"""Run one side of a benchmark in a child process of its own (so its peak RSS is its own) and read its result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_side(script: str, side: str, arguments: list[str]) -> dict:
    """``python <script> --child <side> <arguments>`` in the repo with it on the path; its last stdout line, JSON."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run(
        [sys.executable, script, "--child", side, *arguments], capture_output=True, text=True, cwd=REPO, env=env
    )
    if done.returncode:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
