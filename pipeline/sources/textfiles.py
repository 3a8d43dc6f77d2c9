"""Streaming reader for delimited text exports (TSV/CSV, plain or .gz) with errors that name file and line.

Shared by the adapters so that every source treats the same problems the same way:
- an empty file or a missing header column raises ``SourceError`` listing the expected and the found columns;
- bytes that do not decode in the declared encoding raise ``SourceError`` naming the file and the line: a bad
  byte almost always means a wrong declared encoding or a corrupt/truncated file, so no row of it can be trusted;
- a row with the wrong number of fields is *not* a file error: it is yielded with a ``problem`` text and the
  adapter turns it into a rejected candidate row.
Lines are decoded one at a time, so files of any size stream in constant memory. ASCII-compatible encodings only:
a declared UTF-16/32 raises ``SourceError`` up front, and so does a file whose first line shows another encoding
than the declared one (a UTF-16/32 byte-order mark or NUL bytes, or a UTF-8 one under a legacy declaration).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.core.io import is_local, isfile, open_input, open_lines
from pipeline.sources.base import SourceError

csv.field_size_limit(1 << 30)  # taxon ancestry / descriptions can be long; the default 128 KiB limit is arbitrary


@dataclass
class Record:
    row: int  # 1-based data row number (header and blank lines not counted)
    line: int  # 1-based physical line where the row ends
    values: dict[str, str | None]  # column -> value ("" kept as ""; missing trailing fields -> None)
    problem: str | None  # e.g. "expected 9 fields, found 7"; the adapter rejects such rows


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a local file or an fsspec URL (``s3://...``) for binary reading, transparently gunzipping ``*.gz``."""
    if not is_local(path):
        return _open_remote(str(path))
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: file not found")
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _open_remote(url: str) -> IO[bytes]:
    if not isfile(url):
        raise SourceError(f"{url}: file not found")
    return _GzipReader(open_input(url)) if url.endswith(".gz") else open_lines(url)


class _GzipReader(gzip.GzipFile):
    """Gunzips an open remote file and closes it too (a plain GzipFile leaves a file object it was given open)."""

    def __init__(self, raw: IO[bytes]) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._remote = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._remote.close()


def encoding_problem(encoding: str) -> str | None:
    """Why lines in ``encoding`` cannot be split on ``\\n`` bytes (unknown or not ASCII-compatible); None if fine."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return f"unknown text encoding {encoding!r}"
    probe = 'a\t,"\r\n'
    if probe.encode(name, errors="replace") != probe.encode("ascii"):
        return (
            f"encoding {encoding!r} is not supported: lines are split on \\n bytes, which needs an ASCII-compatible "
            "encoding (UTF-8, ISO-8859-1, windows-1252); convert the file, e.g. iconv -f UTF-16 -t UTF-8"
        )
    return None


_BOMS = (  # longest first: the UTF-32-LE mark starts with the UTF-16-LE one
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
    (codecs.BOM_UTF8, "UTF-8"),
)


def found_encoding(first_line: bytes, declared: str) -> str | None:
    """What the first line's bytes say the file is, when that contradicts ``declared``; None when it agrees."""
    declared_name = codecs.lookup(declared).name
    for bom, found in _BOMS:
        if first_line.startswith(bom):
            agrees = found == "UTF-8" and declared_name in ("utf-8", "utf-8-sig")
            return None if agrees else f"{found} (byte-order mark {bom.hex(' ').upper()})"
    if b"\x00" in first_line:
        return "UTF-16 or UTF-32 (NUL bytes in the first line)"
    return None


class DecodedLines:
    """Decoded lines of a binary stream, counting physical lines for error messages."""

    def __init__(self, binary: IO[bytes], label: str, encoding: str) -> None:
        problem = encoding_problem(encoding)
        if problem:
            raise SourceError(f"{label}: {problem}")
        self.binary, self.label, self.encoding, self.line = binary, label, encoding, 0

    def __iter__(self) -> Iterator[str]:
        raws = iter(self.binary)
        while True:
            try:
                raw = next(raws)
            except StopIteration:
                return
            except (EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:  # truncated or corrupt .gz / zip member
                raise SourceError(f"{self.label} line {self.line + 1}: cannot read compressed data ({exc})") from None
            self.line += 1
            if self.line == 1 and (found := found_encoding(raw, self.encoding)):
                raise SourceError(f"{self.label}: declared encoding {self.encoding}, but the file is {found}")
            try:
                text = raw.decode(self.encoding)
            except UnicodeDecodeError as exc:
                raise SourceError(
                    f"{self.label} line {self.line}: bytes not valid {self.encoding} "
                    f"({exc.reason} at byte {exc.start}: {raw[max(0, exc.start - 10) : exc.start + 10]!r})"
                ) from None
            except LookupError:
                raise SourceError(f"{self.label}: unknown text encoding {self.encoding!r}") from None
            yield text


def iter_rows(
    binary: IO[bytes],
    label: str,
    *,
    delimiter: str,
    quotechar: str | None,
    encoding: str = "utf-8",
    skip_lines: int = 0,
) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` per non-blank record after ``skip_lines`` header lines; no quoting if quotechar is falsy."""
    lines = DecodedLines(binary, label, encoding)
    quoting = {"quotechar": quotechar} if quotechar else {"quoting": csv.QUOTE_NONE}
    # newline handling: csv gets whole lines with their terminators, so \n and \r\n both work.
    reader = csv.reader(_strip_bom(lines), delimiter=delimiter, strict=True, **quoting)
    seen = 0
    try:
        for fields in reader:
            seen += 1
            if seen <= skip_lines or not fields or fields == [""]:
                continue
            yield lines.line, fields
    except csv.Error as exc:
        raise SourceError(f"{label} line {lines.line}: malformed delimited text ({exc})") from None


def _strip_bom(lines: Iterable[str]) -> Iterator[str]:
    first = True
    for line in lines:
        yield line.lstrip("\ufeff") if first else line
        first = False


def read_table(
    path: str | Path,
    *,
    required: Iterable[str],
    delimiter: str = "\t",
    quotechar: str | None = None,
    encoding: str = "utf-8",
    label: str | None = None,
    names: list[str] | None = None,
) -> Iterator[Record]:
    """Stream a headed table as :class:`Record` s; the header is checked before the first record is yielded.

    ``names``: the columns of a table without a header line (its first line is data), e.g. CC12M's TSV.
    """
    binary, rows, header = _open_table(path, required, delimiter, quotechar, encoding, label, names)
    return _records(binary, rows, header)


def read_header(
    path: str | Path, *, required: Iterable[str], delimiter: str = "\t", quotechar: str | None = None
) -> list[str]:
    """The header's column names, checked as :func:`read_table` checks them (empty file, missing columns)."""
    binary, _, header = _open_table(path, required, delimiter, quotechar, "utf-8", None, None)
    binary.close()
    return header


def _open_table(
    path: str | Path,
    required: Iterable[str],
    delimiter: str,
    quotechar: str | None,
    encoding: str,
    label: str | None,
    names: list[str] | None,
) -> tuple[IO[bytes], Iterator[tuple[int, list[str]]], list[str]]:
    label = label or str(path)
    binary = open_binary(path)
    rows = iter_rows(binary, label, delimiter=delimiter, quotechar=quotechar, encoding=encoding)
    if names is not None:
        header = list(names)
    else:
        try:
            _, header = next(rows)
        except StopIteration:
            binary.close()
            raise SourceError(f"{label}: empty file; expected a header with columns {sorted(set(required))}") from None
        except SourceError:
            binary.close()
            raise
    header = [name.strip() for name in header]
    missing = [name for name in required if name not in header]
    if missing:
        binary.close()
        raise SourceError(f"{label}: missing required column(s) {missing}; found columns {header}")
    return binary, rows, header


def _records(binary: IO[bytes], rows: Iterator[tuple[int, list[str]]], header: list[str]) -> Iterator[Record]:
    with binary:
        for number, (line, fields) in enumerate(rows, start=1):
            problem = None
            if len(fields) != len(header):
                problem = f"expected {len(header)} fields, found {len(fields)}"
            values: dict[str, str | None] = dict(zip(header, fields, strict=False))
            for name in header[len(fields) :]:
                values[name] = None
            yield Record(number, line, values, problem)


def text_of(data: bytes, label: str, encoding: str = "utf-8") -> str:
    """Decode a small whole file (sidecar, meta.xml), naming the file on failure."""
    try:
        return data.decode(encoding).lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        raise SourceError(f"{label}: bytes not valid {encoding} ({exc.reason} at byte {exc.start})") from None
