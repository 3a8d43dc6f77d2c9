"""A local folder of images with caption sidecars -> candidate rows, one per image file.

Layout (this project's own convention, no external spec): ``photo.jpg`` + ``photo.txt`` (the caption, UTF-8),
optionally ``photo.json`` with any of the keys in ``SIDECAR_KEYS`` (license, rights_holder, attribution,
scientific_name, common_name, taxon_rank, taxonomy {kingdom..species}, page_url). Images are found recursively and
read in sorted path order, so ``input_row`` (1-based position in that order) is stable.

URLs are ``file:///abs/path.jpg`` URIs: the downloader (img2dataset, via urllib) reads them like web URLs, so this
adapter alone also allows the ``file`` scheme. A missing or undecodable ``.txt``, an invalid ``.json`` or an unknown
key in it rejects the row with the reason; a row without a license uses ``default_license`` (None = reject).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (local_folder)"
        if self.domain not in ("plant", "general"):
            raise ConfigError(f"{where}: domain {self.domain!r} unknown; expected plant or general")
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in self.extensions)
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "local_folder options")


def _sidecar_json(path: Path, partial: dict[str, Any]) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reject(partial, path.name, f"invalid JSON sidecar ({exc})")
        return {}
    if not isinstance(meta, dict):
        reject(partial, path.name, f"JSON sidecar must be an object, found {type(meta).__name__}")
        return {}
    unknown = sorted(set(meta) - set(SIDECAR_KEYS))
    if unknown:
        reject(partial, f"{path.name}: {', '.join(unknown)}", f"unknown sidecar key(s); known: {list(SIDECAR_KEYS)}")
    return {key: meta[key] for key in SIDECAR_KEYS if key in meta}


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """Yield one candidate row per image file (rejected rows included, with their reason)."""
    root = Path(config.directory).resolve()
    if not root.is_dir():
        raise SourceError(f"{config.directory}: folder not found")
    images = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in config.extensions)
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
        caption_path = image.with_suffix(".txt")
        try:
            partial["original_text"] = caption_path.read_text(encoding="utf-8").strip() or None
        except FileNotFoundError:
            reject(partial, caption_path.name, "missing caption sidecar")
        except UnicodeDecodeError as exc:
            reject(partial, caption_path.name, f"caption sidecar is not UTF-8 ({exc.reason} at byte {exc.start})")
        meta_path = image.with_suffix(".json")
        if meta_path.is_file():
            meta = _sidecar_json(meta_path, partial)
            partial.update({key: value for key, value in meta.items() if key != "license" or value})
        yield build_row(partial, ctx, allowed_schemes=(*ctx.allowed_schemes, "file"))
