"""Download stage against a real loopback HTTP host: statuses, politeness, resumability."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psutil
import pyarrow.parquet as pq
import pytest

from pipeline.core import workers
from pipeline.stages.download import DownloadError
from tests.http_host import ImageHost
from tests.pipeline.helpers import candidates, plan, recipe_with, run
from tests.pipeline.helpers import run_after_crawl as run_all


def statuses(result) -> dict[str, tuple[str, str | None]]:
    rows = pq.read_table(result["manifest"], columns=["url", "status", "error"]).to_pylist()
    return {r["url"].rsplit("/", 2)[-2] + "/" + r["url"].rsplit("/", 1)[-1]: (r["status"], r["error"]) for r in rows}


def test_every_failure_kind_gets_its_own_status(tmp_path):
    robots = "User-agent: plantmix\nDisallow: /private/\n\nUser-agent: *\nDisallow:\n"
    with ImageHost(robots=robots, slow_seconds=4) as host:
        paths = ["img/1.jpg", "img/2.jpg", "img/missing.jpg", "x/garbage.jpg", "optout/3.jpg",
                 "private/4.jpg", "slow/5.jpg", "x/error500.jpg"]  # fmt: skip
        urls = [f"{host.url}/{p}".replace("/x/", "/") for p in paths]
        result = run_all(recipe_with(tmp_path, candidates(urls), timeout=1))
        agents = {h.get("User-Agent", "") for _, _, h in host.requests}
    got = {k.split("/")[-1]: v[0] for k, v in statuses(result).items()}
    assert got == {
        "1.jpg": "ok", "2.jpg": "ok", "missing.jpg": "failed_download", "garbage.jpg": "failed_decode",
        "3.jpg": "opted_out", "4.jpg": "robots_disallowed", "5.jpg": "failed_download",
        "error500.jpg": "failed_download",
    }  # fmt: skip
    errors = {k.split("/")[-1]: v[1] for k, v in statuses(result).items()}
    assert "404" in errors["missing.jpg"] and "500" in errors["error500.jpg"]
    assert "timed out" in errors["5.jpg"].lower()
    assert "robots.txt" in errors["4.jpg"] and "X-Robots-Tag" in errors["3.jpg"]
    assert "/private/4.jpg" not in host.paths()  # disallowed URLs are never requested
    assert all("plantmix" in a for a in agents), agents  # our token is in every User-Agent
    assert result["summary"]["candidates"] == 8 == sum(result["summary"]["by_status"].values())


def test_robots_txt_is_ignored_only_when_the_recipe_says_so(tmp_path):
    with ImageHost(robots="User-agent: *\nDisallow: /\n") as host:
        urls = [f"{host.url}/img/{i}.jpg" for i in range(3)]
        polite = run_all(recipe_with(tmp_path / "a", candidates(urls)))
        rude = run_all(recipe_with(tmp_path / "b", candidates(urls), respect_robots_txt=False))
    assert {s for s, _ in statuses(polite).values()} == {"robots_disallowed"}
    assert {s for s, _ in statuses(rude).values()} == {"ok"}


@pytest.mark.parametrize(("robots_status", "expected"), [(404, "ok"), (503, "failed_download")])
def test_robots_txt_http_errors_follow_rfc_9309(tmp_path, robots_status, expected):
    """4xx: no rules, fetch. 5xx: unreachable, so assumed disallowed, but not final: failed_download, not fetched."""
    with ImageHost(robots_status=robots_status) as host:
        result = run_all(recipe_with(tmp_path, candidates([f"{host.url}/img/1.jpg"])))
        fetched = "/img/1.jpg" in host.paths()
    assert [s for s, _ in statuses(result).values()] == [expected]
    assert fetched == (expected == "ok")
    if expected != "ok":
        assert "robots.txt unreachable" in next(iter(statuses(result).values()))[1]


def test_robots_txt_wildcards_and_longest_match(tmp_path):
    robots = "User-agent: plantmix\nAllow: /img/\nDisallow: /img/*3.jpg$\nDisallow: /img/5\nAllow: /img/55.jpg\n"
    with ImageHost(robots=robots) as host:
        urls = [f"{host.url}/img/{i}.jpg" for i in (1, 3, 13, 5, 55)]
        result = run_all(recipe_with(tmp_path, candidates(urls)))
    got = {k.split("/")[-1]: v[0] for k, v in statuses(result).items()}
    assert got == {"1.jpg": "ok", "3.jpg": "robots_disallowed", "13.jpg": "robots_disallowed",
                   "5.jpg": "robots_disallowed", "55.jpg": "ok"}  # fmt: skip


def test_every_request_carries_the_recipes_user_agent(tmp_path):
    agent = "TestBot/1.0 (+https://example.org/contact)"
    with ImageHost() as host:
        run_all(recipe_with(tmp_path, candidates([f"{host.url}/img/{i}.jpg" for i in range(3)]), user_agent=agent))
        seen = {(p, h.get("User-Agent")) for _, p, h in host.requests}
    assert ("/robots.txt", agent) in seen
    assert {a for _, a in seen} == {agent}


def test_a_changed_recipe_never_reuses_old_shards(tmp_path):
    from pipeline.core.harness import StageMismatch

    with ImageHost() as host:
        rows = candidates([f"{host.url}/img/{i}.jpg" for i in range(4)])
        run_all(recipe_with(tmp_path, rows))
        with pytest.raises(StageMismatch, match="other inputs or settings"):
            run_all(recipe_with(tmp_path, rows, image_size=32))
        with pytest.raises(StageMismatch, match="download/_plan.done.json: made from other inputs"):
            run_all(recipe_with(tmp_path, rows, shard_size=3))


def test_a_shard_that_hangs_is_killed_after_its_deadline(tmp_path):
    """The deadline counts from the job's start in a started worker, so the slow server is really reached."""
    with ImageHost(slow_seconds=20) as host:
        recipe = recipe_with(tmp_path, candidates([f"{host.url}/slow/1.jpg"]), timeout=60, max_request_seconds=60,
                             shard_timeout_seconds=3)  # fmt: skip
        start = time.monotonic()
        with pytest.raises(DownloadError, match="still busy after 3"):
            run_all(recipe)
        elapsed = time.monotonic() - start
    assert "/slow/1.jpg" in host.paths()  # the deadline, not start-up, ended the shard
    assert elapsed < 20  # killed long before the server would have answered (3 tries of 3 s, plus start-ups)
    assert not (tmp_path / "build" / "download" / "00000.done.json").exists()


def test_per_host_rate_limit_spaces_requests(tmp_path):
    with ImageHost() as host:
        urls = [f"{host.url}/img/{i}.jpg" for i in range(12)]
        run_all(recipe_with(tmp_path, candidates(urls), shard_size=12, thread_count=8,
                            max_requests_per_host_per_second=8))  # fmt: skip
        times = sorted(t for t, p, _ in host.requests if p.startswith("/img/"))
    assert len(times) == 12
    # 12 requests at 8/s: the first goes at once, the last no earlier than 11/8 s later (small clock slack).
    assert times[-1] - times[0] >= 11 / 8 - 0.05


def test_a_host_override_lifts_the_limit_for_that_host_only(tmp_path):
    with ImageHost() as host:
        netloc = host.url.removeprefix("http://")
        urls = [f"{host.url}/img/{i}.jpg" for i in range(12)]
        run_all(recipe_with(tmp_path, candidates(urls), shard_size=12, thread_count=8,
                            max_requests_per_host_per_second=1, host_rate_overrides={netloc: 1000}))  # fmt: skip
        times = sorted(t for t, p, _ in host.requests if p.startswith("/img/"))
    assert times[-1] - times[0] < 2  # at the default 1/s these 12 requests would take 11 s


def test_rerun_skips_finished_shards(tmp_path):
    with ImageHost() as host:
        recipe = recipe_with(tmp_path, candidates([f"{host.url}/img/{i}.jpg" for i in range(20)]), shard_size=8)
        run_all(recipe)
        first = len(host.requests)
        run_all(recipe)
        assert len(host.requests) == first  # nothing fetched twice


def test_a_failed_shard_leaves_no_output_and_a_rerun_completes_it(tmp_path, monkeypatch):
    with ImageHost() as host:
        recipe = recipe_with(tmp_path, candidates([f"{host.url}/img/{i}.jpg" for i in range(10)]), shard_size=5)
        real = workers.run_in_worker
        calls = []

        def dies_once(handler, job, log, timeout=None):
            calls.append(job)
            if len(calls) == 2:
                raise workers.WorkerDied("simulated crash")
            return real(handler, job, log, timeout)

        monkeypatch.setattr(workers, "run_in_worker", dies_once)
        shards = plan(recipe)
        run(recipe, "download", shards[0])
        with pytest.raises(DownloadError, match="simulated crash"):
            run(recipe, "download", shards[1])
        out = tmp_path / "build" / "download"
        assert not (out / "00001.tar").exists() and not (out / "00001.done.json").exists()
        result = run_all(recipe)
    table = pq.read_table(result["manifest"])
    assert table.num_rows == 10 and len(set(table["sample_id"].to_pylist())) == 10
    assert set(table["status"].to_pylist()) == {"ok"}


def test_killing_the_download_process_mid_shard_loses_nothing(tmp_path):
    """SIGKILL the child running img2dataset half-way through a slow shard; the rerun completes it."""
    with ImageHost(slow_seconds=0.3) as host:
        urls = [f"{host.url}/slow/{i}.jpg" for i in range(12)]
        recipe = recipe_with(tmp_path, candidates(urls), shard_size=12, thread_count=1, timeout=5)
        shards = plan(recipe)
        errors = []

        def attempt():
            try:
                run(recipe, "download", shards[0])
            except DownloadError as err:
                errors.append(err)

        thread = threading.Thread(target=attempt)
        thread.start()
        deadline = time.monotonic() + 30
        while len(host.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        children = [p for p in psutil.Process().children(recursive=True) if "pipeline.core.workers" in p.cmdline()]
        assert children, "no shard worker process found"
        for child in children:
            os.kill(child.pid, signal.SIGKILL)
        thread.join(timeout=60)
        assert errors and "exited" in str(errors[0])
        out = tmp_path / "build" / "download"
        assert not (out / "00000.done.json").exists() and not (out / "00000.tar").exists()
        result = run_all(recipe)
    table = pq.read_table(result["manifest"])
    assert table.num_rows == 12 and len(set(table["sample_id"].to_pylist())) == 12
    assert set(table["status"].to_pylist()) == {"ok"}


def test_plan_is_stable_across_reruns(tmp_path):
    recipe = recipe_with(tmp_path, candidates([f"http://127.0.0.1:9/img/{i}.jpg" for i in range(20)]))
    plan_dir = tmp_path / "build" / "download" / "plan"
    first = plan(recipe)
    files = {p.name: p.read_bytes() for p in plan_dir.glob("*.parquet")}
    assert first == ["00000", "00001", "00002"] and len(files) == 3
    (tmp_path / "build" / "download" / "_plan.done.json").unlink()
    assert plan(recipe) == first
    assert {p.name: p.read_bytes() for p in plan_dir.glob("*.parquet")} == files
    ids = [pq.read_table(plan_dir / f"{s}.parquet")["sample_id"].to_pylist() for s in first]
    assert [len(i) for i in ids] == [8, 8, 4] and sum(ids, []) == [
        r["sample_id"] for r in candidates([f"http://127.0.0.1:9/img/{i}.jpg" for i in range(20)])
    ]  # crawl order, cut into exact shards


def test_a_download_worker_starts_without_torch_or_other_stages_libraries():
    """Its start-up is paid once per worker: torch (webdataset's DataLoader classes) and the dedup/embed stages'
    libraries are not imported; webdataset's writer, which the child uses, still works."""
    probe = (
        "import sys, io; import pipeline.stages.download.child, webdataset;"
        "webdataset.TarWriter(io.BytesIO()).write({'__key__': 'a', 'txt': 'b'});"
        "print(sorted(m for m in ('torch', 'datasketch', 'faiss', 'open_clip') if sys.modules.get(m)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_worker_children_serve_one_handler_and_answer_jobs_that_end_at_once(tmp_path):
    """A child that imported one handler (the download's, with torch marked absent) is never handed another; a
    job that ends as soon as it starts is answered (its two protocol lines arrive together)."""
    job, log = tmp_path / "job", tmp_path / "log"
    job.write_text("")
    assert workers.run_in_worker("os.path:exists", job, log, timeout=30)
    assert workers.run_in_worker("os.path:isfile", job, log, timeout=30)
    assert workers.run_in_worker("os.path:isfile", job, log, timeout=30)
    assert len(workers._idle["os.path:exists"]) == 1 and len(workers._idle["os.path:isfile"]) == 1
