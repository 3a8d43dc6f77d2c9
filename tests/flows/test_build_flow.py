"""The `build-plantmix` flow on the bundled sample: in-process, rerun, and on a real Dask cluster."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.build_plantmix import build_from_file, main
from pipeline.query import sql
from tests.conftest import DEMO_RECIPE as RECIPE
from tests.conftest import REPO, free_port, stop

DEDUP_REASONS = {"contaminated", "exact_duplicate", "caption_duplicate", "image_duplicate"}
ADAPTER_SOURCE = {"inaturalist": "inaturalist", "gbif_dwca": "plantnet", "url_caption_pool": "general_pool"}


def _manifest(out: Path):
    return pq.read_table(out / "manifest.parquet")


def test_every_sample_row_ends_with_the_expected_status(demo_build):
    with open(REPO / "sample" / "expected.csv") as f:
        expected = {
            (ADAPTER_SOURCE[r["adapter"]], r["source_record_id"]): r["expected_status"] for r in csv.DictReader(f)
        }
    rows = _manifest(demo_build).select(["source", "source_record_id", "status", "keep", "drop_reason"]).to_pylist()
    got = {(r["source"], r["source_record_id"]): r["status"] for r in rows}
    assert len(rows) == len(got) == len(expected) == 200
    assert got == expected
    for r in rows:  # a dropped row always says why; a failed download is never kept
        assert (r["drop_reason"] is None) == r["keep"]
        if r["status"] != "ok":
            assert r["drop_reason"] == r["status"]
    reasons = {r["drop_reason"] for r in rows if r["status"] == "ok" and not r["keep"]}
    assert reasons == {"clip_top_fraction", *DEDUP_REASONS} - {"image_duplicate"}  # the rules that bite here


def test_dedup_finds_exactly_the_planted_duplicates_and_contamination(demo_build):
    """sample/expected.csv plants 6 exact copies and 3 evaluation-set copies; the pool plants 2 caption groups."""
    with open(REPO / "sample" / "expected.csv") as f:
        planted = list(csv.DictReader(f))
    rows = _manifest(demo_build).to_pylist()
    by_record = {(r["source"], r["source_record_id"]): r for r in rows}
    by_id = {r["sample_id"]: r for r in rows}
    dropped_as = {}
    for p in planted:
        if p["duplicate_of"]:  # exactly one of the pair is dropped, pointing at the other
            copy = by_record[(ADAPTER_SOURCE[p["adapter"]], p["source_record_id"])]
            originals = [r for r in rows if r["source_record_id"] == p["duplicate_of"]]
            assert len(originals) == 1
            pair = {copy["sample_id"], originals[0]["sample_id"]}
            dropped = [r for r in (copy, originals[0]) if r["drop_reason"] == "exact_duplicate"]
            assert len(dropped) == 1 and {dropped[0]["sample_id"], dropped[0]["exact_dup_of"]} == pair
            dropped_as[dropped[0]["sample_id"]] = "exact_duplicate"
    contaminated = {by_record[(ADAPTER_SOURCE[p["adapter"]], p["source_record_id"])]["sample_id"]
                    for p in planted if p["contaminates"]}  # fmt: skip
    assert len(contaminated) == 3
    assert {r["sample_id"] for r in rows if r["contaminates"]} == contaminated
    assert {r["sample_id"] for r in rows if r["drop_reason"] == "contaminated"} == contaminated
    for caption, size in (("stock photo of a sunset", 4), ("click here to enlarge", 2)):
        group = [r for r in rows if r["caption"] == caption and r["status"] == "ok"]
        kept = [r for r in group if r["drop_reason"] != "caption_duplicate"]
        assert len(group) == size and len(kept) == 1
        assert all(r["text_cluster"] == kept[0]["sample_id"] for r in group)
        dropped_as |= {r["sample_id"]: "caption_duplicate" for r in group if r is not kept[0]}
    assert {
        r["sample_id"]: r["drop_reason"] for r in rows if r["drop_reason"] in ("exact_duplicate", "caption_duplicate")
    } == dropped_as  # fmt: skip  (nothing else is called a duplicate)
    for r in rows:  # every duplicate names the row dedup keeps for its group
        assert (r["duplicate_of"] is not None) == (r["drop_reason"] in DEDUP_REASONS - {"contaminated"})
        if r["duplicate_of"]:
            assert by_id[r["duplicate_of"]]["drop_reason"] not in DEDUP_REASONS
    templated = [r for r in rows if r["caption_kind"] == "dalip"]
    assert all(r["text_cluster"] is None for r in templated)  # species captions never cluster on text
    con = sql.connect(demo_build)
    groups = dict(con.sql("SELECT method, sum(duplicates) FROM duplicates GROUP BY 1").fetchall())
    assert groups == {"exact": 6, "caption": 4}


def test_the_demo_manifest_is_the_same_row_for_row_as_before_the_stage_contract(demo_build):
    """tests/data/...parquet: the demo's manifest as the code before the one-stage-contract rework wrote it."""
    before = pq.read_table(REPO / "tests" / "data" / "demo_manifest_before_stage_contract.parquet")
    now = _manifest(demo_build)
    kept = [(f.name, f.type) for f in now.schema if f.name in before.schema.names]
    assert kept == [(f.name, f.type) for f in before.schema]  # names, order, types
    unchanged = [n for n in before.schema.names if n not in ("clip_score", "keep", "drop_reason")]
    assert now.select(unchanged).to_pylist() == before.select(unchanged).to_pylist()  # order, ids, statuses
    # Dedup came later: a row it drops now was kept then, or dropped by a rule that comes after dedup's.
    for row, was in zip(now.to_pylist(), before.to_pylist(), strict=True):
        if row["drop_reason"] in DEDUP_REASONS:
            assert was["status"] == "ok" and was["drop_reason"] in (None, "clip_top_fraction")
        else:
            assert (row["keep"], row["drop_reason"]) == (was["keep"], was["drop_reason"])
    import numpy as np

    np.testing.assert_allclose(  # float32 cosines of a seeded model: equal up to CPU kernel rounding
        now["clip_score"].to_numpy(zero_copy_only=False),
        before["clip_score"].to_numpy(zero_copy_only=False),
        atol=1e-4,
    )


def test_each_stage_shows_its_counts_and_progress_as_prefect_artifacts(demo_build):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["plantmix-demo-crawl", "plantmix-demo-download", "plantmix-demo-embed", "plantmix-demo-judge",
            "plantmix-demo-summary", "plantmix-demo-download-progress", "plantmix-demo-embed-progress",
            "plantmix-demo-dedup-exact", "plantmix-demo-dedup-caption", "plantmix-demo-decontaminate",
            "plantmix-demo-sample", "plantmix-demo-publish", "plantmix-demo-publish-progress",
            "plantmix-demo-release", "plantmix-demo-release-card"]  # fmt: skip
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
    latest = {}
    for artifact in sorted(found, key=lambda a: a.created):
        latest[artifact.key] = artifact
    assert set(latest) == set(keys)
    crawl = json.loads(latest["plantmix-demo-crawl"].data)
    assert {"status": "(all)", "rows": 200} in crawl and {"status": "rejected", "rows": 17} in crawl
    download = {r["status"]: r["rows"] for r in json.loads(latest["plantmix-demo-download"].data)}
    assert download == {"ok": 174, "failed_download": 6, "opted_out": 2, "failed_decode": 1, "(all)": 183}
    judge = json.loads(latest["plantmix-demo-judge"].data)
    assert {"domain": "general", "drop_reason": "caption_duplicate", "rows": 4} in judge
    exact = {r["status"]: r["rows"] for r in json.loads(latest["plantmix-demo-dedup-exact"].data)}
    assert exact["duplicates"] == 6
    assert latest["plantmix-demo-download-progress"].data == 100.0
    card = latest["plantmix-demo-summary"].data
    assert "**200** candidates" in card and "manifest.parquet" in card and "plantmix sql" in card
    release = json.loads(latest["plantmix-demo-release"].data)
    assert {"by": "domain", "name": "plant", "target": 90, "released": 90} in release
    assert {"by": "release", "name": "shards", "target": None, "released": 4} in release
    release_card = latest["plantmix-demo-release-card"].data
    assert "| sampled (selected) | 120 |" in release_card and "open_clip_train.main" in release_card


def test_the_manifest_and_every_marker_record_the_code_version(demo_build):
    from pipeline.core.version import code_version

    version = code_version()
    meta = pq.read_metadata(demo_build / "manifest.parquet").metadata
    assert meta[b"plantmix_code_version"].decode() == version and meta[b"plantmix_build"] == b"demo"
    markers = list(demo_build.glob("*/*.done.json"))
    assert {m.parent.name for m in markers} == {
        "crawl",
        "download",
        "embed",
        "judge",
        "dedup_exact",
        "dedup_caption",
        "dedup_image",
        "decontaminate",
        "mix",
        "sample",
        "publish",
    }
    assert {json.loads(m.read_text())["code_version"] for m in markers} == {version}
    assert json.loads((demo_build / "build.json").read_text())["code_version"] == version


def test_kept_rows_point_at_their_image_in_a_shard(demo_build):
    con = duckdb.connect()
    kept = con.sql(
        f"SELECT shard, key, image_sha256, license, attribution FROM '{demo_build}/manifest.parquet' WHERE keep"
    )
    import webdataset as wds

    by_shard: dict[str, set[str]] = {}
    for shard, key, sha, license_, attribution in kept.fetchall():
        assert shard and key and len(sha) == 64 and license_ and attribution
        by_shard.setdefault(shard, set()).add(key)
    for shard, keys in by_shard.items():
        found = {s["__key__"]: s for s in wds.WebDataset(str(demo_build / shard), shardshuffle=False)}
        assert keys <= set(found), f"{shard} lacks {keys - set(found)}"
        sample = found[sorted(keys)[0]]
        assert sample["jpg"][:2] == b"\xff\xd8" and b"sample_id" in sample["json"] and b"license" in sample["json"]


def test_rerun_reuses_finished_shards_and_keeps_ids(demo_build):
    markers = sorted(demo_build.glob("*/*.done.json"))  # every unit and global step of every stage
    assert len(markers) >= 6
    before = {p: p.read_text() for p in markers}
    tars = {p: p.stat().st_mtime_ns for p in (demo_build / "download").glob("*.tar")}
    ids_before = _manifest(demo_build)["sample_id"].to_pylist()
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        build_from_file(RECIPE, output_dir=str(demo_build))
    finally:
        os.chdir(cwd)
    assert {p: p.read_text() for p in markers} == before  # no shard was redone
    assert {p: p.stat().st_mtime_ns for p in tars} == tars
    assert _manifest(demo_build)["sample_id"].to_pylist() == ids_before


def test_main_prints_summary_and_example_query(demo_build, capsys):
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        assert main(["--recipe", RECIPE, "--output-dir", str(demo_build)]) == 0
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert "200 candidates = 174 ok + 17 rejected + 6 failed_download + 2 opted_out + 1 failed_decode" in out
    assert "exact_duplicate" in out and "contaminated" in out  # the summary's per-rule lines show dedup
    assert "plantmix sql" in out and "general_pool" in out
    release = demo_build / "release"  # make demo ends by saying where the release card is and how to train
    assert f"card: {release}/RELEASE.md" in out and f"--manifest {release}/manifest.parquet" in out
    assert f"--train-data '{release}/shards/{{00000..00003}}.tar' --train-num-samples 120" in out


@pytest.mark.server
@pytest.mark.slow
def test_dask_cluster_gives_the_same_manifest(demo_build, tmp_path, prefect_server):
    """Scheduler and two workers as separate processes on 127.0.0.1, via prefect-dask's DaskTaskRunner.

    Tasks on Dask workers report to the Prefect API, so flow and workers share a real Prefect server.
    """
    port = free_port()
    bin_dir = Path(sys.executable).parent
    logs = open(tmp_path / "dask.log", "w")
    scheduler = subprocess.Popen(
        [bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        cwd=REPO, env=prefect_server.env, stdout=logs, stderr=subprocess.STDOUT,
    )  # fmt: skip
    workers = subprocess.Popen(
        [bin_dir / "dask", "worker", f"tcp://127.0.0.1:{port}", "--nworkers", "2", "--nthreads", "2",
         "--host", "127.0.0.1", "--no-dashboard", "--memory-limit", "4GiB"],
        cwd=REPO, env={**prefect_server.env, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"},  # DataLoader workers
        stdout=logs, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
            worker_pids = set(client.run(os.getpid).values())
        assert os.getpid() not in worker_pids and len(worker_pids) == 2
        out = tmp_path / "build"
        cwd = os.getcwd()
        os.chdir(REPO)
        try:
            with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
                build_from_file(RECIPE, output_dir=str(out), dask_address=f"tcp://127.0.0.1:{port}")
        finally:
            os.chdir(cwd)
        markers = [p.read_text() for p in (out / "download").glob("*.done.json")]
        assert markers and all('"host"' in m for m in markers)
        assert _manifest(out).equals(_manifest(demo_build))
    finally:
        for proc in (workers, scheduler):
            stop(proc, timeout=30)
        logs.close()
        time.sleep(0.5)


def test_dalip_trains_on_the_demo_manifest_and_its_checkpoint_embeds(demo_build, tmp_path):
    """The pipeline <-> trainer contract end to end: manifest + shards in, checkpoint out, checkpoint scores."""
    from dalip.train import main as train_main
    from pipeline.core.config import EmbedConfig
    from pipeline.models.clip import load_clip

    run = tmp_path / "run"
    train_main(["--manifest", str(demo_build / "manifest.parquet"), "--model", "DALIP-Tiny", "--epochs", "1",
                "--batch-size", "16", "--precision", "fp32", "--workers", "0", "--warmup", "1", "--max-steps", "3",
                "--save-every", "3", "--output-dir", str(run)])  # fmt: skip
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest.txt").read_text().strip()
    config = EmbedConfig(model="DALIP-Tiny", pretrained=str(checkpoint),
                         model_config=str(REPO / "dalip" / "model_configs" / "DALIP-Tiny.json"))  # fmt: skip
    model, _, _ = load_clip(config)
    import torch

    trained = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained[f"clip.{name}"]), name
