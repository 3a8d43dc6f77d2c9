"""The mixing-law figure: each domain's proxy points and fitted curve, the reference L0 and the chosen share.

Drawn from the JSON-able result alone (so a written ``mixing_law.json`` can be re-plotted), on matplotlib's Agg
canvas without pyplot (no global state, no display) and without a software tag in the PNG's metadata, so the
same result gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.mixing.law import TWO_DOMAIN, LawFit

PNG_METADATA = {"Software": None}
COLORS = ("#4c8c4a", "#3b6ea8", "#c4672d", "#8a5aa8", "#a83b4c", "#6b6b6b")  # plant green first, like the card


def plot_result(result: Mapping[str, Any], path: str | Path) -> Path:
    """Write the figure of a :func:`pipeline.mixing.result.fit_and_choose` result to ``path`` as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    shares = np.linspace(0.0, 1.0, 201)
    for color, (domain, data) in zip(_cycle(len(result["fit"])), sorted(result["fit"].items()), strict=True):
        fit = LawFit.from_dict(data)
        if fit.form != TWO_DOMAIN:
            continue
        ax.scatter([p[0] for p in fit.proportions], fit.values, color=color, zorder=3, label=f"{domain} (proxy runs)")
        flag = "" if fit.reliable else ", unreliable"
        label = f"{domain}: {fit.c:.3g} + exp({fit.k:.3g} r {'-' if fit.b < 0 else '+'} {abs(fit.b):.3g}){flag}"
        ax.plot(shares, fit.predict(shares), color=color, linestyle="-" if fit.reliable else ":", label=label)
    if result.get("reference") is not None:
        ax.axhline(
            result["reference"], color="black", linestyle="--", linewidth=1, label=f"L0 = {result['reference']:.4g}"
        )
    if result.get("share") is not None:
        ax.axvline(
            result["share"],
            color="#a83b4c",
            linewidth=1.5,
            label=f"chosen share {result['share']:.3f} ({result['rule']})",
        )
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(f"{result.get('general_domain') or 'general'}-domain share r of the training set")
    ax.set_ylabel("metric (lower is better)")
    ax.set_title("Data mixing law" + ("" if result.get("reliable") else " (unreliable: see problems)"))
    ax.legend(fontsize="small")
    path = Path(path)
    fig.savefig(path, format="png", metadata=PNG_METADATA)
    return path


def _cycle(n: int) -> list[str]:
    return [COLORS[i % len(COLORS)] for i in range(n)]
