"""The shared shard harness: completion markers, per-shard stats, provenance and atomic outputs.

A stage implements one function, ``work(tmp_dir) -> stats``, that writes its outputs for one shard
into ``tmp_dir``. :func:`run_shard` does the rest: it skips a shard whose marker exists, moves the
outputs into place only after ``work`` returned, and writes the marker last. A crash or kill at any
point leaves either no marker (the rerun redoes the shard and overwrites its files by name, so
nothing is duplicated) or a complete shard.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.io import read_json, write_json


@dataclass(frozen=True)
class StageDir:
    """The output folder of one stage: ``<build>/<stage name>/``."""

    root: Path

    def marker(self, shard: str) -> Path:
        return self.root / f"{shard}.done.json"

    def is_done(self, shard: str) -> bool:
        return self.marker(shard).exists()

    def done_shards(self) -> list[str]:
        return sorted(p.name.removesuffix(".done.json") for p in self.root.glob("*.done.json"))


def run_shard(
    stage: StageDir,
    shard: str,
    work: Callable[[Path], dict[str, Any]],
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """Run ``work`` for one shard unless it is already done; return the shard's marker content."""
    if stage.is_done(shard):
        return read_json(stage.marker(shard))
    tmp = stage.root / "_tmp" / f"{shard}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    started = time.time()
    try:
        stats = work(tmp)
        for item in sorted(tmp.iterdir()):
            os.replace(item, stage.root / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.parent.rmdir()  # only succeeds once no other shard of this stage is in flight
        except OSError:
            pass
    record = {
        "shard": shard,
        "stats": stats,
        "seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "code_version": __version__,
        "provenance": provenance,
    }
    write_json(stage.marker(shard), record)
    return record
