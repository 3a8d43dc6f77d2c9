"""The exact, seeded, stratified selection of the release from the manifest's kept rows, in DuckDB SQL.

Every kept row gets one ``md5(seed:sample_id)`` (md5, unlike DuckDB's ``hash``, is the same on every version and
machine): its lower 64 bits are the row's draw, its upper 64 bits its shuffle draw. Then, per domain:

1. the license policy: a license outside ``redistribute`` is ``license_excluded`` (or released URL-only);
2. the caps: beyond ``max_per_species`` rows of its species (by draw), or ``max_per_source`` of its source (a
   source keeps every species' first rows before any species' later ones, so the cap does not cut the tail);
3. the strata: every remaining row's rank within its stratum (species, source or none) by draw. Rows are taken
   in order of (rank, draw) until the domain's count is reached: first one row of every stratum, then a second
   of every stratum that has one, and so on ("water filling"), so rare species are never crowded out by common
   ones; the boundary round is filled by draw. What is left is ``not_sampled``.

A domain with fewer eligible rows than its count raises :class:`SampleShortfall` naming every short domain,
unless upsampling is allowed: then every eligible row is repeated ``count // n`` times and the first
``count % n`` once more (``sample_repeat``). The selected copies are shuffled across sources by the shuffle draw
and numbered: ``position`` -> release shard ``position // shard_size`` and key ``position`` (9 digits).

Nothing here becomes a Python object per row. At 13M rows the cost is a few DuckDB sorts of integers (row
numbers and 64-bit draws; the 32-character ids join back only for the selected copies), kept few: a species cap
and species strata share one window; "the first k rows in (rank, draw) order" is found from a histogram of the
ranks (the boundary round, then a cut in it by draw), not by numbering every row; one sort orders the release.
"""

from __future__ import annotations

import duckdb

from pipeline.core import schema
from pipeline.core.config import DOMAINS, DomainSampling, SampleConfig
from pipeline.core.duck import literal

_LOW_64 = "18446744073709551615::UHUGEINT"  # 2**64 - 1
KEY_DIGITS = 9  # release keys are the global position, zero-padded: sortable, unique across shards
SHARD_DIGITS = 5


class SampleShortfall(ValueError):
    """A domain has fewer eligible rows than its count and upsampling is not allowed."""

    def __init__(self, shortfall: dict[str, dict[str, int]]) -> None:
        self.shortfall = shortfall
        lines = [
            f"{d}: {s['eligible']} eligible for {s['target']} (missing {s['missing']})" for d, s in shortfall.items()
        ]
        super().__init__(
            "not enough kept rows to sample exactly: " + "; ".join(lines)
            + ". Lower the counts, relax the caps or the license policy, or set sample.allow_upsampling: true"
        )  # fmt: skip


def license_family(column: str) -> str:
    """SQL: a license code without its version (``cc-by-sa-4.0`` -> ``cc-by-sa``, ``cc0-1.0`` -> ``cc0``)."""
    return f"regexp_replace(coalesce({column}, ''), '-[0-9]+\\.[0-9]+$', '')"


def _by_domain(values: dict[str, str]) -> str:
    """SQL: ``CASE domain WHEN 'plant' THEN ... END`` (NULL for another domain)."""
    return "CASE domain " + " ".join(f"WHEN {literal(d)} THEN {v}" for d, v in values.items()) + " END"


def _stratum(rule: DomainSampling) -> str:
    return {"species": "coalesce(scientific_name, '')", "source": "source", "none": "''"}[rule.stratify_by]


def _cap(value: int | None) -> str:
    return "NULL::BIGINT" if value is None else str(int(value))


def rank_kept_rows(con: duckdb.DuckDBPyConnection, manifest: str, config: SampleConfig) -> None:
    """Table ``ranked``: every kept row with its license verdict, cap verdict and stratum rank within its domain
    (``stratum_rank`` NULL for a row capped away), plus the per-domain ``eligible`` count."""
    rules = {d: config.domain(d) for d in DOMAINS}
    packable = ", ".join(literal(f) for f in config.licenses.redistribute)
    exclude = config.licenses.otherwise == "exclude"
    source = f"read_parquet({literal(manifest)}, file_row_number = true)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE kept AS
        WITH drawn AS (
            SELECT file_row_number AS rid, domain, source, scientific_name, license,
                   md5_number({literal(f"{config.seed}:")} || sample_id) AS h
            FROM {source} WHERE keep
        ), packable_licenses AS (  -- decided once per distinct license code, not per row
            SELECT code FROM (SELECT DISTINCT coalesce(license, '') AS code FROM {source} WHERE keep)
            WHERE {license_family("code")} IN ({packable})
        )
        SELECT rid, domain, source,
               {_by_domain({d: _stratum(r) for d, r in rules.items()})} AS stratum,
               coalesce(scientific_name, '') AS species,
               coalesce(license, '') IN (SELECT code FROM packable_licenses) AS packable,
               (h & {_LOW_64})::UBIGINT AS draw, (h >> 64)::UBIGINT AS shuffle_draw
        FROM drawn
        """
    )
    licensed = "packable" if exclude else "true"
    species_cap = _by_domain({d: _cap(r.max_per_species) for d, r in rules.items()})
    source_cap = _by_domain({d: _cap(r.max_per_source) for d, r in rules.items()})
    source_capped = any(r.max_per_source is not None for r in rules.values())
    species_capped = any(r.max_per_species is not None for r in rules.values())
    # One window when the species cap counts within the strata themselves (every capped domain stratified by
    # species, no source cap): the rows under the cap are then exactly the first ones of their stratum by draw.
    shared = not source_capped and all(r.stratify_by == "species" for r in rules.values() if r.max_per_species)
    if shared:
        capped = f"""
            SELECT *, CASE WHEN NOT {licensed} THEN {literal(schema.SAMPLE_LICENSE_EXCLUDED)}
                           WHEN licensed_rank > species_cap THEN {literal(schema.SAMPLE_OVER_SPECIES_CAP)}
                      END AS capped_reason,
                      CASE WHEN capped_reason IS NULL THEN licensed_rank END AS stratum_rank
            FROM (SELECT *, {species_cap} AS species_cap,
                            row_number() OVER (PARTITION BY domain, stratum, {licensed} ORDER BY draw) AS licensed_rank
                  FROM kept)
        """
    else:
        # A cap's window runs only where a domain has a cap that needs it: each is a sort of every kept row. (The
        # source cap takes rows in species-rank order, so it needs the species ranks too.)
        species_rank = (
            f"CASE WHEN {licensed} THEN row_number() OVER (PARTITION BY domain, species, {licensed} ORDER BY draw) END"
            if species_capped or source_capped
            else "NULL"
        )
        under_species_cap = f"{licensed} AND (species_cap IS NULL OR species_rank <= species_cap)"
        source_rank = (
            f"""CASE WHEN {under_species_cap} THEN row_number() OVER (
                    PARTITION BY domain, source, {under_species_cap} ORDER BY species_rank, draw) END"""
            if source_capped
            else "NULL"
        )
        capped = f"""
            WITH species_ranked AS (
                SELECT *, {species_cap} AS species_cap, {source_cap} AS source_cap,
                          ({species_rank})::BIGINT AS species_rank
                FROM kept
            ), source_ranked AS (
                SELECT *, ({source_rank})::BIGINT AS source_rank FROM species_ranked
            ), verdicts AS (
                SELECT *, CASE WHEN NOT {licensed} THEN {literal(schema.SAMPLE_LICENSE_EXCLUDED)}
                               WHEN species_rank > species_cap THEN {literal(schema.SAMPLE_OVER_SPECIES_CAP)}
                               WHEN source_rank > source_cap THEN {literal(schema.SAMPLE_OVER_SOURCE_CAP)}
                          END AS capped_reason
                FROM source_ranked
            )
            SELECT *, CASE WHEN capped_reason IS NULL THEN row_number() OVER (
                          PARTITION BY domain, stratum, capped_reason IS NULL ORDER BY draw) END AS stratum_rank
            FROM verdicts
        """
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE ranked AS
        SELECT rid, domain, packable, capped_reason, draw, shuffle_draw, stratum_rank::BIGINT AS stratum_rank,
               count(stratum_rank) OVER (PARTITION BY domain) AS eligible
        FROM ({capped})
        """
    )


def eligible_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    rows = con.sql("SELECT domain, count(*) FROM ranked WHERE capped_reason IS NULL GROUP BY 1").fetchall()
    return {domain: int(n) for domain, n in rows}


def shortfall(targets: dict[str, int], eligible: dict[str, int], allow_upsampling: bool) -> dict[str, dict[str, int]]:
    """Domains that cannot reach their count: all of them short without upsampling; with it, only empty ones."""
    short = {}
    for domain, target in targets.items():
        n = eligible.get(domain, 0)
        if target > n and (not allow_upsampling or n == 0):
            short[domain] = {"target": target, "eligible": n, "missing": target - n}
    return short


def _first_rows_cut(con: duckdb.DuckDBPyConnection, firsts: dict[str, int]) -> None:
    """Table ``cut``: per domain, where its first ``k`` eligible rows in (stratum_rank, draw, rid) order end.

    A row is among them when ``stratum_rank < round`` or (``stratum_rank = round`` and ``(draw, rid) <=
    (last_draw, last_rid)``). Found from the histogram of stratum ranks (one row per round, not per row) and one
    sort of the boundary round only; a domain with ``k = 0`` has no row in ``cut``.
    """
    wanted = _by_domain({d: str(int(k)) for d, k in firsts.items()})
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE cut AS
        WITH rounds AS (
            SELECT domain, stratum_rank, count(*) AS n FROM ranked WHERE stratum_rank IS NOT NULL GROUP BY ALL
        ), running AS (
            SELECT *, sum(n) OVER (PARTITION BY domain ORDER BY stratum_rank) AS upto, coalesce({wanted}, 0) AS k
            FROM rounds
        ), boundary AS (  -- the first round that reaches k, and how many of its rows are needed
            SELECT domain, min(stratum_rank) AS round, arg_min(k - (upto - n), stratum_rank) AS needed
            FROM running WHERE upto >= k AND k > 0 GROUP BY domain
        )
        SELECT domain, round, draw AS last_draw, rid AS last_rid
        FROM ranked JOIN boundary USING (domain)
        WHERE stratum_rank = round
        QUALIFY row_number() OVER (PARTITION BY domain ORDER BY draw, rid) = needed
        """
    )


def decide(
    con: duckdb.DuckDBPyConnection, manifest: str, targets: dict[str, int], config: SampleConfig, shard_size: int
) -> None:
    """Tables ``decisions`` (per kept row: selected, reason, repeat) and ``selection`` (per released copy: position,
    release shard and key; URL-only copies have no position)."""
    eligible = eligible_counts(con)
    # The rows taken in pick order: the first ``target`` of a domain with enough rows; with upsampling, the
    # first ``target % eligible`` of a short domain, which get one copy more than the others.
    firsts = {d: (t if eligible.get(d, 0) >= t else t % eligible[d]) for d, t in targets.items() if eligible.get(d, 0)}
    _first_rows_cut(con, firsts)
    target = _by_domain({d: str(int(n)) for d, n in targets.items()})
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE decisions AS
        WITH targeted AS (
            SELECT r.*, coalesce({target}, 0) AS target,
                   coalesce(r.stratum_rank < c.round
                            OR (r.stratum_rank = c.round AND (r.draw, r.rid) <= (c.last_draw, c.last_rid)), false)
                       AS first
            FROM ranked r LEFT JOIN cut c USING (domain)
        )
        SELECT rid, domain, packable, shuffle_draw,
               capped_reason IS NULL AND (first OR eligible < target) AS selected,
               CASE WHEN capped_reason IS NOT NULL THEN capped_reason
                    WHEN NOT (first OR eligible < target) THEN {literal(schema.SAMPLE_NOT_SAMPLED)} END
                   AS sample_reason,
               CASE WHEN capped_reason IS NOT NULL OR NOT (first OR eligible < target) THEN NULL
                    WHEN eligible >= target THEN 1
                    ELSE target // eligible + CASE WHEN first THEN 1 ELSE 0 END
               END::INTEGER AS sample_repeat
        FROM targeted
        """
    )
    # The shuffle: each row's own shuffle draw for its first copy, a draw of (draw, copy) for the extra copies
    # of an upsampled row. One sort gives the positions and the release order; the ids come back from the
    # manifest (by row number) only for the selected copies.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE copies AS
        SELECT rid, domain, packable, shuffle_draw AS shuffle_key, 0 AS copy FROM decisions WHERE selected
        UNION ALL
        SELECT rid, domain, packable, md5_number_upper(shuffle_draw::VARCHAR || ':' || copy) AS shuffle_key, copy
        FROM (SELECT *, unnest(range(1, sample_repeat))::INTEGER AS copy FROM decisions WHERE sample_repeat > 1)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE selection AS
        WITH numbered AS (
            SELECT *, CASE WHEN packable THEN row_number() OVER (
                          PARTITION BY packable ORDER BY shuffle_key, rid, copy) - 1 END AS position
            FROM copies
        )
        SELECT m.sample_id, n.copy, n.domain, n.position,
               'shards/' || lpad(CAST(n.position // {int(shard_size)} AS VARCHAR), {SHARD_DIGITS}, '0') || '.tar'
                   AS release_shard,
               lpad(CAST(n.position AS VARCHAR), {KEY_DIGITS}, '0') AS release_key, n.rid
        FROM numbered n
        JOIN (SELECT file_row_number AS rid, sample_id FROM read_parquet({literal(manifest)}, file_row_number = true)
              WHERE keep) m USING (rid)
        ORDER BY n.position NULLS LAST, n.rid, n.copy
        """
    )


def counts(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, int]]:
    """Per domain: rows selected (distinct), copies released, packed copies, and kept rows per unselected reason."""
    out: dict[str, dict[str, int]] = {}
    for domain, reason, n in con.sql(
        "SELECT domain, coalesce(sample_reason, 'selected'), count(*) FROM decisions GROUP BY ALL ORDER BY ALL"
    ).fetchall():
        out.setdefault(domain, {})[reason] = int(n)
    for domain, copies, packed in con.sql(
        "SELECT domain, count(*), count(position) FROM selection GROUP BY 1 ORDER BY 1"
    ).fetchall():
        out.setdefault(domain, {}).update(copies=int(copies), packed=int(packed))
    return out
