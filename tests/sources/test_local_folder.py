import json
import os

import pytest
from PIL import Image

from pipeline.sources.base import ConfigError, SourceError
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


def image_with_caption(folder, name, caption="an iris"):
    Image.new("RGB", (8, 8)).save(folder / f"{name}.jpg")
    (folder / f"{name}.txt").write_text(caption)


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        ({"scientific_name": ["Iris"]}, "field a.json: scientific_name: expected a string, found list"),
        ({"license": 4}, "field a.json: license: expected a string, found int"),
        ({"taxonomy": ["Plantae"]}, "field a.json: taxonomy: expected an object of rank -> name, found list"),
        ({"taxonomy": {"kingdom": 1}}, "field a.json: taxonomy: rank kingdom: expected a string, found int"),
        ({"taxonomy": {"realm": "x"}}, "field a.json: taxonomy: unknown rank(s) ['realm']"),
        ([{"license": "CC0"}], "field a.json: JSON sidecar must be an object, found list"),
    ],
)
def test_wrong_typed_sidecar_is_a_rejected_row_naming_file_and_key(tmp_path, ctx, sidecar, expected):
    image_with_caption(tmp_path, "a")
    (tmp_path / "a.json").write_text(json.dumps(sidecar))
    (row,) = crawl(tmp_path, ctx, default_license="CC0")
    assert row["status"] == "rejected"
    assert row["error"].startswith(f"{tmp_path / 'a.jpg'} row 1, {expected}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_unreadable_caption_is_a_rejected_row(tmp_path, ctx):
    image_with_caption(tmp_path, "a")
    (tmp_path / "a.txt").chmod(0)
    (row,) = crawl(tmp_path, ctx, default_license="CC0")
    assert row["error"] == f"{tmp_path / 'a.jpg'} row 1, field a.txt: cannot read caption sidecar (Permission denied)"


def test_caption_that_cannot_be_read_is_a_rejected_row(tmp_path, ctx):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    (tmp_path / "a.txt").mkdir()  # read_text raises IsADirectoryError (an OSError), even for root
    image_with_caption(tmp_path, "b")
    rows = crawl(tmp_path, ctx, default_license="CC0")
    assert rows[0]["error"] == f"{tmp_path / 'a.jpg'} row 1, field a.txt: cannot read caption sidecar (Is a directory)"
    assert rows[1]["status"] == "pending"


def test_symlinks_are_not_followed_unless_asked(tmp_path, ctx, caplog):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("a private file")
    image_with_caption(outside, "far")
    folder = tmp_path / "folder"
    folder.mkdir()
    image_with_caption(folder, "a")
    Image.new("RGB", (8, 8)).save(folder / "b.jpg")
    (folder / "b.txt").symlink_to(outside / "secret")
    (folder / "c.jpg").symlink_to(outside / "far.jpg")
    (folder / "c.txt").write_text("linked image")
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)

    rows = crawl(folder, ctx, default_license="CC0")
    assert [r["source_record_id"] for r in rows] == ["a.jpg", "b.jpg", "c.jpg"]  # linked/ is not entered
    assert rows[0]["status"] == "pending"
    not_followed = "caption sidecar is a symlink, not followed (set follow_symlinks: true to read it)"
    assert rows[1]["error"] == f"{folder / 'b.jpg'} row 2, field b.txt: {not_followed}"
    assert rows[1]["original_text"] is None  # the link target never became a caption
    assert rows[2]["error"].startswith(f"{folder / 'c.jpg'} row 3, field c.jpg: image is a symlink, not followed")
    assert "linked: symlinked folder not entered" in caplog.text

    followed = crawl(folder, ctx, default_license="CC0", follow_symlinks=True)
    assert [r["source_record_id"] for r in followed] == ["a.jpg", "b.jpg", "c.jpg", "linked/far.jpg"]  # loop: once
    assert [r["status"] for r in followed] == ["pending"] * 4
    assert followed[1]["original_text"] == "a private file"
    with pytest.raises(ConfigError, match="follow_symlinks must be true or false"):
        crawl(folder, ctx, follow_symlinks="yes")
