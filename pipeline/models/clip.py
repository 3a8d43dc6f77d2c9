"""Load the open_clip model the embed stage scores with: a pretrained tag, a local checkpoint, or random init.

Local checkpoints may be open_clip's own (``state_dict`` / plain) or a DALIP training checkpoint written by
``dalip.train`` (``{"model": DalipModel.state_dict(), ...}``): its ``clip.*`` weights are the open_clip model,
so they load into the same open_clip architecture without importing ``dalip``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import open_clip
import torch

from pipeline.core.config import EmbedConfig
from pipeline.models.activation import check_activation
from pipeline.models.safe_load import load_checkpoint_safely

_cache: dict[tuple, tuple[Any, Any, Any]] = {}
_lock = threading.Lock()


def load_clip(config: EmbedConfig) -> tuple[torch.nn.Module, Any, Any]:
    """``(model in eval mode, preprocess, tokenizer)``, cached per process and config."""
    key = (config.model, config.pretrained, config.random_init, config.model_config, config.seed, config.device)
    with _lock:
        if key not in _cache:
            _cache[key] = _load(config)
        return _cache[key]


def _load(config: EmbedConfig) -> tuple[torch.nn.Module, Any, Any]:
    if config.model_config:
        open_clip.add_model_config(config.model_config)
    if config.model not in open_clip.list_models():
        raise ValueError(f"embed: unknown open_clip model {config.model!r} (add its JSON with model_config)")
    device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
    local = config.pretrained is not None and Path(config.pretrained).is_file()
    if config.random_init:
        torch.manual_seed(config.seed)
    tag = None if (config.random_init or local) else config.pretrained
    check_activation(config.model, tag)
    model, _, preprocess = open_clip.create_model_and_transforms(config.model, pretrained=tag, device=device)
    if local:
        model.load_state_dict(_open_clip_state(Path(config.pretrained)))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(config.model)


def _open_clip_state(path: Path) -> dict[str, torch.Tensor]:
    # A local file the user named: loaded weights-only, so a hostile file is refused rather than run.
    payload = load_checkpoint_safely(path)
    state = payload.get("model", payload.get("state_dict", payload)) if isinstance(payload, dict) else payload
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("clip.") for k in state):  # a DalipModel: keep its open_clip part
        state = {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}
    return state
