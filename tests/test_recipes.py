"""Every committed recipe loads, and each source's options build its adapter's Config (no input file is read);
hostile or mistyped recipes (a source name that is a path, a domain that does not exist) are refused at load."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from pipeline.core.config import DOMAINS, Recipe, RecipeError, SourceSpec, load_recipe
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


def write_recipe(tmp_path: Path, source: dict, **sections) -> Path:
    document = {"name": "t", "output_dir": str(tmp_path / "build"), "sources": [source], **sections}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


POOL = {"name": "pool", "adapter": "url_caption_pool", "options": {"path": "pool.csv"}}


@pytest.mark.parametrize("name", ["../../outside/pwn", "..", ".", "a/b", "/abs", ".hidden", "-x", "", "a b", "é"])
def test_a_source_name_that_is_not_a_plain_file_name_is_refused(tmp_path, name):
    path = write_recipe(tmp_path, {**POOL, "name": name})
    with pytest.raises(RecipeError, match=r"recipe\.sources\[0\]: name: .* is not a valid source name") as err:
        load_recipe(path)
    assert str(path) in str(err.value)
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("name", ["inat", "inat-2023", "gbif.plantnet", "_x", "A1"])
def test_plain_source_names_load(tmp_path, name):
    assert load_recipe(write_recipe(tmp_path, {**POOL, "name": name})).sources[0].name == name


def test_a_source_domain_typo_is_refused(tmp_path):
    path = write_recipe(tmp_path, {**POOL, "options": {"path": "pool.csv", "domain": "plants"}})
    with pytest.raises(RecipeError, match=r"sources\[0\]: options\.domain: unknown domain\(s\) \['plants'\]") as err:
        load_recipe(path)
    assert all(domain in str(err.value) for domain in DOMAINS)


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"embed": {"random_init": True, "pretrained": None}, "filter": {"clip_top_fraction": {"plants": 0.5}}},
         r"recipe\.filter: clip_top_fraction: unknown domain\(s\) \['plants'\]"),
        ({"mixing_law": {"rule": "weighted", "weights": {"plant": 1.0, "genral": 1.0}}},
         r"recipe\.mixing_law: weights: unknown domain\(s\) \['genral'\]"),
    ],
)  # fmt: skip
def test_a_domain_typo_in_a_per_domain_rule_is_refused(tmp_path, sections, key):
    with pytest.raises(RecipeError, match=key) as err:
        load_recipe(write_recipe(tmp_path, POOL, **sections))
    assert "expected some of ['plant', 'general']" in str(err.value)
