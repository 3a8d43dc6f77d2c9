"""Download stage: plan download shards from the crawl, fetch each shard with img2dataset.

img2dataset does the fetching, decoding, resizing and webdataset writing (its ``Downloader``,
``Resizer`` and ``WebDatasetSampleWriter``); we give it one planned shard at a time so that each
shard is a unit of work an orchestrator can schedule anywhere, and the shared harness
(:mod:`pipeline.stage`) makes the shard atomic and resumable. ``sample_id``, license and
attribution travel with every image as img2dataset "additional columns" (in the shard's json).

Per shard ``NNNNN`` the stage leaves ``NNNNN.tar`` (webdataset), ``NNNNN.parquet`` (img2dataset's
per-row status), ``NNNNN_stats.json`` and the marker ``NNNNN.done.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from img2dataset.downloader import Downloader
from img2dataset.resizer import Resizer
from img2dataset.writer import WebDatasetSampleWriter

from pipeline import politeness, schema, shard_worker
from pipeline.config import DownloadConfig
from pipeline.io import read_json, write_json, write_parquet
from pipeline.sources.base import rewrite_url
from pipeline.stage import StageDir, StageMismatch, run_shard

OOM_SHARD_COUNT = 5  # shard names have 5 digits, as img2dataset's default
PASSED_COLUMNS = ["sample_id", "license", "rights_holder", "attribution"]  # stored in each image's json
PLAN_FILE = "_plan.json"
# Download settings that change a shard's output (the others only change how fast or politely it is made).
OUTPUT_SETTINGS = (
    "image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "encode_quality", "min_image_size",
    "max_aspect_ratio", "user_agent_token", "disallowed_header_directives", "respect_robots_txt",
)  # fmt: skip


class DownloadError(RuntimeError):
    """img2dataset could not complete a shard (disk, bad plan file, ...); the shard is retried on rerun."""


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{OOM_SHARD_COUNT}d}"


def plan_shards(candidates: pa.Table, plan_dir: Path, shard_size: int) -> list[dict[str, Any]]:
    """Split the pending rows into download shards, once; a rerun reuses the same plan.

    ``candidates`` must be in a deterministic order (the crawl's), so the plan, the shard of each
    sample and therefore the finished shards are the same on every rerun.
    """
    plan_file = plan_dir / PLAN_FILE
    pending = candidates.filter(pc.equal(candidates["status"], schema.STATUS_PENDING))
    pending_sha = hashlib.sha256("\n".join(pending["sample_id"].to_pylist()).encode()).hexdigest()[:16]
    if plan_file.exists():
        plan = read_json(plan_file)
        if (plan.get("pending_sha256"), plan["shard_size"]) != (pending_sha, shard_size):
            raise StageMismatch(
                f"{plan_file}: planned for other candidates or shard_size ({plan['rows']} rows, shard_size "
                f"{plan['shard_size']}; now {pending.num_rows} rows, shard_size {shard_size}); build into a new "
                f"output_dir, or delete {plan_dir.parent} to download again"
            )
        return plan["shards"]
    pending = pending.select(["url", "caption", *PASSED_COLUMNS])
    shards = []
    for shard_id, start in enumerate(range(0, pending.num_rows, shard_size)):
        part = pending.slice(start, shard_size)
        path = plan_dir / f"{shard_name(shard_id)}.parquet"
        write_parquet(part, path)
        digest = hashlib.sha256("\n".join(part["sample_id"].to_pylist()).encode()).hexdigest()[:16]
        shards.append({"shard_id": shard_id, "rows": part.num_rows, "plan": path.name, "ids_sha256": digest})
    write_json(
        plan_file,
        {"shard_size": shard_size, "rows": pending.num_rows, "pending_sha256": pending_sha, "shards": shards},
    )
    return shards


def download_shard(plan_dir: Path, out_dir: Path, shard: dict[str, Any], config: DownloadConfig) -> dict[str, Any]:
    """Download one planned shard with img2dataset; skipped when its marker exists."""
    stage = StageDir(out_dir)
    name = shard_name(shard["shard_id"])

    def work(tmp: Path) -> dict[str, Any]:
        table = pq.read_table(plan_dir / shard["plan"])
        if config.url_rewrite:
            urls = [rewrite_url(u, config.url_rewrite) for u in table["url"].to_pylist()]  # longest prefix wins
            table = table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))
        # img2dataset's Downloader reads its input as an Arrow IPC file with columns [additional, caption, url].
        table = table.select([*PASSED_COLUMNS, "caption", "url"])
        input_file = tmp / f"{name}.input.arrow"
        with pa.OSFile(str(input_file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        _run_isolated(config, tmp, shard["shard_id"], input_file)
        input_file.unlink(missing_ok=True)
        results = shard_results(tmp, shard["shard_id"])
        if results.num_rows != table.num_rows:
            raise DownloadError(
                f"shard {name}: img2dataset reported {results.num_rows} rows for {table.num_rows} planned rows"
            )
        counts: dict[str, int] = {}
        for status in results["status"].to_pylist():
            counts[status] = counts.get(status, 0) + 1
        return {"rows": table.num_rows, "status": dict(sorted(counts.items()))}

    provenance = {"stage": "download", "config": dataclasses.asdict(config), "plan": shard}
    decides = {"plan": shard, **{k: v for k, v in provenance["config"].items() if k in OUTPUT_SETTINGS}}
    return run_shard(stage, name, work, provenance, decides_output=decides)


def _run_isolated(config: DownloadConfig, out: Path, shard_id: int, input_file: Path) -> None:
    """Run img2dataset on one shard in a child interpreter (see :mod:`pipeline.shard_worker`)."""
    name = shard_name(shard_id)
    job = out / f"{name}.job.json"
    job.write_text(json.dumps({"config": dataclasses.asdict(config), "shard_id": shard_id, "input": str(input_file)}))
    log = out / f"{name}_download.log"
    try:
        ok = shard_worker.run_in_worker(job, log, timeout=config.shard_timeout_seconds)
    except shard_worker.WorkerDied as err:
        raise DownloadError(str(err)) from err
    job.unlink()
    if not ok:
        raise DownloadError(f"img2dataset failed on shard {name}:\n{log.read_text()[-2000:]}")


def run_job(job_file: Path) -> bool:
    """Child side: download the shard a job file describes with img2dataset, politely."""
    job = json.loads(job_file.read_text())
    config = DownloadConfig(**job["config"])
    input_file = Path(job["input"])
    with pa.OSFile(str(input_file), "rb") as source:
        column_list = pa.ipc.open_file(source).schema.names
    downloader = _make_downloader(config, input_file.parent, column_list)
    policy = politeness.HostPolicy(
        user_agent=config.user_agent,
        user_agent_token=config.user_agent_token,
        respect_robots_txt=config.respect_robots_txt,
        max_requests_per_second=config.max_requests_per_host_per_second,
        host_rate_overrides=config.host_rate_overrides,
        robots_timeout=config.timeout,
    )
    with politeness.installed(policy):
        ok, _ = downloader((job["shard_id"], str(input_file)))
    return ok


def _make_downloader(config: DownloadConfig, output_folder: Path, column_list: list[str]) -> Downloader:
    resizer = Resizer(
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        resize_only_if_bigger=config.resize_only_if_bigger,
        encode_quality=config.encode_quality,
        encode_format=config.encode_format,
        min_image_size=config.min_image_size,
        max_aspect_ratio=config.max_aspect_ratio,
    )
    return Downloader(
        sample_writer_class=WebDatasetSampleWriter,
        resizer=resizer,
        thread_count=config.thread_count,
        save_caption=True,
        extract_exif=False,
        output_folder=str(output_folder),
        column_list=column_list,
        timeout=config.timeout,
        number_sample_per_shard=config.shard_size,
        oom_shard_count=OOM_SHARD_COUNT,
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format=config.encode_format,
        retries=config.retries,
        user_agent_token=config.user_agent_token,
        disallowed_header_directives=config.disallowed_header_directives or None,
    )


def classify(i2d_status: str | None, error: str | None) -> tuple[str, str | None]:
    """Map img2dataset's (status, error_message) to a manifest (status, error)."""
    if i2d_status == "success":
        return schema.STATUS_OK, None
    error = error or "no error message from img2dataset"
    if i2d_status == "failed_to_resize":
        if "decod" in error.lower():
            return schema.STATUS_FAILED_DECODE, error
        return schema.STATUS_FAILED_RESIZE, error
    if "X-Robots-Tag" in error:
        return schema.STATUS_OPTED_OUT, error
    if error.startswith(politeness.ROBOTS_UNREACHABLE_PREFIX):
        return schema.STATUS_FAILED_DOWNLOAD, error
    if error.startswith(politeness.ROBOTS_ERROR_PREFIX):
        return schema.STATUS_ROBOTS_DISALLOWED, error
    return schema.STATUS_FAILED_DOWNLOAD, error


def shard_results(out_dir: Path, shard_id: int) -> pa.Table:
    """The per-row download outcome of one finished shard, in manifest column names."""
    name = shard_name(shard_id)
    cols = ["sample_id", "key", "status", "error_message", "width", "height", "original_width", "original_height"]
    table = pq.read_table(out_dir / f"{name}.parquet", columns=[*cols, "sha256"])
    i2d = zip(table["status"].to_pylist(), table["error_message"].to_pylist(), strict=True)
    mapped = [classify(status, error) for status, error in i2d]
    ok = [status == schema.STATUS_OK for status, _ in mapped]
    keys = [key if k else None for key, k in zip(table["key"].to_pylist(), ok, strict=True)]
    return pa.table(
        {
            "sample_id": table["sample_id"],
            "status": pa.array([m[0] for m in mapped], pa.string()),
            "error": pa.array([m[1] for m in mapped], pa.string()),
            "image_sha256": table["sha256"].cast(pa.string()),
            "width": table["width"].cast(pa.int32()),
            "height": table["height"].cast(pa.int32()),
            "original_width": table["original_width"].cast(pa.int32()),
            "original_height": table["original_height"].cast(pa.int32()),
            "shard": pa.array([f"download/{name}.tar" if k else None for k in ok], pa.string()),
            "key": pa.array(keys, pa.string()),
        }
    )
