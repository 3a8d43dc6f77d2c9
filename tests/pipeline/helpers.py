"""Build a tiny crawl output by hand, so download/manifest tests need no source adapter; run the later stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import runner
from pipeline.core import schema
from pipeline.core.config import DownloadConfig, Recipe, SourceSpec
from pipeline.core.harness import Build, run_step, run_unit
from pipeline.stages import STAGES, stage_named


def candidates(urls: list[str], source: str = "test") -> list[dict]:
    return [
        dict(sample_id=schema.sample_id_for(source, u), source=source, source_record_id=str(i), domain="general",
             url=u, caption=f"caption {i}", status="pending", license="cc0-1.0", attribution="test",
             input_file="urls.csv", input_row=i + 1)
        for i, u in enumerate(urls)
    ]  # fmt: skip


def recipe_with(tmp: Path, rows: list[dict], source: str = "test", **download) -> Recipe:
    """A recipe whose crawl is already done: ``rows`` as the finished crawl unit of ``source`` (with its marker)."""
    out = tmp / "build"
    table = pa.Table.from_pylist(rows, schema=schema.CANDIDATE_SCHEMA)

    def write(tmp_dir: Path) -> dict[str, Any]:
        pq.write_table(table, tmp_dir / f"{source}.parquet")
        return {"rows": table.num_rows, "status": {"pending": table.num_rows}}

    run_step(str(out / "crawl"), source, write, decides=[r["sample_id"] for r in rows])
    # The test hosts live on loopback: allowlisted here, so tests of the address guard pass allow_local_hosts=[].
    options = dict(image_size=64, shard_size=8, thread_count=4, timeout=2, retries=0,
                   max_requests_per_host_per_second=0, allow_local_hosts=["127.0.0.1"])  # fmt: skip
    options.update(download)
    return Recipe(name="t", output_dir=str(out), sources=[SourceSpec(source, "url_caption_pool")],
                  download=DownloadConfig(**options))  # fmt: skip


def run_after_crawl(recipe: Recipe) -> dict[str, Any]:
    """Every stage after the (hand-made) crawl, in order; the finished build's manifest path and summary."""
    return runner.run_build(recipe, stages=[s for s in STAGES if s.name not in ("crawl_parts", "crawl")])


def plan(recipe: Recipe, stage: str = "download") -> list[str]:
    return stage_named(stage).plan(Build.of(recipe))


def run(recipe: Recipe, stage: str, unit: str) -> dict[str, Any]:
    return run_unit(stage_named(stage), Build.of(recipe), unit)
