"""The proxy runs' data: held-out rows per domain, and one training set per general share, all in DuckDB.

Both are drawn from the judged manifest's kept rows by ``md5(seed:purpose:sample_id)``: the held-out rows are
never in any proxy's training set, and the training sets are nested (the general rows of share 0.2 include those
of 0.1), so proxies differ in their mixture, not in a fresh random draw. Shard paths are written absolute (the
build root joined in), so the trainer finds the tars wherever these small manifests live.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipeline.core.duck import literal

DOMAINS = ("plant", "general")
COLUMNS = "sample_id, domain, source, keep, {root} || '/' || shard AS shard, key, caption, caption_variants"


class ProxyDataError(ValueError):
    """Too few kept rows for the held-out sets or a proxy's training set."""


def _draw(seed: int, purpose: str) -> str:
    return f"md5_number({literal(f'{seed}:{purpose}:')} || sample_id)"


def write_heldout(
    con: duckdb.DuckDBPyConnection, manifest: str, root: str, per_domain: int, seed: int, out: Path
) -> dict[str, int]:
    """``heldout-<domain>.parquet`` per domain: ``per_domain`` kept rows each, never trained on."""
    counts = {}
    for domain in DOMAINS:
        target = out / f"heldout-{domain}.parquet"
        con.execute(
            f"""
            COPY (SELECT {COLUMNS.format(root=literal(root.rstrip("/")))}
                  FROM read_parquet({literal(manifest)}) WHERE keep AND domain = {literal(domain)}
                  ORDER BY {_draw(seed, "heldout")} LIMIT {int(per_domain)})
            TO {literal(target)} (FORMAT parquet)
            """
        )
        counts[domain] = con.sql(f"SELECT count(*) FROM read_parquet({literal(target)})").fetchall()[0][0]
        if counts[domain] < 2:
            raise ProxyDataError(f"{manifest}: {counts[domain]} kept {domain} rows; the held-out set needs 2 or more")
    return counts


def write_training_set(
    con: duckdb.DuckDBPyConnection, manifest: str, root: str, heldout: list[str], share: float, rows: int,
    seed: int, out_file: Path,
) -> dict[str, int]:  # fmt: skip
    """A proxy's training manifest: ``round(rows * share)`` general rows, the rest plant, none held out."""
    want = {"general": round(rows * share), "plant": rows - round(rows * share)}
    held = " UNION ALL ".join(f"SELECT sample_id FROM read_parquet({literal(p)})" for p in heldout)
    parts = []
    for domain, n in want.items():
        parts.append(
            f"""(SELECT {COLUMNS.format(root=literal(root.rstrip("/")))} FROM read_parquet({literal(manifest)})
                 WHERE keep AND domain = {literal(domain)} AND sample_id NOT IN ({held})
                 ORDER BY {_draw(seed, "proxy")} LIMIT {int(n)})"""
        )
    con.execute(f"COPY ({' UNION ALL '.join(parts)}) TO {literal(out_file)} (FORMAT parquet)")
    got = dict(con.sql(f"SELECT domain, count(*) FROM read_parquet({literal(out_file)}) GROUP BY 1").fetchall())
    short = {d: (n, got.get(d, 0)) for d, n in want.items() if got.get(d, 0) < n}
    if short:
        detail = ", ".join(f"{d}: {have} of {n}" for d, (n, have) in short.items())
        raise ProxyDataError(f"share {share}: not enough kept rows outside the held-out sets ({detail}); "
                             "lower mixing_law.proxy_rows or heldout_rows")  # fmt: skip
    return {d: int(got.get(d, 0)) for d in want}
