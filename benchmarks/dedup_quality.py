"""Benchmark: dedup quality of the full chain (exact, caption, image) against a generated set of known truth.

Generator (``--rows``, default 20k candidates; 40% plant, 60% general). Every row is one "true item": a URL, an
image and a caption. Images are synthetic L2-normalised 512-d embeddings (no model is needed offline): a distinct
image is drawn around one of 300 general centroids or around its species' centroid (200 species), with a spread
that puts two distinct images of one centroid at cosine ~0.80-0.90 (per centroid), so distinct-but-similar images
exist and the threshold matters. Each image has its own bytes (``image_sha256``) unless it is an exact copy.
Planted duplicate groups (one original + 1-3 copies, or 3 for the mixed kind), as a share of all rows:

- ``exact_sha`` (4%, general): the same image bytes (same sha256, same embedding) under another URL, in the
  ``web`` pool or the second pool ``mirror``, with a caption of its own;
- ``exact_url`` (3% general, 2% plant): the same URL again -- in ``mirror`` spelled as published or in a form
  the canonical URL equates (upper-case host, ``:443``, a ``#fragment``, ``http`` for ``https``), in ``web``
  under another uid; on iNaturalist the same photo attached to a second observation. Same bytes;
- ``image:<transform>`` (5% general, 4% plant): a re-encoded (cosine 0.985-0.995), resized (0.97-0.99) or
  slightly cropped (0.955-0.975) copy: new bytes, new URL, smaller pixels; general copies get a caption of their
  own, plant copies (the photo uploaded again with a new observation) the species' template caption;
- ``caption:<edit>`` (6%, general free text): the caption with one small edit -- case, punctuation, an
  appended word, a one-character typo -- on a different image (new bytes, an unrelated embedding);
- ``mixed`` (3%, general): one exact copy (same bytes and caption, other URL), one caption copy and one image
  copy of the same original: the chain has to join them across stages;
- negatives: every other row is distinct. The plant rows come through the real iNaturalist adapter, so their
  caption is the templated "Genus species, commonly known as X." (``caption_kind = "dalip"``), identical for
  every photo of a species (~40 distinct photos each, 1-3 photos per observation): these must NOT be merged.
  They are meaningful negatives only because they carry their real caption kind; written as pool rows they
  would be ``original`` free text and collapse into one caption cluster per species (``--caption-only-kinds
  original dalip`` shows that). 2% of the distinct rows fail to download (outside the truth).

Build: the real stages of ``pipeline.stages.STAGES`` on a temporary build folder -- ``crawl`` (the
``url_caption_pool`` adapter for ``web`` and ``mirror``, the ``inaturalist`` adapter for a generated TSV export)
and the download plan run for real; the download and embed outputs are then written in their per-shard formats
(``download/<shard>.parquet`` in ``DOWNLOAD_ROWS_SCHEMA`` with sha256 and sizes per the truth; ``embed/<shard>
.parquet`` + float16 ``.image.npy`` / ``.text.npy`` sidecars in key order) with markers through the harness, as
the stages leave them; then ``dedup_exact``, ``dedup_caption``, ``dedup_image``, ``decontaminate`` (off) and
``judge`` run with ``run_stage`` under the recipe defaults (image threshold 0.95, caption Jaccard 0.8).

Metric (row level, the headline): each planted group of k rows should lose exactly k-1 of them. A dropped row
(``drop_reason`` exact/caption/image duplicate) is a true positive when the row it points at (``exact_dup_of``,
``text_cluster`` or ``image_cluster``) belongs to its own planted group, else a false positive; recall is the
true positives over the sum of k-1. This does not care which member the keep rule keeps. Per stage: precision
over that stage's drops; recall over the copies of its own kinds (exact: exact_sha + exact_url; caption:
caption edits; image: transforms), a copy counting as found when it shares that stage's cluster with another
member of its group (mixed groups included). A pairwise F1 (rows joined by any stage's link, against the
planted groups) is printed too. Diagnostics: the exact Jaccard (the stage's own shingles) of every missed caption
copy to its original; how many missed image copies had no row with their original's bytes left when the image
stage ran (dropped earlier by exact or caption dedup); how many drops point at a row that is itself dropped; the
closest pair of distinct images and the farthest planted image copy (cosine of the stored float16 vectors).
``--image-threshold`` / ``--caption-threshold`` / ``--caption-only-kinds`` override the recipe defaults.

    python benchmarks/dedup_quality.py                  # 20k rows (about a minute)
    python benchmarks/dedup_quality.py --rows 5000      # quicker
Last line: RESULT dedup_quality f1=<> precision=<> recall=<> rows=<n> pair_f1=<>
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.config import (
    CaptionDedupConfig,
    DedupConfig,
    DownloadConfig,
    EmbedConfig,
    ExactDedupConfig,
    ImageDedupConfig,
    Recipe,
    SourceSpec,
)
from pipeline.core.harness import Build, Stage, run_step, run_unit
from pipeline.runner import run_stage
from pipeline.stages import STAGES, stage_named
from pipeline.stages.dedup.clusters import components
from pipeline.stages.dedup.minhash import shingles
from pipeline.stages.download.results import DOWNLOAD_ROWS_SCHEMA

TINY_CONFIG = Path(__file__).resolve().parent.parent / "dalip" / "model_configs" / "DALIP-Tiny.json"
DIM = 512
SHARD_SIZE = 5_000
GENERAL_CENTROIDS = 300
SPECIES = 200
CENTROID_COSINE = (0.80, 0.90)  # mean cosine of two distinct images of one centroid, drawn per centroid
TRANSFORMS = {"reencode": (0.985, 0.995), "resize": (0.97, 0.99), "crop": (0.955, 0.975)}  # cosine to the original
EDITS = ("case", "punctuation", "appended_word", "typo")
PLANT_FRACTION = 0.4
COPIES = {  # planted copies as a fraction of all rows, per (domain, kind)
    ("general", "exact_sha"): 0.04,
    ("general", "exact_url"): 0.03,
    ("general", "image"): 0.05,
    ("general", "caption"): 0.06,
    ("general", "mixed"): 0.03,
    ("plant", "exact_url"): 0.02,
    ("plant", "image"): 0.04,
}
COPIES_PER_GROUP = ((1, 2, 3), (0.7, 0.2, 0.1))
FAILED_FRACTION = 0.02  # of the distinct rows
DUP_REASONS = {"exact_duplicate": "exact", "caption_duplicate": "caption", "image_duplicate": "image"}
POINTER = {"exact": "exact_dup_of", "caption": "text_cluster", "image": "image_cluster"}

PREFIXES = ["", "", "", "", "", "Photo of ", "Close-up of ", "Picture of ", "A ", "Image of ", "View of ", "The "]
ADJECTIVES = (
    "red blue green yellow white black old new small large vintage rustic modern wooden golden tiny giant quiet "
    "busy sunny rainy snowy foggy bright dark colorful empty crowded abandoned elegant cozy wild frozen ancient "
    "shiny broken handmade organic fresh spicy sweet"
).split()
NOUNS = (
    "car bicycle house bridge river mountain lake street market kitchen table chair lamp window door cat dog horse "
    "bird boat train station beach forest castle church tower garden cake bread coffee cup teapot guitar piano "
    "book laptop phone camera watch shoe jacket dress hat bag sofa bedroom office library harbor lighthouse "
    "waterfall canyon desert village farm barn tractor fountain statue painting poster"
).split()
SETTINGS = [
    "on a wooden table", "in the garden", "at sunset", "near the river", "in the city", "on the beach",
    "in the snow", "at night", "in the morning light", "on a white background", "in the countryside",
    "by the window", "under a blue sky", "in the rain", "in autumn", "at the market", "on the street",
    "in a small village", "in the mountains", "on display",
]  # fmt: skip
EXTRAS = ["", "", "", "", ", 2019", ", 2021", " - stock photo", " | free download", " (detail)", " with friends"]
APPENDED = ["photo", "hd", "image", "2020", "stock", "jpg", "free", "wallpaper", "new", "best"]
HOSTS = [f"cdn{k}.{site}.example" for k in range(1, 4) for site in ("photos", "shop", "news", "blog", "img", "media")]
POOL_LICENSES = [None, None, "cc-by-4.0", "cc0-1.0", "CC BY-SA 3.0"]
INAT_LICENSES = ["CC-BY-NC", "CC-BY", "CC0", "CC-BY-SA", "CC-BY-NC-SA"]
GENERA = (
    "Iris Rosa Quercus Acer Salvia Viola Trifolium Ranunculus Taraxacum Plantago Geranium Veronica Campanula "
    "Prunus Pinus Betula Fagus Allium Carex Juncus Euphorbia Solidago Achillea Mentha Lamium Galium Rumex "
    "Polygonum Hypericum Epilobium Lotus Vicia Lathyrus Silene Dianthus Papaver Potentilla Rubus Crataegus"
).split()
EPITHETS = (
    "tectorum alba vulgaris officinalis major minor arvensis pratensis sylvestris montana canadensis europaea "
    "repens acris maritima palustris rotundifolia lanceolata perennis annua odorata graveolens campestris "
    "hirsuta glabra nigra rubra lutea biennis aquatica"
).split()
COMMON_ADJ = "Wall Mountain Swamp Dwarf Giant Common Golden Blue Creeping Meadow Field Marsh Wood Sea Hairy".split()
COMMON_NOUN = "iris rose oak maple sage violet clover buttercup plantain cranesbill bellflower mint sorrel".split()
ORDERS = [("Asparagales", "Iridaceae"), ("Rosales", "Rosaceae"), ("Fagales", "Fagaceae"), ("Lamiales", "Lamiaceae")]


# ---- the generated set ---------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One candidate row and its truth."""

    source: str  # "web", "mirror" (url_caption_pool) or "inat" (inaturalist)
    record_id: str  # source_record_id as the crawl writes it
    group: int  # planted group; a distinct row is a group of its own
    kind: str  # original | distinct | exact_sha | exact_url | image:<transform> | caption:<edit>
    image: int  # row of the embedding matrix (exact copies share it)
    blob: int  # identity of the image bytes (exact copies share it)
    size: tuple[int, int]  # original width, height
    ok: bool = True  # downloaded
    mixed: bool = False  # member of a mixed group
    fields: dict[str, Any] = field(default_factory=dict)  # the source's own columns

    @property
    def domain(self) -> str:
        return "plant" if self.source == "inat" else "general"


class Generator:
    """Draws items, their images and captions; writes the two pools and the iNaturalist export."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.items: list[Item] = []
        self.vectors: list[np.ndarray] = []
        self.centroid_of: list[int] = []
        self.centroids = _normalised(self.rng.standard_normal((GENERAL_CENTROIDS + SPECIES, DIM)))
        cosine = self.rng.uniform(*CENTROID_COSINE, GENERAL_CENTROIDS + SPECIES)
        self.spread = np.sqrt(1 / cosine - 1)  # |noise| that puts two draws of a centroid at that mean cosine
        self.species = _species(self.rng)
        self.groups = self.blobs = self.counter = self.plant_rows = 0
        self.observations: dict[str, tuple[str, int]] = {}  # uuid -> (observer_id, species)

    # images -----------------------------------------------------------------------------------------------------

    def new_image(self, centroid: int) -> int:
        noise = self.rng.standard_normal(DIM) * self.spread[centroid] / np.sqrt(DIM)
        return self._add_vector(self.centroids[centroid] + noise, centroid)

    def near_image(self, image: int, transform: str) -> int:
        cosine = self.rng.uniform(*TRANSFORMS[transform])
        noise = self.rng.standard_normal(DIM) * np.sqrt(1 / cosine**2 - 1) / np.sqrt(DIM)  # cos = 1/sqrt(1+|e|^2)
        return self._add_vector(self.vectors[image] + noise, self.centroid_of[image])

    def _add_vector(self, vector: np.ndarray, centroid: int) -> int:
        self.vectors.append(vector / np.linalg.norm(vector))
        self.centroid_of.append(centroid)
        return len(self.vectors) - 1

    def new_blob(self) -> int:
        self.blobs += 1
        return self.blobs

    def new_size(self) -> tuple[int, int]:
        w, h = self.rng.integers(400, 4000, 2)
        return int(w), int(h)

    def transformed_size(self, size: tuple[int, int], transform: str) -> tuple[int, int]:
        low, high = {"reencode": (1.0, 1.0), "resize": (0.4, 0.9), "crop": (0.85, 0.97)}[transform]
        scale = self.rng.uniform(low, high)
        return max(1, int(size[0] * scale)), max(1, int(size[1] * scale))

    def new_group(self) -> int:
        self.groups += 1
        return self.groups

    # general rows ---------------------------------------------------------------------------------------------------

    def caption(self) -> str:
        r = self.rng
        words = [_pick(r, ADJECTIVES)] + ([_pick(r, ADJECTIVES)] if r.random() < 0.4 else []) + [_pick(r, NOUNS)]
        if r.random() < 0.5:
            words += ["with", _pick(r, ADJECTIVES), _pick(r, NOUNS)]
        return _pick(r, PREFIXES) + " ".join(words) + " " + _pick(r, SETTINGS) + _pick(r, EXTRAS)

    def url(self) -> str:
        return f"https://{_pick(self.rng, HOSTS)}/{self.rng.integers(1, 999)}/{self.rng.bytes(8).hex()}.jpg"

    def general(self, group: int, kind: str, source: str, image: int, blob: int, size, caption: str,
                url: str | None = None, ok: bool = True) -> Item:  # fmt: skip
        self.counter += 1
        uid = f"{source[0]}{self.counter}"
        license_ = POOL_LICENSES[self.rng.integers(len(POOL_LICENSES))]
        columns = {"uid": uid, "url": url or self.url(), "caption": caption, "license": license_}
        item = Item(source, uid, group, kind, image, blob, size, ok=ok, fields=columns)
        self.items.append(item)
        return item

    def general_group(self, kind: str, copies: int) -> None:
        group, r = self.new_group(), self.rng
        image, blob, size = self.new_image(r.integers(GENERAL_CENTROIDS)), self.new_blob(), self.new_size()
        original = self.general(group, "original", "web", image, blob, size, self.caption())
        caption, url = original.fields["caption"], original.fields["url"]
        kinds = ["exact_sha", "caption", "image"] if kind == "mixed" else [kind] * copies
        for copy in kinds:
            source = "mirror" if r.random() < 0.5 else "web"
            if copy == "exact_sha":
                text = caption if kind == "mixed" else self.caption()
                item = self.general(group, copy, source, image, blob, size, text)
            elif copy == "exact_url":
                source = "mirror" if r.random() < 2 / 3 else "web"
                same_url = url_variant(r, url) if source == "mirror" else url
                text = caption if r.random() < 0.5 else self.caption()
                item = self.general(group, copy, source, image, blob, size, text, url=same_url)
            elif copy == "image":
                transform = _pick(r, list(TRANSFORMS))
                near, new_size = self.near_image(image, transform), self.transformed_size(size, transform)
                item = self.general(
                    group, f"image:{transform}", source, near, self.new_blob(), new_size, self.caption()
                )
            else:
                edit = _pick(r, EDITS)
                other = self.new_image(r.integers(GENERAL_CENTROIDS))
                text = edit_caption(r, caption, edit)
                item = self.general(group, f"caption:{edit}", source, other, self.new_blob(), self.new_size(), text)
            item.mixed = kind == "mixed"
        original.mixed = kind == "mixed"

    def general_distinct(self) -> None:
        r = self.rng
        source = "mirror" if r.random() < 0.2 else "web"
        image, size, ok = self.new_image(r.integers(GENERAL_CENTROIDS)), self.new_size(), r.random() >= FAILED_FRACTION
        self.general(self.new_group(), "distinct", source, image, self.new_blob(), size, self.caption(), ok=ok)

    # plant rows (iNaturalist) ---------------------------------------------------------------------------------------

    def observation(self, species: int, observer: str | None = None) -> str:
        uuid = f"obs-{len(self.observations) + 1:07d}"
        self.observations[uuid] = (observer or str(self.rng.integers(1, 101)), species)
        return uuid

    def photo(self, group: int, kind: str, observation: str, image: int, blob: int, size, photo_id: int | None = None,
              position: int = 0, ok: bool = True) -> Item:  # fmt: skip
        if photo_id is None:
            self.counter += 1
            photo_id = 1_000_000 + self.counter
        observer, _ = self.observations[observation]
        columns = {"photo_id": str(photo_id), "observation_uuid": observation, "observer_id": observer,
                   "license": _pick(self.rng, INAT_LICENSES), "width": size[0], "height": size[1],
                   "position": position}  # fmt: skip
        item = Item("inat", f"{photo_id}:{observation}", group, kind, image, blob, size, ok=ok, fields=columns)
        self.items.append(item)
        self.plant_rows += 1
        return item

    def plant_group(self, kind: str, copies: int) -> None:
        group, r = self.new_group(), self.rng
        species = int(r.integers(SPECIES))
        image, blob, size = self.new_image(GENERAL_CENTROIDS + species), self.new_blob(), self.new_size()
        observation = self.observation(species)
        original = self.photo(group, "original", observation, image, blob, size)
        for _ in range(copies):
            if kind == "exact_url":  # the same photo attached to another observation: same photo_id, same URL
                photo_id = int(original.fields["photo_id"])
                self.photo(group, kind, self.observation(species), image, blob, size, photo_id=photo_id)
            else:  # uploaded again (re-encoded, resized or cropped) with a new observation of the same species
                transform = _pick(r, list(TRANSFORMS))
                near, new_size = self.near_image(image, transform), self.transformed_size(size, transform)
                observer = self.observations[observation][0]
                self.photo(group, f"image:{transform}", self.observation(species, observer), near, self.new_blob(),
                           new_size)  # fmt: skip

    def plant_observation(self, photos: int) -> None:
        """Distinct photos of one observation: similar (one species), never duplicates, one template caption."""
        species = int(self.rng.integers(SPECIES))
        observation = self.observation(species)
        for position in range(photos):
            image = self.new_image(GENERAL_CENTROIDS + species)
            ok = self.rng.random() >= FAILED_FRACTION
            self.photo(self.new_group(), "distinct", observation, image, self.new_blob(), self.new_size(),
                       position=position, ok=ok)  # fmt: skip

    # the whole set ----------------------------------------------------------------------------------------------

    def generate(self, n: int) -> None:
        for (domain, kind), fraction in COPIES.items():
            budget = round(n * fraction)
            while budget > 0:
                copies = 3 if kind == "mixed" else int(self.rng.choice(COPIES_PER_GROUP[0], p=COPIES_PER_GROUP[1]))
                copies = min(copies, budget)
                (self.general_group if domain == "general" else self.plant_group)(kind, copies)
                budget -= copies
        n_plant = round(n * PLANT_FRACTION)
        while self.plant_rows < n_plant:
            self.plant_observation(min(int(self.rng.integers(1, 4)), n_plant - self.plant_rows))
        while len(self.items) < n:
            self.general_distinct()

    def embeddings(self) -> np.ndarray:
        return np.stack(self.vectors).astype(np.float32)

    def write_sources(self, folder: Path) -> list[SourceSpec]:
        """``web.parquet``, ``mirror.parquet`` (pools, rows shuffled) and an iNaturalist export folder."""
        specs = []
        for name in ("web", "mirror"):
            rows = [i.fields for i in self.items if i.source == name]
            rows = [rows[k] for k in self.rng.permutation(len(rows))]
            pq.write_table(pa.Table.from_pylist(rows), folder / f"{name}.parquet")
            options = {"path": str(folder / f"{name}.parquet"), "name": name, "id_col": "uid", "license_col": "license"}
            specs.append(SourceSpec(name, "url_caption_pool", options))
        inat = folder / "inat"
        inat.mkdir()
        self._write_inat(inat)
        specs.append(SourceSpec("inat", "inaturalist", {"directory": str(inat), "name": "inat",
                                                         "common_names": "common_names.csv"}))  # fmt: skip
        return specs

    def _write_inat(self, folder: Path) -> None:
        photos = [i.fields for i in self.items if i.source == "inat"]
        photos = [photos[k] for k in self.rng.permutation(len(photos))]
        _tsv(folder / "photos.csv", ["photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension",
                                     "license", "width", "height", "position"],
             [[f"u{p['photo_id']}-{p['observation_uuid']}", p["photo_id"], p["observation_uuid"], p["observer_id"],
               "jpeg", p["license"], p["width"], p["height"], p["position"]] for p in photos])  # fmt: skip
        _tsv(folder / "observations.csv", ["observation_uuid", "observer_id", "latitude", "longitude",
                                           "positional_accuracy", "taxon_id", "quality_grade", "observed_on"],
             [[uuid, observer, "35.6", "139.7", "10", self.species[s]["taxon_id"], "research", "2023-05-01"]
              for uuid, (observer, s) in self.observations.items()])  # fmt: skip
        _tsv(folder / "taxa.csv", ["taxon_id", "ancestry", "rank_level", "rank", "name", "active"], _taxa(self.species))
        _tsv(folder / "observers.csv", ["observer_id", "login", "name"],
             [[str(k), f"observer{k}", f"Observer {k}"] for k in range(1, 101)])  # fmt: skip
        common = [f"{s['taxon_id']},{s['common']}" for s in self.species if s["common"]]
        (folder / "common_names.csv").write_text("taxon_id,common_name\n" + "\n".join(common) + "\n")

    def truth(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "source": [i.source for i in self.items],
                "source_record_id": [i.record_id for i in self.items],
                "group": [i.group for i in self.items],
                "kind": [i.kind for i in self.items],
                "domain": [i.domain for i in self.items],
                "image": [i.image for i in self.items],
                "blob": [i.blob for i in self.items],
                "width": [i.size[0] for i in self.items],
                "height": [i.size[1] for i in self.items],
                "ok": [i.ok for i in self.items],
                "mixed": [i.mixed for i in self.items],
            }
        )


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _pick(rng: np.random.Generator, options: list[str]) -> str:
    return options[int(rng.integers(len(options)))]


def url_variant(rng: np.random.Generator, url: str) -> str:
    """The URL as published or spelled as the canonical URL equates it (host case, default port, fragment, scheme)."""
    scheme, rest = url.split("://", 1)
    host, path = rest.split("/", 1)
    variants = [
        url,
        f"{scheme}://{host.upper()}/{path}",
        f"{scheme}://{host}:443/{path}",
        f"{url}#main",
        f"http://{host}/{path}",
    ]
    return _pick(rng, variants)


def edit_caption(rng: np.random.Generator, caption: str, edit: str) -> str:
    """One small edit of a free-text caption."""
    words = caption.split(" ")
    if edit == "case":
        options = [caption.upper(), caption.lower(), caption.title(), caption.swapcase()]
        return next((c for c in (_pick(rng, options), *options) if c != caption), caption.upper())
    if edit == "punctuation":
        k = int(rng.integers(len(words) - 1)) if len(words) > 1 else 0
        options = [
            caption + "!",
            caption + ".",
            f'"{caption}"',
            " ".join(words[: k + 1]) + ", " + " ".join(words[k + 1 :]),
        ]
        return _pick(rng, options).strip()
    if edit == "appended_word":
        return f"{caption} {_pick(rng, APPENDED)}"
    long_words = [k for k, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    k = long_words[int(rng.integers(len(long_words)))] if long_words else 0
    words[k] = typo(rng, words[k])
    return " ".join(words)


def typo(rng: np.random.Generator, word: str) -> str:
    """Swap two neighbouring letters, replace one or drop one (never the first letter)."""
    i = int(rng.integers(1, max(2, len(word) - 1)))
    how = int(rng.integers(3))
    if how == 0 and i + 1 < len(word) and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if how == 1:
        letter = _pick(rng, [c for c in "abcdefghijklmnopqrstuvwxyz" if c != word[i].lower()])
        return word[:i] + letter + word[i + 1 :]
    return word[:i] + word[i + 1 :]


def _species(rng: np.random.Generator) -> list[dict[str, Any]]:
    names = sorted({f"{g} {e}" for g in GENERA for e in EPITHETS})
    chosen = [names[k] for k in rng.choice(len(names), SPECIES, replace=False)]
    species = []
    for k, name in enumerate(chosen):
        common = f"{_pick(rng, COMMON_ADJ)} {_pick(rng, COMMON_NOUN)}" if rng.random() < 0.9 else None
        species.append({"name": name, "taxon_id": str(100_000 + k), "common": common})
    return species


def _taxa(species: list[dict[str, Any]]) -> list[list[str]]:
    """Life / Plantae / Tracheophyta / Magnoliopsida / order / family / genus / species rows of taxa.csv."""
    top = "48460/47126/211194/47124"
    rows = [["48460", "", "100", "stateofmatter", "Life", "true"],
            ["47126", "48460", "70", "kingdom", "Plantae", "true"],
            ["211194", "48460/47126", "60", "phylum", "Tracheophyta", "true"],
            ["47124", "48460/47126/211194", "50", "class", "Magnoliopsida", "true"]]  # fmt: skip
    for k, (order, family) in enumerate(ORDERS):
        rows.append([str(1000 + k), top, "40", "order", order, "true"])
        rows.append([str(2000 + k), f"{top}/{1000 + k}", "30", "family", family, "true"])
    for k, genus in enumerate(GENERA):
        o = k % len(ORDERS)
        rows.append([str(3000 + k), f"{top}/{1000 + o}/{2000 + o}", "20", "genus", genus, "true"])
    for s in species:
        k = GENERA.index(s["name"].split()[0])
        o = k % len(ORDERS)
        rows.append([s["taxon_id"], f"{top}/{1000 + o}/{2000 + o}/{3000 + k}", "10", "species", s["name"], "true"])
    return rows


def _tsv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.write_text("\n".join("\t".join(str(v) for v in r) for r in [header, *rows]) + "\n", encoding="utf-8")


# ---- the build -----------------------------------------------------------------------------------------------------


def make_recipe(work: Path, sources: list[SourceSpec], args: argparse.Namespace) -> Recipe:
    threshold = {} if args.caption_threshold is None else {"threshold": args.caption_threshold}
    caption = CaptionDedupConfig(caption_only_kinds=list(args.caption_only_kinds), **threshold)
    image = ImageDedupConfig() if args.image_threshold is None else ImageDedupConfig(threshold=args.image_threshold)
    return Recipe(
        name="dedup-quality",
        output_dir=str(work / "build"),
        sources=sources,
        download=DownloadConfig(shard_size=SHARD_SIZE),
        embed=EmbedConfig(model="DALIP-Tiny", pretrained=None, random_init=True, model_config=str(TINY_CONFIG)),
        dedup=DedupConfig(exact=ExactDedupConfig(), caption=caption, image=image),
    )


def crawl_and_plan(build: Build, truth: pd.DataFrame) -> tuple[list[str], pd.DataFrame]:
    """The real crawl (one unit per source) and download plan; the truth gains each row's ``sample_id``."""
    crawl = stage_named("crawl")
    for spec in build.recipe.sources:
        run_unit(crawl, build, spec.name)
    shards = stage_named("download").plan(build)
    columns = ["sample_id", "source", "source_record_id", "status", "error", "caption", "caption_kind"]
    crawled = pd.concat(
        [pq.read_table(build.layout.crawl_file(s.name), columns=columns).to_pandas() for s in build.recipe.sources]
    )
    bad = crawled[crawled["status"] != schema.STATUS_PENDING]
    if len(bad):
        raise RuntimeError(f"{len(bad)} generated rows were rejected by the crawl, e.g. {bad['error'].iloc[0]}")
    merged = truth.merge(crawled.drop(columns=["status", "error"]), on=["source", "source_record_id"], how="inner")
    if len(merged) != len(truth) or merged["sample_id"].duplicated().any():
        raise RuntimeError(f"crawl rows do not match the generated set ({len(merged)} joined of {len(truth)})")
    return shards, merged


def synthesize_download(build: Build, shard: str, truth: pd.DataFrame) -> pa.Table:
    """``download/<shard>.parquet`` with status, sha256 of the item's bytes, sizes and key; with its marker."""
    ids = pq.read_table(build.layout.plan_file(shard), columns=["sample_id"])["sample_id"].to_pylist()
    rows = truth.loc[ids]
    ok = rows["ok"].to_numpy()
    scale = np.minimum(1.0, 256 / np.minimum(rows["width"], rows["height"]).to_numpy())  # keep_ratio, image_size 256
    sha = [hashlib.sha256(f"dedup-quality-bytes-{b}".encode()).hexdigest() for b in rows["blob"]]
    keys = [f"{shard}{k:04d}" for k in range(len(ids))]
    table = pa.table(
        {
            "sample_id": ids,
            "status": np.where(ok, schema.STATUS_OK, schema.STATUS_FAILED_DOWNLOAD).tolist(),
            "error": [None if o else "HTTP Error 404: Not Found" for o in ok],
            "image_sha256": [s if o else None for s, o in zip(sha, ok, strict=True)],
            "width": _masked((rows["width"].to_numpy() * scale).round().astype(np.int32), ok),
            "height": _masked((rows["height"].to_numpy() * scale).round().astype(np.int32), ok),
            "original_width": _masked(rows["width"].to_numpy().astype(np.int32), ok),
            "original_height": _masked(rows["height"].to_numpy().astype(np.int32), ok),
            "shard": [f"download/{shard}.tar" if o else None for o in ok],
            "key": [k if o else None for k, o in zip(keys, ok, strict=True)],
        },
        schema=DOWNLOAD_ROWS_SCHEMA,
    )
    status = dict(Counter(table["status"].to_pylist()))
    write_unit(build, stage_named("download"), shard, {f"{shard}.parquet": table}, {"rows": len(ids), "status": status})
    return table


def synthesize_embed(build: Build, shard: str, download: pa.Table, truth: pd.DataFrame, vectors: np.ndarray) -> None:
    """``embed/<shard>.parquet`` + ``.image.npy`` / ``.text.npy`` (float16, key order), as the embed stage writes."""
    model = build.recipe.embed.model_id
    ok = download.filter(pc.equal(download["status"], schema.STATUS_OK)).select(["sample_id", "key"]).sort_by("key")
    image = vectors[truth.loc[ok["sample_id"].to_pylist(), "image"].to_numpy()]
    rng = np.random.default_rng(int(shard))
    text = _normalised(image + rng.standard_normal(image.shape) * 0.12)  # caption embeddings: cosine ~0.3 to image
    scores = (image * text).sum(axis=1).astype(np.float32)
    table = ok.append_column("clip_model", pa.array([model] * ok.num_rows, pa.string()))
    table = table.append_column("clip_score", pa.array(scores, pa.float32()))
    files = {f"{shard}.parquet": table, f"{shard}.image.npy": image.astype(np.float16),
             f"{shard}.text.npy": text.astype(np.float16)}  # fmt: skip
    write_unit(build, stage_named("embed"), shard, files, {"rows": ok.num_rows, "model": model, "dim": DIM})


def _masked(values: np.ndarray, ok: np.ndarray) -> pa.Array:
    return pa.array(values, pa.int32(), mask=~ok)


def write_unit(build: Build, stage: Stage, unit: str, files: dict[str, Any], stats: dict[str, Any]) -> None:
    """A unit's files through the harness (scratch folder, publish, marker), as the real stage leaves them."""

    def work(out: Path) -> dict[str, Any]:
        for name, content in files.items():
            if isinstance(content, np.ndarray):
                np.save(out / name, content)
            else:
                pq.write_table(content, out / name)
        return stats

    run_step(stage.dir(build), unit, work, decides=stage.decides(build, unit),
             provenance={"stage": stage.name, "synthetic": True})  # fmt: skip


def run_dedup_chain(build: Build) -> dict[str, float]:
    """``run_stage`` for every stage after embed (dedup_exact, dedup_caption, dedup_image, decontaminate, judge)."""
    seconds = {}
    names = [s.name for s in STAGES]
    for stage in STAGES[names.index("embed") + 1 :]:
        start = time.perf_counter()
        run_stage(stage, build)
        seconds[stage.name] = time.perf_counter() - start
    return seconds


# ---- scoring -------------------------------------------------------------------------------------------------------


@dataclass
class Score:
    tp: int  # drops (or found copies) that are right
    predicted: int  # drops
    positives: int  # what should have been dropped (or found)
    found: int  # of the positives, found

    @property
    def precision(self) -> float:
        return self.tp / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.found / self.positives if self.positives else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def line(self, name: str) -> str:
        counts = f"drops {self.predicted}, right {self.tp}; positives {self.positives}, found {self.found}"
        return f"{name:<8} precision={self.precision:.4f} recall={self.recall:.4f} f1={self.f1:.4f} ({counts})"


def judged(build: Build, truth: pd.DataFrame) -> pd.DataFrame:
    """The manifest's dedup columns joined to the truth (indexed by sample_id), with each row's pointer and
    per-stage cluster label."""
    columns = ["sample_id", "status", "keep", "drop_reason", "exact_dup_of", "text_cluster", "image_cluster"]
    manifest = pq.read_table(build.layout.manifest, columns=columns).to_pandas().set_index("sample_id")
    rows = truth.join(manifest, how="left")
    rows["stage"] = rows["drop_reason"].map(DUP_REASONS)
    pointer = pd.Series(None, index=rows.index, dtype=object)
    for stage, column in POINTER.items():
        hit = rows["stage"] == stage
        pointer[hit] = rows.loc[hit, column]
    rows["pointer"] = pointer
    rows["pointer_group"] = rows["pointer"].map(rows["group"])
    rows["right"] = rows["stage"].notna() & (rows["pointer_group"] == rows["group"])
    reps = set(rows["exact_dup_of"].dropna())
    rows["label_exact"] = rows["exact_dup_of"].where(rows["exact_dup_of"].notna(),
                                                     rows.index.to_series().where(rows.index.isin(reps)))  # fmt: skip
    rows["label_caption"], rows["label_image"] = rows["text_cluster"], rows["image_cluster"]
    return rows


def copies_found(rows: pd.DataFrame, stage: str) -> pd.Series:
    """For every row: does it share ``stage``'s cluster with another member of its planted group?"""
    label = rows[f"label_{stage}"]
    sizes = rows.assign(label=label).dropna(subset=["label"]).groupby(["group", "label"]).size()
    key = pd.MultiIndex.from_arrays([rows["group"], label])
    return pd.Series(sizes.reindex(key).fillna(0).to_numpy() > 1, index=rows.index)


def stage_kinds(stage: str) -> tuple[str, ...]:
    return {"exact": ("exact_sha", "exact_url"), "caption": ("caption:",), "image": ("image:",)}[stage]


def stage_score(rows: pd.DataFrame, stage: str) -> tuple[Score, pd.Series, pd.Series]:
    drops = rows[rows["stage"] == stage]
    copies = rows["kind"].str.startswith(stage_kinds(stage))
    found = copies_found(rows, stage)
    score = Score(int(drops["right"].sum()), len(drops), int(copies.sum()), int((copies & found).sum()))
    return score, copies, found


def overall_score(rows: pd.DataFrame) -> Score:
    sizes = rows.groupby("group").size()
    expected = int((sizes - 1).sum())
    drops = rows[rows["stage"].notna()]
    right = int(drops["right"].sum())
    return Score(right, len(drops), expected, right)


def pairwise_score(rows: pd.DataFrame) -> Score:
    """Pairs of rows joined by any stage's link (union-find) against the pairs of each planted group."""
    index = {sid: k for k, sid in enumerate(rows.index)}
    left, right = [], []
    for column in POINTER.values():
        linked = rows[column].dropna()
        linked = linked[linked.index != linked.to_numpy()]
        left += [index[s] for s in linked.index]
        right += [index[s] for s in linked]
    labels = components(len(rows), np.array(left, np.int64), np.array(right, np.int64))
    both = pd.DataFrame({"pred": labels, "true": rows["group"].to_numpy()})
    pairs = lambda counts: int((counts * (counts - 1) // 2).sum())  # noqa: E731
    together = pairs(both.groupby(["pred", "true"]).size())
    return Score(together, pairs(both.groupby("pred").size()), pairs(both.groupby("true").size()), together)


def breakdown(rows: pd.DataFrame, copies: pd.Series, found: pd.Series) -> str:
    where = rows.loc[copies, "domain"].where(~rows.loc[copies, "mixed"], "mixed")
    parts = []
    for (domain, kind), hit in found[copies].groupby([where, rows.loc[copies, "kind"]]):
        parts.append(f"{domain} {kind} {int(hit.sum())}/{len(hit)}")
    return "; ".join(parts)


def image_misses(rows: pd.DataFrame, found: pd.Series) -> str:
    """Missed image copies whose original's bytes never reached the image stage (every row with them was dropped
    by dedup_exact or dedup_caption first, so the stage could not compare the copy with them)."""
    copies = rows[rows["kind"].str.startswith("image:") & (rows["status"] == schema.STATUS_OK)]
    missed = copies[~found[copies.index]]
    reached = rows[(rows["status"] == schema.STATUS_OK) & ~rows["stage"].isin(["exact", "caption"])]
    original_blob = rows[rows["kind"] == "original"].set_index("group")["blob"]
    gone = ~original_blob.loc[missed["group"]].isin(set(reached["blob"])).to_numpy()
    return f"image copies missed: {len(missed)}; original's bytes dropped before the image stage ran: {int(gone.sum())}"


def caption_misses(rows: pd.DataFrame, found: pd.Series, config: CaptionDedupConfig) -> str:
    """Exact Jaccard (of the stage's own shingles) between each missed caption copy and its original."""
    copies = rows[rows["kind"].str.startswith("caption:") & (rows["status"] == schema.STATUS_OK)]
    missed = copies[~found[copies.index]]
    original = rows[rows["kind"] == "original"].set_index("group")["caption"]
    jaccard = []
    for caption, group in zip(missed["caption"], missed["group"], strict=True):
        a, b = set(shingles(caption, config)), set(shingles(original[group], config))
        jaccard.append(len(a & b) / len(a | b))
    jaccard = np.array(jaccard) if jaccard else np.zeros(1)
    above = int((jaccard >= config.threshold).sum()) if len(missed) else 0
    return (f"caption copies missed: {len(missed)}; exact Jaccard to the original min {jaccard.min():.2f} "
            f"median {np.median(jaccard):.2f} max {jaccard.max():.2f}; at or above the threshold: {above}")  # fmt: skip


def negatives(rows: pd.DataFrame) -> str:
    """Template negatives: distinct plant photos sharing a species caption, and how many of them were dropped."""
    plant = rows[(rows["kind"] == "distinct") & (rows["domain"] == "plant") & (rows["status"] == schema.STATUS_OK)]
    per_caption = plant.groupby("caption").size()
    same_caption_pairs = int((per_caption * (per_caption - 1) // 2).sum())
    dropped = plant["stage"].value_counts().to_dict()
    general = rows[(rows["kind"] == "distinct") & (rows["domain"] == "general")]
    return (f"template negatives: {len(plant)} distinct plant photos, {len(per_caption)} template captions, "
            f"{same_caption_pairs} same-caption pairs; dropped: {dropped or 0}; distinct general rows dropped: "
            f"{general['stage'].value_counts().to_dict() or 0}")  # fmt: skip


def hardest_cosines(rows: pd.DataFrame, vectors: np.ndarray, centroid_of: np.ndarray) -> str:
    """The closest pair of images of different groups (same centroid), and the farthest planted image copy."""
    ok = rows[rows["status"] == schema.STATUS_OK]
    stored = vectors.astype(np.float16).astype(np.float32)
    hardest = 0.0
    for _, members in ok.groupby(centroid_of[ok["image"].to_numpy()]):
        images, groups = members["image"].to_numpy(), members["group"].to_numpy()
        sims = stored[images] @ stored[images].T
        sims[groups[:, None] == groups[None, :]] = -1
        hardest = max(hardest, float(sims.max()))
    copies = ok[ok["kind"].str.startswith("image:")]
    originals = ok[ok["kind"] == "original"].set_index("group")["image"]
    near = (stored[copies["image"].to_numpy()] * stored[originals.loc[copies["group"]].to_numpy()]).sum(axis=1)
    return (
        f"cosines: closest distinct pair {hardest:.4f}; planted image copies min {near.min():.4f} max {near.max():.4f}"
    )


def report(rows: pd.DataFrame, gen: Generator, vectors: np.ndarray, build: Build) -> tuple[Score, Score]:
    for stage in POINTER:
        score, copies, found = stage_score(rows, stage)
        print(score.line(stage))
        print(f"         found by kind: {breakdown(rows, copies, found)}")
        if stage == "caption":
            print(f"         {caption_misses(rows, found, build.recipe.dedup.caption)}")
        if stage == "image":
            print(f"         {image_misses(rows, found)}")
    mixed = rows[rows["mixed"]]
    mixed_score = overall_score(mixed)
    print(mixed_score.line("mixed groups (row level, as overall)"))
    pointers_dropped = rows["stage"].notna() & rows["pointer"].map(rows["stage"]).notna()
    print(f"drops pointing at a row that is itself dropped: {int(pointers_dropped.sum())}")
    print(negatives(rows))
    print(hardest_cosines(rows, vectors, np.array(gen.centroid_of)))
    overall, pairwise = overall_score(rows), pairwise_score(rows)
    print(overall.line("overall"))
    print(pairwise.line("pairwise").replace("drops", "predicted pairs").replace("positives", "true pairs"))
    return overall, pairwise


# ---- driver --------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace, work: Path) -> str:
    start = time.perf_counter()
    gen = Generator(args.seed)
    gen.generate(args.rows)
    sources = gen.write_sources(work)
    vectors = gen.embeddings()
    truth = gen.truth()
    kinds = Counter(k.split(":")[0] for k in truth["kind"])
    print(f"generated {len(truth)} rows in {time.perf_counter() - start:.1f}s: {dict(kinds)}; "
          f"{truth['group'].nunique()} groups", flush=True)  # fmt: skip
    build = Build.of(make_recipe(work, sources, args))
    start = time.perf_counter()
    shards, truth = crawl_and_plan(build, truth)
    truth = truth.set_index("sample_id")
    crawl_s = time.perf_counter() - start
    start = time.perf_counter()
    for shard in shards:
        download = synthesize_download(build, shard, truth)
        synthesize_embed(build, shard, download, truth, vectors)
    synth_s = time.perf_counter() - start
    seconds = run_dedup_chain(build)
    timing = ", ".join(f"{name} {s:.2f}s" for name, s in seconds.items())
    print(f"crawl + plan {crawl_s:.1f}s ({len(shards)} shards); synthesize {synth_s:.1f}s; {timing}", flush=True)
    dedup = build.recipe.dedup
    print(f"config: caption {vars(dedup.caption)}; image {vars(dedup.image)}")
    rows = judged(build, truth)
    overall, pairwise = report(rows, gen, vectors, build)
    return (f"RESULT dedup_quality f1={overall.f1:.4f} precision={overall.precision:.4f} recall={overall.recall:.4f} "
            f"rows={len(rows)} pair_f1={pairwise.f1:.4f} image_threshold={dedup.image.threshold} "
            f"caption_threshold={dedup.caption.threshold}")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-threshold", type=float, default=None, help="default: ImageDedupConfig's")
    parser.add_argument("--caption-threshold", type=float, default=None, help="default: CaptionDedupConfig's")
    parser.add_argument("--caption-only-kinds", nargs="+", default=CaptionDedupConfig().caption_only_kinds)
    parser.add_argument("--keep", action="store_true", help="keep the temporary build folder")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="plantmix-dedup-quality-"))
    try:
        line = run(args, work)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(line)


if __name__ == "__main__":
    main()
