"""Pre-downloaded webdataset shards: one row per sample, fields from members and the .json, herbarium sheets
excluded on request, and a URL whose byte range is exactly the image member; the download reads those bytes only
inside the source's own folders."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.net.addresses import AddressGuard
from pipeline.net.client import FetchLimits, FetchRefused, GuardedClient
from pipeline.net.urls import UnsafeURL
from pipeline.sources import webdataset_shards
from pipeline.sources.base import SourceError
from pipeline.stages.download.politeness import HostPolicy
from tests.http_host import jpeg_bytes

TREE_OF_LIFE = {"scientific_name": "sci.txt", "common_name": "com.txt", "taxonomy": "taxonomic.txt",
                "license": "json:license", "rights_holder": "json:owner", "page_url": "json:source.page"}  # fmt: skip


def write_shard(path: Path, samples: list[dict[str, bytes | str | dict]]) -> Path:
    """A plain tar in webdataset layout: ``<key>.<ext>`` members, each sample's members together."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample["__key__"]
            for extension, value in sample.items():
                if extension == "__key__":
                    continue
                data = json.dumps(value).encode() if isinstance(value, (dict, list)) else value
                data = data.encode() if isinstance(data, str) else data
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def tree_of_life_sample(key: str, n: int, basis: str = "HumanObservation", **extra) -> dict:
    return {"__key__": key, "jpg": jpeg_bytes(n), "sci.txt": "Iris tectorum", "com.txt": "Wall iris",
            "taxonomic.txt": "Plantae Tracheophyta Liliopsida Asparagales Iridaceae Iris tectorum",
            "json": {"license": "cc-by-4.0", "owner": f"Photographer {n}", "basisOfRecord": basis,
                     "source": {"page": f"https://example.org/obs/{n}"}}, **extra}  # fmt: skip


@pytest.fixture
def shards(tmp_path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    write_shard(
        folder / "000000.tar", [tree_of_life_sample("a1", 1), tree_of_life_sample("a2", 2, "PreservedSpecimen")]
    )
    write_shard(
        folder / "000001.tar",
        [
            {"__key__": "b1", "txt": "no image here", "json": {"license": "cc0"}},
            {"__key__": "b2", "png": jpeg_bytes(3), "txt": "  a caption  ", "json": ["not", "an", "object"]},
            {"__key__": "b3", "webp": jpeg_bytes(4), "txt": "licensed by default"},
        ],
    )
    (folder / "notes.md").write_text("not a shard")
    return folder


def crawl(folder: Path, ctx, **options) -> list[dict]:
    config = webdataset_shards.Config.from_dict({"path": str(folder), **options})
    return list(webdataset_shards.read(config, ctx))


def test_tree_of_life_shards_become_rows_with_their_members_fields(shards, ctx):
    rows = crawl(shards, ctx, fields=TREE_OF_LIFE, exclude={"json:basisOfRecord": ["PreservedSpecimen"]})
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    assert [(Path(r["input_file"]).name, r["input_row"], r["source_record_id"]) for r in rows] == [
        ("000000.tar", 1, "a1"), ("000000.tar", 2, "a2"), ("000001.tar", 1, "b1"), ("000001.tar", 2, "b2"),
        ("000001.tar", 3, "b3"),
    ]  # fmt: skip
    first = rows[0]
    assert first["status"] == "pending"
    assert first["caption"] == "Iris tectorum, commonly known as Wall iris."
    assert first["taxonomy"]["family"] == "Iridaceae" and first["taxonomy"]["species"] == "Iris tectorum"
    assert (first["license"], first["rights_holder"]) == ("cc-by-4.0", "Photographer 1")
    assert first["page_url"] == "https://example.org/obs/1"
    assert first["url"].startswith((shards / "000000.tar").as_uri() + "#offset=")
    assert "field json:basisOfRecord: sample 'a2': 'PreservedSpecimen' is excluded" in rows[1]["error"]
    assert rows[2]["error"].endswith("field (sample): sample 'b1' has no image member (jpg, jpeg, png, webp)")
    assert "field json: sample 'b2': expected a JSON object, found list" in rows[3]["error"]
    assert "field license: no open license (empty)" in rows[4]["error"]  # no license and no default_license


def test_the_url_byte_range_is_the_image_member_and_the_download_reads_only_it(shards, ctx, tmp_path):
    rows = crawl(shards, ctx, fields=TREE_OF_LIFE, default_license="cc0-1.0")
    config = webdataset_shards.Config.from_dict({"path": str(shards)})
    client = GuardedClient(AddressGuard(), FetchLimits(timeout=2, max_seconds=5, max_bytes=1 << 20), {})
    roots = tuple(Path(r) for r in webdataset_shards.local_roots(config))
    policy = HostPolicy("ua", "ua", client, local_roots=roots)
    assert policy.read_local(rows[0]["url"]) == jpeg_bytes(1)
    assert policy.read_local(rows[4]["url"]) == jpeg_bytes(4) and rows[4]["status"] == "pending"
    small = HostPolicy("ua", "ua", GuardedClient(AddressGuard(), FetchLimits(2, 5, 100), {}), local_roots=roots)
    with pytest.raises(FetchRefused, match="larger than 100 bytes"):
        small.read_local(rows[0]["url"])
    with pytest.raises(UnsafeURL, match=r"a file fragment is #offset=<byte>&size=<bytes> or #row"):
        policy.read_local(rows[0]["url"].split("#")[0] + "#offset=x")
    elsewhere = write_shard(tmp_path / "elsewhere.tar", [tree_of_life_sample("z", 9)])
    with pytest.raises(UnsafeURL, match="not a file of a local source of this recipe"):
        policy.read_local(f"{elsewhere.as_uri()}#offset=512&size=10")


def test_shards_are_parts_and_broken_ones_name_the_file(shards, ctx, tmp_path):
    config = webdataset_shards.Config.from_dict({"path": str(shards / "*.tar")})
    assert [Path(p).name for p in webdataset_shards.parts(config)] == ["000000.tar", "000001.tar"]
    (tmp_path / "broken.tar").write_bytes(b"this is not a tar archive at all" * 40)
    with pytest.raises(SourceError, match=r"broken.tar: not a readable uncompressed tar shard"):
        crawl(tmp_path / "broken.tar", ctx)
    with pytest.raises(SourceError, match="no .tar shards there"):
        crawl(tmp_path / "nothing-*.tar", ctx)
    with pytest.raises(ValueError, match=r"fields \['caption'\] are not filled from samples"):
        crawl(shards, ctx, fields={"caption": "txt"})
