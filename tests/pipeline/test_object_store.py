"""Builds whose inputs and outputs live on an object store: moto's S3 server on loopback, reached through s3fs.

The same fsspec code paths serve ``gs://`` and ``hf://``. The server runs as a subprocess on 127.0.0.1; s3fs is
pointed at it through fsspec's config, with fake credentials, and every test runs with a guard that fails any
connection or name lookup outside loopback, so a misconfigured endpoint can never reach AWS.
"""

from __future__ import annotations

import dataclasses
import gzip
import ipaddress
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline import runner
from pipeline.core.config import DownloadConfig, EmbedConfig, Recipe, SourceSpec
from pipeline.core.harness import MARKER_SUFFIX, done_units, read_marker
from pipeline.core.io import read_parquet
from pipeline.query import cli, sql
from pipeline.sources.base import CrawlContext, SourceError
from pipeline.sources.registry import read_source
from tests.conftest import REPO, free_port, stop
from tests.http_host import ImageHost
from tests.sources.source_fixtures import INAT_TAXA, OBSERVATIONS, OBSERVERS, PHOTOS, TAXA, tsv, write_dwca

pytestmark = pytest.mark.server

TINY = dict(model="DALIP-Tiny", model_config=str(REPO / "dalip" / "model_configs" / "DALIP-Tiny.json"),
            random_init=True, pretrained=None, seed=0, batch_size=4, workers=0)  # fmt: skip
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


# --- the server, the client and the network guard ---------------------------------------------------------------


def _is_loopback(host: Any) -> bool:
    if host in (None, "", "localhost", b"localhost"):
        return True
    try:
        address = ipaddress.ip_address(host.decode() if isinstance(host, bytes) else str(host).split("%")[0])
    except ValueError:
        return False  # a host name other than localhost: resolving it would already ask a DNS server
    return any(address in net for net in LOOPBACK)


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse every connection and name lookup outside 127.0.0.0/8 and ::1 (Unix sockets pass).

    Refusals raise, and are also recorded: a client that swallows the error still fails the test at teardown.
    """
    blocked: list[str] = []
    connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family != socket.AF_UNIX and not _is_loopback(address[0]):
            blocked.append(f"connect {address!r}")
            raise RuntimeError(f"test tried to connect outside loopback: {address!r}")

    def guarded_connect(sock, address):
        check(sock, address)
        return connect(sock, address)

    def guarded_connect_ex(sock, address):
        check(sock, address)
        return connect_ex(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _is_loopback(host):
            blocked.append(f"getaddrinfo {host!r}")
            raise RuntimeError(f"test tried to resolve a non-loopback host: {host!r}")
        return getaddrinfo(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", guarded_connect)
        mp.setattr(socket.socket, "connect_ex", guarded_connect_ex)
        mp.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
        yield blocked


@contextmanager
def moto_server() -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1; yields its endpoint URL, stops it at the end."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start on {endpoint} (exit code {proc.poll()})") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        stop(proc, timeout=10)


@dataclass
class S3:
    endpoint: str
    fs: s3fs.S3FileSystem

    def bucket(self) -> str:
        """A fresh bucket: ``s3://<name>``."""
        name = f"plantmix-{uuid.uuid4().hex[:12]}"
        self.fs.mkdir(name)
        return f"s3://{name}"

    def upload(self, local: Path, url: str) -> str:
        self.fs.put(str(local), url, recursive=local.is_dir())
        return url

    def files(self, url: str) -> list[str]:
        """Every file under ``url``, relative to it."""
        root = url.removeprefix("s3://").rstrip("/")
        return sorted(p.removeprefix(root + "/") for p in self.fs.find(root, refresh=True))


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    """The S3 server, fake credentials, s3fs pointed at the server; the network guard for the whole module."""
    with loopback_only() as blocked, moto_server() as endpoint, pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        credentials = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-metadata probe (169.254.169.254)
            "AWS_CONFIG_FILE": os.devnull,  # a developer's ~/.aws must not choose a profile or an endpoint
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "FSSPEC_S3_ENDPOINT_URL": endpoint,  # for child processes: fsspec reads it when it is imported
        }
        for name, value in credentials.items():
            mp.setenv(name, value)
        # This process imported fsspec already, so its environment variables were read: set the config itself.
        mp.setitem(fsspec.config.conf, "s3", {"endpoint_url": endpoint})
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            yield S3(endpoint, fsspec.filesystem("s3"))
        finally:
            s3fs.S3FileSystem.clear_instance_cache()
    assert not blocked, f"connections outside loopback were attempted: {blocked}"


def test_the_guard_refuses_addresses_outside_loopback(s3):
    with loopback_only() as blocked:
        with socket.socket() as sock, pytest.raises(RuntimeError, match="outside loopback"):
            sock.connect(("192.0.2.1", 443))  # TEST-NET-1
        with pytest.raises(RuntimeError, match="non-loopback host"):
            socket.getaddrinfo("s3.amazonaws.com", 443)
        with socket.socket() as sock:  # the S3 server itself is reachable
            assert sock.connect_ex(("127.0.0.1", int(s3.endpoint.rsplit(":", 1)[1]))) == 0
    assert blocked == ["connect ('192.0.2.1', 443)", "getaddrinfo 's3.amazonaws.com'"]


# --- a build on S3 -----------------------------------------------------------------------------------------------


def write_exports(folder: Path, host: str) -> Path:
    """A Parquet pool (6 images, a missing one, a rejected URL) and a folder with one CSV part (2 images)."""
    folder.mkdir(parents=True)
    urls = [f"{host}/img/{i}.jpg" for i in range(6)] + [f"{host}/missing.jpg", "javascript:alert(1)"]
    pq.write_table(pa.table({"url": urls, "caption": [f"a photo of thing {i}" for i in range(8)]}),
                   folder / "pool.parquet")  # fmt: skip
    (folder / "csv").mkdir()
    (folder / "csv" / "part-00000.csv").write_text(f"url,caption\n{host}/img/10.jpg,a leaf\n{host}/img/11.jpg,a tree\n")
    (folder / "csv" / "README.txt").write_text("not a pool file")
    return folder


def recipe_for(exports: str, output_dir: str) -> Recipe:
    return Recipe(
        name="s3",
        output_dir=output_dir,
        sources=[
            SourceSpec("web", "url_caption_pool", {"path": f"{exports}/pool.parquet"}),
            SourceSpec("csv", "url_caption_pool", {"path": f"{exports}/csv/", "format": "csv"}),
        ],
        download=DownloadConfig(
            image_size=64,
            shard_size=5,
            thread_count=4,
            timeout=2,
            retries=0,
            max_requests_per_host_per_second=0,
            allow_local_hosts=["127.0.0.1"],  # the test's image host
        ),
        embed=EmbedConfig(**TINY),
    )


@dataclass
class LocalDisk:
    """What a run left on the local disk: its working directory and its system temp folder."""

    cwd: list[str]
    temp: list[str]

    @property
    def scratch(self) -> list[str]:
        """The build's own leftovers in the temp folder (torch and wandb leave theirs; DuckDB's spill space stays)."""
        return [name for name in self.temp if name.startswith("plantmix-") and name != "plantmix-duckdb"]


def confined_run(recipe: Recipe, work: Path) -> tuple[dict[str, Any], LocalDisk]:
    """``run_build`` with the working directory and the system temp folder inside ``work``; what is left there."""
    cwd, temp = work / "cwd", work / "temp"
    cwd.mkdir(parents=True, exist_ok=True)
    temp.mkdir(parents=True, exist_ok=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        mp.setattr(tempfile, "tempdir", str(temp))
        result = runner.run_build(recipe)
    return result, LocalDisk(sorted(os.listdir(cwd)), sorted(os.listdir(temp)))


@dataclass
class S3Build:
    recipe: Recipe
    result: dict[str, Any]
    left: LocalDisk
    host: ImageHost
    exports: str
    work: Path


@pytest.fixture(scope="module")
def s3_build(s3, tmp_path_factory) -> Iterator[S3Build]:
    """Exports uploaded to ``s3://<bucket>/exports``, built into ``s3://<bucket>/builds/b`` (image host kept up)."""
    work = tmp_path_factory.mktemp("s3-build")
    with ImageHost() as host:
        bucket = s3.bucket()
        exports = s3.upload(write_exports(work / "exports", host.url), f"{bucket}/exports")
        recipe = recipe_for(exports, f"{bucket}/builds/b")
        result, left = confined_run(recipe, work / "run")
        yield S3Build(recipe, result, left, host, exports, work)


def test_build_reads_and_writes_only_s3(s3, s3_build):
    root = s3_build.recipe.output_dir
    assert s3_build.result["manifest"] == f"{root}/manifest.parquet"
    manifest = read_parquet(f"{root}/manifest.parquet").to_pylist()
    by_url = {r["url"].rsplit("/", 1)[-1]: r for r in manifest}
    assert len(manifest) == 10  # one row per candidate, rejected ones included
    assert {k: by_url[k]["status"] for k in ("0.jpg", "10.jpg", "missing.jpg", "javascript:alert(1)")} == {
        "0.jpg": "ok", "10.jpg": "ok", "missing.jpg": "failed_download", "javascript:alert(1)": "rejected"}  # fmt: skip
    assert sum(r["keep"] for r in manifest) == 8 and all(r["clip_score"] is not None for r in manifest if r["keep"])
    assert by_url["10.jpg"]["input_file"] == f"{s3_build.exports}/csv/part-00000.csv"  # named as on the store

    files = s3.files(root)
    markers = {f for f in files if f.endswith(MARKER_SUFFIX)}
    assert markers >= {
        "crawl/csv.done.json", "crawl/web.done.json",
        "download/00000.done.json", "download/00001.done.json", "download/_plan.done.json",
        "embed/00000.done.json", "embed/00001.done.json", "judge/_reduce.done.json",
    }  # fmt: skip
    assert {"download/00000.tar", "download/00001.tar", "summary.json", "build.json"} <= set(files)
    assert {r["shard"] for r in manifest if r["keep"]} == {"download/00000.tar", "download/00001.tar"}
    assert not any("_tmp" in f or f.endswith(".tmp") for f in files)  # no scratch folder on the store

    assert s3_build.left.cwd == []  # no local build folder (a URL taken for a path would make ./s3:/...)
    assert s3_build.left.scratch == []  # the stages' scratch folders and upload files are gone


def test_rerun_on_s3_skips_all_work(s3, s3_build):
    root = s3_build.recipe.output_dir
    markers = {f: s3.fs.cat(f"{root}/{f}") for f in s3.files(root) if f.endswith(MARKER_SUFFIX)}
    requests = len(s3_build.host.requests)
    result, left = confined_run(s3_build.recipe, s3_build.work / "rerun")
    assert {f: s3.fs.cat(f"{root}/{f}") for f in markers} == markers
    assert len(s3_build.host.requests) == requests  # not one image fetched again
    assert result["summary"] == s3_build.result["summary"]
    assert left.cwd == [] and left.scratch == []


def test_sql_cli_and_trainer_read_the_build_on_s3(s3, s3_build, capsys):
    root = s3_build.recipe.output_dir
    con = sql.connect(root)
    assert con.sql("SELECT count(*) FROM samples").fetchall()[0][0] == 10
    assert con.sql("SELECT count(*) FROM kept").fetchall()[0][0] == 8
    s3a = sql.connect(root.replace("s3://", "s3a://", 1))  # DuckDB serves every protocol of the registered s3fs
    assert s3a.sql("SELECT count(*) FROM kept").fetchall()[0][0] == 8
    assert cli.main(["sql", "SELECT count(*) AS n FROM kept", "--build", root, "--format", "csv"]) == 0
    assert capsys.readouterr().out.split() == ["n", "8"]
    assert cli.main(["summary", "--build", root, "--json"]) == 0
    assert '"kept": 8' in capsys.readouterr().out
    assert cli.main(["sql", "SELECT 1", "--build", f"{root}/nothing-here"]) == 2
    assert "no such build folder or manifest file" in capsys.readouterr().err

    from dalip.data import read_manifest  # torch: only where the trainer's reader is tested

    selection = read_manifest(f"{root}/manifest.parquet")
    assert selection.shards == [f"{root}/download/00000.tar", f"{root}/download/00001.tar"]
    assert selection.num_samples == 8


def test_local_and_s3_builds_of_the_same_inputs_agree(s3_build, tmp_path):
    local = dataclasses.replace(s3_build.recipe, output_dir=str(tmp_path / "build"))  # inputs still on S3
    result, _ = confined_run(local, tmp_path / "run")
    on_s3 = read_parquet(s3_build.result["manifest"])
    on_disk = pq.read_table(result["manifest"])
    assert on_disk.schema == on_s3.schema and on_disk.num_rows == on_s3.num_rows
    assert on_disk.drop_columns(["clip_score"]).to_pylist() == on_s3.drop_columns(["clip_score"]).to_pylist()
    scores = [np.array(t["clip_score"].to_pylist(), dtype=float) for t in (on_disk, on_s3)]
    np.testing.assert_allclose(*scores, atol=1e-5)


def test_markers_written_by_another_process_are_seen(s3):
    """A listing cached by this process must not hide a unit another worker finished since."""
    stage = f"{s3.bucket()}/builds/x/download"
    s3.fs.pipe(f"{stage}/00000{MARKER_SUFFIX}", b'{"fingerprint": "a", "stats": {}}')
    assert done_units(stage) == ["00000"]  # lists the folder
    other = s3fs.S3FileSystem(endpoint_url=s3.endpoint, skip_instance_cache=True)  # another worker's client
    other.pipe(f"{stage}/00001{MARKER_SUFFIX}", b'{"fingerprint": "b", "stats": {}}')
    assert read_marker(stage, "00001") == {"fingerprint": "b", "stats": {}}
    assert done_units(stage) == ["00000", "00001"]


# --- the source adapters read exports on S3 ----------------------------------------------------------------------


def write_inaturalist(folder: Path) -> Path:
    """A small iNaturalist export, gzipped tables and a common-names CSV, as the adapter tests use."""
    folder.mkdir(parents=True)
    photos = [
        ["u1", "101", "o1", "7", "jpeg", "CC-BY-NC", "9", "9", "0"],
        ["u2", "102", "o2", "8", "jpg", "CC0", "9", "9", "0"],
    ]
    observations = [
        ["o1", "7", "0", "0", "1", "13", "research", "2023-05-01"],
        ["o2", "8", "0", "0", "1", "14", "", ""],
    ]
    tsv(folder / "photos.csv", PHOTOS, photos)
    tsv(folder / "observations.csv", OBSERVATIONS, observations)
    tsv(folder / "taxa.csv", TAXA, INAT_TAXA)
    tsv(folder / "observers.csv", OBSERVERS, [["7", "jdoe", "Jane Doe"], ["8", "kiwi", ""]])
    (folder / "common_names.csv").write_text("taxon_id,common_name\n13,Wall iris\n")
    for name in ("observations.csv", "taxa.csv"):
        (folder / f"{name}.gz").write_bytes(gzip.compress((folder / name).read_bytes()))
        (folder / name).unlink()
    return folder


def write_pools(folder: Path) -> Path:
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"url": ["https://h/1.jpg", "ftp://h/2.jpg"], "caption": ["a", "b"]}),
                   folder / "pool.parquet")  # fmt: skip
    (folder / "parts").mkdir()
    for i in (1, 0):
        (folder / "parts" / f"part-{i}.jsonl").write_text(f'{{"url": "https://h/{i}.jpg", "caption": "c {i}"}}\n')
    (folder / "pool.tsv").write_text("url\tcaption\nhttps://h/t.jpg\ta tab\nhttps://h/u.jpg\n")
    return folder


SOURCES = {  # id -> (adapter, options with {root} for the exports folder)
    "pool-file": ("url_caption_pool", {"path": "{root}/pool/pool.parquet"}),
    "pool-folder": ("url_caption_pool", {"path": "{root}/pool/parts", "format": "jsonl"}),
    "pool-glob": ("url_caption_pool", {"path": "{root}/pool/parts/part-*.jsonl"}),
    "pool-tsv": ("url_caption_pool", {"path": "{root}/pool/pool.tsv"}),
    "inaturalist-gz": ("inaturalist", {"directory": "{root}/inat", "common_names": "common_names.csv"}),
    "gbif-zip": ("gbif_dwca", {"path": "{root}/gbif.zip"}),
    "gbif-folder": ("gbif_dwca", {"path": "{root}/gbif"}),
}


@pytest.fixture(scope="module")
def exports(s3, tmp_path_factory) -> tuple[str, str]:
    """The same export files on the local disk and on S3: ``(local root, s3 root)``."""
    local = tmp_path_factory.mktemp("exports")
    write_pools(local / "pool")
    write_inaturalist(local / "inat")
    write_dwca(local / "gbif.zip")
    (local / "gbif").mkdir()
    with zipfile.ZipFile(local / "gbif.zip") as archive:
        archive.extractall(local / "gbif")
    return str(local), s3.upload(local, f"{s3.bucket()}/exports")


@pytest.mark.parametrize(("adapter", "options"), SOURCES.values(), ids=SOURCES.keys())
def test_adapters_read_the_same_rows_from_s3(exports, adapter, options):
    local, remote = exports

    def crawl(root: str) -> list[dict]:
        resolved = {k: v.format(root=root) for k, v in options.items()}
        return list(read_source(adapter, {"name": "src", **resolved}, CrawlContext()))

    from_disk, from_s3 = crawl(local), crawl(remote)
    assert from_s3 and all(r["input_file"].startswith(remote) for r in from_s3)
    for row in from_disk:  # the file is named where it was read; nothing else differs
        row["input_file"] = row["input_file"].replace(local, remote)
        row["error"] = row["error"] and row["error"].replace(local, remote)
    assert from_s3 == from_disk


@pytest.mark.parametrize(
    ("adapter", "options", "message"),
    [
        ("url_caption_pool", {"path": "{root}/pool/none.parquet"}, r"{root}/pool/none.parquet: not a readable Parquet"),
        ("url_caption_pool", {"path": "{root}/pool/none-*.parquet"}, r"{root}/pool/none-\*.parquet: no parquet pool"),
        ("url_caption_pool", {"path": "{root}/pool/pool.tsv", "url_col": "link"},
         r"{root}/pool/pool.tsv: missing required column\(s\) \['link'\]"),
        ("url_caption_pool", {"path": "{root}/pool/none.csv"}, r"{root}/pool/none.csv: file not found"),
        ("inaturalist", {"directory": "{root}/pool"}, r"{root}/pool: missing photos.csv"),
        ("gbif_dwca", {"path": "{root}/none.zip"}, r"{root}/none.zip: Darwin Core Archive not found"),
        ("gbif_dwca", {"path": "{root}/pool/pool.parquet"}, r"{root}/pool/pool.parquet: not a readable zip"),
    ],
)  # fmt: skip
def test_errors_name_the_file_by_its_url(exports, adapter, options, message):
    _, remote = exports
    resolved = {k: v.format(root=remote) for k, v in options.items()}
    with pytest.raises(SourceError, match=message.format(root=remote)):
        list(read_source(adapter, {"name": "src", **resolved}, CrawlContext()))
