"""Choose the general-domain share from fitted laws, by a named rule.

``critical`` (Ye et al. 2024, section on continual pretraining): the smallest general share that keeps general
ability, i.e. the share ``r*`` where the general domain's fitted metric comes back to a reference ``L0`` (the
starting model's): ``c + exp(k r* + b) = L0``, so ``r* = (log(L0 - c) - b) / k``. When the curve never reaches
``L0`` inside ``[0, 1]`` there is no such share and the rule says so (:class:`NoShareError`) instead of clipping.

``weighted``: the share in ``[0, 1]`` that minimises ``sum_i w_i L_i(r)`` over the evaluation domains, with the
caller's weights. Each ``c + exp(k r + b)`` is convex in ``r``, so the sum is too and its minimum is unique.

Metrics are lower-is-better (a loss, or an error = 1 - accuracy) and every share is the general domain's.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline.mixing.law import TWO_DOMAIN, LawFit


class NoShareError(ValueError):
    """The rule has no answer on these fits (e.g. the general metric never returns to ``L0`` in ``[0, 1]``)."""


@dataclass(frozen=True)
class ShareChoice:
    """The chosen general share, the rule that chose it, what the rule was given and the predicted metrics there."""

    share: float
    rule: str
    inputs: dict[str, Any] = field(default_factory=dict)
    predicted: dict[str, float] = field(default_factory=dict)


def critical_share(general: LawFit, reference: float) -> float:
    """The share where the general metric's fitted curve equals ``reference``; :class:`NoShareError` if none."""
    _require_two_domain(general)
    c, k, b = general.c, general.k, general.b
    where = f"domain {general.domain!r} (c={c:.4g}, k={k:.4g}, b={b:.4g})"
    if k >= 0:
        raise NoShareError(f"{where}: the metric does not fall as the general share grows, so no share restores L0")
    if reference <= c:
        raise NoShareError(f"{where}: L0 = {reference:.4g} is at or below the fitted floor c; no share reaches it")
    share = (math.log(reference - c) - b) / k
    if share < 0:
        raise NoShareError(
            f"{where}: the curve is below L0 = {reference:.4g} already at share 0 (r* = {share:.4g}): "
            "no general data is needed to keep the reference, or L0 is too loose"
        )
    if share > 1:
        raise NoShareError(
            f"{where}: the curve stays above L0 = {reference:.4g} even at share 1 (r* = {share:.4g}): "
            "no mixture restores the reference"
        )
    return share


def weighted_share(fits: Mapping[str, LawFit], weights: Mapping[str, float]) -> float:
    """The share in ``[0, 1]`` minimising ``sum w_i L_i(r)``; domains without a weight count 0."""
    for domain, weight in weights.items():
        if domain not in fits:
            raise NoShareError(f"weights: no fitted domain {domain!r} (fitted: {sorted(fits)})")
        if not (math.isfinite(weight) and weight >= 0):
            raise NoShareError(f"weights: {domain}={weight!r}: expected a finite number >= 0")
    if not any(weights.values()):
        raise NoShareError("weights: every weight is 0; give at least one domain a positive weight")
    for domain in weights:
        _require_two_domain(fits[domain])

    def objective(share: float) -> float:
        return float(sum(w * fits[d].predict(share) for d, w in weights.items() if w))

    grid = np.linspace(0.0, 1.0, 1001)
    coarse = float(grid[int(np.argmin([objective(s) for s in grid]))])  # the sum is convex: this brackets it
    fine = minimize_scalar(objective, bounds=(max(coarse - 1e-3, 0.0), min(coarse + 1e-3, 1.0)), method="bounded")
    return float(min((coarse, float(fine.x)), key=objective))


def _critical(fits: Mapping[str, LawFit], reference: float | None, general_domain: str, **_: Any) -> ShareChoice:
    if reference is None:
        raise NoShareError("the critical rule needs a reference L0 (the general metric to return to)")
    if general_domain not in fits:
        raise NoShareError(
            f"the critical rule needs a fit for the general domain {general_domain!r}; got {sorted(fits)}"
        )
    share = critical_share(fits[general_domain], reference)
    return ShareChoice(share, "critical", {"reference": reference, "general_domain": general_domain})


def _weighted(fits: Mapping[str, LawFit], weights: Mapping[str, float] | None, **_: Any) -> ShareChoice:
    weights = dict(weights) if weights else dict.fromkeys(fits, 1.0)
    return ShareChoice(weighted_share(fits, weights), "weighted", {"weights": weights})


RULES: dict[str, Callable[..., ShareChoice]] = {"critical": _critical, "weighted": _weighted}


def choose_share(
    fits: Mapping[str, LawFit],
    rule: str = "critical",
    reference: float | None = None,
    weights: Mapping[str, float] | None = None,
    general_domain: str = "general",
) -> ShareChoice:
    """The general share by ``rule`` (``critical`` or ``weighted``), with every domain's predicted metric there."""
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {sorted(RULES)}, got {rule!r}")
    choice = RULES[rule](fits, reference=reference, weights=weights, general_domain=general_domain)
    predicted = {d: float(f.predict(choice.share)) for d, f in fits.items() if f.form == TWO_DOMAIN}
    return ShareChoice(choice.share, choice.rule, choice.inputs, predicted)


def _require_two_domain(fit: LawFit) -> None:
    if fit.form != TWO_DOMAIN:
        raise NoShareError(f"domain {fit.domain!r}: a share is chosen on two-domain fits, got a {fit.form} fit")
