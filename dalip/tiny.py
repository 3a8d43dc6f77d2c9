"""A tiny open_clip model config ("DALIP-Tiny") for tests and CPU smoke runs, registered with open_clip."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import open_clip

TINY_MODEL = "DALIP-Tiny"
_CONFIG_PATH = Path(__file__).with_name("model_configs") / f"{TINY_MODEL}.json"


def register_tiny_model() -> str:
    """Make ``DALIP-Tiny`` known to ``open_clip.create_model_and_transforms``; returns its name. Idempotent."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_PATH)
    return TINY_MODEL


def write_local_dir(folder: str | Path) -> Path:
    """``folder/open_clip_config.json`` for open_clip's ``--model local-dir:<folder>`` (e.g. open_clip_train.main,
    which knows only its built-in configs): the same DALIP-Tiny config, no weights (random init)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": json.loads(_CONFIG_PATH.read_text())}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return folder


if __name__ == "__main__":  # python -m dalip.tiny runs/DALIP-Tiny
    print(f"local-dir:{write_local_dir(sys.argv[1] if len(sys.argv) > 1 else TINY_MODEL)}")
