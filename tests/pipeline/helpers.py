"""Build a tiny crawl output by hand, so download/manifest tests need no source adapter."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline import schema
from pipeline.config import DownloadConfig, Recipe, SourceSpec
from pipeline.io import write_parquet


def candidates(urls: list[str], source: str = "test") -> list[dict]:
    return [
        dict(sample_id=schema.sample_id_for(source, u), source=source, source_record_id=str(i), domain="general",
             url=u, caption=f"caption {i}", status="pending", license="cc0-1.0", attribution="test",
             input_file="urls.csv", input_row=i + 1)
        for i, u in enumerate(urls)
    ]  # fmt: skip


def recipe_with(tmp: Path, rows: list[dict], source: str = "test", **download) -> Recipe:
    out = tmp / "build"
    write_parquet(pa.Table.from_pylist(rows, schema=schema.CANDIDATE_SCHEMA), out / "crawl" / f"{source}.parquet")
    options = dict(image_size=64, shard_size=8, thread_count=4, timeout=2, retries=0,
                   max_requests_per_host_per_second=0)  # fmt: skip
    options.update(download)
    return Recipe(name="t", output_dir=str(out), sources=[SourceSpec(source, "url_caption_pool")],
                  download=DownloadConfig(**options))  # fmt: skip
