"""A local folder of images with caption sidecars -> candidate rows, one per image file.

Layout (this project's own convention, no external spec): ``photo.jpg`` + ``photo.txt`` (the caption, UTF-8),
optionally ``photo.json`` with any of the keys in ``SIDECAR_KEYS`` (license, rights_holder, attribution,
scientific_name, common_name, taxon_rank, taxonomy {kingdom..species}, page_url). Images are found recursively and
read in sorted path order, so ``input_row`` (1-based position in that order) is stable.

URLs are ``file:///abs/path.jpg`` URIs: the downloader (img2dataset, via urllib) reads them like web URLs, so this
adapter alone also allows the ``file`` scheme. A missing, unreadable or undecodable ``.txt``, an invalid ``.json``,
an unknown key in it or a value of the wrong type (text keys take a string, ``taxonomy`` an object of rank ->
name) rejects the row with the reason naming the sidecar and the key; a row without a license uses
``default_license`` (None = reject).

Symlinks are not followed unless ``follow_symlinks`` is set: a symlinked image or sidecar is a rejected row, and a
symlinked folder is not entered (logged as a warning, since its images are never listed). Following them lets a
folder pull in files from anywhere on the machine, so it is a deliberate choice; link cycles are entered once.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources.base import (
    ConfigError,
    CrawlContext,
    SourceError,
    build_row,
    check_url_rewrite,
    config_from_dict,
    reject,
    rewrite_url,
)

log = logging.getLogger(__name__)

SIDECAR_KEYS = (
    "license",
    "rights_holder",
    "attribution",
    "scientific_name",
    "common_name",
    "taxon_rank",
    "taxonomy",
    "page_url",
)


@dataclass
class Config:
    directory: str  # folder searched recursively for images
    name: str = "local_folder"  # registry name written to the `source` column
    domain: str = "plant"  # "plant" or "general"
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp")  # image suffixes, case-insensitive
    default_license: str | None = None  # license for images whose .json names none; None = reject them
    url_rewrite: dict[str, str] | None = None  # URL prefix -> replacement, e.g. file:///data/ -> http://mirror/
    follow_symlinks: bool = False  # read symlinked images, sidecars and folders; False = reject / do not enter them

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (local_folder)"
        if self.domain not in ("plant", "general"):
            raise ConfigError(f"{where}: domain {self.domain!r} unknown; expected plant or general")
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions)
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)
        if not isinstance(self.follow_symlinks, bool):
            raise ConfigError(f"{where}: follow_symlinks must be true or false, got {self.follow_symlinks!r}")

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "local_folder options")


def _image_paths(root: Path, extensions: tuple[str, ...], follow_symlinks: bool) -> list[Path]:
    """Every entry under ``root`` named like an image, in sorted order (links and broken links included)."""
    found: list[Path] = []
    entered: set[str] = set()
    for folder, subfolders, files in os.walk(root, followlinks=follow_symlinks):
        here = Path(folder)
        subfolders.sort()  # with links followed, which path of a twice-linked folder is kept must not vary
        if follow_symlinks:
            real = os.path.realpath(here)
            if real in entered:  # a link cycle, or a second link to a folder already listed
                subfolders.clear()
                continue
            entered.add(real)
        else:
            for name in subfolders:
                if (here / name).is_symlink():
                    log.warning("%s: symlinked folder not entered (set follow_symlinks: true to read it)", here / name)
        found += [here / name for name in files if Path(name).suffix.lower() in extensions]
    return sorted(found)


def _sidecar_text(path: Path, kind: str, partial: dict[str, Any], follow_symlinks: bool) -> str | None:
    """The sidecar's text; None with the row rejected when it is missing, a link not followed or unreadable."""
    if path.is_symlink() and not follow_symlinks:
        reject(partial, path.name, f"{kind} is a symlink, not followed (set follow_symlinks: true to read it)")
        return None
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        reject(partial, path.name, f"missing {kind}")
    except UnicodeDecodeError as exc:
        reject(partial, path.name, f"{kind} is not UTF-8 ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        reject(partial, path.name, f"cannot read {kind} ({exc.strerror or exc})")
    return None


def _type_problem(key: str, value: Any) -> str | None:
    """Why a sidecar value cannot be used (text keys take a string, taxonomy an object of rank -> name)."""
    if value is None:
        return None
    if key != "taxonomy":
        return None if isinstance(value, str) else f"expected a string, found {type(value).__name__}"
    if not isinstance(value, dict):
        return f"expected an object of rank -> name, found {type(value).__name__}"
    unknown = sorted(set(value) - set(TAXONOMY_RANKS))
    if unknown:
        return f"unknown rank(s) {unknown}; known: {list(TAXONOMY_RANKS)}"
    for rank, name in value.items():
        if name is not None and not isinstance(name, str):
            return f"rank {rank}: expected a string, found {type(name).__name__}"
    return None


def _sidecar_json(path: Path, partial: dict[str, Any], follow_symlinks: bool) -> dict[str, Any]:
    """The sidecar's usable keys; every problem (syntax, unknown key, wrong type) rejects the row naming the key."""
    text = _sidecar_text(path, "JSON sidecar", partial, follow_symlinks)
    if text is None:
        return {}
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        reject(partial, path.name, f"invalid JSON sidecar ({exc})")
        return {}
    if not isinstance(meta, dict):
        reject(partial, path.name, f"JSON sidecar must be an object, found {type(meta).__name__}")
        return {}
    unknown = sorted(set(meta) - set(SIDECAR_KEYS))
    if unknown:
        reject(partial, f"{path.name}: {', '.join(unknown)}", f"unknown sidecar key(s); known: {list(SIDECAR_KEYS)}")
    usable = {}
    for key in SIDECAR_KEYS:
        problem = _type_problem(key, meta.get(key))
        if problem:
            reject(partial, f"{path.name}: {key}", problem)
        elif key in meta:
            usable[key] = meta[key]
    return usable


def local_roots(config: Config) -> list[str]:
    """The folder the download may read this source's images from (``file://`` URLs anywhere else are refused)."""
    return [config.directory]


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """Yield one candidate row per image file (rejected rows included, with their reason)."""
    root = Path(config.directory).resolve()
    if not root.is_dir():
        raise SourceError(f"{config.directory}: folder not found")
    images = _image_paths(root, config.extensions, config.follow_symlinks)
    if not images:
        raise SourceError(f"{root}: no image files with extensions {list(config.extensions)}")
    for number, image in enumerate(images, start=1):
        relative = image.relative_to(root).as_posix()
        partial: dict[str, Any] = {
            "source": config.name,
            "source_record_id": relative,
            "domain": config.domain,
            "url": rewrite_url(image.as_uri(), config.url_rewrite or {}),
            "input_file": str(image),
            "input_row": number,
            "license": config.default_license,
        }
        if image.is_symlink() and not config.follow_symlinks:
            reject(partial, image.name, "image is a symlink, not followed (set follow_symlinks: true to read it)")
        elif not image.is_file():
            reject(partial, image.name, "not a regular file (a broken symlink?)")
        caption = _sidecar_text(image.with_suffix(".txt"), "caption sidecar", partial, config.follow_symlinks)
        partial["original_text"] = (caption or "").strip() or None
        meta_path = image.with_suffix(".json")
        if os.path.lexists(meta_path):
            meta = _sidecar_json(meta_path, partial, config.follow_symlinks)
            partial.update({key: value for key, value in meta.items() if key != "license" or value})
        yield build_row(partial, ctx, allowed_schemes=(*ctx.allowed_schemes, "file"))
