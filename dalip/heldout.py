"""A manifest's kept pairs in one fixed order, decoded by loader workers, in batches: what validation and
retrieval read.

The order is the selection's shards in turn, samples in tar order, whatever the number of workers: every worker
reads the same shards and decodes every ``workers``-th kept sample; a sample that does not decode still takes its
turn (as a ``None``), so the loader's round-robin over its workers gives back exactly the single-process order
and the batches (which the contrastive loss depends on) do not change with ``--workers``. Nothing but the batch
in hand is held.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dalip.data import ManifestSelection, decode_image, read_shards


@dataclass
class HeldOutCount:
    pairs: int = 0  # pairs handed out in batches
    undecodable: int = 0  # kept rows whose image did not decode (skipped)


class KeptPairs(IterableDataset):
    """``(image tensor, caption)`` per kept sample, or ``None`` for one that does not decode."""

    def __init__(self, selection: ManifestSelection, preprocess: Callable[[Image.Image], torch.Tensor]) -> None:
        super().__init__()
        self.selection, self.preprocess = selection, preprocess

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str] | None]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        position = 0
        for sample in read_shards(self.selection.shards):
            caption = self.selection.caption_of(sample)
            if caption is None:  # a row the manifest dropped, or a shard read error (every worker sees both)
                continue
            position += 1
            if (position - 1) % workers == worker:
                yield self._decoded(sample, caption)

    def _decoded(self, sample: dict[str, Any], caption: str) -> tuple[torch.Tensor, str] | None:
        try:
            return self.preprocess(decode_image(sample)), caption
        except Exception:  # noqa: BLE001 - an undecodable image is skipped and counted, as in training
            return None


def kept_batches(
    selection: ManifestSelection, preprocess: Callable, batch_size: int, workers: int = 2, limit: int | None = None,
    count: HeldOutCount | None = None,
) -> Iterator[tuple[torch.Tensor, list[str]]]:  # fmt: skip
    """``(images, captions)`` batches of ``batch_size`` (the last may be shorter), at most ``limit`` pairs;
    ``count`` (if given) tallies pairs and undecodable images as they go."""
    count = count if count is not None else HeldOutCount()
    loader = DataLoader(KeptPairs(selection, preprocess), batch_size=None, num_workers=workers)
    images: list[torch.Tensor] = []
    texts: list[str] = []
    for item in loader:
        if item is None:
            count.undecodable += 1
            continue
        images.append(item[0])
        texts.append(item[1])
        count.pairs += 1
        if len(images) == batch_size or count.pairs == limit:
            yield torch.stack(images), texts
            images, texts = [], []
        if count.pairs == limit:
            return
    if images:
        yield torch.stack(images), texts
