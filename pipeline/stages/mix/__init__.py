"""Mix stage: proxy runs at several general-domain shares, the data-mixing law fitted on them, the share chosen.

- plan (``_plan``): held-out plant and general rows from the judged manifest (:mod:`.proxy`); units are the
  shares (``share-0.250``), one proxy each, so an orchestrator runs them at once (one GPU each at scale);
- one unit per share: its training set, ``python -m dalip.train`` on it, ``python -m dalip.validate`` on each
  held-out set, in child processes (the driver never imports torch). Leaves ``<unit>.json`` (the losses),
  ``<unit>.train.parquet`` and ``<unit>.metrics.jsonl``;
- reduce: the law ``L(r) = c + exp(k r + b)`` fitted per domain and the share chosen by the recipe's rule
  (:mod:`pipeline.mixing`), written to ``<output_dir>/mixing_law.json`` + ``mixing_law.png``. An unreliable fit
  stops the build unless ``allow_unreliable``; the sample stage takes the share (``share_from_mixing_law``) and
  the release card shows the plot.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.core import duck
from pipeline.core.harness import Build, Stage, TransientError, read_marker, run_step
from pipeline.core.io import join
from pipeline.mixing.law import fit_two_domain
from pipeline.mixing.result import fit_and_choose, write_result
from pipeline.stages.mix.proxy import DOMAINS, write_heldout, write_training_set

PROXY_TIMEOUT = 24 * 3600  # seconds for one proxy's training (a real one runs for hours on a GPU)


class MixingLawError(RuntimeError):
    """The fit is flagged unreliable (or no share solves the rule) and the recipe does not allow going on."""


def share_unit(share: float) -> str:
    return f"share-{share:.3f}"


class MixStage(Stage):
    name = "mix"

    def enabled(self, build: Build) -> bool:
        return build.recipe.mixing_law is not None

    def plan(self, build: Build) -> list[str]:
        if not self.enabled(build):
            return []
        layout, config = build.layout, build.recipe.mixing_law
        judge = read_marker(layout.stage_dir("judge"), "_reduce")
        if judge is None:
            raise RuntimeError(f"{layout.stage_dir('judge')}: no judged manifest yet; the mix stage needs kept rows")

        def heldout(out: Path) -> dict[str, Any]:
            con = duck.connect(build.recipe.duckdb, layout.root)
            counts = write_heldout(con, layout.manifest, layout.root, config.heldout_rows, config.seed, out)
            return {"heldout": counts, "units": [share_unit(s) for s in sorted(config.shares)]}

        record = run_step(
            self.dir(build), "_plan", heldout,
            decides={"judge": judge["fingerprint"], "heldout_rows": config.heldout_rows, "seed": config.seed},
            provenance={"stage": self.name, "step": "plan"},
        )  # fmt: skip
        return record["stats"]["units"]

    def decides(self, build: Build, unit: str) -> Any:
        config = dataclasses.asdict(build.recipe.mixing_law)
        proxy = {k: config[k] for k in ("proxy_rows", "seed", "batch_size", "train_args")}
        return {"plan": (read_marker(self.dir(build), "_plan") or {}).get("fingerprint"), "unit": unit, **proxy}

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        layout, config = build.layout, build.recipe.mixing_law
        share = float(unit.removeprefix("share-"))
        heldout = {d: join(self.dir(build), f"heldout-{d}.parquet") for d in DOMAINS}
        train_set = out / f"{unit}.train.parquet"
        con = duck.connect(build.recipe.duckdb, layout.root)
        rows = write_training_set(con, layout.manifest, layout.root, list(heldout.values()), share,
                                  config.proxy_rows, config.seed, train_set)  # fmt: skip
        run_dir = out / "run"  # a subfolder: the proxy's checkpoints are not kept, only its metrics and losses
        _child([sys.executable, "-m", "dalip.train", "--manifest", str(train_set), "--output-dir", str(run_dir),
                "--batch-size", str(config.batch_size), "--seed", str(config.seed), *config.train_args],
               out / f"{unit}.train.log")  # fmt: skip
        checkpoint = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest.txt").read_text().strip()
        report = out / f"{unit}.validate.json"
        _child([sys.executable, "-m", "dalip.validate", "--checkpoint", str(checkpoint), "--manifest",
                *(f"{d}={path}" for d, path in heldout.items()), "--batch-size", str(config.batch_size),
                "--output", str(report)], out / f"{unit}.validate.log")  # fmt: skip
        validated = json.loads(report.read_text())
        losses = {domain: validated[domain]["loss"] for domain in heldout}
        (run_dir / "metrics.jsonl").replace(out / f"{unit}.metrics.jsonl")
        result = {"share": share, "rows": sum(rows.values()), "rows_by_domain": rows, "loss": losses}
        (out / f"{unit}.json").write_text(json.dumps(result, indent=2) + "\n")
        return result

    def reduce_decides(self, build: Build) -> Any:
        config = dataclasses.asdict(build.recipe.mixing_law)
        units = {u: (read_marker(self.dir(build), u) or {}).get("fingerprint") for u in self.units(build)}
        choice = {k: config[k] for k in ("rule", "reference", "reference_tolerance", "weights", "allow_unreliable")}
        return {"units": units, **choice}

    def reduce_dest(self, build: Build) -> str:
        return build.layout.root

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        config = build.recipe.mixing_law
        runs = [(read_marker(self.dir(build), u) or {}).get("stats") for u in self.units(build)]
        if not all(runs):
            raise RuntimeError(f"{self.dir(build)}: not every proxy has run; run the mix stage's units first")
        points = [(run["share"], domain, run["loss"][domain]) for run in runs for domain in DOMAINS]
        reference = config.reference
        if reference is None and config.rule == "critical":
            reference = general_only_reference(points, config.reference_tolerance)
        result = fit_and_choose(points, reference, config.rule, config.weights or None)
        result["reference_from"] = "recipe" if config.reference is not None else (
            f"fitted general loss at share 1 x (1 + {config.reference_tolerance})")  # fmt: skip
        if not result["reliable"] and not config.allow_unreliable:  # no share is one of the problems
            raise MixingLawError(
                "the mixing-law fit is not usable: " + "; ".join(result["problems"])
                + ". Add shares or proxy rows, or set mixing_law.allow_unreliable: true to go on anyway"
            )  # fmt: skip
        write_result(result, out / Path(build.layout.mixing_law).name, out / Path(build.layout.mixing_law_plot).name)
        return {"share": result["share"], "reliable": result["reliable"], "problems": result["problems"]}


def general_only_reference(points: list[tuple[float, str, float]], tolerance: float) -> float:
    """L0 when the recipe gives none: the fitted general loss of a proxy trained on general data only, relaxed by
    ``tolerance``: the critical share is the smallest one that keeps general loss within that of pure general."""
    shares = [s for s, d, _ in points if d == "general"]
    values = [v for _, d, v in points if d == "general"]
    fit = fit_two_domain(shares, values, "general")
    return float(fit.predict([1.0])[0]) * (1 + tolerance)


def _child(command: list[str], log: Path) -> None:
    """Run a training or validation child; its output goes to ``log``; a failure names the log's tail."""
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "a") as sink:
        done = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env, timeout=PROXY_TIMEOUT)
    if done.returncode != 0:
        tail = log.read_text()[-3000:]
        error = TransientError if done.returncode < 0 else RuntimeError  # killed by a signal: worth a retry
        raise error(f"{' '.join(command[1:4])} failed with exit code {done.returncode}:\n{tail}")
