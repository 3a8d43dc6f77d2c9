"""The code version recorded in every marker and manifest: the git commit in a checkout, else the package version."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``git:<commit>`` (``+dirty`` with uncommitted changes) when the code runs from a git checkout, else
    ``plantmix==<installed version>``; a hand-set constant would never change between commits."""
    commit = _git("rev-parse", "HEAD")
    if commit:
        dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "pipeline", "flows", "dalip")
        return f"git:{commit}{'+dirty' if dirty else ''}"
    try:
        return f"plantmix=={metadata.version('plantmix')}"
    except metadata.PackageNotFoundError:
        return "plantmix (unknown version: neither a git checkout nor an installed package)"


def _git(*args: str) -> str:
    if not (PACKAGE_ROOT / ".git").exists():  # an installed wheel lives in site-packages, not in a checkout
        return ""
    try:
        done = subprocess.run(["git", "-C", str(PACKAGE_ROOT), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""
