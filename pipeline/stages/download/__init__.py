"""Download stage: plan shards from the crawl, fetch each shard with img2dataset.

img2dataset does the fetching, decoding, resizing and webdataset writing (its ``Downloader``, ``Resizer`` and
``WebDatasetSampleWriter``, in :mod:`.job`); we give it one planned shard at a time so that each shard is a unit
an orchestrator can schedule anywhere, and the harness makes the shard atomic and resumable. ``sample_id``,
license and attribution travel with every image as img2dataset "additional columns" (in the shard's json).

Units are the plan's shards (the global ``_plan`` step, :mod:`.plan`). Per shard ``NNNNN`` the stage leaves
``NNNNN.tar`` (webdataset), ``NNNNN.parquet`` (sample_id + the download columns, :mod:`.results`),
``NNNNN.img2dataset.parquet`` (img2dataset's own table), ``NNNNN_stats.json``, ``NNNNN_download.log`` and the
marker. This module does not import img2dataset: only the worker child running :mod:`.job` does.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import workers
from pipeline.core.config import DownloadConfig
from pipeline.core.harness import Build, Stage, TransientError, read_marker, run_step, unit_fingerprints
from pipeline.core.io import read_parquet
from pipeline.sources.base import rewrite_url
from pipeline.sources.registry import source_local_roots
from pipeline.stages.download.plan import PASSED_COLUMNS, write_plan
from pipeline.stages.download.quarantine import DeathLog, row_being_decoded
from pipeline.stages.download.results import download_rows

JOB_HANDLER = "pipeline.stages.download.child:run_job"  # .job, in a child without torch
MAX_WORKER_DEATHS = 12  # per shard attempt: beyond this the cause is not a few hostile rows
# Download settings that change a shard's output (the others only change how fast or politely it is made).
OUTPUT_SETTINGS = (
    "image_size", "resize_mode", "resize_only_if_bigger", "encode_format", "encode_quality", "min_image_size",
    "max_aspect_ratio", "user_agent_token", "disallowed_header_directives", "respect_robots_txt",
    "max_response_bytes", "max_image_area",
)  # fmt: skip


class DownloadError(TransientError):
    """img2dataset could not complete a shard (disk, bad plan file, a dead worker); the shard is retried."""


class DownloadStage(Stage):
    name = "download"
    retries = 2

    def plan(self, build: Build) -> list[str]:
        """Cut the crawl's pending rows into shards, once (marker ``download/_plan.done.json``)."""
        layout, config = build.layout, build.recipe.download
        sources = [spec.name for spec in build.recipe.sources]
        crawl = [layout.crawl_file(name) for name in sources]
        record = run_step(
            self.dir(build),
            "_plan",
            lambda out: write_plan(crawl, out, config.shard_size),
            decides={"crawl": unit_fingerprints(layout.stage_dir("crawl"), sources), "shard_size": config.shard_size},
            provenance={"stage": self.name, "step": "plan", "inputs": crawl},
            dest_dir=layout.plan_dir,
        )
        return record["stats"]["units"]

    def planned(self, build: Build, unit: str) -> dict[str, Any]:
        record = read_marker(self.dir(build), "_plan")
        if record is None:
            raise DownloadError(f"download shard {unit}: no download plan in {self.dir(build)}; plan first")
        return next(s for s in record["stats"]["shards"] if s["shard"] == unit)

    def provenance(self, build: Build, unit: str) -> dict[str, Any]:
        return {"config": dataclasses.asdict(build.recipe.download), "plan": self.planned(build, unit)}

    def decides(self, build: Build, unit: str) -> Any:
        config = dataclasses.asdict(build.recipe.download)
        return {"plan": self.planned(build, unit), **{k: v for k, v in config.items() if k in OUTPUT_SETTINGS}}

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        config = build.recipe.download
        table = read_parquet(build.layout.plan_file(unit))
        if config.url_rewrite:
            urls = [rewrite_url(u, config.url_rewrite) for u in table["url"].to_pylist()]  # longest prefix wins
            table = table.set_column(table.schema.get_field_index("url"), "url", pa.array(urls, pa.string()))
        # img2dataset's Downloader reads its input as an Arrow IPC file with columns [additional, caption, url].
        table = table.select([*PASSED_COLUMNS, "caption", "url"])
        input_file = out / f"{unit}.input.arrow"
        with pa.OSFile(str(input_file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        run_isolated(config, out, int(unit), input_file, local_roots(build))
        input_file.unlink(missing_ok=True)
        i2d_file = out / f"{unit}.img2dataset.parquet"
        (out / f"{unit}.parquet").rename(i2d_file)
        rows = download_rows(pq.read_table(i2d_file), unit)
        if rows.num_rows != table.num_rows:
            raise DownloadError(f"shard {unit}: img2dataset reported {rows.num_rows} rows for {table.num_rows} planned")
        pq.write_table(rows, out / f"{unit}.parquet", compression="zstd")
        counts = rows.group_by("status").aggregate([("status", "count")]).to_pylist()
        status = {c["status"]: c["status_count"] for c in counts}
        return {"rows": rows.num_rows, "status": dict(sorted(status.items()))}


def local_roots(build: Build) -> list[str]:
    """Folders of the recipe's local and pre-downloaded sources: the only places ``file://`` URLs are read from."""
    return [
        root
        for spec in build.recipe.sources
        for root in source_local_roots(spec.adapter, {"name": spec.name, **spec.options})
    ]


def run_isolated(
    config: DownloadConfig, out: Path, shard_id: int, input_file: Path, roots: list[str] | None = None
) -> None:
    """Run img2dataset on one shard in a worker child, bounded by the shard deadline.

    When the worker dies while decoding a row, the shard is rerun; a row blamed by two deaths is quarantined
    (:mod:`.quarantine`) and the shard rerun without it, so one hostile image cannot stop the build.
    """
    name = input_file.name.split(".")[0]
    job, log, journal = out / f"{name}.job.json", out / f"{name}_download.log", out / f"{name}.decoding"
    deaths = DeathLog()
    while True:
        spec = {"config": dataclasses.asdict(config), "shard_id": shard_id, "input": str(input_file),
                "journal": str(journal), "quarantine": deaths.quarantined, "local_roots": roots or []}  # fmt: skip
        job.write_text(json.dumps(spec))
        journal.unlink(missing_ok=True)  # a death before the child opens its journal blames no row
        try:
            ok = workers.run_in_worker(JOB_HANDLER, job, log, timeout=config.shard_timeout_seconds)
            break
        except workers.WorkerDied as err:
            explained = deaths.record(row_being_decoded(journal), str(err))
            if not explained or sum(deaths.blamed.values()) >= MAX_WORKER_DEATHS:
                raise DownloadError(str(err)) from err
    job.unlink()
    journal.unlink(missing_ok=True)
    if not ok:
        raise DownloadError(f"img2dataset failed on shard {name}:\n{log.read_text()[-2000:]}")
