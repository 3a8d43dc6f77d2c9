"""Refuse pretrained weights whose activation differs from the model config's (open_clip only warns)."""

from __future__ import annotations

import os

import open_clip


def check_activation(model_name: str, pretrained: str | None, force_quick_gelu: bool = False) -> None:
    """Refuse a pretrained tag whose weights were trained with another activation than the model config's.

    open_clip only warns (``ViT-B-16`` + ``openai`` builds GELU around weights trained with QuickGELU: every
    layer's activation is then slightly wrong, and zero-shot accuracy drops without an error). A local checkpoint
    file or no weights at all are not checked; the error names the config to use.
    """
    if not pretrained or os.path.isfile(pretrained):
        return
    tag = open_clip.get_pretrained_cfg(model_name, pretrained)
    config = open_clip.get_model_config(model_name)
    if not tag or config is None:
        return  # an unknown tag: open_clip's own error says so
    model_quick_gelu = bool(config.get("quick_gelu")) or force_quick_gelu
    tag_quick_gelu = bool(tag.get("quick_gelu"))
    if model_quick_gelu == tag_quick_gelu:
        return
    if tag_quick_gelu:
        fix = f"{model_name}-quickgelu" if f"{model_name}-quickgelu" in open_clip.list_models() else None
        advice = f"use model {fix}" if fix else "force QuickGELU"
    elif force_quick_gelu:
        advice = "do not force QuickGELU"
    else:
        advice = f"use model {model_name.removesuffix('-quickgelu')}"
    raise ValueError(
        f"model {model_name} with pretrained {pretrained}: the weights were trained with "
        f"{'QuickGELU' if tag_quick_gelu else 'GELU'}, the model config uses "
        f"{'QuickGELU' if model_quick_gelu else 'GELU'}; {advice} (open_clip only warns, and every activation "
        "would be silently wrong)"
    )
