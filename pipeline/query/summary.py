"""The build summary: candidates per source, per status, per rule and per license (the merge checked they add up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core import duck
from pipeline.core.config import DuckDBConfig

EXAMPLE_QUERY = (
    "SELECT source, count(*) AS candidates, count(*) FILTER (WHERE keep) AS kept "
    "FROM samples GROUP BY source ORDER BY source"
)


def summarize(manifest: Path | str, limits: DuckDBConfig | None = None) -> dict[str, Any]:
    """Counts per status, source, rule and license; the path goes in as an escaped literal (folders may hold ')."""
    con = duck.connect(limits, str(manifest))  # the recipe's memory limit; any fsspec filesystem (s3://...)
    con.sql(f"CREATE VIEW m AS SELECT * FROM read_parquet({duck.literal(manifest)})")

    def grouped(sql: str) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for outer, inner, n in con.sql(sql).fetchall():
            out.setdefault(str(outer), {})[str(inner)] = n
        return out

    total = con.sql("SELECT count(*) FROM m").fetchall()[0][0]
    by_status = dict(con.sql("SELECT status, count(*) FROM m GROUP BY 1 ORDER BY 2 DESC, 1").fetchall())
    summary = {
        "candidates": total,
        "kept": con.sql("SELECT count(*) FROM m WHERE keep").fetchall()[0][0],
        "by_status": by_status,
        "by_source": grouped("SELECT source, status, count(*) FROM m GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"),
        "by_rule": grouped(
            "SELECT domain, coalesce(drop_reason, '(kept)'), count(*) FROM m GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"
        ),
        "by_license": grouped(
            "SELECT coalesce(license, '(none)'), status, count(*) FROM m GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"
        ),
    }
    return summary


def _by_count(counts: dict[str, int]) -> dict[str, int]:
    """Largest first, then by name (a summary read back from JSON has its keys sorted by name)."""
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def render(summary: dict[str, Any]) -> str:
    summary = {**summary, "by_status": _by_count(summary["by_status"])}
    ok = summary["by_status"].get("ok", 0)
    lines = [f"candidates: {summary['candidates']}   downloaded (status ok): {ok}   kept: {summary['kept']}"]
    lines += ["", "by status:"]
    lines += [f"  {status:<20} {n:>8}" for status, n in summary["by_status"].items()]
    parts = " + ".join(f"{n} {s}" for s, n in summary["by_status"].items())
    lines.append(f"  {summary['candidates']} candidates = {parts}")
    sections = (
        ("by source", "by_source"),
        ("by rule (first failing rule wins)", "by_rule"),
        ("by license", "by_license"),
    )
    for title, key in sections:
        lines += ["", f"{title}:"]
        for name, counts in summary[key].items():
            detail = ", ".join(f"{s} {n}" for s, n in _by_count(counts).items())
            lines.append(f"  {name:<20} {sum(counts.values()):>8}   ({detail})")
    if summary.get("dedup"):
        lines += ["", "dedup (per stage):"]
        for stage, counts in summary["dedup"].items():
            lines.append(f"  {stage:<20} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return "\n".join(lines)
