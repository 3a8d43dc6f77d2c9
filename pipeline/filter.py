"""Quality and CLIP-score rules: one SQL expression that names the first rule a row fails.

Rules run in a fixed order and the first failing one becomes ``drop_reason``: a download status other than
``ok``, then ``min_image_side``, ``max_aspect_ratio``, ``caption_words``, ``caption_chars``,
``clip_score_min`` and ``clip_top_fraction``. A top fraction per domain (DataComp style) is first turned into
one threshold over every scored row of that domain (:func:`top_fraction_thresholds`, the reduce), then
applied row by row like any other threshold.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline import schema
from pipeline.config import FilterConfig

RULES = ("min_image_side", "max_aspect_ratio", "caption_words", "caption_chars", "clip_score_min", "clip_top_fraction")


def top_fraction_thresholds(scores_by_domain: dict[str, np.ndarray], fractions: dict[str, float]) -> dict[str, float]:
    """Per domain, the lowest score among its top ``ceil(fraction * n)`` scores (rows >= it are kept)."""
    thresholds = {}
    for domain, fraction in fractions.items():
        scores = np.sort(np.asarray(scores_by_domain.get(domain, []), dtype=np.float64))[::-1]
        if scores.size:
            thresholds[domain] = float(scores[max(math.ceil(fraction * scores.size), 1) - 1])
    return thresholds


def drop_reason_sql(rules: FilterConfig, thresholds: dict[str, float]) -> str:
    """A DuckDB expression over manifest columns: NULL when the row is kept, else the first failed rule."""
    side = "least(original_width, original_height)"
    words = (
        "CASE WHEN trim(coalesce(caption, '')) = '' THEN 0 ELSE len(regexp_split_to_array(trim(caption), '\\s+')) END"
    )
    chars = "length(coalesce(caption, ''))"
    cases = [f"WHEN status <> '{schema.STATUS_OK}' THEN status"]
    if rules.min_image_side > 0:
        cases.append(f"WHEN {side} < {int(rules.min_image_side)} THEN 'min_image_side'")
    if math.isfinite(rules.max_aspect_ratio):
        ratio = f"greatest(original_width, original_height) / greatest({side}, 1)"
        cases.append(f"WHEN {ratio} > {float(rules.max_aspect_ratio)!r} THEN 'max_aspect_ratio'")
    if rules.caption_min_words > 0 or rules.caption_max_words is not None:
        high = rules.caption_max_words if rules.caption_max_words is not None else 2**31
        cases.append(f"WHEN {words} NOT BETWEEN {int(rules.caption_min_words)} AND {int(high)} THEN 'caption_words'")
    if rules.caption_min_chars > 0 or rules.caption_max_chars is not None:
        high = rules.caption_max_chars if rules.caption_max_chars is not None else 2**31
        cases.append(f"WHEN {chars} NOT BETWEEN {int(rules.caption_min_chars)} AND {int(high)} THEN 'caption_chars'")
    if rules.clip_score_min is not None:
        cases.append(f"WHEN clip_score < {float(rules.clip_score_min)!r} THEN 'clip_score_min'")
    for domain, threshold in sorted(thresholds.items()):
        quoted = domain.replace("'", "''")
        cases.append(f"WHEN domain = '{quoted}' AND clip_score < {threshold!r} THEN 'clip_top_fraction'")
    return "CASE " + " ".join(cases) + " ELSE NULL END"
