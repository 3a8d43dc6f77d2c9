"""The release card and the attribution file, on small synthetic manifests whose counts the test knows in Python."""

from __future__ import annotations

import csv
import hashlib
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.core import duck, schema
from pipeline.sources.licenses import attribution_line, normalize_license
from pipeline.stages.publish.attribution import TOP_OVERALL, write_attribution
from pipeline.stages.publish.card import DEDUP_REASONS, write_card

SOURCES = {"inaturalist": "plant", "gbif_plantnet": "plant", "laion_pool": "general"}
PLANT_LICENSES = ("cc-by-4.0", "cc-by-nc", "cc-by-sa-4.0", "cc0-1.0", "pdm-1.0", "cc-by-nd-4.0")
URL_ONLY_LICENSE = "cc-by-nd-4.0"  # the synthetic license policy: no redistributed bytes, URL only
SPECIES = [f"Genus{g} species{s}" for g in range(4) for s in range(4)]  # 16 species, skewed use below
SHARD_SIZE = 40
RECIPE = {"name": "tiny", "mix": {"general_share": 0.25, "seed": 7}, "filter": {"clip_score_min": 0.1}}
RECIPE_YAML = (
    "# a tiny recipe, comments kept\nname: tiny\nmix: {general_share: 0.25, seed: 7}\nfilter:\n  clip_score_min: 0.1\n"
)


def manifest_rows(n: int = 300) -> list[dict]:
    """Candidates with every kind of outcome: download failures, dedup and filter drops, sampling decisions."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        source = rng.choice(sorted(SOURCES))
        domain = SOURCES[source]
        species = SPECIES[min(int(rng.expovariate(0.25)), len(SPECIES) - 1)] if domain == "plant" else None
        row = dict(
            sample_id=schema.sample_id_for(source, str(i)), source=source, source_record_id=str(i), domain=domain,
            url=f"https://img.example/{i}.jpg", page_url=f"https://page.example/{i}", caption=f"a photo {i}",
            scientific_name=species, taxon_rank="species" if species else None,
            taxonomy={"kingdom": "Plantae", "genus": species.split()[0], "species": species} if species else None,
            license=rng.choice(PLANT_LICENSES) if domain == "plant" else "unspecified",
            rights_holder=f"Photographer {rng.randrange(40)}" if domain == "plant" else None,
            attribution=None, status="ok", keep=True, clip_score=round(rng.uniform(0.05, 0.45), 4),
        )  # fmt: skip
        row["license_url"] = f"https://creativecommons.org/licenses/{row['license']}"
        if i % 7 != 3:  # some rows carry the crawl's credit line, the others get one made by the attribution step
            row["attribution"] = f"(c) {row['rights_holder']}, some rights reserved ({row['license']})"
        fate = rng.random()
        if fate < 0.12:
            row.update(status=rng.choice(["failed_download", "rejected", "failed_decode"]), clip_score=None)
            row.update(keep=False, drop_reason=row["status"])
        elif fate < 0.25:
            row.update(keep=False, drop_reason=rng.choice(DEDUP_REASONS))
        elif fate < 0.35:
            row.update(keep=False, drop_reason=rng.choice(["clip_score_min", "min_image_side"]))
        if row["keep"]:
            selected = rng.random() < 0.75
            row.update(selected=selected, sample_repeat=(2 if rng.random() < 0.1 else 1) if selected else None)
            if not selected:
                row["sample_reason"] = rng.choice(schema.SAMPLE_REASONS)
        else:
            row["selected"] = False
        rows.append(row)
    return rows


def release_rows(build: list[dict]) -> list[dict]:
    """One row per released copy; packed rows fill shards of SHARD_SIZE in order, URL-only rows have no shard."""
    out, packed = [], 0
    for row in (r for r in build if r.get("selected")):
        for copy in range(row["sample_repeat"]):
            rel = {k: row.get(k) for k in schema.RELEASE_SCHEMA.names if k in row}
            rel.update(copy=copy, keep=row["license"] != URL_ONLY_LICENSE)
            if rel["keep"]:
                shard, index = divmod(packed, SHARD_SIZE)
                rel.update(shard=f"shards/{shard:05d}.tar", key=f"{shard:05d}{index:04d}")
                packed += 1
            out.append(rel)
    return out


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The two manifests on disk, a mixing-law PNG, release.json's dict, and the card and attribution written."""
    tmp = tmp_path_factory.mktemp("release")
    build = manifest_rows()
    released = release_rows(build)
    for rows, table_schema, name in ((build, schema.MANIFEST_SCHEMA, "build.parquet"),
                                     (released, schema.RELEASE_SCHEMA, "release.parquet")):  # fmt: skip
        pq.write_table(pa.Table.from_pylist(rows, schema=table_schema), tmp / name)
    Image.new("RGB", (32, 24), (10, 120, 30)).save(tmp / "law.png")
    packed = sum(r["keep"] for r in released)
    info = dict(
        name="plantmix-tiny", target={"total": 200, "plant": 150, "general": 50}, general_share=0.25,
        counts={"by_domain": dict(Counter(r["domain"] for r in released)),
                "by_source": dict(Counter(r["source"] for r in released)), "packed": packed,
                "url_only": len(released) - packed, "shards": -(-packed // SHARD_SIZE)},
        recipe=RECIPE, recipe_yaml=RECIPE_YAML, recipe_sha256=hashlib.sha256(RECIPE_YAML.encode()).hexdigest(),
        code_version="git:deadbeef", created_at="2025-01-02T03:04:05+00:00",
        seed=7, mixing_law={"plot": str(tmp / "law.png"), "share": 0.23, "fit": {"c": 1.5, "k": -2.0, "b": 0.1}},
    )  # fmt: skip
    written = write_outputs(tmp, info, tmp / "out")
    return dict(tmp=tmp, build=build, released=released, info=info, out=tmp / "out", **written)


def write_outputs(tmp: Path, info: dict, out: Path) -> dict:
    con = duck.connect()
    paths = write_card(con, str(tmp / "build.parquet"), str(tmp / "release.parquet"), info, out)
    counts = write_attribution(con, str(tmp / "release.parquet"), out)
    return dict(paths=paths, counts=counts, card=(out / "RELEASE.md").read_text())


def table_after(markdown: str, heading: str) -> list[list[str]]:
    """The first Markdown table after ``heading``, as rows of cells (header row first, separator left out)."""
    lines = markdown[markdown.index(heading) :].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return [table[0]] + table[2:]


def number(cell: str) -> int:
    return int(cell.replace(",", ""))


def test_the_funnel_shows_the_manifest_counts_at_every_step(release):
    build = release["build"]
    ok = [r for r in build if r["status"] == "ok"]
    deduped = [r for r in ok if r.get("drop_reason") not in DEDUP_REASONS]
    kept = [r for r in build if r["keep"]]
    selected = [r for r in build if r["selected"]]
    funnel = {row[0]: number(row[1]) for row in table_after(release["card"], "## Funnel")[1:]}
    assert funnel == {"candidates": len(build), "downloaded (status ok)": len(ok), "after dedup": len(deduped),
                      "after filter (kept)": len(kept), "sampled (selected)": len(selected)}  # fmt: skip
    expected = Counter()
    for r in build:
        if r["status"] != "ok":
            expected["download", r["status"]] += 1
        elif not r["keep"]:
            expected["dedup" if r["drop_reason"] in DEDUP_REASONS else "filter", r["drop_reason"]] += 1
        elif not r["selected"]:
            expected["sample", r["sample_reason"]] += 1
    reasons = {(step, reason): number(n) for step, reason, n in table_after(release["card"], "### Why rows left")[1:]}
    assert reasons == dict(expected)
    assert sum(reasons.values()) + len(selected) == len(build)  # nothing disappears


def test_sources_and_licenses_tables_match_the_manifests(release):
    rows = table_after(release["card"], "## Sources and domains")
    header, body = rows[0], {(r[0], r[1]): dict(zip(rows[0], r, strict=True)) for r in rows[1:]}
    assert header[:3] == ["domain", "source", "candidates"]
    for source, domain in SOURCES.items():
        mine = [r for r in release["build"] if r["source"] == source]
        copies = [r for r in release["released"] if r["source"] == source]
        assert number(body[domain, source]["candidates"]) == len(mine)
        assert number(body[domain, source]["selected"]) == sum(bool(r["selected"]) for r in mine)
        assert number(body[domain, source]["released copies"]) == len(copies)
        assert number(body[domain, source]["URL-only"]) == sum(not r["keep"] for r in copies)
    assert number(body["**total**", ""]["candidates"]) == len(release["build"])
    licenses = {r[0]: number(r[1]) for r in table_after(release["card"], "## Licenses")[1:]}
    assert licenses == dict(Counter(r["license"] for r in release["released"]))


def test_the_taxonomy_long_tail_counts_species_and_small_ones(release):
    per_species = Counter()
    for _, species in {(r["sample_id"], r["scientific_name"]) for r in release["released"]}:
        if species:
            per_species[species] += 1
    facts = {row[0]: row[1] for row in table_after(release["card"], "## Taxonomy long tail")[1:]}
    assert number(facts["species"]) == len(per_species)
    small = sum(n < 10 for n in per_species.values())
    assert number(facts["species with fewer than 10 images"]) == small
    share = float(facts["share of species with fewer than 10 images"])
    assert share == pytest.approx(small / len(per_species), abs=1e-3)


def test_the_plots_exist_are_valid_pngs_and_are_shown(release):
    assert release["paths"][0] == "RELEASE.md"
    plots = [p for p in release["paths"] if p.startswith("plots/")]
    assert set(plots) == {"plots/funnel.png", "plots/species_long_tail.png", "plots/clip_scores.png",
                          "plots/mixing_law.png"}  # fmt: skip
    for plot in plots:
        path = release["out"] / plot
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(path) as image:
            image.verify()
        assert f"]({plot})" in release["card"], plot
    assert (release["out"] / "plots/mixing_law.png").read_bytes() == (release["tmp"] / "law.png").read_bytes()
    assert "0.23" in release["card"]  # the share the mixing law chose


def test_the_train_commands_name_the_real_shards_and_sample_count(release):
    packed = [r for r in release["released"] if r["keep"]]
    last = (len(packed) - 1) // SHARD_SIZE
    card = release["card"]
    assert f'--train-data "$RELEASE/shards/{{00000..{last:05d}}}.tar"' in card
    assert f"--train-num-samples {len(packed)} " in card
    assert "python -m open_clip_train.main --dataset-type webdataset" in card
    assert 'python -m dalip.train --manifest "$RELEASE/manifest.parquet"' in card


def test_the_recipe_and_provenance_are_shown_verbatim(release):
    card = release["card"]
    assert f"`{hashlib.sha256(RECIPE_YAML.encode()).hexdigest()}`" in card
    assert "git:deadbeef" in card and "2025-01-02T03:04:05+00:00" in card
    assert f"```yaml\n{RECIPE_YAML}```" in card  # the file's text, comments included


def test_a_recipe_without_its_text_is_shown_as_yaml_and_a_wrong_sha_is_refused(release, tmp_path):
    info = {**release["info"], "recipe_yaml": None, "recipe_sha256": "ab" * 32}
    write_card(duck.connect(), str(release["tmp"] / "build.parquet"), str(release["tmp"] / "release.parquet"),
               info, tmp_path)  # fmt: skip
    card = (tmp_path / "RELEASE.md").read_text()
    assert f"`{'ab' * 32}`" in card
    assert yaml.safe_load(card[card.index("```yaml") + 7 : card.rindex("```\n\n## Train")]) == RECIPE
    info["recipe_yaml"] = RECIPE_YAML
    with pytest.raises(ValueError, match="recipe_sha256"):
        write_card(duck.connect(), str(release["tmp"] / "build.parquet"), str(release["tmp"] / "release.parquet"),
                   info, tmp_path)  # fmt: skip


def test_attribution_covers_every_cc_by_released_row_and_nothing_else(release):
    with open(release["out"] / "ATTRIBUTION.csv", newline="") as f:
        listed = list(csv.DictReader(f))
    credit = [r for r in release["released"] if r["license"].startswith("cc-by")]

    def where(r):
        return r["sample_id"], r.get("shard") or "", r.get("key") or ""

    assert sorted(map(where, listed)) == sorted(map(where, credit))
    assert len(listed) == len(credit) == release["counts"]["credit_rows"]
    released_ids = {r["sample_id"] for r in release["released"]}
    assert {r["sample_id"] for r in listed} <= released_ids
    assert not any(r["license"].startswith(("cc0", "pdm", "unspecified")) for r in listed)
    assert all(r["attribution"] and r["page_url"] for r in listed)
    # Rows the crawl left without a credit line get one in the style of sources/licenses.py.
    lines = {where(r): r["attribution"] for r in listed}
    made = [r for r in credit if r["attribution"] is None]
    assert made
    for r in made:
        expected = attribution_line(r["rights_holder"], normalize_license(r["license"]))
        assert lines[where(r)] == expected
    packed_order = [(r["shard"], r["key"]) for r in listed if r["shard"]]
    assert packed_order == sorted(packed_order)


def test_attribution_md_is_bounded_and_names_unspecified_and_public_domain(release):
    text = (release["out"] / "ATTRIBUTION.md").read_text()
    top = table_after(text, "most credited rights holders")
    assert len(top) - 1 == TOP_OVERALL < release["counts"]["rights_holders"]  # 40 holders, only the top listed
    per_license = {r[0]: r for r in table_after(text, "## Licenses that require credit")[1:]}
    credit = [r for r in release["released"] if r["license"].startswith("cc-by")]
    assert {k: number(v[1]) for k, v in per_license.items()} == {
        lic: len({r["sample_id"] for r in credit if r["license"] == lic}) for lic in {r["license"] for r in credit}
    }
    assert "ATTRIBUTION.csv" in text and "states no license" in text.replace("\n", " ")
    unspecified = {r["sample_id"] for r in release["released"] if r["license"] == "unspecified"}
    assert release["counts"]["unspecified_images"] == len(unspecified) > 0
    assert release["counts"]["public_domain_images"] > 0 and release["counts"]["other_images"] == 0


def test_a_rerun_writes_the_same_bytes(release, tmp_path):
    again = write_outputs(release["tmp"], release["info"], tmp_path / "again")
    assert again["paths"] == release["paths"]
    for name in ["RELEASE.md", "ATTRIBUTION.csv", "ATTRIBUTION.md"] + release["paths"][1:]:
        assert (tmp_path / "again" / name).read_bytes() == (release["out"] / name).read_bytes(), name


def test_a_card_that_disagrees_with_release_json_is_refused(release, tmp_path):
    info = {**release["info"], "counts": {**release["info"]["counts"], "packed": 1}}
    with pytest.raises(ValueError, match="packed"):
        write_card(duck.connect(), str(release["tmp"] / "build.parquet"), str(release["tmp"] / "release.parquet"),
                   info, tmp_path)  # fmt: skip


def test_without_a_mixing_law_the_card_says_so(release, tmp_path):
    info = {**release["info"], "mixing_law": None}
    paths = write_card(duck.connect(), str(release["tmp"] / "build.parquet"),
                       str(release["tmp"] / "release.parquet"), info, tmp_path)  # fmt: skip
    assert "plots/mixing_law.png" not in paths
    assert "No mixing-law fit" in (tmp_path / "RELEASE.md").read_text()
