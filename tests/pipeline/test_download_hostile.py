"""The download stage (img2dataset in its worker child) under the fetch policy, against a hostile loopback host.

Only the entry host's port is allowlisted; a second loopback host stands for the internal network and counts
the requests that reach it (none may).
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import psutil
import pyarrow.parquet as pq

from pipeline import runner
from pipeline.core.config import DownloadConfig, Recipe, SourceSpec
from pipeline.stages.download.quarantine import row_being_decoded
from tests.hostile_host import WIKI_PATH, HostileHost
from tests.http_host import jpeg_bytes
from tests.pipeline.helpers import candidates, recipe_with
from tests.pipeline.helpers import run_after_crawl as run_all


def test_hostile_urls_end_with_their_own_status_and_reach_nothing_internal(tmp_path):
    with HostileHost() as entry, HostileHost() as internal:
        urls = {
            "redirect-internal": f"{entry.url}/redirect?to={internal.url}/latest/meta-data/",
            "redirect-metadata": f"{entry.url}/redirect?to=http://169.254.169.254/latest/meta-data/",
            "direct-internal": f"{internal.url}/img/1.jpg",
            "file": "file:///etc/passwd",
            "data": "data:image/jpeg;base64,/9j/4AAQSkZJRg==",
            "ftp": "ftp://example.org/a.jpg",
            "rewritten-to-file": "http://mirror.example/passwd",
            "big": f"{entry.url}/big",
            "bomb": f"{entry.url}/bomb.png",
            "wiki": entry.url + WIKI_PATH,  # an IRI: a space and a non-ASCII letter, sent percent-encoded
            "ok": f"{entry.url}/img/2.jpg",
        }
        rows = candidates(list(urls.values()))
        recipe = recipe_with(
            tmp_path, rows, allow_local_hosts=[f"127.0.0.1:{entry.port}"], max_response_bytes=1_000_000,
            max_image_area=50_000_000, url_rewrite={"http://mirror.example/": "file:///etc/"},
        )  # fmt: skip
        result = run_all(recipe)
    manifest = pq.read_table(result["manifest"], columns=["url", "status", "error"]).to_pylist()
    got = {name: row["status"] for name, row in zip(urls, manifest, strict=True)}
    assert got == {
        "redirect-internal": "blocked", "redirect-metadata": "blocked", "direct-internal": "blocked",
        "file": "blocked", "data": "blocked", "ftp": "blocked", "rewritten-to-file": "blocked",
        "big": "too_large", "bomb": "too_large", "wiki": "ok", "ok": "ok",
    }, manifest  # fmt: skip
    assert sum(internal.hits.values()) == 0  # not even its robots.txt
    assert entry.hits[WIKI_PATH] == 1
    assert result["summary"]["candidates"] == len(urls) == sum(result["summary"]["by_status"].values())


class OomKiller:
    """Plays the kernel's OOM killer: SIGKILLs the download worker whenever it is decoding row ``row_key``."""

    def __init__(self, build: Path, row_key: int) -> None:
        self.build, self.row_key, self.kills = build, row_key, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.watch, daemon=True)

    def watch(self) -> None:
        armed = True  # after a kill, wait for a new decode of the row (the journal still names it)
        while not self.stop.is_set():
            try:
                decoding = [row_being_decoded(journal) for journal in self.build.rglob("*.decoding")]
            except OSError:  # a temporary folder vanished while being listed
                decoding = []
            if armed and self.row_key in decoding:
                for child in psutil.Process().children(recursive=True):
                    if "pipeline.core.workers" in " ".join(child.cmdline()):
                        child.kill()
                        child.wait(10)
                self.kills += 1
                armed = False
            elif self.row_key not in decoding:
                armed = True
            time.sleep(0.005)

    def __enter__(self) -> OomKiller:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def test_a_row_that_kills_its_worker_is_quarantined_and_the_build_finishes(tmp_path):
    with HostileHost() as host:
        urls = [f"{host.url}/img/1.jpg", f"{host.url}/huge.png", f"{host.url}/img/2.jpg", f"{host.url}/img/3.jpg"]
        recipe = recipe_with(tmp_path, candidates(urls), max_image_area=math.inf, thread_count=1)
        with OomKiller(tmp_path / "build", row_key=1) as killer:
            result = run_all(recipe)
    manifest = pq.read_table(result["manifest"], columns=["status", "error"]).to_pylist()
    assert [r["status"] for r in manifest] == ["ok", "quarantined", "ok", "ok"], manifest
    assert "died 2 times while decoding" in manifest[1]["error"]
    assert killer.kills == 2 and host.hits["/huge.png"] == 2  # fetched for the two deaths, then never again


def test_a_local_folder_source_reads_its_own_files_and_nothing_else(tmp_path):
    """file:// is read only inside the recipe's local-folder directories; a symlink out of one is blocked."""
    photos, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    photos.mkdir()
    elsewhere.mkdir()
    for name in ("a", "b"):
        (photos / f"{name}.jpg").write_bytes(jpeg_bytes(3))
        (photos / f"{name}.txt").write_text(f"a photo of plant {name}")
    (elsewhere / "secret.jpg").write_bytes(jpeg_bytes(4))
    (photos / "link.jpg").symlink_to(elsewhere / "secret.jpg")  # crawled as a file of the folder
    (photos / "link.txt").write_text("a linked photo")
    source = SourceSpec("photos", "local_folder", {"directory": str(photos), "default_license": "cc0-1.0",
                                                   "follow_symlinks": True})  # fmt: skip
    outside = {(photos / "b.jpg").as_uri(): (elsewhere / "secret.jpg").as_uri()}
    download = DownloadConfig(image_size=64, shard_size=8, thread_count=2, retries=0, url_rewrite=outside)
    recipe = Recipe(name="t", output_dir=str(tmp_path / "build"), sources=[source], download=download)
    result = runner.run_build(recipe)
    rows = {Path(url2pathname(urlsplit(r["url"]).path)).name: r for r in
            pq.read_table(result["manifest"], columns=["url", "status", "error"]).to_pylist()}  # fmt: skip
    assert rows["a.jpg"]["status"] == "ok"
    assert rows["b.jpg"]["status"] == "blocked"  # rewritten to a file outside the folder
    assert rows["link.jpg"]["status"] == "blocked", rows["link.jpg"]  # resolves outside the folder


def test_a_pre_downloaded_source_copies_its_images_out_of_its_shards(tmp_path):
    """A webdataset source's rows are downloaded from byte ranges of its own shards (no network), resized like
    fetched images; a range rewritten into another file is blocked."""
    import io
    import tarfile

    shards = tmp_path / "shards"
    shards.mkdir()
    with tarfile.open(shards / "000000.tar", "w") as tar:
        for key, n in (("k1", 5), ("k2", 6)):
            for extension, data in (("jpg", jpeg_bytes(n, size=80)), ("txt", f"a photo of plant {key}".encode())):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    (tmp_path / "other.tar").write_bytes((shards / "000000.tar").read_bytes())
    source = SourceSpec("wds", "webdataset_shards", {"path": str(shards), "default_license": "cc0-1.0"})
    with tarfile.open(shards / "000000.tar") as tar:
        k2 = f"#offset={tar.getmember('k2.jpg').offset_data}"
    outside = {(shards / "000000.tar").as_uri() + k2: (tmp_path / "other.tar").as_uri() + k2}  # k2's image
    download = DownloadConfig(image_size=64, shard_size=8, thread_count=2, retries=0, url_rewrite=outside)
    recipe = Recipe(name="t", output_dir=str(tmp_path / "build"), sources=[source], download=download)
    result = runner.run_build(recipe)
    rows = pq.read_table(result["manifest"], columns=["source_record_id", "status", "error", "width"]).to_pylist()
    assert [(r["source_record_id"], r["status"]) for r in rows] == [("k1", "ok"), ("k2", "blocked")], rows
    assert rows[0]["width"] == 64
