"""Where every file of a build lives: the one place that knows the build folder's layout.

Stages never build paths by hand and never import each other: a stage that reads another stage's output (embed
reads download's tars, judge reads every stage's per-shard Parquet) asks this layout. ``root`` is a local folder
or any fsspec URL (``s3://bucket/builds/plantmix-13m``).

```
<root>/
  crawl/<source>.parquet                      candidate rows of one source (every column of CANDIDATE_SCHEMA)
  download/plan/<shard>.parquet               rows planned for one download shard
  download/<shard>.parquet                    sample_id + the download columns (status, error, sha256, size, key)
  download/<shard>.tar                        webdataset shard (img2dataset)
  download/<shard>.img2dataset.parquet        img2dataset's own per-row table (caption, status, error_message)
  embed/<shard>.parquet                       sample_id, key, clip_model, clip_score (row order of the sidecars)
  embed/<shard>.image.npy, <shard>.text.npy   L2-normalised float16 embeddings
  <stage>/<unit>.done.json                    completion marker of one unit (stats, fingerprint, provenance)
  <stage>/_<step>.done.json                   completion marker of a global step (plan, reduce)
  manifest.parquet, summary.json, build.json  the judged manifest, its summary, the build's provenance
  mix/heldout-<domain>.parquet, share-<r>.json  held-out rows; each proxy's losses (and its training set, log)
  mixing_law.json, mixing_law.png             the fitted law per domain and the chosen general share
  sample/selection.parquet                    one row per released copy: position, release shard and key
  publish/packlist.parquet, url_only.parquet  released copies with metadata and image byte ranges, in order
  publish/<NNNNN>.tar, <NNNNN>.parquet        one release shard and its rows of the release manifest
  release/                                    shards/, sizes.json, manifest.parquet, release.json, RELEASE.md,
                                              plots/, ATTRIBUTION.md + .csv (assembled last, atomically)
```
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.core.io import join, resolve

MANIFEST_FILE = "manifest.parquet"
SHARD_DIGITS = 5  # shard names have 5 digits, as img2dataset's default
# A name that becomes one path component (a source's crawl file, a unit's scratch folder): no separator, and no
# leading dot or dash, so never ``.``, ``..``, a hidden file or something a shell tool reads as an option.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
SAFE_NAME_RULE = "letters, digits, '_', '.' and '-', not starting with '.' or '-'"


def is_safe_name(name: object) -> bool:
    """True when ``name`` may be used as one file or folder name inside the build."""
    return isinstance(name, str) and SAFE_NAME.fullmatch(name) is not None and name not in (".", "..")


def check_safe_name(name: object, what: str) -> str:
    """``name`` unchanged, or ValueError naming ``what`` when it could leave its folder (``../x``, ``a/b``)."""
    if not is_safe_name(name):
        raise ValueError(f"{what}: {name!r} cannot be a file name in the build; expected {SAFE_NAME_RULE}")
    return name


def shard_name(shard_id: int) -> str:
    return f"{shard_id:0{SHARD_DIGITS}d}"


@dataclass(frozen=True)
class BuildLayout:
    root: str  # absolute local path or fsspec URL of the build folder

    @classmethod
    def at(cls, output_dir: str) -> BuildLayout:
        return cls(resolve(output_dir).rstrip("/"))

    def stage_dir(self, stage: str) -> str:
        return join(self.root, stage)

    def unit_file(self, stage: str, unit: str, suffix: str = ".parquet") -> str:
        """``<root>/<stage>/<unit><suffix>``: a stage's own per-unit Parquet by default."""
        return join(self.root, stage, f"{check_safe_name(unit, f'{stage} unit')}{suffix}")

    def stage_files(self, stage: str, units: list[str], suffix: str = ".parquet") -> list[str]:
        return [self.unit_file(stage, unit, suffix) for unit in units]

    # crawl
    def crawl_file(self, source: str) -> str:
        return self.unit_file("crawl", source)

    # download
    @property
    def plan_dir(self) -> str:
        return join(self.root, "download", "plan")

    def plan_file(self, shard: str) -> str:
        return join(self.plan_dir, f"{shard}.parquet")

    def download_tar(self, shard: str) -> str:
        return self.unit_file("download", shard, ".tar")

    def img2dataset_rows(self, shard: str) -> str:
        return self.unit_file("download", shard, ".img2dataset.parquet")

    @staticmethod
    def tar_in_manifest(shard: str) -> str:
        """The ``shard`` column: the tar's path relative to the manifest file's folder."""
        return f"download/{shard}.tar"

    # embed
    def embeddings(self, shard: str, kind: str) -> str:
        """``kind`` is ``image`` or ``text``."""
        return self.unit_file("embed", shard, f".{kind}.npy")

    # the end of the build
    @property
    def manifest(self) -> str:
        return join(self.root, MANIFEST_FILE)

    @property
    def summary(self) -> str:
        return join(self.root, "summary.json")

    @property
    def build_record(self) -> str:
        return join(self.root, "build.json")

    @property
    def mixing_law(self) -> str:
        """The mix stage's fit and chosen share (JSON); its plot is :attr:`mixing_law_plot`."""
        return join(self.root, "mixing_law.json")

    @property
    def mixing_law_plot(self) -> str:
        return join(self.root, "mixing_law.png")

    @property
    def release(self) -> str:
        """The published release (shards/, sizes.json, manifest.parquet, release.json, RELEASE.md, ...)."""
        return join(self.root, "release")

    @property
    def scratch(self) -> str:
        """Spill space for DuckDB and temporary files (always local: ``<root>/_tmp`` or the system temp)."""
        return join(self.root, "_tmp")
