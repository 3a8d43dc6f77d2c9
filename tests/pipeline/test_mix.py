"""The mix stage: held-out and proxy training sets, the proxy loop and the fitted share the sampler takes.

The real children (dalip.train, dalip.validate) run in the demo build (tests/flows, tests/release); here they
are replaced by fakes whose losses follow a known law, so the stage's orchestration and choice can be checked
exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.core.config import LicensePolicy, MixingLawConfig, PublishConfig, Recipe, SampleConfig, SourceSpec
from pipeline.core.harness import Build, run_reduce
from pipeline.runner import run_stage
from pipeline.stages import stage_named
from pipeline.stages.mix import MixingLawError
from pipeline.stages.mix.proxy import ProxyDataError
from tests.pipeline.test_sample import judged_manifest

# The fakes' losses: general falls as its share grows, plant rises (Ye et al.'s shape), known parameters.
LAW = {"general": (2.0, -3.0, -0.5), "plant": (1.5, 2.0, -2.0)}  # c, k, b of c + exp(k r + b)


def law(domain: str, share: float) -> float:
    c, k, b = LAW[domain]
    return c + math.exp(k * share + b)


def fake_child(command: list[str], log: Path) -> None:
    """dalip.train writes a checkpoint and metrics; dalip.validate reports the law's losses for the share."""

    def arg(name: str) -> str:
        return command[command.index(name) + 1]

    if command[2] == "dalip.train":
        run = Path(arg("--output-dir")) / "checkpoints"
        run.mkdir(parents=True)
        (run / "step_00000001.pt").write_bytes(b"weights")
        (run / "latest.txt").write_text("step_00000001.pt")
        (run.parent / "metrics.jsonl").write_text('{"step": 1}\n')
        share = float(Path(arg("--manifest")).name.split("-")[1].removesuffix(".train.parquet"))
        (run.parent / "share.txt").write_text(str(share))
    else:
        share = float((Path(arg("--checkpoint")).parent.parent / "share.txt").read_text())
        manifests = command[command.index("--manifest") + 1 : command.index("--batch-size")]
        report = {name.split("=")[0]: {"loss": law(name.split("=")[0], share)} for name in manifests}
        Path(arg("--output")).write_text(json.dumps(report))


def mix_build(tmp_path: Path, **mixing) -> Build:
    tmp_path.mkdir(parents=True, exist_ok=True)
    judged_manifest(tmp_path, n_plant=300, n_general=200)
    (tmp_path / "judge").mkdir()
    (tmp_path / "judge" / "_reduce.done.json").write_text(json.dumps({"fingerprint": "j1", "stats": {}}))
    config = MixingLawConfig(**{"shares": [0.0, 0.2, 0.4, 0.7, 1.0], "proxy_rows": 100, "heldout_rows": 20,
                                "batch_size": 8, **mixing})  # fmt: skip
    recipe = Recipe(
        name="t", output_dir=str(tmp_path), sources=[SourceSpec("pool_a", "url_caption_pool")], mixing_law=config,
        sample=SampleConfig(total=100, share_from_mixing_law=True, licenses=LicensePolicy(
            redistribute=["cc0", "cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nd", "unspecified"])),
        publish=PublishConfig(shard_size=50),
    )  # fmt: skip
    return Build.of(recipe)


def test_held_out_rows_are_never_trained_on_and_proxies_are_nested(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.stages.mix._child", fake_child)
    build = mix_build(tmp_path)
    run_stage(stage_named("mix"), build)
    mix = tmp_path / "mix"
    held = {
        r for d in ("plant", "general") for r in pq.read_table(mix / f"heldout-{d}.parquet")["sample_id"].to_pylist()
    }
    assert len(held) == 40
    general_rows = []
    for share in (0.0, 0.2, 0.4, 0.7, 1.0):
        rows = pq.read_table(mix / f"share-{share:.3f}.train.parquet").to_pylist()
        assert len(rows) == 100 and sum(r["domain"] == "general" for r in rows) == round(100 * share)
        assert not held & {r["sample_id"] for r in rows} and all(r["keep"] for r in rows)
        assert all(r["shard"].startswith(str(tmp_path)) for r in rows if r["shard"])  # absolute tar paths
        general_rows.append({r["sample_id"] for r in rows if r["domain"] == "general"})
    assert all(a <= b for a, b in zip(general_rows, general_rows[1:], strict=False))  # nested


def test_the_law_is_fitted_on_the_proxies_and_the_sampler_takes_its_share(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.stages.mix._child", fake_child)
    build = mix_build(tmp_path, reference=2.2)
    run_stage(stage_named("mix"), build)
    result = json.loads((tmp_path / "mixing_law.json").read_text())
    c, k, b = LAW["general"]
    expected = (math.log(2.2 - c) - b) / k  # L(r*) = L0 on the known law
    assert result["reliable"] and result["share"] == pytest.approx(expected, abs=0.01)
    assert result["fit"]["general"]["k"] == pytest.approx(k, abs=0.05)
    assert (tmp_path / "mixing_law.png").read_bytes()[:4] == b"\x89PNG"
    record = run_reduce(stage_named("sample"), build)
    general = round(100 * result["share"])
    assert record["stats"]["targets"] == {"plant": 100 - general, "general": general}


def test_without_a_reference_l0_is_the_general_only_loss_relaxed_by_the_tolerance(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.stages.mix._child", fake_child)
    build = mix_build(tmp_path, reference_tolerance=0.05)
    run_stage(stage_named("mix"), build)
    result = json.loads((tmp_path / "mixing_law.json").read_text())
    assert result["reference"] == pytest.approx(law("general", 1.0) * 1.05, rel=1e-3)
    assert 0 < result["share"] < 1


def test_an_unreliable_fit_stops_the_build_unless_allowed(tmp_path, monkeypatch):
    def noisy(command, log):
        fake_child(command, log)
        if command[2] == "dalip.validate":  # a zig-zag: not a law
            report = json.loads(Path(command[command.index("--output") + 1]).read_text())
            share = float((Path(command[command.index("--checkpoint") + 1]).parent.parent / "share.txt").read_text())
            for domain in report:
                report[domain]["loss"] += 0.5 if share in (0.2, 0.7) else 0.0
            Path(command[command.index("--output") + 1]).write_text(json.dumps(report))

    monkeypatch.setattr("pipeline.stages.mix._child", noisy)
    build = mix_build(tmp_path, reference=2.2)
    with pytest.raises(MixingLawError, match="not monotone"):
        run_stage(stage_named("mix"), build)
    assert not (tmp_path / "mixing_law.json").exists()
    allowed = mix_build(tmp_path / "allowed", reference=2.2, allow_unreliable=True)
    run_stage(stage_named("mix"), allowed)
    assert json.loads((tmp_path / "allowed" / "mixing_law.json").read_text())["reliable"] is False


def test_too_few_rows_for_a_proxy_names_the_domain(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.stages.mix._child", fake_child)
    build = mix_build(tmp_path, proxy_rows=400)
    with pytest.raises(ProxyDataError, match=r"share 0.0: .* \(plant: \d+ of 400\)"):
        run_stage(stage_named("mix"), build)
