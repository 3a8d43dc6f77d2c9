"""The judge's merge by groups of download shards: the same manifest whatever the group size, rejected rows and
crawl files at group edges, duplicate pointers and CLIP thresholds across groups, and a plan that does not follow
the crawl or download results that miss planned rows refused. The build is written by hand (crawl, plan, download,
embed, dedup files), so no stage runs."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import duck, schema
from pipeline.core.config import FilterConfig
from pipeline.core.rules import CONTAMINATION, DUPLICATES, Rule
from pipeline.stages.download.plan import write_plan
from pipeline.stages.download.results import DOWNLOAD_ROWS_SCHEMA
from pipeline.stages.judge import SCORED_BY_DOMAIN
from pipeline.stages.judge.merge import GroupedMerge, ManifestError, MergeInputs, StageColumns, write_manifest
from pipeline.stages.judge.rules import rules_for, top_fraction_reference, top_fraction_thresholds
from pipeline.stages.publish.shard_writer import sample_json

SHARD_SIZE = 3
FRACTIONS = {"general": 0.5, "plant": 0.7}
DEDUP_RULES = [
    Rule("contaminated", "contaminates IS NOT NULL", precedence=CONTAMINATION),
    Rule("exact_duplicate", "exact_dup_of IS NOT NULL", precedence=DUPLICATES),
    Rule("caption_duplicate", "text_cluster <> sample_id", precedence=DUPLICATES + 1),
]


def sid(source: str, i: int) -> str:
    return schema.sample_id_for(source, str(i))


def crawl_rows(source: str, n: int, rejected: set[int]) -> pa.Table:
    rows = [
        dict(sample_id=sid(source, i), source=source, source_record_id=str(i), domain=("plant", "general")[i % 2],
             url=f"https://example.org/{source}/{i}.jpg", caption=f"a picture number {i}", license="cc0-1.0",
             status="rejected" if i in rejected else "pending", error="bad url" if i in rejected else None,
             attribution="test", input_file=f"{source}.csv", input_row=i + 1,
             source_metadata=json.dumps({"similarity": i / 10, "NSFW": "UNLIKELY"}) if source == "b" else None)
        for i in range(n)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=schema.CANDIDATE_SCHEMA)


def download_rows(plan: pa.Table, shard: str) -> pa.Table:
    """One result per planned row; every third failed."""
    ids = plan["sample_id"].to_pylist()
    rows = [
        dict(sample_id=s, status="failed_download" if k % 3 == 2 else "ok", error="HTTP 404" if k % 3 == 2 else None,
             width=64, height=64, original_width=100 + k, original_height=100, shard=f"download/{shard}.tar",
             key=f"{shard}{k:04d}", image_sha256=f"sha{s}")
        for k, s in enumerate(ids)
    ]  # fmt: skip
    return pa.Table.from_pylist(rows, schema=DOWNLOAD_ROWS_SCHEMA)


def embed_rows(download: pa.Table, shard: int) -> pa.Table:
    ok = [r["sample_id"] for r in download.to_pylist() if r["status"] == "ok"]
    scores = [((7 * shard + 3 * k) % 11) / 10 for k in range(len(ok))]
    return pa.table({"sample_id": ok, "key": [f"k{k}" for k in range(len(ok))],
                     "clip_model": ["tiny"] * len(ok), "clip_score": pa.array(scores, pa.float32())})  # fmt: skip


def make_build(tmp: Path) -> MergeInputs:
    """Two sources (two crawl files), rejected rows first, inside a shard, between shards and last; 3-row shards,
    so a one-shard group starts in the middle of a crawl file and a group crosses from one file to the next."""
    crawl = [tmp / "crawl" / "a.parquet", tmp / "crawl" / "b.parquet"]
    for path in [*crawl, tmp / "plan" / "x", tmp / "download" / "x", tmp / "embed" / "x", tmp / "dedup" / "x"]:
        path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(crawl_rows("a", 14, rejected={0, 1, 5, 13}), crawl[0])
    pq.write_table(crawl_rows("b", 10, rejected={3, 4, 9}), crawl[1])
    shards = write_plan([str(p) for p in crawl], tmp / "plan", SHARD_SIZE)["units"]
    for k, shard in enumerate(shards):
        download = download_rows(pq.read_table(tmp / "plan" / f"{shard}.parquet"), shard)
        pq.write_table(download, tmp / "download" / f"{shard}.parquet")
        pq.write_table(embed_rows(download, k), tmp / "embed" / f"{shard}.parquet")
        ids = [CONTAMINATED] if CONTAMINATED in download["sample_id"].to_pylist() else []  # per shard: the matches
        matches = pa.table(
            {"sample_id": pa.array(ids, pa.string()), "contaminates": pa.array(["evalset"] * len(ids), pa.string())}
        )
        pq.write_table(matches, tmp / "dedup" / f"{shard}.parquet")
    write_dedup(tmp / "dedup")
    per_shard = lambda folder: [str(tmp / folder / f"{s}.parquet") for s in shards]  # noqa: E731
    stages = [
        StageColumns("embed", per_shard("embed"), ("clip_model", "clip_score")),
        StageColumns("dedup_exact", [str(tmp / "dedup" / "exact.parquet")], ("exact_dup_of",)),
        StageColumns("dedup_caption", [str(tmp / "dedup" / "clusters.parquet")], ("text_cluster",)),
        StageColumns("decontaminate", per_shard("dedup"), ("contaminates",)),
    ]
    return MergeInputs([str(p) for p in crawl], shards, per_shard("plan"), per_shard("download"), stages)


# Pointers that cross groups: COPY (the second crawl file) is an exact copy of ORIGINAL (first shard), whose caption
# duplicates KEPT's (a middle shard): COPY's group is kept by KEPT. CONTAMINATED is also a caption duplicate of
# KEPT, but contamination comes first: no pointer.
KEPT, ORIGINAL, COPY, CONTAMINATED = sid("a", 9), sid("a", 2), sid("b", 8), sid("a", 6)


def write_dedup(folder: Path) -> None:
    exact = {"sample_id": [ORIGINAL, COPY], "exact_dup_of": [None, ORIGINAL], "exact_cluster": [ORIGINAL] * 2}
    pq.write_table(pa.table(exact, schema=pa.schema([(k, pa.string()) for k in exact])), folder / "exact.parquet")
    clusters = {"sample_id": [KEPT, ORIGINAL, CONTAMINATED], "text_cluster": [KEPT] * 3}
    pq.write_table(pa.table(clusters), folder / "clusters.parquet")


def manifest_file(tmp: Path, inputs: MergeInputs, group_shards: int) -> Path:
    """The manifest as the judge writes it: thresholds gathered over the groups, then the groups judged."""
    out = Path(tempfile.mkdtemp(prefix=f"groups-of-{group_shards}-", dir=tmp))
    (out / "scratch").mkdir()
    con = duck.connect()
    merge = GroupedMerge(con, inputs, out / "scratch", group_shards)
    thresholds = top_fraction_thresholds(con, merge.gather(SCORED_BY_DOMAIN, "scores"), FRACTIONS)
    rules = rules_for(FilterConfig(clip_top_fraction=FRACTIONS), thresholds) + DEDUP_RULES
    return write_manifest(merge, rules, out / "manifest.parquet", {"plantmix_build": "t", "k": "v"})


def manifest(tmp: Path, inputs: MergeInputs, group_shards: int) -> pa.Table:
    return pq.read_table(manifest_file(tmp, inputs, group_shards))


@pytest.fixture(scope="module")
def build(tmp_path_factory) -> tuple[Path, MergeInputs]:
    tmp = tmp_path_factory.mktemp("merge")
    return tmp, make_build(tmp)


def test_every_group_size_gives_the_same_manifest_in_crawl_order(build):
    tmp, inputs = build
    whole = manifest(tmp, inputs, group_shards=100)
    assert len(inputs.shards) == 6
    for group_shards in (1, 2, 4):
        assert manifest(tmp, inputs, group_shards).to_pylist() == whole.to_pylist()
    crawl = [pq.read_table(path) for path in inputs.crawl_files]
    assert whole["sample_id"].to_pylist() == [s for t in crawl for s in t["sample_id"].to_pylist()]
    by_id = {r["sample_id"]: r for r in whole.to_pylist()}
    assert [by_id[sid("a", i)]["status"] for i in (0, 1, 5, 13)] == ["rejected"] * 4
    assert by_id[sid("a", 5)]["error"] == "bad url"
    failed = [r for r in whole.to_pylist() if r["status"] == "failed_download"]
    assert failed and all(r["error"] == "HTTP 404" for r in failed)


def test_the_manifest_has_the_schema_and_the_footer_metadata(build):
    tmp, inputs = build
    path = manifest_file(tmp, inputs, group_shards=1)
    assert pq.read_schema(path).remove_metadata().equals(schema.MANIFEST_SCHEMA)
    assert pq.read_metadata(path).metadata == {b"plantmix_build": b"t", b"k": b"v"}


def test_the_source_metadata_reaches_the_manifest_and_duckdb_json_functions_read_it(build):
    """Source "b" is a pool crawled with metadata_columns (rejected rows keep theirs); "a" kept none: NULL."""
    tmp, inputs = build
    path = manifest_file(tmp, inputs, group_shards=2)
    found = duckdb.sql(
        f"""SELECT source, source_record_id, status, json_extract(source_metadata, '$.similarity')::DOUBLE,
                   source_metadata->>'$.NSFW'
            FROM read_parquet('{path}') ORDER BY source, input_row"""
    ).fetchall()
    pool = [row for row in found if row[0] == "b"]
    assert [row[1] for row in pool] == [str(i) for i in range(10)]
    assert [(similarity, nsfw) for *_, similarity, nsfw in pool] == [(i / 10, "UNLIKELY") for i in range(10)]
    assert {row[2] for row in pool} >= {"rejected", "ok", "failed_download"}
    assert all(similarity is None and nsfw is None for src, *_, similarity, nsfw in found if src == "a")
    # A released sample's .json nests it as an object, not as JSON text inside JSON.
    rows = pq.read_table(path).to_pylist()
    pool_row = next(r for r in rows if r["source"] == "b" and r["source_record_id"] == "2")
    assert json.loads(sample_json(pool_row))["source_metadata"] == {"similarity": 0.2, "NSFW": "UNLIKELY"}
    assert json.loads(sample_json(rows[0]))["source_metadata"] is None


def test_duplicate_pointers_resolve_across_groups(build):
    tmp, inputs = build
    rows = {r["sample_id"]: r for r in manifest(tmp, inputs, group_shards=1).to_pylist()}
    copy, original, kept, contaminated = rows[COPY], rows[ORIGINAL], rows[KEPT], rows[CONTAMINATED]
    assert copy["drop_reason"] == "exact_duplicate" and copy["exact_dup_of"] == ORIGINAL
    assert original["drop_reason"] == "caption_duplicate" and original["text_cluster"] == KEPT
    assert copy["duplicate_of"] == original["duplicate_of"] == KEPT and kept["duplicate_of"] is None
    assert contaminated["drop_reason"] == "contaminated" and contaminated["duplicate_of"] is None


def test_top_fraction_thresholds_rank_the_scores_of_every_group(build, tmp_path):
    tmp, inputs = build
    rows = manifest(tmp, inputs, group_shards=1).to_pylist()
    scores: dict[str, list[float]] = {}
    for r in rows:
        if r["clip_score"] is not None:
            scores.setdefault(r["domain"], []).append(r["clip_score"])
    con = duck.connect()
    merge = GroupedMerge(con, inputs, tmp_path, group_shards=1)
    assert len(merge.groups) == 6
    got = top_fraction_thresholds(con, merge.gather(SCORED_BY_DOMAIN, "scores"), FRACTIONS)
    assert got == pytest.approx(top_fraction_reference(scores, FRACTIONS))


def test_a_plan_out_of_crawl_order_is_refused(build, tmp_path):
    _, inputs = build
    swapped = [inputs.plan_files[0], inputs.plan_files[2], inputs.plan_files[1], *inputs.plan_files[3:]]
    bad = MergeInputs(inputs.crawl_files, inputs.shards, swapped, inputs.download_files, inputs.stages)
    with pytest.raises(ManifestError, match="crawl order"):
        GroupedMerge(duck.connect(), bad, tmp_path, group_shards=1)


def test_download_rows_outside_their_shards_crawl_range_are_refused(build, tmp_path):
    tmp, inputs = build
    moved = tmp_path / "00000.parquet"
    first, last = pq.read_table(inputs.download_files[0]), pq.read_table(inputs.download_files[-1])
    pq.write_table(pa.concat_tables([first, last.slice(0, 1)]), moved)  # a later shard's row in shard 0's file
    downloads = [str(moved), *inputs.download_files[1:]]
    bad = MergeInputs(inputs.crawl_files, inputs.shards, inputs.plan_files, downloads, inputs.stages)
    (tmp_path / "scratch").mkdir()
    merge = GroupedMerge(duck.connect(), bad, tmp_path / "scratch", group_shards=2)
    with pytest.raises(ManifestError, match="not pending crawl rows"):
        write_manifest(merge, rules_for(FilterConfig(), {}), tmp_path / "manifest.parquet")


def merge_with_downloads(inputs: MergeInputs, downloads: list[str], scratch: Path) -> GroupedMerge:
    bad = MergeInputs(inputs.crawl_files, inputs.shards, inputs.plan_files, downloads, inputs.stages)
    scratch.mkdir()
    return GroupedMerge(duck.connect(), bad, scratch, group_shards=2)


def test_a_planned_row_without_a_download_result_names_its_shard_file(build, tmp_path):
    """The downloader lost one row of shard 00002: no silent failed_download, an error naming that file."""
    _, inputs = build
    lossy = tmp_path / "00002.parquet"
    pq.write_table(pq.read_table(inputs.download_files[2]).slice(1), lossy)
    downloads = [*inputs.download_files[:2], str(lossy), *inputs.download_files[3:]]
    merge = merge_with_downloads(inputs, downloads, tmp_path / "scratch")
    with pytest.raises(ManifestError, match=r"download results missing: .*00002\.parquet lacks 1 planned row"):
        write_manifest(merge, rules_for(FilterConfig(), {}), tmp_path / "manifest.parquet")


def test_a_missing_download_result_file_is_named(build, tmp_path):
    _, inputs = build
    downloads = [*inputs.download_files[:3], str(tmp_path / "gone" / "00003.parquet"), *inputs.download_files[4:]]
    merge = merge_with_downloads(inputs, downloads, tmp_path / "scratch")
    with pytest.raises(ManifestError, match=r"download results missing for planned shards: .*gone/00003\.parquet"):
        write_manifest(merge, rules_for(FilterConfig(), {}), tmp_path / "manifest.parquet")
