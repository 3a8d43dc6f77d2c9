"""DalipModel on an open_clip model (tokens, encode_* meaning, autocast) and DalipLoss against open_clip.ClipLoss."""

from __future__ import annotations

import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from dalip.bdc import MbdcConfig
from dalip.loss import DalipLoss
from dalip.model import DalipModel


@pytest.fixture(scope="module")
def tiny(tiny_model_name: str) -> tuple[DalipModel, open_clip.tokenizer.SimpleTokenizer]:
    torch.manual_seed(0)
    model, _, _ = DalipModel.create(tiny_model_name, mbdc=MbdcConfig(heads=4, dim=6))
    return model, open_clip.get_tokenizer(tiny_model_name)


def _batch(tokenizer, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    texts = ["a photo of a red striped leaf.", "olive spots", "teal bands on a leaf", "x"] * n
    return torch.randn(n, 3, 32, 32), tokenizer(texts[:n])


def test_tokens_are_in_the_joint_space_of_the_pooled_embedding(tiny) -> None:
    model, tokenizer = tiny
    image, text = _batch(tokenizer)
    f_img, tok_img = model.image_tokens(image)
    f_txt, tok_txt = model.text_tokens(text)
    grid = model.clip.visual.grid_size
    # Reference MBDC observes the patch tokens (M = grid cells); the class token is its reweighting reference.
    assert tok_img.shape == (4, grid[0] * grid[1], model.clip.visual.output_dim)
    assert tok_txt.shape == (4, model.clip.context_length, model.clip.visual.output_dim)
    # The "layernorm" variant puts the class token first: projected, it is the pooled image embedding; the
    # projected EOT token is the text embedding.
    first = DalipModel(model.clip, MbdcConfig(heads=4, dim=6, variant="layernorm"))
    _, all_tokens = first.image_tokens(image)
    assert all_tokens.shape[1] == grid[0] * grid[1] + 1
    torch.testing.assert_close(all_tokens[:, 0], f_img)
    torch.testing.assert_close(all_tokens[:, 1:], tok_img)
    torch.testing.assert_close(tok_txt[torch.arange(4), text.argmax(-1)], f_txt)


def test_encode_keeps_open_clip_meaning(tiny) -> None:
    model, tokenizer = tiny
    model.eval()
    image, text = _batch(tokenizer)
    torch.testing.assert_close(model.encode_image(image), model.clip.encode_image(image))
    torch.testing.assert_close(model.encode_text(text, normalize=True), model.clip.encode_text(text, normalize=True))
    out = model(image, text)
    torch.testing.assert_close(out["image_f"], F.normalize(model.clip.encode_image(image), dim=-1))
    assert set(out) == {"image_f", "image_z", "text_f", "text_z", "logit_scale"}
    assert out["image_z"].shape == out["image_f"].shape
    torch.testing.assert_close(out["image_z"].norm(dim=-1), torch.ones(4))
    # open_clip's own zero-shot tooling accepts the wrapper.
    weights = open_clip.build_zero_shot_classifier(model, tokenizer, ["red", "teal"], ["a {}."], device="cpu")
    assert weights.shape == (model.clip.visual.output_dim, 2)


def test_alpha_one_equals_open_clip_cliploss_exactly(tiny) -> None:
    model, tokenizer = tiny
    out = model(*_batch(tokenizer))
    ours = DalipLoss(alpha=1.0)(out)
    ref = open_clip.ClipLoss()(out["image_f"], out["text_f"], out["logit_scale"])
    assert torch.equal(ours["loss"], ref)
    assert torch.equal(ours["loss_f"], ref)


def test_sum_and_combined_variants_against_hand_written_infonce(tiny) -> None:
    model, tokenizer = tiny
    out = model(*_batch(tokenizer))
    s = out["logit_scale"]

    def infonce(logits: torch.Tensor) -> torch.Tensor:
        labels = torch.arange(len(logits))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

    sim_f, sim_z = out["image_f"] @ out["text_f"].T, out["image_z"] @ out["text_z"].T
    terms = DalipLoss(alpha=0.3)(out)
    expected = 0.3 * infonce(s * sim_f) + 0.7 * infonce(s * sim_z)
    torch.testing.assert_close(terms["loss"], expected)
    torch.testing.assert_close(terms["loss_z"], infonce(s * sim_z))
    combined = DalipLoss(variant="combined", lambdas=(0.25, 2.0))(out)
    torch.testing.assert_close(combined["loss"], infonce(s * (0.25 * sim_f + 2.0 * sim_z)))
    with pytest.raises(ValueError, match="variant"):
        DalipLoss(variant="product")


def test_every_mbdc_parameter_gets_a_gradient_and_batch_of_one_trains(tiny_model_name: str) -> None:
    torch.manual_seed(0)
    model, _, _ = DalipModel.create(tiny_model_name, mbdc=MbdcConfig(heads=4, dim=6))
    tokenizer = open_clip.get_tokenizer(tiny_model_name)
    model.train()
    for n in (3, 1):
        model.zero_grad()
        loss = DalipLoss()(model(*_batch(tokenizer, n)))["loss"]
        assert torch.isfinite(loss)
        loss.backward()
        for name, p in model.named_parameters():
            if name.startswith(("image_mbdc", "text_mbdc")):
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"batch {n}: no gradient for {name}"
                # A batch of one has no negatives: InfoNCE is 0 and so is every gradient; otherwise all move.
                assert (p.grad.abs().sum() > 0) == (n > 1), f"batch {n}: gradient of {name}"
        if n == 1:
            assert loss.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gives_finite_outputs_loss_and_gradients(tiny, dtype: torch.dtype) -> None:
    model, tokenizer = tiny
    model.train()
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype):
        out = model(*_batch(tokenizer))
        terms = DalipLoss()(out)
    for k, v in {**out, **terms}.items():
        assert torch.isfinite(v).all(), k
    terms["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    assert math.isfinite(terms["loss"].item())


def test_local_checkpoint_path_as_pretrained(tiny, tiny_model_name: str, tmp_path) -> None:
    model, tokenizer = tiny
    path = tmp_path / "clip.pt"
    torch.save(model.clip.state_dict(), path)
    other, _, _ = DalipModel.create(tiny_model_name, pretrained=str(path), mbdc=MbdcConfig(heads=4, dim=6))
    image, _ = _batch(tokenizer)
    model.eval()
    torch.testing.assert_close(other.eval().encode_image(image), model.encode_image(image))


def test_a_pretrained_tag_with_another_activation_is_refused_before_anything_is_fetched(monkeypatch):
    """ViT-B-16 + openai: open_clip would only warn and build GELU around QuickGELU weights; we refuse and name
    the config to use. Nothing is downloaded (the check runs first; a download attempt fails the test)."""
    import open_clip

    from dalip.model import DalipModel, check_activation

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be fetched")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_download)
    with pytest.raises(
        ValueError, match="trained with QuickGELU, the model config uses GELU; use model ViT-B-16-quickgelu"
    ):
        DalipModel.create("ViT-B-16", "openai")
    with pytest.raises(ValueError, match="trained with GELU, the model config uses QuickGELU; do not force QuickGELU"):
        check_activation("ViT-B-16", "laion2b_s34b_b88k", force_quick_gelu=True)
    check_activation("ViT-B-16-quickgelu", "openai")  # matching: no error
    check_activation("ViT-B-16", "openai", force_quick_gelu=True)
    check_activation("ViT-B-16", "laion2b_s34b_b88k")
    check_activation("ViT-B-16", None)
