"""A text file's records as a stream of Arrow batches, numbered as :func:`duck_text.load_table` numbers them.

The largest file of an export (iNaturalist's ``photos.csv``, a GBIF download's media and core: hundreds of millions
of lines) need not be held in a table: a DuckDB query scans these batches while they are read, so memory stays a
few batches whatever the file's size. A line ends at ``\\n``, ``\\r\\n`` or a lone ``\\r`` (as DuckDB's reader ends
it); a byte order mark at the start is no part of the first line; a blank line counts as a line but is no record;
the first record is the header (a Darwin Core Archive's file: its first ``ignoreHeaderLines`` lines are). Each
batch holds, per record after the header:

- ``seq``: 0, 1, 2, ... over the records handed on (those ``where`` keeps), for :func:`duck.in_row_order`;
- ``data_row``: the record's 1-based number in the whole file; ``line``: its physical line; ``text``: the line.

Blocks of bytes are split and numbered by Arrow kernels; Python runs per block, never per line. Bytes that are not
UTF-8 and a corrupt ``.gz`` raise the Python reader's :class:`SourceError` (it names the line and the bytes), a
line over :data:`MAX_LINE_BYTES` raises one naming the line. DuckDB consumes the batches on its own threads and
reports a failure there as its own error, so :attr:`LineStream.error` keeps the :class:`SourceError` to raise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.sources.base import SourceError
from pipeline.sources.textfiles import open_binary

MAX_LINE_BYTES = 2_000_000  # DuckDB's read_csv limit, so every table of an export has the same one
_NUMBERED = pa.schema([("data_row", pa.int64()), ("line", pa.int64()), ("text", pa.string())])
SCHEMA = pa.schema([("seq", pa.int64()), *_NUMBERED])
_BOM = b"\xef\xbb\xbf"


class LineStream:
    """One pass over ``path``'s records (see the module); :meth:`reader` hands them out once.

    ``where`` (a function of a batch of ``data_row, line, text`` giving a boolean mask) keeps only the records it
    holds for, still numbered as in the whole file; ``skip_lines``, if given, replaces the header record: the first
    ``skip_lines`` physical lines are left out and every later non-blank line is a record (a Darwin Core Archive's
    ``ignoreHeaderLines``, as :func:`duck_text.load_records` reads it); ``on_bad_file(message)`` raises the error
    for a file that is not clean UTF-8 text (the Python reader's, which names the line).
    """

    def __init__(
        self,
        path: str,
        on_bad_file: Callable[[str], None],
        *,
        where: Callable[[pa.RecordBatch], pa.Array] | None = None,
        skip_lines: int | None = None,
        batch_rows: int = 16_384,  # a multiple of DuckDB's vector size (2,048)
        block_bytes: int = 1 << 20,  # 4 MB blocks held 50 MB more at 1M iNaturalist photos, for no speed
    ) -> None:
        self.path, self.on_bad_file, self.where, self.skip_lines = path, on_bad_file, where, skip_lines
        self.batch_rows, self.block_bytes = batch_rows, block_bytes
        self.error: SourceError | None = None

    def reader(self) -> pa.RecordBatchReader:
        return pa.RecordBatchReader.from_batches(SCHEMA, self._kept())

    @contextlib.contextmanager
    def errors_raised(self) -> Iterator[None]:
        """Around a query that scans the stream: its failure raises the stream's :class:`SourceError`, if it had one."""
        try:
            yield
        except duckdb.Error:
            if self.error is not None:
                raise self.error from None
            raise

    def _kept(self) -> Iterator[pa.RecordBatch]:
        try:
            yield from self._batches()
        except SourceError as exc:
            self.error = exc
            raise

    def _batches(self) -> Iterator[pa.RecordBatch]:
        """Batches of exactly ``batch_rows`` rows (the last one excepted), whatever the blocks hold: DuckDB scans
        each in vectors of 2,048 rows, and a short vector in the middle of the stream is held back by its
        operators until more rows come or the query ends (at 3M photos, 27 rows waited for the end, and every row
        after them in ``in_row_order``)."""
        size = self.batch_rows
        short: list[pa.RecordBatch] = []  # rows not yet handed on, fewer than a batch
        for batch in self._numbered():
            start = size - sum(b.num_rows for b in short)  # this block's rows that complete the short batch
            if batch.num_rows < start:
                short.append(batch)
                continue
            yield pa.concat_batches([*short, batch.slice(0, start)])
            while start + size <= batch.num_rows:
                yield batch.slice(start, size)
                start += size
            short = [batch.slice(start)] if start < batch.num_rows else []
        if sum(b.num_rows for b in short):
            yield pa.concat_batches(short)

    def _numbered(self) -> Iterator[pa.RecordBatch]:
        """Each block's records (those ``where`` keeps), numbered."""
        lines = records = kept = 0  # physical lines, records (the header is record 0) and rows handed on so far
        for text in self._lines():
            n = len(text)
            nonblank = pc.not_equal(pc.binary_length(text), 0).to_numpy(zero_copy_only=False)
            line = np.arange(lines + 1, lines + n + 1)
            if self.skip_lines is None:
                counted, first = nonblank, 1  # the first record is the header
            else:
                counted, first = nonblank & (line > self.skip_lines), 0
            record = records + np.cumsum(counted) - first
            chosen = counted & (record >= 1)
            lines, records = lines + n, records + int(counted.sum())
            batch = pa.RecordBatch.from_arrays(
                [pa.array(record[chosen]), pa.array(line[chosen]), text.filter(pa.array(chosen))], schema=_NUMBERED
            )
            if self.where is not None and batch.num_rows:
                batch = batch.filter(self.where(batch))
            seq = pa.array(np.arange(kept, kept + batch.num_rows))
            batch = pa.RecordBatch.from_arrays([seq, *batch.columns], schema=SCHEMA)
            kept += batch.num_rows
            yield batch

    def _lines(self) -> Iterator[pa.StringArray]:
        """The file's lines, a block at a time, without their line ends."""
        lines = 0
        for block, whole in self._blocks():
            if lines == 0 and block.startswith(_BOM):  # DuckDB's reader leaves a byte order mark out too
                block = block[len(_BOM) :]
            try:
                text = pa.array([block], pa.binary()).cast(pa.string())
            except pa.ArrowInvalid as exc:
                self.on_bad_file(str(exc))
                raise SourceError(f"{self.path}: not valid UTF-8 text ({exc})") from None
            pattern = r"\r\n|\r|\n" if b"\r" in block else None
            parts = (pc.split_pattern_regex(text, pattern) if pattern else pc.split_pattern(text, "\n")).flatten()
            if whole or parts[len(parts) - 1].as_py() == "":  # the piece after the last line end
                parts = parts.slice(0, len(parts) - 1)
            longest = pc.max(pc.binary_length(parts)).as_py() if len(parts) else 0
            if longest and longest > MAX_LINE_BYTES:
                at = pc.index(pc.greater(pc.binary_length(parts), MAX_LINE_BYTES), True).as_py()
                raise SourceError(
                    f"{self.path} line {lines + at + 1}: a line of {longest:,} bytes; at most {MAX_LINE_BYTES:,} are "
                    "read (a text export's line is far shorter: is this the right file?)"
                )
            lines += len(parts)
            yield parts

    def _blocks(self) -> Iterator[tuple[bytes, bool]]:
        """``(bytes, whole)``: blocks that end just after a line end (``whole``), then the file's unended last line."""
        carry = b""
        try:
            with open_binary(self.path) as stream:
                while chunk := stream.read(self.block_bytes):
                    buffer = carry + chunk
                    # The last line end: a \n, or a \r that is not the buffer's last byte (a \n may follow it).
                    cut = max(buffer.rfind(b"\n"), buffer.rfind(b"\r", 0, len(buffer) - 1))
                    if cut < 0:
                        carry = buffer
                        if len(carry) > MAX_LINE_BYTES + 2:
                            raise SourceError(
                                f"{self.path}: no line end in {len(carry):,} bytes; at most {MAX_LINE_BYTES:,} bytes "
                                "are read per line"
                            )
                        continue
                    carry = buffer[cut + 1 :]
                    yield buffer[: cut + 1], True
        except (EOFError, OSError) as exc:  # a truncated or corrupt .gz
            self.on_bad_file(str(exc))
            raise SourceError(f"{self.path}: cannot read ({exc})") from None
        if carry:
            yield carry, False
