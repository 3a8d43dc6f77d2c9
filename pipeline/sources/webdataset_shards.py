"""Pre-downloaded datasets in webdataset tar shards (TreeOfLife-10M, BioTrove / Arboretum-style releases, a PlantMix
release) -> candidate rows, one per sample; the download step copies each image's bytes out of its shard.

Format: webdataset (https://github.com/webdataset/webdataset#the-webdataset-format): plain (uncompressed) POSIX
tar files whose members are named ``<key>.<extension>``; the members of one key are one sample, e.g.
``0a1b.jpg``, ``0a1b.txt``, ``0a1b.json``, or TreeOfLife-10M's ``<key>.jpg``, ``<key>.sci.txt`` (scientific
name), ``<key>.com.txt`` (common name), ``<key>.taxonomic.txt`` (``Plantae Tracheophyta ... Iris tectorum``).
``path`` is one shard, a folder of ``*.tar`` shards or a glob; shards are read in sorted order, members in tar
order. Get TreeOfLife-10M from https://huggingface.co/datasets/imageomics/TreeOfLife-10M (its ``dataset/``
shards), BioTrove-style releases from their project pages; shards must be on a local disk.

``fields`` maps manifest fields to where the sample holds them: a member extension (``sci.txt``: that member's
text, stripped), ``json:<key>`` (a key of the sample's ``.json`` member; ``json:a.b`` for nested objects), or
``__key__``. Defaults: ``original_text`` from ``txt``, ``source_record_id`` from ``__key__``; e.g. TreeOfLife-10M:
``{scientific_name: sci.txt, common_name: com.txt, taxonomy: taxonomic.txt, original_text: txt}``. ``taxonomy``
takes a JSON object of rank -> name, or text of kingdom .. genus then the species epithet (BioCLIP's
taxonomic string). ``license`` and ``rights_holder`` the same way; a sample without a license gets
``default_license`` (None: rejected, as an image without known terms is never released by guess).
``exclude`` drops samples by value, e.g. ``{json:basisOfRecord: [PreservedSpecimen]}`` or ``{json:image_type:
[herbarium sheet, specimen]}`` to keep herbarium sheets and specimen photos out: they stay as rejected rows
with the field and value.

``url`` is ``file:///<shard>#offset=<byte>&size=<bytes>``: where the image member's bytes sit in the shard. The
download stage reads exactly those bytes (only from the folders of this recipe's pre-downloaded sources) and
resizes them like fetched images, so filters, dedup and the release treat them like any other row; no request
goes to the network. A sample without an image member (``image_extensions``, first found) is a rejected row; a
``.json`` that is not a JSON object rejects its sample; a shard that is not a readable plain tar, or a member
name without an extension, raises ``SourceError`` naming the shard (and member).
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources.base import (
    MAPPABLE_FIELDS,
    ConfigError,
    CrawlContext,
    SourceError,
    build_row,
    config_from_dict,
    local_files,
    reject,
)

KEY = "__key__"
FIELDS = MAPPABLE_FIELDS
TEXT_LIMIT = 1 << 20  # a text or JSON member larger than this is not metadata


@dataclass
class Config:
    path: str  # a .tar shard, a folder of them or a glob; on a local disk
    name: str = "webdataset"  # registry name written to the `source` column
    domain: str = "plant"  # "plant" or "general"
    fields: dict[str, str] = field(default_factory=dict)  # manifest field -> member extension, json:<key> or __key__
    image_extensions: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")  # the sample's image member, first found
    default_license: str | None = None  # for samples whose fields name no license; None = reject them
    exclude: dict[str, list[str]] = field(default_factory=dict)  # field spec -> values that drop the sample

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (webdataset_shards)"
        if self.domain not in ("plant", "general"):
            raise ConfigError(f"{where}: domain {self.domain!r} unknown; expected plant or general")
        unknown = sorted(set(self.fields) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{where}: fields {unknown} are not filled from samples; known: {list(FIELDS)}")
        self.fields = {"source_record_id": KEY, "original_text": "txt", **self.fields}
        if not isinstance(self.exclude, dict) or not all(isinstance(v, list) for v in self.exclude.values()):
            raise ConfigError(f"{where}: exclude must map a field spec to a list of values")
        self.image_extensions = tuple(e.lower().lstrip(".") for e in self.image_extensions)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "webdataset_shards options")


def shard_paths(config: Config) -> list[Path]:
    """The shards ``path`` names, sorted (a folder's ``*.tar``, a glob's matches, or the one file)."""
    return local_files(config.path, ".tar", "shards")


def local_roots(config: Config) -> list[str]:
    """The folders the download may read this source's bytes from: those of its shards."""
    return sorted({str(shard.parent) for shard in shard_paths(config)})


def parts(config: Config) -> list[str]:
    """One crawl unit per shard."""
    return [str(shard) for shard in shard_paths(config)]


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """One candidate row per sample of every shard (rejected samples included, with their reason)."""
    for shard in parts(config):
        yield from read_part(config, ctx, shard)


def read_part(config: Config, ctx: CrawlContext, shard: str) -> Iterator[dict]:
    """The candidate rows of one shard, in tar order; ``input_row`` numbers its samples."""
    for number, (key, members) in enumerate(_samples(Path(shard)), start=1):
        yield _candidate(config, ctx, shard, number, key, members)


def _samples(shard: Path) -> Iterator[tuple[str, dict[str, tuple[int, int, bytes | None]]]]:
    """``(key, {extension: (data offset, size, text bytes or None)})`` per sample, in tar order.

    The members of a key are consecutive in a webdataset shard; small non-image members are read (metadata), image
    members only located.
    """
    try:
        archive = tarfile.open(shard, mode="r:")  # plain tar only: a compressed shard has no byte offsets to copy
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"{shard}: not a readable uncompressed tar shard ({exc})") from None
    key, members = None, {}
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                folder, _, base = member.name.rpartition("/")
                stem, dot, extension = base.partition(".")
                if not dot or not stem:
                    raise SourceError(f"{shard} member {member.name!r}: no <key>.<extension> name")
                sample_key = f"{folder}/{stem}" if folder else stem
                if sample_key != key:
                    if key is not None:
                        yield key, members
                    key, members = sample_key, {}
                text = None
                if member.size <= TEXT_LIMIT and extension.lower().rpartition(".")[2] in ("txt", "json", "cls"):
                    text = archive.extractfile(member).read()  # type: ignore[union-attr]
                members[extension.lower()] = (member.offset_data, member.size, text)
        except tarfile.TarError as exc:
            raise SourceError(f"{shard}: broken tar after {key!r} ({exc})") from None
    if key is not None:
        yield key, members


def _candidate(
    config: Config, ctx: CrawlContext, shard: str, number: int, key: str, members: dict[str, tuple[int, int, Any]]
) -> dict:
    partial: dict[str, Any] = {"source": config.name, "domain": config.domain, "input_file": shard,
                               "input_row": number}  # fmt: skip
    problems: list[tuple[str, str]] = []
    document = _json_member(members, problems)
    values = {name: _value(spec, key, members, document) for name, spec in config.fields.items()}
    for name, value in values.items():
        if name == "taxonomy":
            partial["taxonomy"] = _taxonomy(value, problems)
        elif value is not None and not isinstance(value, str):
            problems.append((config.fields[name], f"expected text for {name}, found {type(value).__name__}"))
        else:
            partial[name] = value
    partial["source_record_id"] = partial.get("source_record_id") or key
    if not partial.get("license"):
        partial["license"] = config.default_license
    image = next((members[e] for e in config.image_extensions if e in members), None)
    if image is not None:
        offset, size, _ = image
        partial["url"] = f"{Path(shard).as_uri()}#offset={offset}&size={size}"
    for spec, excluded in config.exclude.items():
        value = _value(spec, key, members, document)
        if value is not None and str(value) in excluded:
            problems.append((spec, f"{value!r} is excluded by the recipe"))
    if image is None:
        shown = ", ".join(config.image_extensions)
        reject(partial, "(sample)", f"sample {key!r} has no image member ({shown})")
    for where, message in problems:
        reject(partial, where, f"sample {key!r}: {message}")
    return build_row(partial, ctx, allowed_schemes=(*ctx.allowed_schemes, "file"))


def _json_member(members: dict[str, tuple[int, int, Any]], problems: list[tuple[str, str]]) -> dict | None:
    entry = members.get("json")
    if entry is None or entry[2] is None:
        return None
    try:
        document = json.loads(entry[2].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        problems.append(("json", f"not valid JSON ({exc})"))
        return None
    if not isinstance(document, dict):
        problems.append(("json", f"expected a JSON object, found {type(document).__name__}"))
        return None
    return document


def _value(spec: str, key: str, members: dict[str, tuple[int, int, Any]], document: dict | None) -> Any:
    """A field spec's value for one sample: ``__key__``, ``json:<a.b>`` or a member's stripped text (None if absent)."""
    if spec == KEY:
        return key
    if spec.startswith("json:"):
        value: Any = document
        for part in spec[5:].split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value
    entry = members.get(spec.lower())
    if entry is None or entry[2] is None:
        return None
    return entry[2].decode("utf-8", errors="replace").strip() or None


def _taxonomy(value: Any, problems: list[tuple[str, str]]) -> dict[str, str | None] | None:
    """A rank -> name object as is; a taxonomic string (kingdom .. genus, then the epithet) split by rank."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {rank: value.get(rank) if isinstance(value.get(rank), str) else None for rank in TAXONOMY_RANKS}
    if not isinstance(value, str):
        problems.append(("taxonomy", f"expected an object or text, found {type(value).__name__}"))
        return None
    words = value.split()
    ranks = dict(zip(TAXONOMY_RANKS[:-1], words[:6], strict=False))
    if len(words) > 6:
        ranks["species"] = " ".join([words[5], *words[6:]])
    return ranks
