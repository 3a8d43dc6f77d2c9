"""Run one side of a benchmark in a child process of its own (so its peak RSS is its own) and read its result."""

from __future__ import annotations

import json
import os
import resource
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


def own_peak_rss_mb() -> float:
    """This process's peak RSS in MB: ``VmHWM`` of its memory (Linux). ``ru_maxrss`` would not do in a child:
    Linux carries the parent's peak over into it (a benchmark's parent that wrote a 3M-row export in-process gave
    both of its children that export writer's 1.25 GB). Elsewhere ``ru_maxrss`` is all there is."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux, bytes on macOS
    peak = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(peak.split()[1]) / 1024
