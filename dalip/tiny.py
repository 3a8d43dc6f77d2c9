"""A tiny open_clip model config ("DALIP-Tiny") for tests and CPU smoke runs, registered with open_clip."""

from __future__ import annotations

from pathlib import Path

import open_clip

TINY_MODEL = "DALIP-Tiny"
_CONFIG_PATH = Path(__file__).with_name("model_configs") / f"{TINY_MODEL}.json"


def register_tiny_model() -> str:
    """Make ``DALIP-Tiny`` known to ``open_clip.create_model_and_transforms``; returns its name. Idempotent."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(_CONFIG_PATH)
    return TINY_MODEL
