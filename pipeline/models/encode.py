"""open_clip image and caption embeddings for one shard's images; JPEG decoding in DataLoader workers."""

from __future__ import annotations

import io
import logging
import multiprocessing
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.core.config import EmbedConfig
from pipeline.models.clip import load_clip

log = logging.getLogger(__name__)


class _Images(Dataset):
    """JPEG bytes -> preprocessed tensors, in DataLoader workers."""

    def __init__(self, blobs: list[bytes], preprocess: Any) -> None:
        self.blobs, self.preprocess = blobs, preprocess

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(io.BytesIO(self.blobs[i])) as img:
            return self.preprocess(img.convert("RGB"))


@torch.no_grad()
def embed_batches(config: EmbedConfig, blobs: list[bytes], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised image and text embeddings (float32), one row per input."""
    model, preprocess, tokenizer = load_clip(config)
    device = next(model.parameters()).device
    if config.threads:
        torch.set_num_threads(config.threads)
    workers = config.workers
    if workers and multiprocessing.current_process().daemon:
        # e.g. a Dask worker started with its default daemon=True: it may not start child processes.
        log.warning("embed: this process is a daemon, decoding in the main process (workers=0); start Dask "
                    "workers with DASK_DISTRIBUTED__WORKER__DAEMON=False to decode in parallel")  # fmt: skip
        workers = 0
    loader = DataLoader(
        _Images(blobs, preprocess),
        batch_size=config.batch_size,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
        # Workers come from a clean fork server, not from this process: it runs task threads (Prefect, Dask),
        # and a fork copies their locks and handlers mid-flight (a forked worker was seen to die with exit 1).
        multiprocessing_context="forkserver" if workers else None,
    )
    autocast = torch.autocast(device.type, enabled=device.type == "cuda")
    images = []
    with autocast:
        for batch in loader:
            images.append(model.encode_image(batch.to(device, non_blocking=True), normalize=True).float().cpu())
        texts = [
            model.encode_text(tokenizer(captions[i : i + config.batch_size]).to(device), normalize=True).float().cpu()
            for i in range(0, len(captions), config.batch_size)
        ]
    dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") else None
    empty = np.zeros((0, dim or 0), np.float32)
    return (torch.cat(images).numpy() if images else empty), (torch.cat(texts).numpy() if texts else empty)


def embed_images(config: EmbedConfig, blobs: list[bytes]) -> np.ndarray:
    """L2-normalised image embeddings (float32) of encoded images, with the same model and preprocessing as the
    embed stage (evaluation sets are compared with training images in one space)."""
    image, _ = embed_batches(config, blobs, [])
    return image
