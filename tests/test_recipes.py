"""Every committed recipe loads, and each source's options build its adapter's Config (no input file is read)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from pipeline.core.config import Recipe, SourceSpec, load_recipe
from pipeline.sources.registry import load_adapter

RECIPES = sorted((Path(__file__).resolve().parents[1] / "manifests" / "recipes").glob("*.yaml"))
# The biodiversity adapters have no `domain` option: every row they emit is a plant row.
FIXED_DOMAIN = {"inaturalist": "plant", "gbif_dwca": "plant"}
# Options naming an input location; adapters read local files only, so none may be a remote URL.
LOCATION_OPTIONS = ("path", "directory")
REMOTE_PREFIXES = ("s3://", "gs://", "hf://", "http://", "https://")


def adapter_config(spec: SourceSpec):
    """The adapter Config exactly as the crawl stage builds it (pipeline/crawl.py)."""
    return load_adapter(spec.adapter).Config.from_dict({"name": spec.name, **spec.options})


def source_domain(spec: SourceSpec) -> str:
    config = adapter_config(spec)
    if any(f.name == "domain" for f in dataclasses.fields(config)):
        return config.domain
    return FIXED_DOMAIN[spec.adapter]


def load(name: str) -> Recipe:
    return load_recipe(next(p for p in RECIPES if p.stem == name))


def test_recipes_exist():
    assert {"demo", "plantmix-13m"} <= {p.stem for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_recipe_and_source_configs_build(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    for spec in recipe.sources:
        config = adapter_config(spec)
        assert config.name == spec.name
        for key in LOCATION_OPTIONS:
            location = spec.options.get(key)
            if location is not None:
                assert not str(location).startswith(REMOTE_PREFIXES), f"{spec.name}.{key} must be a local path"


def test_plantmix_covers_plant_and_general_domains():
    recipe = load("plantmix-13m")
    domains = {spec.name: source_domain(spec) for spec in recipe.sources}
    assert set(domains.values()) == {"plant", "general"}, domains


def test_plantmix_download_and_mix_targets():
    recipe = load("plantmix-13m")
    assert recipe.serve_sample is None  # a real crawl, not the bundled sample
    assert recipe.download.shard_size == 10_000
    assert recipe.download.user_agent_token and recipe.download.respect_robots_txt
    targets = recipe.sample.targets()
    assert targets == {"plant": 10_000_000, "general": 3_000_000}
    assert targets["general"] / sum(targets.values()) == pytest.approx(3 / 13, abs=0.005)
    assert recipe.sample.licenses.otherwise == "url_only" and "unspecified" not in recipe.sample.licenses.redistribute
    assert recipe.publish.shard_size == 10_000
    assert recipe.mixing_law.shares == [0.0, 0.1, 0.2, 0.3, 0.5] and recipe.mixing_law.rule == "critical"
    assert not recipe.later_stages  # every stage of the chain exists
    assert recipe.dedup.image.threshold == 0.95 and "plantnet" in recipe.dedup.decontamination.eval_sets
    assert recipe.embed.model == "ViT-B-16" and not recipe.embed.random_init  # real weights, not a demo model
    assert recipe.filter.clip_top_fraction == {"plant": 0.7, "general": 0.3}
