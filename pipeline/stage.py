"""The shared shard harness: completion markers, per-shard stats, provenance and atomic outputs.

A stage implements one function, ``work(tmp_dir) -> stats``, that writes its outputs for one shard
into ``tmp_dir``. :func:`run_shard` does the rest: it skips a shard whose marker exists, moves the
outputs into place only after ``work`` returned, and writes the marker last. A crash or kill at any
point leaves either no marker (the rerun redoes the shard and overwrites its files by name, so
nothing is duplicated) or a complete shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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


class StageMismatch(RuntimeError):
    """A finished shard was made from other inputs or settings than the current run's."""


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able inputs/settings that decide a shard's output."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_shard(
    stage: StageDir,
    shard: str,
    work: Callable[[Path], dict[str, Any]],
    provenance: dict[str, Any],
    decides_output: Any = None,
) -> dict[str, Any]:
    """Run ``work`` for one shard unless it is already done; return the shard's marker content.

    ``decides_output`` (inputs and settings that change what ``work`` writes) is fingerprinted into the
    marker; a finished shard with another fingerprint is refused with :class:`StageMismatch`, so a changed
    recipe never silently reuses old outputs.
    """
    expected = fingerprint(decides_output)
    if stage.is_done(shard):
        record = read_json(stage.marker(shard))
        if record.get("fingerprint", expected) != expected:
            raise StageMismatch(
                f"{stage.marker(shard)}: this shard was made from other inputs or settings than this run's "
                f"({record.get('fingerprint')} != {expected}); build into a new output_dir, or delete "
                f"{stage.root} to redo the stage"
            )
        return record
    for stale in (stage.root / "_tmp").glob(f"{shard}-*"):  # leftovers of a killed attempt at this shard
        shutil.rmtree(stale, ignore_errors=True)
    tmp = stage.root / "_tmp" / f"{shard}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    started = time.time()
    try:
        stats = work(tmp)
        for item in sorted(tmp.iterdir()):
            os.replace(item, stage.root / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            tmp.parent.rmdir()  # only succeeds once no other shard of this stage is in flight
    record = {
        "shard": shard,
        "fingerprint": expected,
        "stats": stats,
        "seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "code_version": __version__,
        "provenance": provenance,
    }
    write_json(stage.marker(shard), record)
    return record
