"""Proxy results are read from tables, dalip.evaluate reports or a share=<r>/ folder; the rules choose the share."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.mixing.choose import NoShareError, choose_share, critical_share
from pipeline.mixing.inputs import ProxyResultsError, read_points
from pipeline.mixing.law import fit_two_domain
from pipeline.mixing.result import fit_and_choose, fits_of, write_result

SHARES = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7]


def general_law(r):
    return 0.30 + np.exp(-2.5 * np.asarray(r) - 1.0)


def plant_law(r):
    return 0.20 + np.exp(1.5 * np.asarray(r) - 2.0)


def points():
    return [(s, "general", float(general_law(s))) for s in SHARES] + [(s, "plant", float(plant_law(s))) for s in SHARES]


def eval_report(top1: float, **extra) -> str:
    """The fields ``python -m dalip.evaluate`` writes (dalip/evaluate.py ``main``), accuracies in percent."""
    scores = {"top1": top1, "top5": min(100.0, top1 + 20)}
    report = {
        "checkpoint": "proxy.pt", "model": "tiny", "source": "heldout/", "num_classes": 5, "num_images": 50,
        "templates": "openai", "score": "both", "lambdas": [1.0, 1.0], **scores,
        "results": {"f": scores, "z": scores, "both": scores}, **extra,
    }  # fmt: skip
    return json.dumps(report, indent=2)


def test_a_csv_with_comments_and_a_parquet_table_give_the_same_points(tmp_path):
    csv_path = tmp_path / "results.csv"
    csv_path.write_text("# a citation\nshare,domain,value\n" + "".join(f"{s},{d},{v}\n" for s, d, v in points()))
    pq.write_table(pa.table({k: [p[i] for p in points()] for i, k in enumerate(("share", "domain", "value"))}),
                   tmp_path / "results.parquet")  # fmt: skip
    from_csv, from_parquet = read_points(csv_path), read_points(tmp_path / "results.parquet")
    assert [p[:3] for p in from_csv] == [p[:3] for p in from_parquet] == points()
    assert from_csv[0].origin == f"{csv_path}: line 3"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("share,domain,value\n0.1,general,abc\n", r"line 2: field 'value': expected a positive metric .* got 'abc'"),
        (
            "share,domain,value\n1.5,general,0.3\n",
            r"line 2: field 'share': expected a general-domain share in \[0, 1\]",
        ),
        ("share,domain,value\n0.1,,0.3\n", r"line 2: field 'domain'"),
        ("share,domain,value\n0.1,general\n", r"line 2: 2 fields, the header has 3"),
        ("share,metric\n0.1,0.3\n", r"expected columns share,domain,value .* or share,domain,path"),
    ],
)
def test_bad_tables_name_the_file_row_and_field(tmp_path, body, message):
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(ProxyResultsError, match=message) as info:
        read_points(path)
    assert str(path) in str(info.value)


def test_dalip_evaluate_reports_through_an_index_and_a_share_folder(tmp_path):
    index = ["share,domain,path"]
    for s in SHARES:
        for domain, value in (("general", general_law(s)), ("plant", plant_law(s))):
            folder = tmp_path / "proxies" / f"share={s}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{domain}.json").write_text(eval_report(100.0 * (1.0 - float(value))))
            index.append(f"{s},{domain},proxies/share={s}/{domain}.json")
    (tmp_path / "index.csv").write_text("\n".join(index) + "\n")
    by_index = sorted(p[:3] for p in read_points(tmp_path / "index.csv"))
    by_folder = sorted(p[:3] for p in read_points(tmp_path / "proxies"))
    assert by_index == by_folder
    assert [v for _, _, v in by_index] == pytest.approx([v for _, _, v in sorted(points())])
    top5 = read_points(tmp_path / "proxies", metric="top5_error")
    assert all(p.value < q.value for p, q in zip(sorted(top5), sorted(read_points(tmp_path / "proxies")), strict=True))


def test_a_report_that_is_not_from_dalip_evaluate_or_disagrees_on_its_share_is_refused(tmp_path):
    (tmp_path / "share=0.2").mkdir()
    (tmp_path / "share=0.2" / "plant.json").write_text(json.dumps({"accuracy": 0.5}))
    with pytest.raises(ProxyResultsError, match=r"plant.json: field 'top1': expected an accuracy in percent"):
        read_points(tmp_path)
    (tmp_path / "share=0.2" / "plant.json").write_text(eval_report(60.0, share=0.3))
    with pytest.raises(ProxyResultsError, match=r"plant.json: field 'share': 0.3 disagrees with"):
        read_points(tmp_path)
    (tmp_path / "index.csv").write_text("share,domain,path\n0.2,plant,missing.json\n")
    with pytest.raises(ProxyResultsError, match=r"index.csv: line 2: field 'path': .*missing.json does not exist"):
        read_points(tmp_path / "index.csv")


def test_the_critical_share_solves_the_fitted_curve_for_l0():
    fits = {
        d: fit_two_domain(*zip(*[(s, v) for s, dd, v in points() if dd == d], strict=True), d)
        for d in ("general", "plant")
    }
    reference = float(general_law(0.25))
    choice = choose_share(fits, "critical", reference=reference)
    assert choice.share == pytest.approx(0.25, abs=0.01)
    assert choice.predicted["general"] == pytest.approx(reference, abs=1e-9)
    with pytest.raises(NoShareError, match="stays above L0"):
        critical_share(fits["general"], 0.31)  # just above c: reached only far beyond share 1
    with pytest.raises(NoShareError, match="at or below the fitted floor"):
        critical_share(fits["general"], 0.1)
    with pytest.raises(NoShareError, match="below L0 .* already at share 0"):
        critical_share(fits["general"], 2.0)
    with pytest.raises(NoShareError, match="does not fall"):
        critical_share(fits["plant"], 0.3)


def test_the_weighted_share_minimises_the_weighted_sum():
    fits = {
        d: fit_two_domain(*zip(*[(s, v) for s, dd, v in points() if dd == d], strict=True), d)
        for d in ("general", "plant")
    }
    grid = np.linspace(0, 1, 100001)
    for weights in ({"general": 1.0, "plant": 1.0}, {"general": 1.0, "plant": 4.0}):
        expected = grid[np.argmin(weights["general"] * general_law(grid) + weights["plant"] * plant_law(grid))]
        assert choose_share(fits, "weighted", weights=weights).share == pytest.approx(expected, abs=0.02)
    assert choose_share(fits, "weighted", weights={"general": 1.0}).share == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(NoShareError, match="no fitted domain 'code'"):
        choose_share(fits, "weighted", weights={"code": 1.0})


def test_fit_and_choose_is_json_able_and_flags_a_missing_share(tmp_path):
    result = fit_and_choose(points(), reference=float(general_law(0.25)))
    assert result["reliable"] and result["share"] == pytest.approx(0.25, abs=0.01)
    assert json.loads(json.dumps(result, allow_nan=False)) == result
    assert set(fits_of(result)) == {"general", "plant"}
    write_result(result, tmp_path / "mixing_law.json", tmp_path / "mixing_law.png")
    assert json.loads((tmp_path / "mixing_law.json").read_text())["share"] == result["share"]
    first = (tmp_path / "mixing_law.png").read_bytes()
    write_result(result, None, tmp_path / "again.png")
    assert first[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "again.png").read_bytes() == first  # byte-stable

    none = fit_and_choose(points(), reference=0.31)
    assert none["share"] is None and not none["reliable"]
    assert any(p.startswith("choice: ") for p in none["problems"])
