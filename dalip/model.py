"""DalipModel: an unmodified open_clip CLIP plus one MBDC head per modality (first-order ``f``, second-order ``z``).

Token features come from open_clip's public ``forward_intermediates`` (last block, final norm applied), and
are projected to the joint width with the model's own projection, exactly as open_clip does for the pooled
token. ``encode_image`` / ``encode_text`` keep open_clip's meaning so its zero-shot tools work unchanged.
"""

from __future__ import annotations

from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from dalip.bdc import MBDC, MbdcConfig
from pipeline.models.activation import check_activation


def _project(x: torch.Tensor, projection: nn.Module | torch.Tensor | None) -> torch.Tensor:
    """Apply an open_clip projection, which is an ``nn.Parameter`` matrix, an ``nn.Linear`` or absent."""
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        return projection(x)
    return x @ projection


class DalipModel(nn.Module):
    """Wraps an open_clip ``CLIP``/``CustomTextCLIP`` with a ViT image tower; adds MBDC heads for ``z``."""

    def __init__(self, clip: nn.Module, mbdc: MbdcConfig = MbdcConfig()) -> None:
        super().__init__()
        visual = clip.visual
        if not hasattr(visual, "forward_intermediates") or not hasattr(visual, "proj"):
            raise TypeError(f"DalipModel needs an open_clip VisionTransformer image tower, got {type(visual).__name__}")
        self.clip = clip
        # Head sizes come from the model: MBDC works on tokens already projected to the joint width.
        embed_dim = int(visual.output_dim)
        self.image_mbdc = MBDC(embed_dim, embed_dim, mbdc, modality="image")
        self.text_mbdc = MBDC(embed_dim, embed_dim, mbdc, modality="text")
        self.mbdc_config = mbdc

    @classmethod
    def create(
        cls,
        model_name: str,
        pretrained: str | None = None,
        mbdc: MbdcConfig = MbdcConfig(),
        precision: str = "fp32",
        device: str | torch.device = "cpu",
        **open_clip_kwargs: Any,
    ) -> tuple[DalipModel, Any, Any]:
        """Build from an open_clip model name and a pretrained tag or local checkpoint path.

        Returns ``(model, preprocess_train, preprocess_val)`` as ``open_clip.create_model_and_transforms`` does.
        """
        check_activation(model_name, pretrained, bool(open_clip_kwargs.get("force_quick_gelu")))
        clip, preprocess_train, preprocess_val = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, precision=precision, device=device, **open_clip_kwargs
        )
        model = cls(clip, mbdc).to(device)
        return model, preprocess_train, preprocess_val

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    def _text_tower(self) -> nn.Module:
        # CLIP keeps ln_final/text_projection on itself; CustomTextCLIP keeps them on .text.
        return getattr(self.clip, "text", self.clip)

    # -- open_clip meaning: one tensor ---------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_image(image, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(text, normalize=normalize)

    # -- DALIP: first and second order ---------------------------------------------------------------------------
    def image_tokens(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled image embedding ``(B, D)`` (unnormalised ``f``) and the tokens MBDC observes, projected to the joint
        width: the patch tokens (reference variant: the class token is the reweighting reference, not an
        observation, so M = 196 at ViT-B-16), or every token, class token included ("layernorm" variant)."""
        out = self.clip.forward_intermediates(
            image=image,
            image_indices=1,
            normalize=False,
            normalize_intermediates=True,  # ln_post on the tokens, as on the pooled token
            image_output_fmt="NLC",
            image_output_extra_tokens=True,
        )
        tokens = out["image_intermediates"][-1]
        if self.mbdc_config.variant != "reference":
            tokens = torch.cat([out["image_intermediates_prefix"][-1], tokens], dim=1)
        return out["image_features"], _project(tokens, self.clip.visual.proj)

    def text_tokens(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled text embedding ``(B, D)`` (unnormalised ``f``) and all context tokens in the joint width (padding
        positions included, as the authors' textBDC observes them)."""
        out = self.clip.forward_intermediates(text=text, text_indices=1, normalize=False, normalize_intermediates=True)
        tokens = out["text_intermediates"][-1]  # ln_final applied
        return out["text_features"], _project(tokens, self._text_tower().text_projection)

    def encode(
        self, image: torch.Tensor | None = None, text: torch.Tensor | None = None, normalize: bool = True
    ) -> dict[str, torch.Tensor]:
        """``image_f``, ``image_z``, ``text_f``, ``text_z`` for whichever inputs are given."""
        out: dict[str, torch.Tensor] = {}
        if image is not None:
            pooled, tokens = self.image_tokens(image)
            out["image_f"], out["image_z"] = pooled, self.image_mbdc(tokens, pooled)
        if text is not None:
            pooled, tokens = self.text_tokens(text)
            mask = None
            if self.mbdc_config.mask_padding:  # the EOT token is the last real one (open_clip's argmax pooling)
                mask = torch.arange(text.shape[1], device=text.device)[None, :] <= text.argmax(dim=-1)[:, None]
            out["text_f"], out["text_z"] = pooled, self.text_mbdc(tokens, pooled, mask)
        if normalize:
            out = {k: F.normalize(v, dim=-1) for k, v in out.items()}
        return out

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """L2-normalised ``image_f``, ``image_z``, ``text_f``, ``text_z`` and ``logit_scale`` (already exp'd)."""
        out = self.encode(image=image, text=text, normalize=True)
        out["logit_scale"] = self.clip.logit_scale.exp()
        return out
