"""Rows that kill their download worker: found by a decode journal, quarantined so the shard (and build) finish.

A hostile image can take the whole worker down while img2dataset decodes it (an out-of-memory kill on a
decompression bomb in a format whose header we cannot read, a crash in the decoder). Without a quarantine the
shard dies on every retry and the build never finishes. Decoding happens one row at a time in img2dataset's
main loop, so the child writes the row it is decoding into a tiny journal file (:class:`DecodeJournal`, a
memory-mapped page written before and after each decode: no fsync needed, a killed process's writes survive in
the page cache).
When the worker dies, the journal names the row it was decoding. The download stage reruns the shard; a row
named by two deaths is quarantined (status ``quarantined``, never fetched again in that shard), and the shard is
rerun without it. A death that the journal cannot explain (no row being decoded) is an ordinary retryable
failure.
"""

from __future__ import annotations

import io
import mmap
import os
from collections import Counter
from pathlib import Path

QUARANTINED_PREFIX = "quarantined"
DEATHS_TO_QUARANTINE = 2  # one death may be bad luck (another process's memory); the same row twice is not
_SLOT = 24  # bytes: a row key right-aligned, then a newline; blank between decodes


class RowBytes(io.BytesIO):
    """A fetched body that remembers its row (img2dataset hands the stream, not the key, to its resizer)."""

    def __init__(self, body: bytes, row_key: int) -> None:
        super().__init__(body)
        self.row_key = row_key


class DecodeJournal:
    """The child's side: which row is being decoded right now.

    A shared memory map, not ``pwrite``: a write is a memory store with no system call, so the decoding thread
    keeps the GIL (a ``pwrite`` released it and waited ~1 ms per image to get it back from the fetch threads).
    """

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, _SLOT)
            self.map = mmap.mmap(fd, _SLOT, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self.clear()

    def decoding(self, row_key: int | None) -> None:
        text = "" if row_key is None else str(row_key)
        self.map[:] = f"{text:>{_SLOT - 1}}\n".encode()

    def clear(self) -> None:
        self.decoding(None)

    def close(self) -> None:
        self.map.close()


def row_being_decoded(path: Path) -> int | None:
    """The parent's side, after a death: the row the child was decoding, if any."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text.isdigit() else None


class DeathLog:
    """Deaths of one shard's worker, and the rows to quarantine because of them."""

    def __init__(self) -> None:
        self.blamed: Counter[int] = Counter()
        self.quarantined: dict[int, str] = {}

    def record(self, row_key: int | None, death: str) -> bool:
        """Note a death; True when the shard should be rerun (the death points at a row), False to give up."""
        if row_key is None:
            return False
        self.blamed[row_key] += 1
        if self.blamed[row_key] >= DEATHS_TO_QUARANTINE:
            self.quarantined[row_key] = (
                f"{QUARANTINED_PREFIX}: the download worker died {self.blamed[row_key]} times while decoding this "
                f"row's image; last: {death}"
            )
        return True
