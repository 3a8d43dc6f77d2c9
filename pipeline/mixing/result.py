"""Fit every evaluation domain, choose the general share, and write the result: what the proxy-run flow calls.

The result is a plain JSON-able dict, written as ``mixing_law.json`` beside ``mixing_law.png``; the sampler
takes its ``share`` and the release card shows its ``fit`` and plot. An unreliable fit or a rule without an
answer is not an exception here: ``reliable`` is false, ``problems`` says why (each prefixed with its domain, or
``choice``), and ``share`` is null when no rule could answer. The caller decides whether to go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.io import atomic_path, write_json
from pipeline.mixing.choose import NoShareError, choose_share
from pipeline.mixing.inputs import Point, as_points, by_domain
from pipeline.mixing.law import FitOptions, LawFit, fit_two_domain

LAW = "L(r) = c + exp(k*r + b), r = general-domain share (Ye et al. 2024, arXiv 2403.16952)"


def fit_and_choose(
    points: Iterable[Point | Mapping[str, Any] | tuple],
    reference: float | None = None,
    rule: str = "critical",
    weights: Mapping[str, float] | None = None,
    general_domain: str = "general",
    options: FitOptions | None = None,
) -> dict[str, Any]:
    """Fit the law per domain on ``(share, domain, value)`` points and choose the general share by ``rule``.

    ``reference`` is L0 for the ``critical`` rule (and drawn on the plot for either rule); ``weights`` maps
    domains to weights for the ``weighted`` rule (every domain 1 when omitted).
    """
    fits = {
        domain: fit_two_domain(shares, values, domain, options)
        for domain, (shares, values) in sorted(by_domain(as_points(points)).items())
    }
    problems = [f"{domain}: {problem}" for domain, fit in fits.items() for problem in fit.problems]
    inputs = {"reference": reference, "general_domain": general_domain, "weights": dict(weights) if weights else None}
    share, predicted = None, {}
    try:
        choice = choose_share(fits, rule, reference, weights, general_domain)
        share, predicted, inputs = choice.share, choice.predicted, {**inputs, **choice.inputs}
    except NoShareError as err:
        problems.append(f"choice: {err}")
    return {
        "law": LAW,
        "rule": rule,
        **inputs,
        "share": share,
        "predicted": predicted,
        "reliable": not problems,
        "problems": problems,
        "fit": {domain: fit.to_dict() for domain, fit in fits.items()},
    }


def fits_of(result: Mapping[str, Any]) -> dict[str, LawFit]:
    """The :class:`LawFit` per domain back from a result (e.g. a ``mixing_law.json`` read again)."""
    return {domain: LawFit.from_dict(data) for domain, data in result["fit"].items()}


def write_result(
    result: Mapping[str, Any], json_path: str | Path | None = None, png_path: str | Path | None = None
) -> None:
    """Write the result as JSON and/or its plot as PNG, each atomically (a local path or any fsspec URL)."""
    if json_path:
        write_json(json_path, dict(result))
    if png_path:
        from pipeline.mixing.plot import plot_result  # only a caller that wants the PNG pays for matplotlib

        with atomic_path(png_path) as tmp:
            plot_result(result, tmp)
