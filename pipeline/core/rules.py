"""A named drop rule: a SQL condition over manifest columns and the reason a failing row gets.

Stages contribute rules (the dedup stages: ``exact_duplicate``, ...; the judge: the quality and CLIP-score
rules); the judge evaluates them in ``precedence`` order and the first one a row fails becomes its
``drop_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass

# Precedence bands: download status first, then dedup (contamination before duplicates), then quality, then CLIP.
STATUS, CONTAMINATION, DUPLICATES, QUALITY, CLIP_SCORE = 0, 10, 20, 60, 70


@dataclass(frozen=True)
class Rule:
    name: str  # what the rule is called in stats and docs
    fails: str  # SQL condition, true when the row fails the rule
    reason: str | None = None  # SQL expression for drop_reason; default: the name as a string
    precedence: int = QUALITY  # lower runs first; ties keep the order in which the rules were given

    @property
    def reason_sql(self) -> str:
        return self.reason or "'" + self.name.replace("'", "''") + "'"


def drop_reason_sql(rules: list[Rule]) -> str:
    """A DuckDB expression over manifest columns: NULL when the row is kept, else the first failed rule."""
    ordered = sorted(rules, key=lambda rule: rule.precedence)  # sorted() is stable: given order within a band
    return "CASE " + " ".join(f"WHEN {r.fails} THEN {r.reason_sql}" for r in ordered) + " ELSE NULL END"
