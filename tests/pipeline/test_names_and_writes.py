"""Hostile names and durable writes: a unit name never leaves its folder, each unit's scratch folder is its own,
atomic writes and published files are fsynced before their rename, and the judge publishes its manifest, summary
and build record together or not at all."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import io as plantmix_io
from pipeline.core import schema
from pipeline.core.config import FilterConfig, Recipe, SourceSpec
from pipeline.core.harness import Build, read_marker, run_reduce, run_step
from pipeline.core.layout import BuildLayout, check_safe_name
from pipeline.stages import judge
from pipeline.stages.download import DownloadStage
from pipeline.stages.download.results import DOWNLOAD_ROWS_SCHEMA
from pipeline.stages.judge import JudgeStage

needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads open files from /proc")


@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "/abs", "", ".hidden"])
def test_a_unit_name_that_could_leave_its_folder_is_refused(tmp_path, name):
    with pytest.raises(ValueError, match="cannot be a file name in the build"):
        BuildLayout.at(str(tmp_path)).unit_file("crawl", name)
    with pytest.raises(ValueError, match="cannot be a file name in the build"):
        run_step(str(tmp_path / "stage"), name, lambda out: {})
    assert list(tmp_path.iterdir()) == []
    assert check_safe_name("inat-2023", "unit") == "inat-2023"


def test_each_unit_clears_only_its_own_leftovers(tmp_path):
    """``_tmp/<unit>/<random>``: the killed attempt at ``inat`` is cleared, ``inat-2023``'s live folder is not."""
    stage = tmp_path / "stage"
    stale, live = stage / "_tmp" / "inat" / "killed", stage / "_tmp" / "inat-2023" / "running"
    for folder in (stale, live):
        folder.mkdir(parents=True)
        (folder / "part").write_text("x")
    seen = []

    def work(out: Path) -> dict:
        seen.append(out)
        (out / "inat.parquet").write_text("rows")
        return {"rows": 1}

    run_step(str(stage), "inat", work)
    assert seen[0].parent == stage / "_tmp" / "inat" and len(seen[0].name) == 32  # a uuid of its own
    assert not stale.exists() and not (stage / "_tmp" / "inat").exists()
    assert (live / "part").read_text() == "x"  # the other unit's attempt is untouched
    assert (stage / "inat.parquet").read_text() == "rows"


class SyncLog:
    """Records, in order, each fsync (by the path of the synced descriptor) and each rename."""

    def __init__(self, monkeypatch) -> None:
        self.events: list[tuple[str, str]] = []
        fsync, replace = os.fsync, os.replace

        def logged_fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            fsync(fd)

        def logged_replace(src, dst) -> None:
            self.events.append(("replace", f"{src} -> {dst}"))
            replace(src, dst)

        monkeypatch.setattr(os, "fsync", logged_fsync)
        monkeypatch.setattr(os, "replace", logged_replace)

    def index(self, kind: str, text: str) -> int:
        return next(i for i, (k, t) in enumerate(self.events) if k == kind and text in t)


@needs_proc
def test_an_atomic_write_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    log = SyncLog(monkeypatch)
    plantmix_io.write_json(tmp_path / "out" / "a.json", {"k": 1})
    [(_, renamed)] = [e for e in log.events if e[0] == "replace"]
    tmp_name = renamed.split(" -> ")[0]
    assert log.index("fsync", tmp_name) < log.index("replace", tmp_name)
    assert log.events[-1] == ("fsync", str(tmp_path / "out"))  # the rename itself is made durable
    assert plantmix_io.read_json(tmp_path / "out" / "a.json") == {"k": 1}


@needs_proc
def test_published_files_are_all_fsynced_before_the_first_rename(tmp_path, monkeypatch):
    staged, dest = tmp_path / "staged", tmp_path / "dest"
    staged.mkdir()
    for name in ("manifest.parquet", "summary.json", "build.json"):
        (staged / name).write_text(name)
    log = SyncLog(monkeypatch)
    plantmix_io.publish_files(staged, str(dest))
    first_rename = log.index("replace", "")
    synced = {Path(path).name for kind, path in log.events[:first_rename] if kind == "fsync"}
    assert {"manifest.parquet", "summary.json", "build.json", "staged"} <= synced
    assert [k for k, _ in log.events[first_rename:]] == ["replace"] * 3 + ["fsync"]
    assert log.events[-1] == ("fsync", str(dest))
    assert sorted(p.name for p in dest.iterdir()) == ["build.json", "manifest.parquet", "summary.json"]


def judged_build(tmp_path: Path, n: int = 6) -> Recipe:
    """A build whose crawl and download are done by hand (no adapter, no network), ready for the judge."""
    out = tmp_path / "build"
    rows = [dict(sample_id=schema.sample_id_for("s", str(i)), source="s", source_record_id=str(i), domain="plant",
                 url=f"https://example.org/{i}.jpg", caption=f"caption number {i}", status="pending",
                 license="cc0-1.0", attribution="test", input_file="s.csv", input_row=i + 1)
            for i in range(n)]  # fmt: skip
    crawl = pa.Table.from_pylist(rows, schema=schema.CANDIDATE_SCHEMA)
    run_step(str(out / "crawl"), "s", lambda d: pq.write_table(crawl, d / "s.parquet") or {"rows": n})
    recipe = Recipe(name="t", output_dir=str(out), sources=[SourceSpec("s", "url_caption_pool")])
    build = Build.of(recipe)
    for shard in DownloadStage().plan(build):
        planned = pq.read_table(build.layout.plan_file(shard))["sample_id"].to_pylist()
        results = [dict(sample_id=s, status="ok", width=64, height=64, original_width=100, original_height=100,
                        shard=f"download/{shard}.tar", key=f"{shard}{k:04d}", image_sha256=f"sha{s}")
                   for k, s in enumerate(planned)]  # fmt: skip
        table = pa.Table.from_pylist(results, schema=DOWNLOAD_ROWS_SCHEMA)
        run_step(str(out / "download"), shard, lambda d, t=table, s=shard: pq.write_table(t, d / f"{s}.parquet"))
    return recipe


def test_a_failing_summary_publishes_nothing_and_keeps_the_old_files(tmp_path, monkeypatch):
    recipe = judged_build(tmp_path)
    build = Build.of(recipe)
    assert run_reduce(JudgeStage(), build)["stats"]["kept"] == 6
    root = Path(build.layout.root)
    finals = ("manifest.parquet", "summary.json", "build.json")
    before = {name: (root / name).read_bytes() for name in finals}
    listing = sorted(p.name for p in root.iterdir())

    def broken_summary(*args, **kwargs):
        raise OSError("disk full while summarizing")

    monkeypatch.setattr(judge, "summarize", broken_summary)
    # A stricter rule redoes the judge ("caption number i" has 3 words): the summary of that new manifest fails.
    stricter = Recipe(name="t", output_dir=recipe.output_dir, sources=recipe.sources,
                      filter=FilterConfig(caption_min_words=4))  # fmt: skip
    with pytest.raises(OSError, match="disk full"):
        run_reduce(JudgeStage(), Build.of(stricter))
    assert {name: (root / name).read_bytes() for name in finals} == before  # old and whole, none new beside them
    assert sorted(p.name for p in root.iterdir()) == listing
    assert not (root / "judge" / "_tmp").exists()
    assert read_marker(str(root / "judge"), "_reduce") is None  # redo pending: the next run judges again

    monkeypatch.undo()
    assert run_reduce(JudgeStage(), Build.of(stricter))["stats"]["kept"] == 0
    manifest = pq.read_table(root / "manifest.parquet").to_pylist()
    assert {r["drop_reason"] for r in manifest} == {"caption_words"}  # all three files are the new judgement
    assert plantmix_io.read_json(root / "summary.json")["kept"] == 0
    assert plantmix_io.read_json(root / "build.json")["recipe"]["filter"]["caption_min_words"] == 4
