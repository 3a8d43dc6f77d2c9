"""Pre-downloaded Parquet with image bytes: one row per Parquet row, metadata columns only at crawl time, rows
excluded by value, and a URL naming the cell whose bytes the download copies (raw binary or Hugging Face's Image
struct), only from the source's own files."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.net.addresses import AddressGuard
from pipeline.net.client import FetchLimits, FetchRefused, GuardedClient
from pipeline.net.urls import UnsafeURL
from pipeline.sources import parquet_images
from pipeline.sources.base import SourceError
from pipeline.stages.download.politeness import HostPolicy
from tests.http_host import jpeg_bytes

FIELDS = {"source_record_id": "uuid", "scientific_name": "species", "license": "license",
          "rights_holder": "photographer", "taxonomy": "taxonomy"}  # fmt: skip


@pytest.fixture
def files(tmp_path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    taxonomy = {"kingdom": "Plantae", "genus": "Iris", "species": "Iris tectorum"}
    hf_image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "uuid": ["u1", "u2", "u3", "u4"],
            "species": ["Iris tectorum", "Iris tectorum", "Iris tectorum", None],
            "license": ["cc-by-4.0", "cc0", None, "cc-by-nc-4.0"],
            "photographer": ["Ann", "Bo", "Cy", "Di"],
            "basisOfRecord": ["HumanObservation", "PreservedSpecimen", "HumanObservation", "HumanObservation"],
            "taxonomy": [taxonomy, taxonomy, taxonomy, None],
            "image": pa.array([{"bytes": jpeg_bytes(n), "path": f"{n}.jpg"} for n in range(4)], hf_image),
        }
    )
    pq.write_table(table, folder / "part-0.parquet", row_group_size=2)  # two row groups
    other = {name: pa.nulls(1, table.schema.field(name).type) for name in table.schema.names if name != "image"}
    other.update(uuid=pa.array(["v1"]), image=pa.array([jpeg_bytes(9)], pa.binary()))  # raw bytes, no struct
    pq.write_table(pa.table(other), folder / "part-1.parquet")
    return folder


def crawl(path: Path, ctx, **options) -> list[dict]:
    config = parquet_images.Config.from_dict({"path": str(path), **options})
    return list(parquet_images.read(config, ctx))


def test_rows_fields_and_exclusions(files, ctx):
    rows = crawl(files, ctx, fields=FIELDS, exclude={"basisOfRecord": ["PreservedSpecimen"]})
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    assert [r["source_record_id"] for r in rows] == ["u1", "u2", "u3", "u4", "v1"]
    assert rows[0]["status"] == "pending" and rows[0]["caption"] == "Iris tectorum."
    assert rows[0]["taxonomy"]["genus"] == "Iris" and rows[0]["license"] == "cc-by-4.0"
    assert rows[0]["url"] == (files / "part-0.parquet").as_uri() + "#row=0&column=image"
    assert "field basisOfRecord: 'PreservedSpecimen' is excluded by the recipe" in rows[1]["error"]
    assert "field license: no open license (empty)" in rows[2]["error"]
    assert "field caption" in rows[3]["error"]  # no name, no text: nothing to caption with
    assert "field license" in rows[4]["error"] and rows[4]["url"].endswith("part-1.parquet#row=0&column=image")


def test_the_download_copies_the_cell_bytes_from_the_sources_files_only(files, ctx, tmp_path):
    rows = crawl(files, ctx, fields=FIELDS)
    config = parquet_images.Config.from_dict({"path": str(files)})
    roots = tuple(Path(r) for r in parquet_images.local_roots(config))
    policy = HostPolicy("ua", "ua", GuardedClient(AddressGuard(), FetchLimits(2, 5, 1 << 20), {}), local_roots=roots)
    assert [policy.read_local(r["url"]) for r in rows] == [jpeg_bytes(n) for n in (0, 1, 2, 3, 9)]
    with pytest.raises(FetchRefused, match="the file has 4 rows"):
        policy.read_local((files / "part-0.parquet").as_uri() + "#row=4&column=image")
    with pytest.raises(FetchRefused, match="no image bytes in that cell"):
        policy.read_local((files / "part-0.parquet").as_uri() + "#row=0&column=species")
    outside = tmp_path / "outside.parquet"
    outside.write_bytes((files / "part-1.parquet").read_bytes())
    with pytest.raises(UnsafeURL, match="not a file of a local source"):
        policy.read_local(outside.as_uri() + "#row=0&column=image")


def test_missing_columns_and_unreadable_files_name_the_file(files, ctx, tmp_path):
    with pytest.raises(SourceError, match=r"part-0.parquet: missing configured column\(s\) \['photo'\]"):
        crawl(files / "part-0.parquet", ctx, image_column="photo")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    with pytest.raises(SourceError, match="junk.parquet: not a readable Parquet file"):
        crawl(tmp_path / "junk.parquet", ctx)
    config = parquet_images.Config.from_dict({"path": str(files / "*.parquet")})
    assert [Path(p).name for p in parquet_images.parts(config)] == ["part-0.parquet", "part-1.parquet"]
