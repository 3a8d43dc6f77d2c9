"""``plantmix mixing-law fit``: fit the data mixing law on proxy results and print the chosen general share.

    plantmix mixing-law fit results.csv --reference 0.42
    plantmix mixing-law fit proxies/ --rule weighted --weights plant=2,general=1 --json law.json --plot law.png

Exit status: 0 for a reliable fit and a share; 1 for an unreliable fit (0 with ``--allow-unreliable``) or when
the rule has no share; 2 for input that cannot be read. The JSON and the plot are written in every case, so an
unreliable fit can be looked at. This module only builds the parser at import: scipy and matplotlib load when
the command runs, so ``plantmix sql`` does not pay for them.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

RULE_NAMES = ("critical", "weighted")
METRIC_NAMES = ("top1_error", "top5_error")  # pipeline.mixing.inputs.METRICS, named here to keep imports light


def parse_weights(text: str) -> dict[str, float]:
    """``plant=1,general=0.5`` -> ``{"plant": 1.0, "general": 0.5}``."""
    weights = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        domain, sep, value = item.partition("=")
        try:
            weights[domain.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not domain.strip():
            raise argparse.ArgumentTypeError(f"expected domain=weight[,domain=weight...], got {item!r}")
    if not weights:
        raise argparse.ArgumentTypeError("expected domain=weight[,domain=weight...]")
    return weights


def add_parser(sub: Any) -> None:
    """Register ``mixing-law`` (with its ``fit`` command) on the ``plantmix`` subparsers."""
    p_law = sub.add_parser("mixing-law", help="fit the data mixing law on proxy runs and choose the general share")
    law_sub = p_law.add_subparsers(dest="mixing_command", required=True)
    p_fit = law_sub.add_parser("fit", help="fit L(r) = c + exp(k*r + b) per domain and choose the share",
                               description=__doc__.split("\n")[0])  # fmt: skip
    p_fit.add_argument(
        "results",
        help="CSV/Parquet with share,domain,value; a CSV share,domain,path of dalip.evaluate reports; "
        "or a folder share=<r>/<domain>.json (share = the general domain's share)",
    )
    p_fit.add_argument("--reference", type=float, help="L0: the general metric to return to (the critical rule)")
    p_fit.add_argument("--rule", choices=RULE_NAMES, default="critical", help="how to choose the share")
    p_fit.add_argument("--weights", type=parse_weights, help="weighted rule: plant=1,general=1 (default: all 1)")
    p_fit.add_argument("--general-domain", default="general", help="the domain whose share r is (default: general)")
    p_fit.add_argument("--metric", choices=METRIC_NAMES, default="top1_error", help="from dalip.evaluate reports")
    p_fit.add_argument("--json", help="write the result here")
    p_fit.add_argument("--plot", help="write the figure here (PNG)")
    p_fit.add_argument("--allow-unreliable", action="store_true", help="exit 0 even if a fit is flagged unreliable")
    p_fit.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    from pipeline.mixing.inputs import ProxyResultsError, read_points
    from pipeline.mixing.result import fit_and_choose, write_result

    if args.rule == "critical" and args.reference is None:
        print("error: the critical rule needs --reference L0", file=sys.stderr)
        return 2
    try:
        points = read_points(args.results, args.metric)
        result = fit_and_choose(points, args.reference, args.rule, args.weights, args.general_domain)
    except (ProxyResultsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(render(result))
    write_result(result, args.json, args.plot)
    if result["share"] is None:
        return 1
    return 0 if result["reliable"] or args.allow_unreliable else 1


def render(result: dict[str, Any]) -> str:
    """The result as a readable text table: parameters, fit quality, points, problems and the chosen share."""
    lines = [f"law: {result['law']}", ""]
    head = f"{'domain':<12} {'c':>10} {'k':>10} {'b':>10} {'rmse':>10} {'loo_rmse':>10} {'points':>6}  reliable"
    lines += [head, "-" * len(head)]
    for domain, fit in result["fit"].items():
        loo = "n/a" if fit["loo_rmse"] is None else f"{fit['loo_rmse']:.4g}"
        lines.append(
            f"{domain:<12} {fit['c']:>10.4g} {fit['k']:>10.4g} {fit['b']:>10.4g} {fit['rmse']:>10.3g} {loo:>10} "
            f"{len(fit['points']):>6}  {'yes' if fit['reliable'] else 'NO'}"
        )
    lines += ["", f"{'domain':<12} {'share':>8} {'value':>10} {'fitted':>10} {'residual':>10} {'loo_error':>10}"]
    for domain, fit in result["fit"].items():
        for p in fit["points"]:
            loo = "n/a" if p["loo_error"] is None else f"{p['loo_error']:+.3g}"
            lines.append(
                f"{domain:<12} {p['share']:>8.4g} {p['value']:>10.4g} {p['fitted']:>10.4g} "
                f"{p['residual']:>+10.3g} {loo:>10}"
            )
    lines += ["", "problems:" if result["problems"] else "problems: none"]
    lines += [f"  - {problem}" for problem in result["problems"]]
    rule = f"rule: {result['rule']}"
    if result["rule"] == "critical":
        rule += f", L0 = {result['reference']:.4g} on {result['general_domain']}"
    else:
        rule += f", weights {result['weights']}"
    share = "none" if result["share"] is None else f"{result['share']:.4f}"
    lines += ["", f"chosen {result['general_domain']} share: {share} ({rule})"]
    if result["predicted"]:
        lines.append("predicted there: " + ", ".join(f"{d} {v:.4g}" for d, v in result["predicted"].items()))
    if not result["reliable"]:
        lines.append("UNRELIABLE: do not take this share on trust (see problems)")
    return "\n".join(lines)
