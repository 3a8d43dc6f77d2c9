"""Child side of the download stage: run img2dataset on one planned shard, politely.

Runs inside a :mod:`pipeline.core.workers` child (``handler = "pipeline.stages.download.job:run_job"``); this is
the only module that imports img2dataset's downloader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from img2dataset.downloader import Downloader
from img2dataset.resizer import Resizer
from img2dataset.writer import WebDatasetSampleWriter

from pipeline.core.config import DownloadConfig
from pipeline.core.layout import SHARD_DIGITS
from pipeline.stages.download import politeness


def run_job(job_file: Path) -> bool:
    """Download the shard a job file describes (``config``, ``shard_id``, ``input``) into the input's folder."""
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
        oom_shard_count=SHARD_DIGITS,
        compute_hash="sha256",
        verify_hash_type=None,
        encode_format=config.encode_format,
        retries=config.retries,
        user_agent_token=config.user_agent_token,
        disallowed_header_directives=config.disallowed_header_directives or None,
    )
