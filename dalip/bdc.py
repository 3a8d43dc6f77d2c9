"""Brownian Distance Covariance: the BDC matrix of a batch of ``d x M`` inputs and the multi-head MBDC module.

MBDC turns the token features of one modality into DALIP's second-order embedding ``z``
(DESIGN.md section 5): a bias-free token map, ``h`` heads, token re-weighting by cosine similarity with the
pooled token, channel reduction to ``d``, one BDC matrix per head, its upper triangle, LayerNorm, a linear
layer and a bias-free map to the joint width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VARIANTS = ("reference", "layernorm")


@dataclass(frozen=True)
class MbdcConfig:
    heads: int = 4  # channel groups of the token features, one BDC matrix each (reference: 4)
    dim: int = 46  # channels per head after reduction, i.e. observations per BDC matrix (reference: 46)
    dropout: float = 0.5  # dropout on the reduced token features (reference: 0.5)
    eps: float = 1e-5  # added under the square root; keeps the gradient finite where two channels coincide
    reweight: bool = True  # weight tokens by softmax(cos(token, pooled token)) per head
    hidden_dim: int | None = None  # width of the linear layer after the LayerNorm; None = BDC width (reference)
    # "reference": the authors' visionBDC / textBDC (image tokens = the patch tokens, 1x1 conv + BatchNorm2d
    # reduction per head, whole reduced channels dropped; text: Linear + LayerNorm(eps 1e-7), whole token positions
    # dropped; final LayerNorm eps 1e-7). "layernorm": this project's first version (every token, class token
    # included, LayerNorm reduction, element-wise dropout, eps 1e-5), kept to read its checkpoints.
    variant: str = "reference"
    # Text only: leave the padding after the EOT token out of the observations (the authors keep all 77 positions).
    mask_padding: bool = False

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"MBDC variant must be one of {VARIANTS}, got {self.variant!r}")

    @classmethod
    def from_saved(cls, saved: dict) -> MbdcConfig:
        """The config a checkpoint recorded; one saved before variants existed is the "layernorm" one."""
        return cls(**{"variant": "layernorm", **saved})

    @property
    def bdc_width(self) -> int:
        """Length of the concatenated upper triangles: ``heads * d(d+1)/2``."""
        return self.heads * self.dim * (self.dim + 1) // 2


def bdc_matrix(
    x: torch.Tensor, eps: float = 1e-5, scale: bool = True, tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """Double-centred Brownian distance matrix of each ``d x M`` matrix in ``x`` (shape ``(..., d, M)``).

    Each of the ``d`` rows is one observation over the ``M`` columns: ``D2[k, l] = ||x_k - x_l||^2``,
    ``A = sqrt(max(D2, 0) / (2M) + eps)`` (without ``/(2M)`` when ``scale`` is false), then ``A`` minus its
    row means and column means plus its grand mean. Returns shape ``(..., d, d)``.
    With ``eps = 0`` and ``scale = False``, ``(A * B).sum() / d**2`` is the V-statistic squared distance
    covariance of the two inputs; with ``scale`` it is that value divided by ``2 * sqrt(M_x * M_y)``.
    ``tokens``: the number of real columns of each matrix (shape ``x.shape[:-2]``) when the rest are zeroed
    padding: zero columns add nothing to the distances, and the scale uses the real count.
    """
    m = x.shape[-1] if tokens is None else tokens.to(x.dtype)[..., None, None]  # per matrix: masked columns are 0
    gram = x @ x.transpose(-1, -2)
    sq_norms = gram.diagonal(dim1=-2, dim2=-1)
    # Pairwise squared distances from the Gram matrix: one batched matmul instead of a d x d x M difference.
    d2 = (sq_norms.unsqueeze(-1) + sq_norms.unsqueeze(-2) - 2.0 * gram).clamp_min(0.0)
    if scale:
        d2 = d2 / (2.0 * m)
    a = torch.sqrt(d2 + eps)
    return a - a.mean(dim=-1, keepdim=True) - a.mean(dim=-2, keepdim=True) + a.mean(dim=(-2, -1), keepdim=True)


class MBDC(nn.Module):
    """Multi-head BDC embedding of a token sequence ``(B, M, width)`` given its pooled token ``(B, width)``.

    ``modality`` matters for the reference variant only: images reduce with a 1x1 convolution + BatchNorm2d and
    drop whole reduced channels, text with Linear + LayerNorm and drops whole token positions (the authors' code).
    """

    def __init__(self, width: int, out_dim: int, config: MbdcConfig = MbdcConfig(), modality: str = "text") -> None:
        super().__init__()
        if width % config.heads:
            raise ValueError(f"MBDC: token width {width} is not divisible by heads={config.heads}")
        if modality not in ("image", "text"):
            raise ValueError(f"MBDC modality must be image or text, got {modality!r}")
        self.config, self.modality = config, modality
        self.reference = config.variant == "reference"
        channels = width // config.heads
        self.token_map = nn.Linear(width, width, bias=False)
        # One reduction shared by all heads, as in the reference: heads differ by their input channels only.
        if self.reference and modality == "image":
            self.reduce = nn.Sequential(
                nn.Conv2d(channels, config.dim, kernel_size=1, bias=False), nn.BatchNorm2d(config.dim), nn.ReLU()
            )
            nn.init.kaiming_normal_(self.reduce[0].weight, a=0, mode="fan_out", nonlinearity="leaky_relu")
        else:
            eps = 1e-7 if self.reference else 1e-5
            self.reduce = nn.Sequential(
                nn.Linear(channels, config.dim, bias=False), nn.LayerNorm(config.dim, eps=eps), nn.ReLU()
            )
        # Reference: Dropout2d in the authors' code, i.e. whole channels of (B, d, M) images and whole positions of
        # (B, M, d) text; Dropout1d says the same without PyTorch's 3-D input warning.
        self.dropout = nn.Dropout1d(config.dropout) if self.reference else nn.Dropout(config.dropout)
        hidden = config.hidden_dim or config.bdc_width
        self.norm = nn.LayerNorm(config.bdc_width, eps=1e-7 if self.reference else 1e-5)
        self.fc = nn.Linear(config.bdc_width, hidden)
        self.out = nn.Linear(hidden, out_dim, bias=False)
        rows, cols = torch.triu_indices(config.dim, config.dim)
        self.register_buffer("triu_rows", rows, persistent=False)
        self.register_buffer("triu_cols", cols, persistent=False)

    def forward(self, tokens: torch.Tensor, pooled: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` ``(B, M)``: the tokens to observe (True), e.g. text without its padding; None = all."""
        b, m, width = tokens.shape
        heads = self.config.heads
        x = self.token_map(tokens).view(b, m, heads, width // heads).transpose(1, 2)  # (B, h, M, c)
        if self.config.reweight:
            ref = self.token_map(pooled).view(b, heads, 1, width // heads)
            similarity = F.cosine_similarity(x, ref, dim=-1)
            if mask is not None:
                similarity = similarity.masked_fill(~mask[:, None, :], float("-inf"))
            weights = similarity.softmax(dim=-1)  # (B, h, M): a distribution over (observed) tokens
            x = x * weights.unsqueeze(-1)
        if self.reference:
            x = torch.stack([self._reduce_reference(x[:, i]) for i in range(heads)], dim=1)  # (B, h, d, M)
        else:
            x = self.dropout(self.reduce(x)).transpose(-1, -2)  # (B, h, d, M)
        counts = None
        if mask is not None:
            x = x * mask[:, None, None, :].to(x.dtype)  # padding columns to zero: they add no distance
            counts = mask.sum(dim=-1)[:, None].expand(b, heads)
        # BDC in fp32 even under autocast: sqrt of small distances and the centring cancel badly in 16 bits.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(torch.promote_types(x.dtype, torch.float32))
            a = bdc_matrix(x, eps=self.config.eps, tokens=counts)  # (B, h, d, d)
        v = a[..., self.triu_rows, self.triu_cols].flatten(1)  # (B, h * d(d+1)/2)
        return self.out(self.fc(self.norm(v)))

    def _reduce_reference(self, x: torch.Tensor) -> torch.Tensor:
        """One head ``(B, M, c)`` -> ``(B, d, M)``, a head at a time as the authors' loop (BatchNorm statistics per
        head)."""
        if self.modality == "image":
            reduced = self.reduce(x.transpose(1, 2).unsqueeze(-1)).squeeze(-1)  # 1x1 conv over (B, c, M, 1)
            return self.dropout(reduced)  # (B, d, M): whole channels
        return self.dropout(self.reduce(x)).transpose(1, 2)  # (B, M, d): whole token positions
