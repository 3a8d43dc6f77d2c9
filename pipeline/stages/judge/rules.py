"""Quality and CLIP-score rules: named objects, each a SQL condition over manifest columns and a reason.

Rules run in a fixed order and the first failing one becomes ``drop_reason``: a download status other than
``ok`` (the reason is the status itself), then ``min_image_side``, ``max_aspect_ratio``, ``caption_words``,
``caption_chars``, ``clip_score_min`` and ``clip_top_fraction``. A top fraction per domain (DataComp style) is
first turned into one threshold over every scored row of that domain by a SQL window
(:func:`top_fraction_thresholds`, the reduce), then applied row by row like any other threshold.
"""

from __future__ import annotations

import math

import duckdb
import numpy as np

from pipeline.core import schema
from pipeline.core.config import FilterConfig
from pipeline.core.duck import literal
from pipeline.core.rules import CLIP_SCORE, STATUS, Rule

RULES = ("min_image_side", "max_aspect_ratio", "caption_words", "caption_chars", "clip_score_min", "clip_top_fraction")


def rules_for(config: FilterConfig, thresholds: dict[str, float]) -> list[Rule]:
    """The recipe's rules in evaluation order (rules the recipe leaves off are absent)."""
    side = "least(original_width, original_height)"
    words = (
        "CASE WHEN trim(coalesce(caption, '')) = '' THEN 0 ELSE len(regexp_split_to_array(trim(caption), '\\s+')) END"
    )
    chars = "length(coalesce(caption, ''))"
    rules = [Rule("download_status", f"status <> '{schema.STATUS_OK}'", reason="status", precedence=STATUS)]
    if config.min_image_side > 0:
        rules.append(Rule("min_image_side", f"{side} < {int(config.min_image_side)}"))
    if math.isfinite(config.max_aspect_ratio):
        ratio = f"greatest(original_width, original_height) / greatest({side}, 1)"
        rules.append(Rule("max_aspect_ratio", f"{ratio} > {float(config.max_aspect_ratio)!r}"))
    if config.caption_min_words > 0 or config.caption_max_words is not None:
        high = config.caption_max_words if config.caption_max_words is not None else 2**31
        rules.append(Rule("caption_words", f"{words} NOT BETWEEN {int(config.caption_min_words)} AND {int(high)}"))
    if config.caption_min_chars > 0 or config.caption_max_chars is not None:
        high = config.caption_max_chars if config.caption_max_chars is not None else 2**31
        rules.append(Rule("caption_chars", f"{chars} NOT BETWEEN {int(config.caption_min_chars)} AND {int(high)}"))
    if config.clip_score_min is not None:
        rules.append(Rule("clip_score_min", f"clip_score < {float(config.clip_score_min)!r}", precedence=CLIP_SCORE))
    if thresholds:
        per_domain = " OR ".join(
            f"(domain = {literal(domain)} AND clip_score < {threshold!r})"
            for domain, threshold in sorted(thresholds.items())
        )
        rules.append(Rule("clip_top_fraction", per_domain, precedence=CLIP_SCORE))
    return rules


def top_fraction_thresholds(
    con: duckdb.DuckDBPyConnection, scored: str, fractions: dict[str, float]
) -> dict[str, float]:
    """Per domain, the lowest score among its top ``ceil(fraction * n)`` scores (rows >= it are kept).

    ``scored`` is a relation with ``domain`` and ``clip_score`` (one row per scored sample). One SQL window over
    the scores; DuckDB sorts out of core, so nothing per row reaches Python.
    """
    if not fractions:
        return {}
    wanted = " UNION ALL ".join(
        f"SELECT {literal(d)} AS domain, {float(f)!r} AS fraction" for d, f in fractions.items()
    )
    rows = con.sql(
        f"""
        WITH s AS (
            SELECT s.domain, s.clip_score, w.fraction,
                   row_number() OVER (PARTITION BY s.domain ORDER BY s.clip_score DESC) AS rank,
                   count(*) OVER (PARTITION BY s.domain) AS n
            FROM ({scored}) s JOIN ({wanted}) w USING (domain)
            WHERE s.clip_score IS NOT NULL
        )
        SELECT domain, min(clip_score) FROM s WHERE rank <= greatest(ceil(fraction * n), 1) GROUP BY domain
        """
    ).fetchall()
    return {domain: float(threshold) for domain, threshold in sorted(rows)}


def top_fraction_reference(scores_by_domain: dict[str, np.ndarray], fractions: dict[str, float]) -> dict[str, float]:
    """The same thresholds from in-memory arrays (numpy): the definition the SQL is tested against."""
    thresholds = {}
    for domain, fraction in fractions.items():
        scores = np.sort(np.asarray(scores_by_domain.get(domain, []), dtype=np.float64))[::-1]
        if scores.size:
            thresholds[domain] = float(scores[max(math.ceil(fraction * scores.size), 1) - 1])
    return thresholds
