"""Read proxy results: one point per (general share, evaluation domain) with a lower-is-better metric value.

Three layouts, whichever the proxy runs left behind:

* a table, CSV or Parquet, with columns ``share, domain, value``: the metric itself (a loss, or an error);
* a CSV index ``share, domain, path`` whose ``path`` (relative to the CSV) is a ``python -m dalip.evaluate``
  report; the value is that report's error, ``1 - top1 / 100`` by default (``metric="top5_error"`` for top-5);
* a folder of reports laid out as ``share=<r>/<domain>.json`` (e.g. ``proxies/share=0.2/plant.json``).

``share`` is always the general domain's share of the proxy's training set, in ``[0, 1]``. A dalip.evaluate
report records no share of its own; one that carries a ``share`` field (a caller may add it) must agree with its
index row or folder. CSV lines starting with ``#`` are comments (a source citation, say). Every error names the
file, the row (the CSV line, or the Parquet row counted from 1) and the field, and says what was expected.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple


class ProxyResultsError(ValueError):
    """A proxy-results file that cannot be read as points."""


class Point(NamedTuple):
    """One proxy run's metric on one evaluation domain; ``origin`` says where it was read (file and row)."""

    share: float
    domain: str
    value: float
    origin: str = ""


def _error_rate(field: str) -> Callable[[Mapping[str, Any]], float]:
    return lambda report: 1.0 - report[field] / 100.0


# What a dalip.evaluate report's accuracy (percent) becomes: an error, so that lower is better like a loss.
METRICS: dict[str, tuple[str, Callable[[Mapping[str, Any]], float]]] = {
    "top1_error": ("top1", _error_rate("top1")),
    "top5_error": ("top5", _error_rate("top5")),
}
_SHARE_FOLDER = re.compile(r"^share=(.+)$")


def read_points(path: str | Path, metric: str = "top1_error") -> list[Point]:
    """Every point in ``path`` (a table, an index of dalip.evaluate reports, or a ``share=<r>/`` folder)."""
    path = Path(path)
    if metric not in METRICS:
        raise ProxyResultsError(f"metric: expected one of {sorted(METRICS)}, got {metric!r}")
    if path.is_dir():
        return _read_folder(path, metric)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such proxy-results file or folder")
    rows = _parquet_rows(path) if path.suffix == ".parquet" else _csv_rows(path)
    return _points_from_rows(path, rows, metric)


def as_points(points: Iterable[Point | Mapping[str, Any] | tuple]) -> list[Point]:
    """Points from ``Point``s, ``{"share", "domain", "value"}`` mappings or ``(share, domain, value)`` tuples."""
    out = []
    for i, item in enumerate(points, 1):
        row = dict(item) if isinstance(item, Mapping) else dict(zip(("share", "domain", "value"), item, strict=False))
        out.append(_point(row, row.get("origin") or f"point {i}"))
    return out


def by_domain(points: Iterable[Point]) -> dict[str, tuple[list[float], list[float]]]:
    """``{domain: (shares, values)}`` in the order the points came."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for p in points:
        shares, values = out.setdefault(p.domain, ([], []))
        shares.append(p.share)
        values.append(p.value)
    return out


# --- layouts ------------------------------------------------------------------------------------------------------


def _csv_rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    """``(origin, row)`` per data line, skipping blank and ``#`` lines but keeping their line numbers."""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    lines = [(n, line) for n, line in lines if not line.lstrip().startswith("#")]
    if not lines:
        raise ProxyResultsError(f"{path}: no header and no rows")
    header = next(csv.reader([lines[0][1]]))
    rows = []
    for n, line in lines[1:]:
        values = next(csv.reader([line]))
        if len(values) != len(header):
            raise ProxyResultsError(f"{path}: line {n}: {len(values)} fields, the header has {len(header)}")
        rows.append((f"{path}: line {n}", dict(zip((h.strip() for h in header), values, strict=True))))
    return rows


def _parquet_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise ProxyResultsError(f"{path}: not a readable Parquet file ({err})") from err
    return [(f"{path}: row {i}", row) for i, row in enumerate(table.to_pylist(), 1)]


def _points_from_rows(path: Path, rows: list[tuple[str, dict[str, Any]]], metric: str) -> list[Point]:
    columns = set(rows[0][1]) if rows else set()
    if {"share", "domain", "value"} <= columns:
        points = [_point(row, origin) for origin, row in rows]
    elif {"share", "domain", "path"} <= columns:
        points = [_report_point(row, origin, path.parent, metric) for origin, row in rows]
    else:
        raise ProxyResultsError(
            f"{path}: expected columns share,domain,value (metric values) or share,domain,path (dalip.evaluate "
            f"reports), got {sorted(columns) or 'no rows'}"
        )
    return points


def _read_folder(folder: Path, metric: str) -> list[Point]:
    points = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        match = _SHARE_FOLDER.match(sub.name)
        if not match:
            continue
        for report in sorted(sub.glob("*.json")):
            row = {"share": match.group(1), "domain": report.stem, "path": str(report)}
            points.append(_report_point(row, f"{report}", folder, metric))
    if not points:
        raise ProxyResultsError(
            f"{folder}: no reports; expected share=<r>/<domain>.json files, e.g. share=0.2/plant.json"
        )
    return points


# --- one point ----------------------------------------------------------------------------------------------------


def _point(row: Mapping[str, Any], origin: str) -> Point:
    share = _number(row.get("share"), origin, "share", "a general-domain share in [0, 1]")
    if not 0.0 <= share <= 1.0:
        raise ProxyResultsError(f"{origin}: field 'share': expected a general-domain share in [0, 1], got {share:g}")
    domain = str(row.get("domain") or "").strip()
    if not domain:
        raise ProxyResultsError(f"{origin}: field 'domain': expected an evaluation domain name (e.g. plant, general)")
    value = _number(row.get("value"), origin, "value", "a positive metric value (a loss, or an error)")
    if value <= 0:
        raise ProxyResultsError(
            f"{origin}: field 'value': expected a positive metric (a loss, or an error), got {value:g}"
        )
    return Point(share, domain, value, origin)


def _report_point(row: Mapping[str, Any], origin: str, base: Path, metric: str) -> Point:
    """A point whose value is a dalip.evaluate report's error; the report's own ``share``, if any, must agree."""
    report_path = base / str(row.get("path") or "")
    if not str(row.get("path") or "").strip():
        raise ProxyResultsError(f"{origin}: field 'path': expected the path of a dalip.evaluate report")
    try:
        report = json.loads(report_path.read_text())
    except FileNotFoundError as err:
        raise ProxyResultsError(f"{origin}: field 'path': {report_path} does not exist") from err
    except json.JSONDecodeError as err:
        raise ProxyResultsError(f"{report_path}: not JSON ({err}); expected a dalip.evaluate report") from err
    field, to_error = METRICS[metric]
    accuracy = report.get(field) if isinstance(report, dict) else None
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not 0 <= accuracy <= 100:
        raise ProxyResultsError(
            f"{report_path}: field {field!r}: expected an accuracy in percent (0-100) as "
            f"`python -m dalip.evaluate` writes, got {accuracy!r}"
        )
    if to_error(report) <= 0:
        raise ProxyResultsError(f"{report_path}: field {field!r}: an accuracy of 100% (error 0) cannot be fitted")
    point = _point({**row, "value": to_error(report)}, origin)
    if "share" in report:
        own = _number(report["share"], str(report_path), "share", "a general-domain share in [0, 1]")
        if not math.isclose(own, point.share, abs_tol=1e-9):
            raise ProxyResultsError(f"{report_path}: field 'share': {own:g} disagrees with {origin} ({point.share:g})")
    return point


def _number(raw: Any, origin: str, field: str, expected: str) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(raw, bool) or not math.isfinite(value):
        raise ProxyResultsError(f"{origin}: field {field!r}: expected {expected}, got {raw!r}")
    return value
