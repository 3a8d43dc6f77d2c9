import json

import pytest
from PIL import Image

from pipeline.sources.base import SourceError
from pipeline.sources.registry import read_source


def crawl(folder, ctx, **options):
    return list(read_source("local_folder", {"directory": str(folder), **options}, ctx))


def test_local_folder_rows(tmp_path, ctx):
    for name in ("a", "b", "c", "d"):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "a.txt").write_text("my iris\n")
    (tmp_path / "a.json").write_text(
        json.dumps(
            {"license": "CC0", "scientific_name": "Iris tectorum", "common_name": "Wall iris", "rights_holder": "Me"}
        )
    )
    (tmp_path / "c.txt").write_bytes(b"caf\xe9")
    (tmp_path / "d.txt").write_text("x")
    (tmp_path / "d.json").write_text(json.dumps({"licence": "CC0"}))
    rows = crawl(tmp_path, ctx, default_license=None)
    assert [r["input_row"] for r in rows] == [1, 2, 3, 4]
    a = rows[0]
    assert a["url"] == (tmp_path / "a.jpg").resolve().as_uri() and a["url"].startswith("file:///")
    assert (a["status"], a["caption"], a["original_text"], a["license"]) == (
        "pending",
        "Iris tectorum, commonly known as Wall iris.",
        "my iris",
        "cc0-1.0",
    )
    assert rows[1]["status"] == "rejected" and rows[1]["error"].endswith(
        "b.jpg row 2, field b.txt: missing caption sidecar"
    )
    assert "field c.txt: caption sidecar is not UTF-8" in rows[2]["error"]
    assert "field d.json: licence: unknown sidecar key(s)" in rows[3]["error"]


def test_default_license_and_empty_folder(tmp_path, ctx):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a black square")
    (row,) = crawl(tmp_path, ctx, default_license="cc-by-4.0", domain="general")
    assert (row["status"], row["license"], row["caption_kind"]) == ("pending", "cc-by-4.0", "original")
    (tmp_path / "a.png").unlink()
    with pytest.raises(SourceError, match="no image files"):
        crawl(tmp_path, ctx)
