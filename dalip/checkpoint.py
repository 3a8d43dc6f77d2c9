"""Training checkpoints: model, optimizer, scheduler, scaler, step, config and every rank's RNG state.

Files are written atomically (temp file + rename) and ``latest.txt`` names the newest one, so a run stopped at
any moment resumes from a complete checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.models.safe_load import load_checkpoint_safely

LATEST = "latest.txt"


def rng_state() -> dict[str, Any]:
    """Every RNG the training step draws from (dropout, python-side shuffles, numpy)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | Path, step: int, payload: dict[str, Any], keep_last: int | None = None) -> Path:
    """Write ``step_{step:08d}.pt`` atomically and point ``latest.txt`` at it; with ``keep_last``, remove all but
    the newest ``keep_last`` checkpoints afterwards (never the one ``latest.txt`` names)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{step:08d}.pt"
    tmp = path.with_suffix(".pt.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    pointer = directory / (LATEST + ".tmp")
    pointer.write_text(path.name + "\n")
    os.replace(pointer, directory / LATEST)
    if keep_last is not None:
        for old in sorted(directory.glob("step_*.pt"))[:-keep_last] if keep_last > 0 else []:
            if old != path:
                old.unlink(missing_ok=True)
    return path


def resolve_resume(resume: str, directory: str | Path) -> Path:
    """``latest`` -> the file ``latest.txt`` in ``directory`` names; anything else is a checkpoint path."""
    if resume != "latest":
        path = Path(resume)
    else:
        pointer = Path(directory) / LATEST
        if not pointer.is_file():
            raise FileNotFoundError(f"--resume latest: no {pointer}; has this output dir saved a checkpoint?")
        path = Path(directory) / pointer.read_text().strip()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Weights-only load (numpy RNG states allowed); a file that would run code raises ``UnsafeCheckpoint``."""
    return load_checkpoint_safely(path, map_location=map_location)
