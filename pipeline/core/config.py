"""Typed build recipes: one dataclass per stage, composed by :class:`Recipe`, validated once at load.

A recipe is a YAML file (``manifests/recipes/*.yaml``). Unknown or missing keys and wrong types are
reported with the file and the dotted key path, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.core.layout import SAFE_NAME_RULE, is_safe_name
from pipeline.core.schema import CAPTION_STYLES
from pipeline.net.addresses import AllowEntry


@functools.lru_cache(maxsize=16)
def _file_sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _file_sha256_cached(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


class RecipeError(ValueError):
    """A recipe file that does not match the expected shape."""


# The domains a row can belong to (the manifest's ``domain``); every per-domain key of a recipe is one of them.
DOMAINS = ("plant", "general")


def check_domain_keys(keys: Iterable[str], where: str) -> None:
    """A per-domain key that names no domain (``plants``) would exempt that domain's rows silently: refuse it."""
    unknown = sorted(str(key) for key in keys if key not in DOMAINS)
    if unknown:
        raise RecipeError(f"{where}: unknown domain(s) {unknown}; expected some of {list(DOMAINS)}")


@dataclass
class SourceSpec:
    name: str  # registry-independent name of this source in the build, e.g. "inaturalist"
    adapter: str  # adapter name in pipeline/sources/sources.yaml, e.g. "inaturalist", "gbif_dwca"
    options: dict[str, Any] = field(default_factory=dict)  # the adapter's own Config fields

    def __post_init__(self) -> None:
        if not is_safe_name(self.name):  # it names the crawl's file and folders: never a path out of the build
            raise RecipeError(f"name: {self.name!r} is not a valid source name; expected {SAFE_NAME_RULE}")
        if "domain" in self.options:  # adapters with a domain option (pools, folders) take it from the recipe
            check_domain_keys([self.options["domain"]], "options.domain")


@dataclass
class DownloadConfig:
    image_size: int = 256  # img2dataset image_size
    resize_mode: str = "keep_ratio"  # img2dataset resize_mode: no, border, keep_ratio, keep_ratio_largest, center_crop
    resize_only_if_bigger: bool = True
    encode_format: str = "jpg"
    encode_quality: int = 95
    min_image_size: int = 0  # img2dataset refuses smaller images (status failed_resize)
    max_aspect_ratio: float = math.inf
    shard_size: int = 10_000  # rows per download shard (img2dataset number_sample_per_shard)
    thread_count: int = 64  # download threads per shard
    timeout: int = 10  # seconds per request
    retries: int = 1  # retries per URL (transient network errors)
    user_agent: str = "PlantMixBot/0.1 (+https://github.com/plantmix/plantmix; image-text research dataset)"
    user_agent_token: str = "plantmix"  # product token matched in robots.txt groups and X-Robots-Tag directives
    disallowed_header_directives: list[str] = field(
        default_factory=lambda: ["noai", "noimageai", "noindex", "noimageindex"]
    )  # X-Robots-Tag directives that opt an image out of our dataset
    respect_robots_txt: bool = True  # check each host's robots.txt for our token before fetching
    max_requests_per_host_per_second: float = 5.0  # per-host rate limit inside one download process
    # Per-host exceptions to that limit, e.g. {"inaturalist-open-data.s3.amazonaws.com": 50} for a CDN/bucket.
    host_rate_overrides: dict[str, float] = field(default_factory=dict)
    # A 429/503 answer's Retry-After holds that host's requests until then; a longer wait than this is not slept
    # through: the host's rows fail (failed_download, "host asked to wait") without a request until it passes.
    max_retry_after_seconds: float = 120.0
    shard_timeout_seconds: float = 6 * 3600  # a shard still running after this is killed and retried
    url_rewrite: dict[str, str] = field(default_factory=dict)  # URL prefix -> replacement (mirrors, offline sample)
    # The fetch policy (pipeline/net) on every request, robots.txt and each redirect hop included. Only public
    # addresses are connected to; these hosts may be local: a name, IP or CIDR network, ":port" optional
    # (a LAN mirror "mirror.lan", "10.1.2.0/24"; the demo runner adds its own loopback sample server).
    allow_local_hosts: list[str] = field(default_factory=list)
    max_response_bytes: int = 30_000_000  # a larger body is refused (status too_large)
    max_request_seconds: float = 60.0  # per request, redirects and body included (status failed_download)
    max_redirects: int = 5  # hops, each re-checked: URL, address, robots.txt of its host
    max_image_area: float = 40_000_000  # pixels from the image header, checked before decoding (too_large)
    dns_cache_seconds: float = 300.0  # a host's addresses reused this long per download process (0: no cache)
    ca_file: str | None = None  # PEM bundle to verify HTTPS with instead of the system's (a mirror's private CA)

    def __post_init__(self) -> None:
        for entry in self.allow_local_hosts:
            try:
                AllowEntry.parse(entry)
            except ValueError as err:
                raise RecipeError(f"download.allow_local_hosts: {err}") from None
        for name in ("max_response_bytes", "max_request_seconds", "max_image_area"):
            if not getattr(self, name) > 0:
                raise RecipeError(f"download.{name}: expected a positive number, got {getattr(self, name)!r}")


@dataclass
class EmbedConfig:
    model: str = "ViT-B-16-quickgelu"  # open_clip model name (OpenAI's weights were trained with QuickGELU)
    pretrained: str | None = "openai"  # open_clip pretrained tag, or a local checkpoint path (open_clip or DALIP)
    random_init: bool = False  # no weights at all: seeded random init (tests and the offline demo only)
    model_config: str | None = None  # extra open_clip model config JSON to register (custom / tiny models)
    seed: int = 0  # init seed when random_init
    batch_size: int = 256
    workers: int = 2  # DataLoader worker processes decoding and preprocessing images
    device: str | None = None  # "cuda", "cpu"; None = cuda when available
    threads: int | None = None  # torch intra-op threads on CPU; None = torch's default

    def __post_init__(self) -> None:
        if self.random_init == bool(self.pretrained):
            raise RecipeError("embed: give exactly one of pretrained (tag or path) and random_init: true")

    @property
    def model_id(self) -> str:
        """What ``clip_model`` records: name plus weights (tag; file and content hash; or random seed)."""
        if self.random_init:
            return f"{self.model}:random-init-seed{self.seed}"
        path = Path(self.pretrained)
        if path.is_file():  # a retrained checkpoint at the same path is another model
            return f"{self.model}:{path.name}@sha256:{_file_sha256(path)[:16]}"
        return f"{self.model}:{self.pretrained}"


@dataclass
class FilterConfig:
    """Quality rules applied when the manifest is written; the first failing rule names the drop_reason.

    Order: min_image_side, max_aspect_ratio, caption_words, caption_chars, clip_score_min, clip_top_fraction.
    """

    min_image_side: int = 0  # shorter side of the original image, pixels
    max_aspect_ratio: float = math.inf  # longer / shorter side of the original image
    caption_min_words: int = 0
    caption_max_words: int | None = None
    caption_min_chars: int = 0
    caption_max_chars: int | None = None
    clip_score_min: float | None = None  # absolute cosine(image, text) threshold
    # Per domain, keep the top fraction by CLIP score (DataComp style): the fraction becomes one threshold over
    # every scored row of that domain, then applies row by row. E.g. {"plant": 0.7, "general": 0.3}.
    clip_top_fraction: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_domain_keys(self.clip_top_fraction, "clip_top_fraction")
        for domain, fraction in self.clip_top_fraction.items():
            if not 0 < fraction <= 1:
                raise RecipeError(f"clip_top_fraction.{domain}: expected a fraction in (0, 1], got {fraction}")


@dataclass
class ExactDedupConfig:
    """Identical items: the same canonical URL or the same image bytes (``image_sha256``), among downloaded rows."""

    by_url: bool = True  # scheme, host case, default port and fragment do not make two URLs different
    by_image_sha256: bool = True


@dataclass
class CaptionDedupConfig:
    """Caption near-duplicates: datasketch MinHash + LSH over caption shingles, clusters by union-find."""

    shingle: str = "char"  # "char" n-grams (short alt texts) or "word" n-grams
    ngram: int = 5  # shingle length (characters or words); shorter texts are one shingle
    num_perm: int = 128  # MinHash permutations
    threshold: float = 0.8  # Jaccard similarity (estimated from the signatures) that makes two captions duplicates
    seed: int = 1  # MinHash permutation seed (datasketch's default, so signatures equal its MinHash)
    backend: str = "memory"  # LSH index: "memory" (one process) or "redis" (datasketch's Redis storage, a cluster)
    redis_url: str | None = None  # e.g. redis://10.0.0.5:6379/0 when backend is "redis"
    # Caption kinds whose similarity alone may drop a row (free text: alt text, titles). Templated captions
    # ("Iris tectorum, commonly known as Wall iris.") repeat for every image of a species: never dropped on caption.
    caption_only_kinds: list[str] = field(default_factory=lambda: ["original"])

    def __post_init__(self) -> None:
        if self.shingle not in ("char", "word"):
            raise RecipeError(f"shingle: expected 'char' or 'word', got {self.shingle!r}")
        if self.backend not in ("memory", "redis"):
            raise RecipeError(f"backend: expected 'memory' or 'redis', got {self.backend!r}")
        if self.backend == "redis" and not self.redis_url:
            raise RecipeError("backend redis needs redis_url, e.g. redis://127.0.0.1:6379/0")
        if not 0 < self.threshold <= 1:
            raise RecipeError(f"threshold: expected a Jaccard similarity in (0, 1], got {self.threshold}")


@dataclass
class ImageDedupConfig:
    """Image near-duplicates: FAISS over the embed stage's image embeddings, clusters by union-find."""

    threshold: float = 0.95  # cosine similarity of L2-normalised image embeddings that makes two images duplicates
    exact_max_rows: int = 20_000  # exact search (IndexFlatIP) up to this many rows, IVF lists above
    nlist: int | None = None  # IVF lists; None = 2 * sqrt(rows)
    nprobe: int = 4  # IVF lists searched per row (recall 0.999 on 1M rows in benchmarks/image_dedup.py)
    k: int = 32  # unused: every search is a range search (kept so older recipes still load)
    chunk_rows: int = 65_536  # queries per search call: bounds memory
    method: str = "threshold"  # "threshold" (all pairs above it) or "semdedup" (k-means, then within clusters)
    semdedup_clusters: int | None = None  # k-means clusters for semdedup; None = about sqrt(rows)

    def __post_init__(self) -> None:
        if not -1 <= self.threshold <= 1:
            raise RecipeError(f"threshold: expected a cosine similarity in [-1, 1], got {self.threshold}")
        if self.method not in ("threshold", "semdedup"):
            raise RecipeError(f"method: expected 'threshold' or 'semdedup', got {self.method!r}")


@dataclass
class DecontaminationConfig:
    """Training rows whose image matches an evaluation image are dropped (``contaminates`` names the benchmark)."""

    # Benchmark name -> a folder of images (searched recursively) or a glob of webdataset shards.
    eval_sets: dict[str, str] = field(default_factory=dict)
    threshold: float = 0.95  # image-embedding cosine above which a training image counts as an evaluation image


@dataclass
class DedupConfig:
    """The dedup stages; a section left out is off. Order of the drop reasons: contamination, exact, caption, image."""

    exact: ExactDedupConfig | None = field(default_factory=ExactDedupConfig)
    caption: CaptionDedupConfig | None = field(default_factory=CaptionDedupConfig)
    image: ImageDedupConfig | None = field(default_factory=ImageDedupConfig)
    decontamination: DecontaminationConfig | None = None


# License families (the code without its version: cc-by-sa-4.0 -> cc-by-sa) whose images may be repacked. The
# "no derivatives" licenses are left out: the downloaded copies are resized, which they do not allow.
REDISTRIBUTABLE_LICENSES = ["cc0", "pdm", "cc-by", "cc-by-sa", "cc-by-nc", "cc-by-nc-sa"]


@dataclass
class DomainSampling:
    """How one domain's rows are drawn: caps first, then strata filled evenly so the long tail survives.

    ``stratify_by``: "species" (rows of rare species are taken before a common species gets more), "source" (each
    source in turn), or "none" (uniform). Caps drop rows beyond the cap (reasons over_species_cap, over_source_cap).
    """

    stratify_by: str = "species"
    max_per_species: int | None = None
    max_per_source: int | None = None

    def __post_init__(self) -> None:
        if self.stratify_by not in ("species", "source", "none"):
            raise RecipeError(f"stratify_by: expected 'species', 'source' or 'none', got {self.stratify_by!r}")
        for name in ("max_per_species", "max_per_source"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise RecipeError(f"{name}: expected a positive count, got {getattr(self, name)}")


@dataclass
class LicensePolicy:
    """Which kept rows may be packed into the release shards; the others are excluded or released as URLs only."""

    redistribute: list[str] = field(default_factory=lambda: list(REDISTRIBUTABLE_LICENSES))
    otherwise: str = "exclude"  # "exclude" (reason license_excluded) or "url_only" (released as url + metadata)

    def __post_init__(self) -> None:
        if self.otherwise not in ("exclude", "url_only"):
            raise RecipeError(f"otherwise: expected 'exclude' or 'url_only', got {self.otherwise!r}")


@dataclass
class SampleConfig:
    """The release's exact selection from the kept rows: ``total`` + ``general_share``, or ``counts`` per domain."""

    total: int | None = None  # rows in the release (13_000_000 for PlantMix-13M)
    general_share: float | None = None  # share of ``total`` from the general domain (PlantMix: 3/13)
    share_from_mixing_law: bool = False  # take the share from the mix stage's fit (mixing_law.json) instead
    counts: dict[str, int] = field(default_factory=dict)  # or explicit counts, e.g. {plant: 10_000_000, general: ...}
    seed: int = 0  # selection and shuffle; the same seed gives the same release
    plant: DomainSampling = field(default_factory=DomainSampling)
    general: DomainSampling = field(default_factory=lambda: DomainSampling(stratify_by="source"))
    allow_upsampling: bool = False  # a domain short of its count repeats rows (sample_repeat) instead of failing
    licenses: LicensePolicy = field(default_factory=LicensePolicy)

    def __post_init__(self) -> None:
        if self.counts:
            if self.total is not None or self.general_share is not None:
                raise RecipeError("sample: give either counts or total + general_share, not both")
            unknown = sorted(set(self.counts) - set(DOMAINS))
            if unknown or any(n < 0 for n in self.counts.values()):
                raise RecipeError(f"sample.counts: expected non-negative counts for {DOMAINS}, got {self.counts}")
        elif self.total is None or (self.general_share is None) == (not self.share_from_mixing_law):
            raise RecipeError("sample: give total and general_share (e.g. 13000000 and 0.23) or total and "
                              "share_from_mixing_law: true, or counts per domain")  # fmt: skip
        elif self.share_from_mixing_law:
            return
        elif self.total < 0 or not 0 <= self.general_share <= 1:
            raise RecipeError(f"sample: expected total >= 0 and general_share in [0, 1], got {self.total}, "
                              f"{self.general_share}")  # fmt: skip

    def targets(self, fitted_share: float | None = None) -> dict[str, int]:
        """Rows per domain: the explicit counts, or ``total`` split by the general share (general rounded): the
        recipe's ``general_share``, or ``fitted_share`` (the mixing law's) with ``share_from_mixing_law``."""
        if self.counts:
            return {domain: int(self.counts.get(domain, 0)) for domain in DOMAINS}
        share = fitted_share if self.share_from_mixing_law else self.general_share
        if share is None:
            raise RecipeError("sample.share_from_mixing_law: no fitted share yet; the mix stage has not run")
        general = round(self.total * share)
        return {"plant": self.total - general, "general": general}

    def domain(self, name: str) -> DomainSampling:
        return getattr(self, name)


@dataclass
class MixingLawConfig:
    """The proxy runs that choose the general-domain share (DESIGN.md section 6, the ``mix`` stage).

    One proxy per share: ``proxy_rows`` kept rows at that general share, trained with ``dalip.train`` and scored by
    its loss on held-out plant and general rows (``dalip.validate``); the law is fitted per domain and ``rule``
    picks the share. ``critical``: the smallest share whose fitted general loss is at most ``reference`` (L0); with
    no reference, L0 = the fitted general loss at share 1 times (1 + ``reference_tolerance``).
    """

    shares: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.5])
    proxy_rows: int = 100_000  # training rows per proxy
    heldout_rows: int = 5_000  # per domain: held out of every proxy, never trained on
    seed: int = 0
    batch_size: int = 256  # training and validation batch (the contrastive loss depends on it)
    train_args: list[str] = field(default_factory=lambda: ["--model", "ViT-B-16", "--epochs", "1"])
    rule: str = "critical"  # "critical" or "weighted"
    reference: float | None = None  # L0 of the critical rule, e.g. the starting model's general loss
    reference_tolerance: float = 0.05
    weights: dict[str, float] = field(default_factory=dict)  # the weighted rule's weight per domain
    allow_unreliable: bool = False  # go on with a fit flagged unreliable (toy scale); otherwise the build stops

    def __post_init__(self) -> None:
        if (
            len(self.shares) < 4
            or any(not 0 <= s <= 1 for s in self.shares)
            or len(set(self.shares)) != len(self.shares)
        ):
            raise RecipeError(f"shares: expected at least 4 distinct shares in [0, 1] (the law has 3 parameters), "
                              f"got {self.shares}")  # fmt: skip
        if self.rule not in ("critical", "weighted"):
            raise RecipeError(f"rule: expected 'critical' or 'weighted', got {self.rule!r}")
        check_domain_keys(self.weights, "weights")


@dataclass
class PublishConfig:
    """The release: equal-size webdataset shards of the selection, its manifest, card and attribution."""

    shard_size: int = 10_000  # samples per release shard (the last may be short); each shard is one unit

    def __post_init__(self) -> None:
        if self.shard_size < 1:
            raise RecipeError(f"shard_size: expected a positive count, got {self.shard_size}")


@dataclass
class DuckDBConfig:
    """How the global steps (plan, repeat check, thresholds, merge) run DuckDB; memory stays under the limit."""

    memory_limit: str = "2GB"  # DuckDB spills joins and sorts to temp_directory beyond this
    threads: int | None = None  # None = DuckDB's default (all cores)
    temp_directory: str | None = None  # spill space; None = <system temp>/plantmix-duckdb


@dataclass
class Recipe:
    name: str  # build name, also the deployment name
    output_dir: str  # build folder or fsspec URL (s3://...); relative paths are relative to the current directory
    sources: list[SourceSpec]
    caption_style: str = "dalip"  # one of CAPTION_STYLES
    download: DownloadConfig = field(default_factory=DownloadConfig)
    embed: EmbedConfig | None = None  # CLIP embeddings + scores per shard; None = stage off
    dedup: DedupConfig | None = None  # exact, caption, image dedup and decontamination; None = stages off
    filter: FilterConfig = field(default_factory=FilterConfig)  # quality and CLIP-score rules
    duckdb: DuckDBConfig = field(default_factory=DuckDBConfig)  # the global steps' DuckDB limits
    mixing_law: MixingLawConfig | None = None  # proxy runs + law fit that choose the general share; None = off
    sample: SampleConfig | None = None  # the release's exact selection; None = no sample, no release
    publish: PublishConfig = field(default_factory=PublishConfig)  # the release's shards (with a sample section)
    serve_sample: str | None = None  # folder served on loopback during the build (bundled offline sample)
    sample_host: str = "http://sample.plantmix.invalid/"  # URL prefix the sample's exports use
    later_stages: dict[str, Any] = field(default_factory=dict)  # placeholders for stages not built yet
    path: str | None = None  # the file this recipe was loaded from (set by load_recipe)

    def __post_init__(self) -> None:
        if self.caption_style not in CAPTION_STYLES:
            raise RecipeError(f"caption_style: expected one of {CAPTION_STYLES}, got {self.caption_style!r}")
        names = [s.name for s in self.sources]
        if not names:
            raise RecipeError("sources: expected at least one source")
        if len(set(names)) != len(names):
            raise RecipeError(f"sources: names must be unique, got {names}")
        if self.embed is None and (self.filter.clip_score_min is not None or self.filter.clip_top_fraction):
            raise RecipeError("filter: CLIP-score rules need the embed stage; add an `embed:` section")
        if self.embed is None and self.dedup and (self.dedup.image or self.dedup.decontamination):
            raise RecipeError("dedup: image dedup and decontamination need the embed stage; add an `embed:` section")


def _build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a YAML mapping, checking keys and simple types."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}")
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError(f"{where}: missing required key(s) {missing}")
    try:
        return cls(**kwargs)
    except RecipeError as err:
        raise RecipeError(f"{where}: {err}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        return _convert(hint, value, where)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and value in ("inf", ".inf"):
        return math.inf
    if hint in (int, str, bool) and type(value) is not hint:
        raise RecipeError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def load_recipe(path: str | Path) -> Recipe:
    """Load and validate a recipe YAML file; errors name the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    try:
        recipe = _build(Recipe, data, "recipe")
    except RecipeError as err:
        raise RecipeError(f"{path}: {err}") from None
    recipe.path = str(path)
    return recipe


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return dataclasses.asdict(recipe)
