"""Child side of the download stage: run img2dataset on one planned shard, politely.

Runs inside a :mod:`pipeline.core.workers` child (handler ``pipeline.stages.download.child:run_job``, which
imports this module without torch); this is the only module that imports img2dataset's downloader.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from img2dataset.downloader import Downloader
from img2dataset.writer import WebDatasetSampleWriter

from pipeline.core.config import DownloadConfig
from pipeline.core.layout import SHARD_DIGITS
from pipeline.net.addresses import AddressGuard
from pipeline.net.client import FetchLimits, GuardedClient
from pipeline.net.dns import CachedResolver
from pipeline.stages.download import politeness
from pipeline.stages.download.quarantine import DecodeJournal
from pipeline.stages.download.resizer import ReducedDecodeResizer


class JournaledResizer(ReducedDecodeResizer):
    """img2dataset's Resizer (JPEGs decoded at reduced scale, .resizer), noting in the decode journal which row it
    is decoding (see .quarantine)."""

    def __init__(self, journal: DecodeJournal, **resizer_args) -> None:
        super().__init__(**resizer_args)
        self.journal = journal

    def __call__(self, img_stream, blurring_bbox_list=None):
        self.journal.decoding(getattr(img_stream, "row_key", None))
        try:
            return super().__call__(img_stream, blurring_bbox_list)
        finally:
            self.journal.clear()


def run_job(job_file: Path) -> bool:
    """Download the shard a job file describes into the input's folder.

    Job keys: ``config``, ``shard_id``, ``input`` (Arrow IPC file), ``journal`` (decode journal path),
    ``quarantine`` (row key -> reason: rows answered with that reason, never fetched), ``local_roots`` (folders
    of local-folder sources).
    """
    job = json.loads(job_file.read_text())
    config = DownloadConfig(**job["config"])
    input_file = Path(job["input"])
    with pa.OSFile(str(input_file), "rb") as source:
        column_list = pa.ipc.open_file(source).schema.names
    journal = DecodeJournal(Path(job["journal"]))
    try:
        downloader = _make_downloader(config, input_file.parent, column_list, journal)
        policy = host_policy(config, local_roots=[Path(root) for root in job.get("local_roots", [])])
        policy.quarantined = {int(k): reason for k, reason in job.get("quarantine", {}).items()}
        with politeness.installed(policy):
            ok, _ = downloader((job["shard_id"], str(input_file)))
    finally:
        journal.close()
    return ok


def host_policy(config: DownloadConfig, local_roots: list[Path] = ()) -> politeness.HostPolicy:
    """The recipe's fetch policy and politeness for one download process (one client, shared by its threads).

    ``local_roots``: the folders of the recipe's local-folder sources, the only ``file://`` URLs read.
    """
    client = GuardedClient(
        AddressGuard.allowing(
            config.allow_local_hosts, CachedResolver(config.dns_cache_seconds) if config.dns_cache_seconds else None
        ),
        FetchLimits(
            timeout=config.timeout,
            max_seconds=config.max_request_seconds,
            max_bytes=config.max_response_bytes,
            max_redirects=config.max_redirects,
        ),
        headers={"User-Agent": config.user_agent},
        connections_per_host=config.thread_count,
        ca_file=config.ca_file,
    )
    return politeness.HostPolicy(
        user_agent=config.user_agent,
        user_agent_token=config.user_agent_token,
        client=client,
        respect_robots_txt=config.respect_robots_txt,
        max_image_area=config.max_image_area,
        max_requests_per_second=config.max_requests_per_host_per_second,
        host_rate_overrides=config.host_rate_overrides,
        max_retry_after_seconds=config.max_retry_after_seconds,
        local_roots=tuple(root.resolve() for root in local_roots),
    )


def _make_downloader(
    config: DownloadConfig, output_folder: Path, column_list: list[str], journal: DecodeJournal
) -> Downloader:
    resizer = JournaledResizer(
        journal,
        image_size=config.image_size,
        resize_mode=config.resize_mode,
        resize_only_if_bigger=config.resize_only_if_bigger,
        encode_quality=config.encode_quality,
        encode_format=config.encode_format,
        min_image_size=config.min_image_size,
        max_aspect_ratio=config.max_aspect_ratio,
        max_image_area=config.max_image_area,  # a second check after decoding (formats PIL cannot read)
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
