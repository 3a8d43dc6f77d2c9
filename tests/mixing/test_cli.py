"""``plantmix mixing-law fit``: its table, its files and its exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.query.cli import main
from tests.conftest import REPO


def write_results(path, general, plant=None):
    lines = ["share,domain,value"]
    lines += [f"{s},general,{v}" for s, v in general]
    lines += [f"{s},plant,{v}" for s, v in plant or []]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


SHARES = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7]
GOOD_GENERAL = [(s, 0.30 + np.exp(-2.5 * s - 1.0)) for s in SHARES]
GOOD_PLANT = [(s, 0.20 + np.exp(1.5 * s - 2.0)) for s in SHARES]
REFERENCE = str(0.30 + np.exp(-2.5 * 0.25 - 1.0))


def test_a_reliable_fit_prints_its_table_and_writes_json_and_png(tmp_path, capsys):
    results = write_results(tmp_path / "r.csv", GOOD_GENERAL, GOOD_PLANT)
    code = main(["mixing-law", "fit", results, "--reference", REFERENCE, "--json", str(tmp_path / "law.json"),
                 "--plot", str(tmp_path / "law.png")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for text in ("domain", "loo_rmse", "general", "plant", "problems: none", "chosen general share: 0.25"):
        assert text in out
    saved = json.loads((tmp_path / "law.json").read_text())
    assert saved["rule"] == "critical" and saved["share"] == pytest.approx(0.25, abs=0.01)
    assert (tmp_path / "law.png").read_bytes()[:4] == b"\x89PNG"


def test_the_weighted_rule_takes_weights(tmp_path, capsys):
    results = write_results(tmp_path / "r.csv", GOOD_GENERAL, GOOD_PLANT)
    assert main(["mixing-law", "fit", results, "--rule", "weighted", "--weights", "plant=1,general=1"]) == 0
    assert "rule: weighted, weights {'plant': 1.0, 'general': 1.0}" in capsys.readouterr().out


def test_an_unreliable_fit_exits_1_unless_allowed(tmp_path, capsys):
    zigzag = [(0.0, 1.0), (0.1, 0.8), (0.2, 0.85), (0.3, 0.6), (0.5, 0.55), (0.7, 0.52)]
    results = write_results(tmp_path / "r.csv", zigzag)
    assert main(["mixing-law", "fit", results, "--reference", "0.7"]) == 1
    out = capsys.readouterr().out
    assert "general: not monotone" in out and "UNRELIABLE" in out
    assert main(["mixing-law", "fit", results, "--reference", "0.7", "--allow-unreliable"]) == 0


def test_no_share_exits_1_even_when_unreliable_fits_are_allowed(tmp_path, capsys):
    results = write_results(tmp_path / "r.csv", GOOD_GENERAL)
    assert main(["mixing-law", "fit", results, "--reference", "0.31", "--allow-unreliable"]) == 1
    assert "chosen general share: none" in capsys.readouterr().out


def test_bad_input_exits_2_with_the_file_and_field(tmp_path, capsys):
    results = write_results(tmp_path / "r.csv", [(0.1, "x")])
    assert main(["mixing-law", "fit", results, "--reference", "1"]) == 2
    assert f"{results}: line 2: field 'value'" in capsys.readouterr().err
    assert main(["mixing-law", "fit", str(tmp_path / "nope.csv"), "--reference", "1"]) == 2
    assert main(["mixing-law", "fit", results]) == 2  # the critical rule without --reference
    assert "needs --reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["mixing-law", "fit", results, "--rule", "weighted", "--weights", "plant"])


def test_the_plantmix_cli_does_not_load_scipy_or_matplotlib_until_a_fit_runs():
    code = "import sys, pipeline.query.cli; print(sorted(m for m in ('scipy', 'matplotlib') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
