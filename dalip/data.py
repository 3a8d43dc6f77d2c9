"""Training data from a PlantMix manifest: which rows are kept, where their shards are, and a batch stream.

The manifest (Parquet, local path or fsspec URL; a file, a directory of files or a list) says which samples to
train on (``keep``) and where their bytes are (``shard`` + ``key``); captions come from the manifest, so the
caption style is chosen here, not when the shards were written. The stream reads the webdataset tars with
webdataset's tar iterators, splits the work across DDP ranks and loader workers into disjoint parts, shuffles
with a seed, and skips (and counts) images that do not decode.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import posixpath
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import braceexpand
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.tariterators import group_by_keys, tar_file_expander

from dalip.caption_index import BATCH_ROWS, INDEX_SCHEMA, CaptionIndex, IndexedRows, build_caption_index

log = logging.getLogger(__name__)

# Manifest columns the trainer reads; the names are pipeline.core.schema's (a test holds them equal).
COL_SAMPLE_ID = "sample_id"
COL_KEEP = "keep"
COL_STATUS = "status"
COL_SHARD = "shard"
COL_KEY = "key"
COL_CAPTION = "caption"
COL_CAPTION_VARIANTS = "caption_variants"
COL_SCIENTIFIC_NAME = "scientific_name"
COL_DOMAIN = "domain"
REQUIRED_COLUMNS = (COL_SAMPLE_ID, COL_KEEP, COL_SHARD, COL_KEY, COL_CAPTION)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass
class ManifestSelection:
    """The kept rows of a manifest: shard URLs, and their captions in an on-disk index read a shard at a time."""

    shards: list[str]
    num_samples: int
    index: CaptionIndex
    files: list[str]
    caption_source: str
    caption_fallbacks: int = 0  # kept rows without the requested variant, which use ``caption`` instead

    def caption_of(self, sample: dict[str, Any]) -> str | None:
        """The sample's caption when its row is kept, else None (the shard holds rows the manifest dropped)."""
        return self.index.caption_of(sample.get("__url__"), sample.get("__key__"))


@dataclass
class ReleaseSelection:
    """A published release's shards: every sample is selected, its caption is in the shard itself (``.txt``, or
    a ``caption_variants`` key of its ``.json``), and ``sizes.json`` gives the count, as open_clip reads it. Nothing
    is held per row."""

    shards: list[str]
    num_samples: int
    caption_source: str = COL_CAPTION
    caption_fallbacks: int = 0

    def caption_of(self, sample: dict[str, Any]) -> str | None:
        if self.caption_source != COL_CAPTION and "json" in sample:
            variants = json.loads(sample["json"]).get(COL_CAPTION_VARIANTS) or {}
            if variants.get(self.caption_source):
                return variants[self.caption_source]
        text = sample.get("txt")
        return text.decode("utf-8").strip() if isinstance(text, bytes) else None


def read_release(
    train_data: str,
    caption: str = COL_CAPTION,
    num_samples: int | None = None,
    upsampling: Sequence[float] | None = None,
    seed: int = 0,
) -> ReleaseSelection:
    """``train_data`` as open_clip takes it (``dir/{00000..00012}.tar``, brace-expanded; ``::`` joins several);
    the sample count from ``num_samples`` or the shards' ``sizes.json`` (open_clip's ``get_dataset_size``).

    ``upsampling``: one weight per ``::`` part (open_clip's ``--train-data-upsampling-factors``): a part's shards
    are listed ``floor(w)`` times, plus a seeded ``w - floor(w)`` share of them, so an epoch draws each release in
    proportion to ``size x w``; the sample count follows.
    """
    parts = [list(braceexpand.braceexpand(part)) for part in train_data.split("::")]
    if upsampling is not None and len(upsampling) != len(parts):
        raise ValueError(f"--train-data has {len(parts)} part(s) but {len(upsampling)} upsampling factor(s)")
    if upsampling is not None and any(w <= 0 for w in upsampling):
        raise ValueError(f"upsampling factors must be positive, got {list(upsampling)}")
    distinct = [url for part in parts for url in part]
    missing = [url for url in distinct if not fsspec.core.url_to_fs(url)[0].exists(fsspec.core.url_to_fs(url)[1])]
    if missing:
        raise FileNotFoundError(f"--train-data: shard(s) not found: {missing[:5]}")
    shards = []
    rng = random.Random(f"{seed}/upsampling")
    for part, weight in zip(parts, upsampling or [1.0] * len(parts), strict=True):
        whole, share = int(weight), weight - int(weight)
        shards += part * whole + sorted(rng.sample(part, round(share * len(part))))
    if num_samples is None:
        counts = _shard_sizes(distinct)
        num_samples = sum(counts[url] for url in shards)
    return ReleaseSelection(shards, int(num_samples), caption)


def _shard_sizes(shards: list[str]) -> dict[str, int]:
    """Samples per shard from the ``sizes.json`` beside the shards."""
    counts: dict[str, int] = {}
    for folder in sorted({posixpath.dirname(url) for url in shards}):
        sizes = posixpath.join(folder, "sizes.json")
        fs, path = fsspec.core.url_to_fs(sizes)
        if not fs.exists(path):
            raise FileNotFoundError(f"--train-data: {sizes} not found; give --train-num-samples")
        with fs.open(path, "rb") as f:
            counts.update({posixpath.join(folder, name): n for name, n in json.loads(f.read()).items()})
    unknown = [url for url in shards if url not in counts]
    if unknown:
        raise ValueError(f"--train-data: sizes.json does not list {unknown[:5]}")
    return counts


def manifest_files(manifest: str | Path | Sequence[str | Path]) -> list[tuple[Any, str]]:
    """``(filesystem, path)`` of every Parquet file named by ``manifest``."""
    items = [manifest] if isinstance(manifest, (str, Path)) else list(manifest)
    found: list[tuple[Any, str]] = []
    for item in items:
        fs, path = fsspec.core.url_to_fs(str(item))
        if fs.isdir(path) and fs.isfile(f"{path.rstrip('/')}/manifest.parquet"):
            paths = [f"{path.rstrip('/')}/manifest.parquet"]  # a PlantMix build folder: its manifest only
        elif fs.isdir(path):
            paths = sorted(p for p in fs.find(path) if p.endswith(".parquet"))
        else:
            paths = sorted(fs.glob(path)) if any(c in path for c in "*?[") else [path]
        if not paths or not all(fs.isfile(p) for p in paths):
            raise FileNotFoundError(f"manifest {item}: no Parquet file found there")
        found.extend((fs, p) for p in paths)
    return found


def resolve_shard(fs: Any, manifest_path: str, shard: str) -> str:
    # A relative shard path is relative to the manifest file's own directory, on the manifest's filesystem.
    if "://" in shard or shard.startswith("/"):
        return shard
    path = posixpath.normpath(posixpath.join(posixpath.dirname(manifest_path), shard))
    return fs.unstrip_protocol(path) if "file" not in fs.protocol else path


def read_manifest(
    manifest: str | Path | Sequence[str | Path], caption: str = COL_CAPTION, index_folder: str | Path | None = None
) -> ManifestSelection:
    """Read the kept rows of a manifest. ``caption`` is ``"caption"`` or a key of ``caption_variants``.

    The manifest is streamed in Arrow batches into a caption index under ``index_folder`` (default: the temp
    dir); nothing is held per row. Raises a ``ValueError`` naming the file for missing columns, a kept row without
    shard/key/caption, or an empty selection, and a ``FileNotFoundError`` naming the shard and manifest for a
    missing shard file.
    """
    files = manifest_files(manifest)
    start = time.perf_counter()
    index, found, counts = build_caption_index(lambda found: _kept_rows(files, caption, found), index_folder)
    log.info("caption index of %d kept rows in %d shards built in %.1f s: %s", sum(counts.values()), len(counts),
             time.perf_counter() - start, index.path)  # fmt: skip
    if not counts:
        raise ValueError(f"manifest {manifest}: no row has keep = true; nothing to train on")
    for url, origin in found.shard_origin.items():
        shard_fs, shard_path = fsspec.core.url_to_fs(url)
        if not shard_fs.exists(shard_path):
            raise FileNotFoundError(f"shard {url} (named in manifest {origin}) does not exist")
    if found.fallbacks:
        log.warning("%d kept rows have no %r caption variant; they use the 'caption' column", found.fallbacks, caption)
    return ManifestSelection(
        sorted(counts), sum(counts.values()), index, [p for _, p in files], caption, found.fallbacks
    )


def _kept_rows(files: list[tuple[Any, str]], caption: str, found: IndexedRows) -> Iterator[pa.RecordBatch]:
    """``(shard_no, key, caption)`` of every kept row, a Parquet batch at a time; shards are numbered in ``found``."""
    required = REQUIRED_COLUMNS + ((COL_CAPTION_VARIANTS,) if caption != COL_CAPTION else ())
    for fs, path in files:
        with fs.open(path, "rb") as f:
            parquet = pq.ParquetFile(f)
            names = parquet.schema_arrow.names
            missing = [c for c in required if c not in names]
            if missing:
                raise ValueError(f"manifest {path}: missing required column(s) {missing}; it has {sorted(names)}")
            for batch in parquet.iter_batches(BATCH_ROWS, columns=list(required)):
                batch = batch.filter(pc.fill_null(batch[COL_KEEP], False))
                if batch.num_rows:
                    yield _indexed(fs, path, batch, caption, found)


def _indexed(fs: Any, path: str, batch: pa.RecordBatch, caption: str, found: IndexedRows) -> pa.RecordBatch:
    text = batch[COL_CAPTION]
    if caption != COL_CAPTION:
        variant = pc.map_lookup(batch[COL_CAPTION_VARIANTS], caption, "first")
        found.fallbacks += variant.null_count
        text = pc.coalesce(variant, text)
    shard, key = batch[COL_SHARD], pc.cast(batch[COL_KEY], pa.string())
    missing = pc.or_kleene(pc.or_kleene(_blank(shard), _blank(key)), _blank(text))
    if pc.any(missing).as_py():
        row = batch.filter(missing).slice(0, 1).to_pylist()[0]
        raise ValueError(
            f"manifest {path}: kept row sample_id={row[COL_SAMPLE_ID]} has no shard, key or caption ({row})"
        )
    names = pc.unique(shard)
    numbers = []
    for name in names.to_pylist():
        url = resolve_shard(fs, path, name)
        found.shard_origin.setdefault(url, path)
        numbers.append(found.shard_numbers.setdefault(url, len(found.shard_numbers)))
    shard_no = pc.take(pa.array(numbers, pa.int32()), pc.index_in(shard, value_set=names))
    return pa.RecordBatch.from_arrays([shard_no, key, text], schema=INDEX_SCHEMA)


def _blank(column: pa.Array) -> pa.Array:
    return pc.fill_null(pc.equal(pc.cast(column, pa.string()), ""), True)


@dataclass
class StreamStats:
    """Per-batch counters, so that counts made in loader workers reach the trainer with the batches."""

    corrupt: int = 0  # image bytes that did not decode (skipped)
    shard_errors: int = 0  # unreadable tar members or shards (skipped)
    unselected: int = 0  # samples in a shard whose row is not kept
    corrupt_keys: list[str] = field(default_factory=list)


class ShardStream(IterableDataset):
    """An endless, seeded stream of batches ``{"image", "text", "stats"}`` for one DDP rank.

    Work is split over ``world_size * workers`` slots: by shard when there are at least as many shards as
    slots, otherwise by sample position (every slot reads every shard and keeps every n-th sample). Either way
    the slots see disjoint samples. A "pass" is one seeded permutation of the shards; the stream repeats passes
    so every rank can make the same number of steps. ``set_epoch(epoch, skip_batches)`` restarts the stream at
    a batch of an epoch without preprocessing the skipped ones (exact resume).
    """

    def __init__(
        self,
        selection: ManifestSelection | ReleaseSelection,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
    ) -> None:
        super().__init__()
        self.selection, self.preprocess, self.tokenizer = selection, preprocess, tokenizer
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.shuffle_buffer = shuffle_buffer
        self.epoch, self.skip_batches = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        # The loader takes batches from its workers in turn, starting with worker 0, so batch g of the epoch is
        # made by the worker part g % workers. When resuming at batch `skip`, worker w plays that part for
        # (w + skip) % workers, and that part made every workers-th batch before `skip`.
        part = (worker + self.skip_batches) % workers
        slot, slots = self.rank * workers + part, self.world_size * workers
        to_skip = len(range(part, self.skip_batches, workers))
        rng = random.Random(f"{self.seed}/{self.epoch}/{slot}")
        buffer = max(1, self.shuffle_buffer)
        samples = self._shuffled(self._selected(slot, slots), rng, buffer)
        for index in itertools.count():
            images, texts, stats = self._take(samples, decode_only=index < to_skip)
            if index < to_skip:
                continue
            # Augmentations draw from the global torch RNG; pin them to (seed, epoch, slot, batch) so a resumed
            # or re-sharded run transforms a batch the same way, and the trainer's own RNG is left untouched.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(hash((self.seed, self.epoch, slot, index)) & 0x7FFF_FFFF)
                image = torch.stack([self.preprocess(im) for im in images])
            yield {"image": image, "text": self.tokenizer(texts), "stats": stats}

    def _take(self, samples: Iterator[dict[str, Any]], decode_only: bool) -> tuple[list, list[str], StreamStats]:
        images: list[Image.Image] = []
        texts: list[str] = []
        stats = StreamStats()
        while len(images) < self.batch_size:
            sample = next(samples)
            if "__error__" in sample:
                stats.shard_errors += 1
                continue
            if "__unselected__" in sample:
                stats.unselected += 1
                continue
            try:
                image = decode_image(sample)
            except Exception as exn:  # noqa: BLE001 - any undecodable image is skipped and counted, never fatal
                stats.corrupt += 1
                stats.corrupt_keys.append(f"{sample['__url__']}:{sample['__key__']} ({type(exn).__name__})")
                continue
            images.append(image if not decode_only else None)
            texts.append(sample["__caption__"])
        return images, texts, stats

    def _selected(self, slot: int, slots: int) -> Iterator[dict[str, Any]]:
        shards = self.selection.shards
        by_shard = len(shards) >= slots
        for n_pass in itertools.count():
            order = list(shards)
            random.Random(f"{self.seed}/{self.epoch}/pass{n_pass}").shuffle(order)
            position, yielded = 0, 0
            for sample in read_shards(order[slot::slots] if by_shard else order):
                if "__error__" not in sample:
                    caption = self.selection.caption_of(sample)
                    if caption is None:
                        sample = {"__unselected__": True}
                    else:
                        sample["__caption__"] = caption
                        position += 1
                        if not by_shard and (position - 1) % slots != slot:
                            continue
                yielded += "__unselected__" not in sample and "__error__" not in sample
                yield sample
            if not yielded:
                raise RuntimeError(f"slot {slot}/{slots}: a full pass over the shards gave no readable sample")
            yield {"__pass_end__": True}

    @staticmethod
    def _shuffled(samples: Iterator[dict[str, Any]], rng: random.Random, size: int) -> Iterator[dict[str, Any]]:
        # Flushed at every pass end, so with a buffer as large as a slot's share each pass is a permutation.
        buffer: list[dict[str, Any]] = []
        for sample in samples:
            if "__pass_end__" in sample:
                rng.shuffle(buffer)
                yield from buffer
                buffer = []
            elif len(buffer) < size:
                buffer.append(sample)
            else:
                i = rng.randrange(len(buffer))
                buffer[i], sample = sample, buffer[i]
                yield sample


def decode_image(sample: dict[str, Any]) -> Image.Image:
    """The sample's image, fully decoded to RGB (truncated bytes fail here); ``ValueError`` when it has none."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ValueError("no image file in sample")
    return Image.open(io.BytesIO(sample[ext])).convert("RGB")


def read_shards(urls: list[str]) -> Iterator[dict[str, Any]]:
    """Samples of the given tars in order; an unreadable shard or member yields one ``__error__`` marker."""
    errors: list[Exception] = []

    def handler(exn: Exception) -> bool:
        errors.append(exn)
        log.warning("skipping unreadable shard data: %s", exn)
        return True

    for url in urls:
        try:
            with fsspec.open(url, "rb") as stream:
                files = tar_file_expander([{"url": url, "stream": stream}], handler=handler)
                for sample in group_by_keys(files, handler=handler):
                    while errors:
                        yield {"__error__": repr(errors.pop())}
                    yield sample
        except Exception as exn:  # noqa: BLE001 - a shard that cannot be opened mid-run is skipped and counted
            handler(exn)
        while errors:
            yield {"__error__": repr(errors.pop())}


def make_loader(stream: ShardStream, workers: int, seed: int = 0) -> DataLoader:
    """A loader over an already-batched stream; its own generator keeps the trainer's global RNG untouched."""
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
    )
