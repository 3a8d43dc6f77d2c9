"""The dedup stages in a build: exact groups and the keep rule, caption dedup of free text only, image dedup
wired to the stored embeddings, reruns and a kill mid-stage giving the same manifest as a clean build."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import (
    CaptionDedupConfig,
    DedupConfig,
    EmbedConfig,
    ExactDedupConfig,
    ImageDedupConfig,
    Recipe,
    RecipeError,
    SourceSpec,
)
from pipeline.core.schema import sample_id_for
from pipeline.stages.dedup import clusters, minhash
from pipeline.stages.dedup.exact import CANONICAL_URL_SQL
from tests.conftest import REPO
from tests.http_host import ImageHost
from tests.pipeline.helpers import recipe_with, run_after_crawl

TINY = dict(model="DALIP-Tiny", model_config=str(REPO / "dalip" / "model_configs" / "DALIP-Tiny.json"),
            random_init=True, pretrained=None, seed=0, batch_size=8, workers=0)  # fmt: skip


def row(host: str, path: str, i: int, domain: str = "general", license: str = "cc0-1.0", caption: str = "",
        kind: str = "original") -> dict:  # fmt: skip
    url = f"{host}{path}"
    return dict(sample_id=sample_id_for("test", f"{i}"), source="test", source_record_id=str(i), domain=domain,
                url=url, caption=caption or f"caption number {i} of a distinct picture", caption_kind=kind,
                status="pending", license=license, attribution="test", input_file="rows.csv", input_row=i)  # fmt: skip


def build(tmp_path, rows, dedup: DedupConfig, embed: bool = True) -> list[dict]:
    recipe = recipe_with(tmp_path, rows, shard_size=4)
    recipe.dedup = dedup
    recipe.embed = EmbedConfig(**TINY) if embed else None
    return pq.read_table(run_after_crawl(recipe)["manifest"]).to_pylist()


def by_record(manifest: list[dict]) -> dict[str, dict]:
    return {r["source_record_id"]: r for r in manifest}


def test_exact_groups_keep_the_best_ranked_row(tmp_path):
    with ImageHost() as host:  # /img/2.jpg, /img/02.jpg and /img/002.jpg serve the same bytes
        rows = [
            row(host.url, "/img/2.jpg", 1, license="cc-by-nc-4.0"),
            row(host.url, "/img/02.jpg", 2, domain="plant", license="cc-by-4.0"),  # plant first
            row(host.url, "/img/002.jpg#view", 3),
            row(host.url, "/img/5.jpg", 4, license="cc-by-sa-4.0"),
            row(host.url, "/img/05.jpg", 5, license="cc0-1.0"),  # the more open license
            row(host.url, "/img/9.jpg", 6),
            row(host.url, "/img/09.jpg", 7),  # a tie on everything: the smaller sample_id
            row(host.url, "/img/7.jpg", 8),  # distinct
        ]
        manifest = by_record(build(tmp_path, rows, DedupConfig(exact=ExactDedupConfig(), caption=None, image=None)))
    sid = {k: r["sample_id"] for k, r in manifest.items()}
    tie_winner = min(sid["6"], sid["7"])
    expected = {"1": sid["2"], "3": sid["2"], "4": sid["5"], "6": tie_winner, "7": tie_winner}
    expected.pop("6" if tie_winner == sid["6"] else "7")
    got = {k: r["exact_dup_of"] for k, r in manifest.items() if r["exact_dup_of"]}
    assert got == expected
    for k, r in manifest.items():
        assert r["drop_reason"] == ("exact_duplicate" if k in expected else None), r


def test_canonical_urls_ignore_scheme_host_case_default_port_and_fragment():
    urls = ["http://Example.ORG/a/b.jpg?x=1#frag", "https://example.org:443/a/b.jpg?x=1", "http://example.org:80/a/b.jpg?x=1",
            "http://example.org/a/b.jpg?x=2", "http://example.org/A/b.jpg?x=1"]  # fmt: skip
    con = duckdb.connect()
    keys = [con.execute(f"SELECT {CANONICAL_URL_SQL} FROM (SELECT ? AS url)", [u]).fetchall()[0][0] for u in urls]
    assert keys[0] == keys[1] == keys[2] == "example.org/a/b.jpg?x=1"
    assert len(set(keys)) == 3  # another query or another path case is another resource


def test_caption_dedup_drops_free_text_repeats_but_never_templated_species_captions(tmp_path):
    with ImageHost() as host:
        sunset = "Stock photo of a sunset!"
        iris = "Iris tectorum, commonly known as Wall iris."
        rows = [row(host.url, f"/img/{i}.jpg", i, caption=sunset if i < 3 else "stock photo of a sunset")
                for i in range(1, 5)]  # fmt: skip
        rows += [row(host.url, f"/img/{i}.jpg", i, domain="plant", caption=iris, kind="dalip") for i in range(5, 9)]
        manifest = build(tmp_path, rows, DedupConfig(exact=None, caption=CaptionDedupConfig(), image=None), False)
    free = [r for r in manifest if r["caption_kind"] == "original"]
    kept = [r for r in free if r["keep"]]
    assert len(kept) == 1 and all(r["text_cluster"] == kept[0]["sample_id"] for r in free)
    assert {r["drop_reason"] for r in free if not r["keep"]} == {"caption_duplicate"}
    templated = [r for r in manifest if r["caption_kind"] == "dalip"]
    assert all(r["keep"] and r["text_cluster"] is None for r in templated)


def test_image_dedup_reads_the_stored_embeddings(tmp_path):
    with ImageHost() as host:  # same bytes -> same embedding; exact dedup is off, so image dedup must find them
        rows = [row(host.url, "/img/3.jpg", 1), row(host.url, "/img/03.jpg", 2), row(host.url, "/img/8.jpg", 3)]
        config = DedupConfig(exact=None, caption=None, image=ImageDedupConfig(threshold=0.9999))
        manifest = by_record(build(tmp_path, rows, config))
    assert manifest["1"]["image_cluster"] == manifest["2"]["image_cluster"] is not None
    assert {manifest["1"]["drop_reason"], manifest["2"]["drop_reason"]} == {None, "image_duplicate"}
    assert manifest["3"]["image_cluster"] is None and manifest["3"]["keep"]


def test_a_kill_inside_a_dedup_stage_then_a_rerun_gives_the_clean_manifest(tmp_path, monkeypatch):
    with ImageHost() as host:
        rows = [row(host.url, f"/img/{i}.jpg", i, caption="a photo of the garden") for i in range(1, 7)]
        rows += [row(host.url, f"/img/{7 + i // 2}.jpg", 7 + i) for i in range(6)]  # 3 pairs of the same bytes
        config = DedupConfig(exact=ExactDedupConfig(), caption=CaptionDedupConfig(), image=None)
        clean = build(tmp_path / "clean", rows, config, embed=False)
        real = minhash.candidate_pairs
        monkeypatch.setattr(minhash, "candidate_pairs", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):  # the caption stage dies in its global step
            build(tmp_path / "killed", rows, config, embed=False)
        assert not (tmp_path / "killed" / "build" / "dedup_caption" / "_reduce.done.json").exists()
        assert not (tmp_path / "killed" / "build" / "manifest.parquet").exists()
        monkeypatch.setattr(minhash, "candidate_pairs", real)
        rerun = build(tmp_path / "killed", rows, config, embed=False)
    assert sum(r["drop_reason"] == "exact_duplicate" for r in clean) == 3
    assert sum(r["drop_reason"] == "caption_duplicate" for r in clean) == 5
    assert rerun == clean


def test_duplicate_of_follows_pointers_through_rows_a_later_stage_dropped(tmp_path):
    """E is an exact copy of O; O's free-text caption duplicates C's (another image), C ranks first: O is dropped
    for C, so E, which pointed at O, must name C as the row kept for its group."""
    with ImageHost() as host:
        caption = "click here to enlarge the picture"
        rows = [
            row(host.url, "/img/4.jpg", 1, caption=caption, license="cc0-1.0"),  # C: best license, ranks first
            row(host.url, "/img/6.jpg", 2, caption=caption, license="cc-by-4.0"),  # O
            row(host.url, "/img/06.jpg", 3, caption="another text entirely", license="cc-by-nc-4.0"),  # E = O's bytes
        ]
        config = DedupConfig(exact=ExactDedupConfig(), caption=CaptionDedupConfig(), image=None)
        manifest = by_record(build(tmp_path, rows, config, embed=False))
    c, o, e = manifest["1"], manifest["2"], manifest["3"]
    assert e["drop_reason"] == "exact_duplicate" and e["exact_dup_of"] == o["sample_id"]
    assert o["drop_reason"] == "caption_duplicate" and o["text_cluster"] == c["sample_id"]
    assert e["duplicate_of"] == o["duplicate_of"] == c["sample_id"] and c["keep"] and c["duplicate_of"] is None


def test_union_find_joins_transitively_and_the_keep_rule_breaks_ties_by_position():
    labels = clusters.components(6, np.array([0, 1, 4]), np.array([1, 2, 5]))
    assert labels[0] == labels[1] == labels[2] != labels[3] and labels[4] == labels[5]
    reps = clusters.representatives(labels, np.array([5, 1, 1, 0, 2, 2]))
    assert list(reps) == [1, 1, 1, 3, 4, 4]


def test_image_dedup_and_decontamination_need_the_embed_stage():
    with pytest.raises(RecipeError, match="need the embed stage"):
        Recipe(name="x", output_dir="o", sources=[SourceSpec("a", "b")], dedup=DedupConfig())
