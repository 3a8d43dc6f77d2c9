"""Embed stage sidecars, CLIP scores against open_clip itself, and the filter rules."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.core import duck
from pipeline.core.config import EmbedConfig, FilterConfig, RecipeError
from pipeline.core.harness import Build
from pipeline.core.layout import BuildLayout
from pipeline.models import encode
from pipeline.stages import embed
from pipeline.stages.judge.rules import top_fraction_reference, top_fraction_thresholds
from tests.conftest import REPO
from tests.http_host import ImageHost
from tests.pipeline.helpers import candidates, plan, recipe_with, run, run_after_crawl

TINY = dict(model="DALIP-Tiny", model_config=str(REPO / "dalip" / "model_configs" / "DALIP-Tiny.json"),
            random_init=True, pretrained=None, seed=0, batch_size=4, workers=0)  # fmt: skip


def built(tmp_path, n=10, embed_config=None, rules=None, **download):
    with ImageHost() as host:
        recipe = recipe_with(tmp_path, candidates([f"{host.url}/img/{i}.jpg" for i in range(n)]), **download)
        recipe.embed = embed_config or EmbedConfig(**TINY)
        recipe.filter = rules or FilterConfig()
        result = run_after_crawl(recipe)
    return recipe, plan(recipe), result


def judge(recipe):
    """Redo only the judge (the recipe's rules changed): its marker records the rules, so it reruns."""
    return run_after_crawl(recipe)


def test_scores_equal_open_clip_on_the_same_inputs(tmp_path):
    recipe, shards, result = built(tmp_path, n=6, shard_size=6)
    out = tmp_path / "build"
    ids = pq.read_table(out / "embed" / "00000.parquet").to_pylist()
    with tarfile.open(out / "download" / "00000.tar") as tar:
        images = {m.name.split(".")[0]: tar.extractfile(m).read() for m in tar if m.name.endswith(".jpg")}
    open_clip.add_model_config(TINY["model_config"])
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("DALIP-Tiny")
    model.eval()
    tokenizer = open_clip.get_tokenizer("DALIP-Tiny")
    manifest = {r["sample_id"]: r for r in pq.read_table(result["manifest"]).to_pylist()}
    with torch.no_grad():
        batch = torch.stack([preprocess(Image.open(io.BytesIO(images[r["key"]])).convert("RGB")) for r in ids])
        img = model.encode_image(batch, normalize=True)
        txt = model.encode_text(tokenizer([manifest[r["sample_id"]]["caption"] for r in ids]), normalize=True)
    expected = (img * txt).sum(-1).numpy()
    np.testing.assert_allclose([r["clip_score"] for r in ids], expected, atol=1e-5)
    np.testing.assert_allclose(np.load(out / "embed" / "00000.image.npy"), img.numpy(), atol=2e-3)  # float16
    for r in ids:
        assert manifest[r["sample_id"]]["clip_model"] == "DALIP-Tiny:random-init-seed0"
        assert manifest[r["sample_id"]]["clip_score"] == pytest.approx(r["clip_score"])


def test_dalip_checkpoint_loads_as_its_open_clip_model(tmp_path):
    open_clip.add_model_config(TINY["model_config"])
    torch.manual_seed(7)
    clip = open_clip.create_model("DALIP-Tiny")
    path = tmp_path / "step_00000020.pt"
    state = {f"clip.{k}": v for k, v in clip.state_dict().items()} | {"image_mbdc.weight": torch.zeros(2)}
    torch.save({"model": state, "step": 20, "optimizer": {}}, path)
    config = EmbedConfig(**{**TINY, "random_init": False, "pretrained": str(path)})
    from pipeline.models.clip import load_clip

    loaded, _, _ = load_clip(config)
    for name, value in clip.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_rerun_skips_and_bad_sidecars_are_recomputed(tmp_path, monkeypatch):
    recipe, shards, _ = built(tmp_path, n=8, shard_size=4)
    layout = BuildLayout.at(recipe.output_dir)
    embed_dir = tmp_path / "build" / "embed"
    calls = []
    real = encode.embed_batches
    monkeypatch.setattr(encode, "embed_batches", lambda *a: calls.append(1) or real(*a))
    for shard in plan(recipe, "embed"):
        run(recipe, "embed", shard)
    assert calls == []  # finished shards are skipped
    (embed_dir / "00000.text.npy").unlink()  # deleted
    data = (embed_dir / "00001.image.npy").read_bytes()
    (embed_dir / "00001.image.npy").write_bytes(data[: len(data) // 2])  # truncated
    assert "unreadable" in embed.check_sidecars(layout, "00000", recipe.embed, 4)
    assert "unreadable" in embed.check_sidecars(layout, "00001", recipe.embed, 4)
    assert embed.invalidate_bad_sidecars(Build.of(recipe), shards) == ["00000", "00001"]  # never used as is
    for shard in plan(recipe, "embed"):
        run(recipe, "embed", shard)
    assert len(calls) == 2
    assert embed.check_sidecars(layout, "00000", recipe.embed, 4) is None
    other = EmbedConfig(**{**TINY, "seed": 1})
    assert "recipe asks for" in embed.check_sidecars(layout, "00000", other, 4)
    assert "row counts differ" in embed.check_sidecars(layout, "00000", recipe.embed, 5)
    recipe.embed = other  # another model: the plan finds the sidecars stale and the shards are embedded again
    run_after_crawl(recipe)
    assert len(calls) == 4


def sql_thresholds(scores: dict[str, np.ndarray], fractions: dict[str, float]) -> dict[str, float]:
    con = duck.connect()
    rows = [(d, float(s)) for d, values in scores.items() for s in values]
    con.register(
        "s", pa.table({"domain": [d for d, _ in rows], "clip_score": np.array([s for _, s in rows], np.float32)})
    )
    return top_fraction_thresholds(con, "SELECT * FROM s", fractions)


def test_top_fraction_threshold_is_global_per_domain():
    scores = {"plant": np.array([0.9, 0.1, 0.5, 0.7, 0.3]), "general": np.array([0.2, 0.4, 0.6, 0.8])}
    thresholds = sql_thresholds(scores, {"plant": 0.4, "general": 0.5})
    assert thresholds == {"plant": pytest.approx(0.7), "general": pytest.approx(0.6)}
    assert sql_thresholds(scores, {"plant": 0.01}) == {"plant": pytest.approx(0.9)}  # at least one row
    assert sql_thresholds(scores, {"fungi": 0.5}) == {}  # a domain without scores has no threshold


@pytest.mark.parametrize("seed", range(5))
def test_sql_thresholds_equal_the_in_memory_definition(seed):
    rng = np.random.default_rng(seed)
    scores = {d: rng.random(int(rng.integers(1, 3000))).astype(np.float32) for d in ("plant", "general")}
    fractions = {"plant": float(rng.random()), "general": float(rng.choice([0.1, 0.3, 0.9, 1.0]))}
    assert sql_thresholds(scores, fractions) == top_fraction_reference(scores, fractions)


def test_rules_drop_exactly_the_expected_rows_with_the_first_failing_reason(tmp_path):
    rules = FilterConfig(min_image_side=10, caption_min_words=2, clip_top_fraction={"general": 0.5})
    recipe, shards, result = built(tmp_path, n=10, shard_size=5, rules=rules)
    rows = pq.read_table(result["manifest"]).to_pylist()
    scores = sorted((r["clip_score"] for r in rows), reverse=True)
    threshold = scores[4]  # top 5 of 10
    for r in rows:
        assert r["keep"] == (r["clip_score"] >= threshold)
        assert r["drop_reason"] == (None if r["keep"] else "clip_top_fraction")
    assert sum(r["keep"] for r in rows) == 5
    assert result["summary"]["by_rule"] == {"general": {"(kept)": 5, "clip_top_fraction": 5}}

    strict = FilterConfig(min_image_side=200, caption_min_words=3, clip_score_min=-1.0)
    recipe.filter = strict  # images are 96 px and captions "caption N" have 2 words: side fails first
    table = pq.read_table(judge(recipe)["manifest"])
    assert set(table["drop_reason"].to_pylist()) == {"min_image_side"}
    recipe.filter = FilterConfig(caption_min_words=3, clip_score_min=2.0)
    table = pq.read_table(judge(recipe)["manifest"])
    assert set(table["drop_reason"].to_pylist()) == {"caption_words"}
    recipe.filter = FilterConfig(clip_score_min=threshold)
    table = pq.read_table(judge(recipe)["manifest"])
    assert table["keep"].to_pylist() == [s >= threshold for s in table["clip_score"].to_pylist()]
    assert {r for r in table["drop_reason"].to_pylist() if r} == {"clip_score_min"}


def test_clip_rules_without_embed_and_bad_fractions_are_recipe_errors():
    with pytest.raises(RecipeError, match="need the embed stage"):
        from pipeline.core.config import Recipe, SourceSpec

        Recipe(name="x", output_dir="o", sources=[SourceSpec("a", "b")], filter=FilterConfig(clip_score_min=0.2))
    with pytest.raises(RecipeError, match=r"clip_top_fraction\.plant"):
        FilterConfig(clip_top_fraction={"plant": 1.5})
    with pytest.raises(RecipeError, match="exactly one of pretrained"):
        EmbedConfig(model="ViT-B-16", pretrained="openai", random_init=True)
