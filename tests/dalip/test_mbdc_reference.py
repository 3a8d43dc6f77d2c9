"""The reference MBDC computes what the DALIP authors' ``visionBDC`` / ``textBDC`` compute.

The authors' modules are ported here from their code's behaviour (XavierHeart/DALIP, ``src/open_clip``): a loop
over 4 heads, cosine re-weighting by the class (EOT) token after ``fc1``, the 196 patch tokens reshaped to a
14x14 map and reduced by a 1x1 convolution + BatchNorm2d + ReLU (text: Linear + LayerNorm(eps 1e-7) + ReLU),
``Dropout2d``, ``BDCovpool`` written with identity and all-ones matrices, the upper triangle by a mask's nonzero
indices, LayerNorm(eps 1e-7), ``down``, then ``fc2``. Weights are copied across; the embeddings agree to float
tolerance in train mode (batch statistics, no dropout) and eval mode, and the dropout drops what theirs drops.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalip.bdc import MBDC, MbdcConfig

HEADS, CHANNELS, DIM = 4, 8, 5
WIDTH = HEADS * CHANNELS
TRIU = HEADS * DIM * (DIM + 1) // 2


def authors_bdcovpool(x: torch.Tensor) -> torch.Tensor:
    """``(B, dim, M)`` -> the double-centred distance matrix, as their ``BDCovpool`` / ``text_BDCovpool``."""
    batch, dim, m = x.shape
    eye = torch.eye(dim, dtype=x.dtype).view(1, dim, dim).repeat(batch, 1, 1)
    ones = torch.ones(batch, dim, dim, dtype=x.dtype)
    x_pow2 = x.bmm(x.transpose(1, 2))
    dcov = ones.bmm(x_pow2 * eye) + (x_pow2 * eye).bmm(ones) - 2 * x_pow2
    dcov = torch.sqrt(torch.clamp(dcov, min=0.0) / (2 * m) + 1e-5)
    return dcov - dcov.bmm(ones / dim) - (ones / dim).bmm(dcov) + (ones / dim).bmm(dcov).bmm(ones / dim)


def authors_triuvec(x: torch.Tensor) -> torch.Tensor:
    batch, dim, _ = x.shape
    index = torch.ones(dim, dim).triu().reshape(dim * dim).nonzero(as_tuple=False).squeeze()
    return x.reshape(batch, dim * dim)[:, index]


class AuthorsVision(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, WIDTH, bias=False)
        self.conv_dr_block = nn.Sequential(nn.Conv2d(CHANNELS, DIM, 1, bias=False), nn.BatchNorm2d(DIM), nn.ReLU())
        self.pre = nn.Dropout2d(dropout)
        self.ln = nn.LayerNorm(TRIU, eps=1e-7)
        self.down = nn.Linear(TRIU, TRIU)
        self.fc2 = nn.Linear(TRIU, WIDTH, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # all tokens, class token first
        x = self.fc1(x)
        b, length, c = x.shape
        cls_groups = x[:, 0:1, :].view(b, HEADS, c // HEADS)
        other = x[:, 1:, :].view(b, length - 1, HEADS, c // HEADS)
        side = int(math.sqrt(length - 1))
        results = []
        for i in range(HEADS):
            group = other[:, :, i, :]
            weights = F.softmax(F.cosine_similarity(cls_groups[:, i, :].unsqueeze(1), group, dim=2), dim=1)
            group = (group * weights.unsqueeze(2)).transpose(1, 2).reshape(b, c // HEADS, side, side)
            group = self.pre(self.conv_dr_block(group))
            results.append(authors_triuvec(authors_bdcovpool(group.reshape(b, DIM, side * side))))
        return self.fc2(self.down(self.ln(torch.cat(results, dim=1))))


class AuthorsText(nn.Module):
    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, WIDTH, bias=False)
        self.conv_dr_block = nn.Sequential(nn.Linear(CHANNELS, DIM, bias=False), nn.LayerNorm(DIM, eps=1e-7), nn.ReLU())
        self.pre = nn.Dropout2d(dropout)
        self.ln = nn.LayerNorm(TRIU, eps=1e-7)
        self.down = nn.Linear(TRIU, TRIU)
        self.fc2 = nn.Linear(TRIU, WIDTH, bias=False)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        b, length, c = x.shape
        eot = x[torch.arange(b), text.argmax(dim=-1)].view(b, HEADS, c // HEADS)
        x = x.view(b, length, HEADS, c // HEADS)
        outputs = []
        for i in range(HEADS):
            head = x[:, :, i, :]
            weights = F.softmax(F.cosine_similarity(eot[:, i, :].unsqueeze(1), head, dim=2), dim=1)
            head = self.pre(self.conv_dr_block(head * weights.unsqueeze(2)))  # (B, L, d): 3-D Dropout2d
            outputs.append(authors_triuvec(authors_bdcovpool(head.permute(0, 2, 1))))
        return self.fc2(self.down(self.ln(torch.cat(outputs, dim=1))))


def _copy(ours: MBDC, theirs: nn.Module) -> None:
    with torch.no_grad():
        theirs.fc1.weight.copy_(ours.token_map.weight)
        theirs.conv_dr_block.load_state_dict(ours.reduce.state_dict())
        theirs.ln.load_state_dict(ours.norm.state_dict())
        theirs.down.load_state_dict(ours.fc.state_dict())
        theirs.fc2.weight.copy_(ours.out.weight)
        for p in (*ours.reduce.parameters(), *ours.norm.parameters()):  # off their initial values, so they matter
            p.add_(0.1 * torch.randn_like(p))
        theirs.conv_dr_block.load_state_dict(ours.reduce.state_dict())
        theirs.ln.load_state_dict(ours.norm.state_dict())


@pytest.mark.filterwarnings("ignore:dropout2d. Received a 3D input")  # the authors' Dropout2d on (B, L, d)
@pytest.mark.parametrize("modality", ["image", "text"])
def test_reference_mbdc_equals_the_authors_modules(modality: str) -> None:
    torch.manual_seed(0)
    config = MbdcConfig(heads=HEADS, dim=DIM, dropout=0.0)
    ours = MBDC(WIDTH, WIDTH, config, modality=modality).double()
    theirs = (AuthorsVision(0.0) if modality == "image" else AuthorsText(0.0)).double()
    _copy(ours, theirs)
    if modality == "image":
        tokens = torch.randn(3, 1 + 9, WIDTH, dtype=torch.float64)  # class token + a 3x3 patch grid
        mine = lambda: ours(tokens[:, 1:], tokens[:, 0])  # noqa: E731
        reference = lambda: theirs(tokens)  # noqa: E731
    else:
        tokens = torch.randn(3, 7, WIDTH, dtype=torch.float64)
        text = torch.tensor([[1, 5, 9, 0, 0, 0, 0], [1, 2, 3, 4, 49407, 0, 0], [1, 49407, 0, 0, 0, 0, 0]])
        eot = tokens[torch.arange(3), text.argmax(dim=-1)]
        mine = lambda: ours(tokens, eot)  # noqa: E731
        reference = lambda: theirs(tokens, text)  # noqa: E731
    for mode in ("train", "eval", "train", "eval"):  # batch statistics, then the running ones they updated
        ours.train(mode == "train")
        theirs.train(mode == "train")
        torch.testing.assert_close(mine(), reference(), rtol=1e-9, atol=1e-9)
    if modality == "image":
        torch.testing.assert_close(ours.reduce[1].running_mean, theirs.conv_dr_block[1].running_mean)
        torch.testing.assert_close(ours.reduce[1].running_var, theirs.conv_dr_block[1].running_var)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_reference_dropout_drops_whole_channels_of_images_and_whole_positions_of_text(modality: str) -> None:
    torch.manual_seed(1)
    mbdc = MBDC(WIDTH, WIDTH, MbdcConfig(heads=HEADS, dim=DIM, dropout=0.5), modality=modality).train()
    seen = []
    mbdc.dropout.register_forward_hook(lambda module, args, out: seen.append((args[0], out)))
    mbdc(torch.randn(6, 16, WIDTH), torch.randn(6, WIDTH))
    assert len(seen) == HEADS  # one dropout per head, as the authors' loop
    for before, after in seen:  # images: (B, d, M), text: (B, M, d); dim 1 is what is dropped whole
        zeroed = (after == 0).all(dim=2)  # the whole unit is zero
        kept = torch.isclose(after, 2 * before).all(dim=2)  # the whole unit is kept (scaled by 1 / (1 - p))
        assert (zeroed | kept).all(), "a unit was only partly dropped"
        assert ((after == 0) & (before != 0)).any(dim=2).any() and (kept & ~zeroed).any()  # both happen


def test_the_first_variant_is_kept_and_old_checkpoints_read_as_it() -> None:
    assert MbdcConfig.from_saved({"heads": 4, "dim": 46}).variant == "layernorm"
    assert MbdcConfig.from_saved({"heads": 4, "dim": 46, "variant": "reference"}).variant == "reference"
    first = MBDC(WIDTH, WIDTH, MbdcConfig(heads=HEADS, dim=DIM, variant="layernorm"), modality="image")
    assert isinstance(first.reduce[1], nn.LayerNorm) and first.reduce[1].eps == 1e-5 and first.norm.eps == 1e-5
    assert isinstance(first.dropout, nn.Dropout)
    with pytest.raises(ValueError, match="MBDC variant must be one of"):
        MbdcConfig(variant="paper")


def test_masked_padding_is_as_if_the_padding_were_not_there() -> None:
    """With a mask, text MBDC of tokens + padding equals MBDC of the real tokens alone (eval mode)."""
    torch.manual_seed(2)
    mbdc = MBDC(WIDTH, WIDTH, MbdcConfig(heads=HEADS, dim=DIM, mask_padding=True), modality="text").double().eval()
    real = torch.randn(2, 5, WIDTH, dtype=torch.float64)
    padded = torch.cat([real, torch.randn(2, 4, WIDTH, dtype=torch.float64)], dim=1)  # junk after the EOT
    mask = torch.arange(9)[None, :] < 5
    pooled = real[:, -1]
    torch.testing.assert_close(mbdc(padded, pooled, mask.expand(2, 9)), mbdc(real, pooled), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(mbdc(padded, pooled), mbdc(real, pooled))  # unmasked, the padding counts
