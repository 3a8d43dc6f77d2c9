"""The release card: ``RELEASE.md`` and ``plots/*.png``, every number a DuckDB query over the two manifests.

The card is what a user reads before training on a release, so it answers their questions in order: what is in
it (targets, shares, sources, licenses, species), how it was made (the funnel from candidates to the release,
with every drop's reason, the CLIP-score filter, the mixing law, the recipe verbatim) and how to train on it.
A build manifest can hold 13M rows: counts, histograms and per-species sizes are aggregated in SQL and only the
small results reach Python. Plots use matplotlib's Agg canvas without pyplot (no global state, no display) and
no timestamp in their metadata, so the same inputs give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import yaml

from pipeline.core import schema
from pipeline.core.duck import literal
from pipeline.core.io import open_input

# Drop reasons the dedup stages' rules give (dedup/exact.py, caption.py, image.py, decontaminate.py); the judge
# applies them before the quality and CLIP rules, so a kept-for-download row dropped for one of these left the
# funnel at dedup and any other reason means the filter. Named here because no stage imports another.
DEDUP_REASONS = ("contaminated", "exact_duplicate", "caption_duplicate", "image_duplicate")
# The funnel's steps: a row leaves at step k (1..4) with a reason, or survives to the release (5).
STEPS = ("candidates", "downloaded (status ok)", "after dedup", "after filter (kept)", "sampled (selected)")
LEFT_AT = {1: "download", 2: "dedup", 3: "filter", 4: "sample"}
HISTOGRAM_BINS = 40
SMALL_SPECIES = 10  # the long tail: species with fewer released images than this
PNG_METADATA = {"Software": None}  # matplotlib writes no date into PNGs; without its version reruns match too


def write_card(
    con: duckdb.DuckDBPyConnection, build_manifest: str, release_manifest: str, release: dict, out: Path
) -> list[str]:
    """Write out/RELEASE.md and out/plots/*.png; return the written paths relative to out.

    ``out`` is a local scratch folder the caller publishes. A ``release`` whose counts (packed, URL-only, shards)
    or recipe sha256 disagree with the release manifest or the recipe text raises ``ValueError`` before
    RELEASE.md is written: a card that contradicts release.json would mislead every reader.
    """
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    build, released = _scan(build_manifest), _scan(release_manifest)
    packing = _packing(con, released)
    _check_against_release_json(packing, release.get("counts", {}), release_manifest)
    drops = _funnel_drops(con, build)
    written = [_plot_funnel(_funnel_sizes(drops), out / "plots" / "funnel.png")]
    species = _images_per_species(con, released)
    written.append(_plot_long_tail(species, out / "plots" / "species_long_tail.png"))
    histograms = _clip_histograms(con, build)
    if histograms:
        written.append(_plot_clip_histograms(histograms, out / "plots" / "clip_scores.png"))
    mixing = release.get("mixing_law")
    if mixing:
        written.append(_copy_plot(mixing["plot"], out / "plots" / "mixing_law.png"))
    sections = [
        _header(release, packing),
        _funnel_section(drops, packing),
        _sources_section(con, build, released),
        _licenses_section(con, released),
        _species_section(con, released, species),
        _clip_section(con, build, bool(histograms)),
        _mixing_section(mixing),
        _recipe_section(release),
        _training_section(release, packing),
    ]
    (out / "RELEASE.md").write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8", newline="\n")
    return ["RELEASE.md"] + sorted(str(Path(p).relative_to(out)) for p in written)


# --- facts (DuckDB) --------------------------------------------------------------------------------------------


def _scan(path: str) -> str:
    return f"read_parquet({literal(path)})"


def _steps(build: str) -> str:
    """Each candidate with the step it leaves the funnel at (5 = released) and why, as a subquery.

    The order follows the judge's rule precedence (status, then dedup, then quality and CLIP) and then sampling,
    so each row is counted once and the steps add up by construction.
    """
    dedup = ", ".join(literal(r) for r in DEDUP_REASONS)
    ok = literal(schema.STATUS_OK)
    return f"""(
        SELECT *,
            CASE WHEN status IS DISTINCT FROM {ok} THEN 1
                 WHEN keep IS NOT TRUE AND drop_reason IN ({dedup}) THEN 2
                 WHEN keep IS NOT TRUE THEN 3
                 WHEN selected IS NOT TRUE THEN 4
                 ELSE 5 END AS left_at,
            CASE WHEN status IS DISTINCT FROM {ok} THEN coalesce(status, '(no status)')
                 WHEN keep IS NOT TRUE THEN coalesce(drop_reason, '(no reason recorded)')
                 WHEN selected IS NULL THEN '(sampling has not run)'
                 WHEN NOT selected THEN coalesce(sample_reason, '(no reason recorded)')
            END AS left_because
        FROM {build})"""


def _funnel_drops(con: duckdb.DuckDBPyConnection, build: str) -> list[tuple[int, str | None, int]]:
    """``(step left at, reason, rows)``, largest first within a step; step 5 (released) has no reason."""
    sql = f"SELECT left_at, left_because, count(*) FROM {_steps(build)} GROUP BY ALL ORDER BY 1, 3 DESC, 2"
    return [(int(step), reason, int(n)) for step, reason, n in con.sql(sql).fetchall()]


def _funnel_sizes(drops: list[tuple[int, str | None, int]]) -> list[int]:
    """Rows still in the funnel at each of ``STEPS``: those that leave at a later step."""
    return [sum(n for step, _, n in drops if step > k) for k in range(len(STEPS))]


def _packing(con: duckdb.DuckDBPyConnection, released: str) -> dict[str, Any]:
    """Released copies, packed (bytes in the shards) and URL-only, and the shard names, from the release manifest."""
    rows, packed = con.sql(f"SELECT count(*), count(*) FILTER (WHERE keep) FROM {released}").fetchall()[0]
    shards = [s for (s,) in con.sql(f"SELECT DISTINCT shard FROM {released} WHERE keep ORDER BY 1").fetchall()]
    by_domain = dict(con.sql(f"SELECT domain, count(*) FROM {released} GROUP BY 1 ORDER BY 1").fetchall())
    return {"rows": rows, "packed": packed, "url_only": rows - packed, "shards": shards, "by_domain": by_domain}


def _check_against_release_json(packing: dict[str, Any], counts: dict[str, Any], where: str) -> None:
    """The card and release.json describe the same release; a disagreement means one of them is stale."""
    mine = {"packed": packing["packed"], "url_only": packing["url_only"], "shards": len(packing["shards"])}
    wrong = {k: (counts[k], v) for k, v in mine.items() if k in counts and counts[k] != v}
    if wrong:
        raise ValueError(f"release counts disagree with {where} (release.json, manifest): {wrong}")


def _species_key() -> str:
    """A row's species: the taxonomy's species, else its scientific name when that is identified to species."""
    return "coalesce(nullif(taxonomy.species, ''), CASE WHEN taxon_rank = 'species' THEN scientific_name END)"


def _images_per_species(con: duckdb.DuckDBPyConnection, released: str) -> np.ndarray:
    """Distinct released plant images per species, largest first (one number per species, not per row)."""
    species = _species_key()
    sql = (
        f"SELECT count(DISTINCT sample_id) AS n FROM {released} WHERE domain = 'plant' AND {species} IS NOT NULL "
        f"GROUP BY {species} ORDER BY n DESC"
    )
    return con.sql(sql).fetchnumpy()["n"].astype(np.int64)


def _clip_histograms(con: duckdb.DuckDBPyConnection, build: str) -> dict[str, Any]:
    """Per domain, counts of kept and of selected rows in equal CLIP-score bins over the kept rows' range."""
    low, high = con.sql(f"SELECT min(clip_score), max(clip_score) FROM {build} WHERE keep").fetchall()[0]
    if low is None:
        return {}
    width = (float(high) - float(low)) / HISTOGRAM_BINS or 1.0
    sql = f"""
        SELECT domain, least(floor((clip_score - {float(low)!r}) / {width!r}), {HISTOGRAM_BINS - 1})::INT AS bin,
               count(*) AS kept, count(*) FILTER (WHERE selected) AS selected
        FROM {build} WHERE keep AND clip_score IS NOT NULL GROUP BY ALL ORDER BY ALL"""
    by_domain: dict[str, np.ndarray] = {}
    for domain, b, kept, selected in con.sql(sql).fetchall():
        by_domain.setdefault(domain, np.zeros((2, HISTOGRAM_BINS), dtype=np.int64))[:, b] = (kept, selected)
    return {"edges": float(low) + width * np.arange(HISTOGRAM_BINS + 1), "counts": by_domain}


# --- plots (matplotlib, Agg canvas) ----------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure  # imported here: only the publish step pays for matplotlib

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    fig.savefig(path, format="png", metadata=PNG_METADATA)
    return path


def _plot_funnel(sizes: list[int], path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    bars = ax.barh(range(len(STEPS)), sizes, color="#4c8c4a")
    ax.bar_label(bars, labels=[f"{n:,}" for n in sizes], padding=3)
    ax.set_yticks(range(len(STEPS)), STEPS)
    ax.invert_yaxis()
    ax.set_xlabel("rows")
    ax.set_title("From candidates to the release")
    ax.margins(x=0.15)
    return _save(fig, path)


def _plot_long_tail(species: np.ndarray, path: Path) -> Path:
    fig = _figure()
    ax = fig.subplots()
    if species.size:
        ax.plot(np.arange(1, species.size + 1), species, color="#4c8c4a", drawstyle="steps-post")
        ax.axhline(SMALL_SPECIES, color="grey", linestyle="--", linewidth=1, label=f"{SMALL_SPECIES} images")
        ax.legend()
    ax.set_yscale("log")
    ax.set_xlabel("species, most images first")
    ax.set_ylabel("released images (log scale)")
    ax.set_title(f"Images per species ({species.size:,} species)")
    return _save(fig, path)


def _plot_clip_histograms(histograms: dict[str, Any], path: Path) -> Path:
    domains = sorted(histograms["counts"])
    fig = _figure(7.0, 2.6 * len(domains))
    edges = histograms["edges"]
    for ax, domain in zip(np.atleast_1d(fig.subplots(len(domains), 1, sharex=True)), domains, strict=True):
        kept, selected = histograms["counts"][domain]
        ax.stairs(kept, edges, label="kept (after filter)", color="#9bbf8f", fill=True)
        ax.stairs(selected, edges, label="selected (released)", color="#2f5d2d", linewidth=1.5)
        ax.set_title(domain)
        ax.set_ylabel("rows")
        ax.legend()
    ax.set_xlabel("CLIP score (cosine of image and caption embeddings)")
    return _save(fig, path)


def _copy_plot(source: str, path: Path) -> Path:
    """The mixing-law figure as the mix stage drew it (a local path or any fsspec URL)."""
    with open_input(source) as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


# --- RELEASE.md --------------------------------------------------------------------------------------------------


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub table; numbers right-aligned with thousands separators, text with pipes escaped."""

    def cell(v: Any) -> str:
        if isinstance(v, bool) or v is None:
            return "" if v is None else str(v)
        if isinstance(v, int):
            return f"{v:,}"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")

    numeric = [
        bool(rows) and all(isinstance(r[i], int | float) or r[i] is None for r in rows) for i in range(len(headers))
    ]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("--:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _header(release: dict, packing: dict[str, Any]) -> str:
    target, by_domain = release.get("target", {}), packing["by_domain"]
    by_domain = {**by_domain, "total": packing["rows"]}
    rows = [[d, target.get(d), by_domain.get(d, 0), _share(by_domain.get(d, 0), packing["rows"])]
            for d in ("plant", "general", "total")]  # fmt: skip
    return "\n\n".join([
        f"# {release['name']}",
        f"{packing['rows']:,} released samples ({packing['packed']:,} packed in {len(packing['shards']):,} webdataset "
        f"shards, {packing['url_only']:,} URL-only rows whose license does not allow redistributing the bytes). "
        f"General-domain share: {release.get('general_share')}.",
        markdown_table(["domain", "target", "released copies", "share"], rows),
        f"- created: `{release.get('created_at')}`\n- code version: `{release.get('code_version')}`\n"
        f"- seed: `{release.get('seed')}`\n- recipe sha256: `{release.get('recipe_sha256')}`\n"
        "- credits: [ATTRIBUTION.md](ATTRIBUTION.md), per image in `ATTRIBUTION.csv`",
    ])  # fmt: skip


def _funnel_section(drops: list[tuple[int, str | None, int]], packing: dict[str, Any]) -> str:
    sizes = _funnel_sizes(drops)
    steps = [[name, sizes[k], None if k == 0 else sizes[k - 1] - sizes[k]] for k, name in enumerate(STEPS)]
    reasons = [[LEFT_AT[step], reason, n] for step, reason, n in drops if step in LEFT_AT]
    return "\n\n".join([
        "## Funnel",
        "Every candidate row of every source, and the step at which it left (the first failing rule wins).",
        "![funnel](plots/funnel.png)",
        markdown_table(["step", "rows", "left at this step"], steps),
        f"The {sizes[-1]:,} selected samples are {packing['rows']:,} released copies (upsampling repeats some).",
        "### Why rows left",
        markdown_table(["step", "reason", "rows"], reasons),
    ])  # fmt: skip


def _sources_section(con: duckdb.DuckDBPyConnection, build: str, released: str) -> str:
    sql = f"""
        WITH b AS (
            SELECT domain, source, count(*) AS candidates, count(*) FILTER (WHERE left_at > 1) AS downloaded,
                   count(*) FILTER (WHERE left_at > 2) AS deduped, count(*) FILTER (WHERE left_at > 3) AS kept,
                   count(*) FILTER (WHERE left_at > 4) AS selected
            FROM {_steps(build)} GROUP BY ALL),
        r AS (SELECT domain, source, count(*) AS copies, count(*) FILTER (WHERE keep) AS packed
              FROM {released} GROUP BY ALL)
        SELECT domain, source, coalesce(candidates, 0), coalesce(downloaded, 0), coalesce(deduped, 0),
               coalesce(kept, 0), coalesce(selected, 0), coalesce(copies, 0), coalesce(packed, 0),
               coalesce(copies, 0) - coalesce(packed, 0)
        FROM b FULL JOIN r USING (domain, source) ORDER BY domain, source"""
    rows = [list(r) for r in con.sql(sql).fetchall()]
    total = ["**total**", ""] + [sum(r[i] for r in rows) for i in range(2, 10)]
    headers = ["domain", "source", "candidates", "downloaded", "after dedup", "kept", "selected", "released copies",
               "packed", "URL-only"]  # fmt: skip
    return "## Sources and domains\n\n" + markdown_table(headers, rows + [total])


def _licenses_section(con: duckdb.DuckDBPyConnection, released: str) -> str:
    sql = f"""SELECT coalesce(license, '(none)'), count(*) AS n, count(*) FILTER (WHERE keep),
                     count(*) FILTER (WHERE NOT keep), count(DISTINCT rights_holder)
              FROM {released} GROUP BY 1 ORDER BY n DESC, 1"""
    rows = [list(r) for r in con.sql(sql).fetchall()]
    total = sum(r[1] for r in rows)
    rows = [r[:2] + [_share(r[1], total)] + r[2:] for r in rows]
    headers = ["license", "released copies", "share", "packed", "URL-only", "rights holders"]
    note = "Images keep their own licenses. CC BY-style licenses require credit: see [ATTRIBUTION.md](ATTRIBUTION.md)."
    return "## Licenses\n\n" + note + "\n\n" + markdown_table(headers, rows)


def _species_section(con: duckdb.DuckDBPyConnection, released: str, species: np.ndarray) -> str:
    unnamed = con.sql(
        f"SELECT count(DISTINCT sample_id) FROM {released} WHERE domain = 'plant' AND {_species_key()} IS NULL"
    ).fetchall()[0][0]
    small = int((species < SMALL_SPECIES).sum())
    rows = [
        ["species", int(species.size)],
        [f"species with fewer than {SMALL_SPECIES} images", small],
        [f"share of species with fewer than {SMALL_SPECIES} images", _share(small, int(species.size))],
        ["images per species, median", float(np.median(species)) if species.size else None],
        ["images per species, largest", int(species[0]) if species.size else None],
        ["plant images without a species-level name", int(unnamed)],
    ]
    return "\n\n".join([
        "## Taxonomy long tail",
        "Distinct released plant images per species (upsampled copies counted once).",
        "![images per species](plots/species_long_tail.png)",
        markdown_table(["", "value"], rows),
    ])  # fmt: skip


def _clip_section(con: duckdb.DuckDBPyConnection, build: str, has_plot: bool) -> str:
    sql = f"""SELECT domain, count(*) FILTER (WHERE keep), count(*) FILTER (WHERE selected),
                     median(clip_score) FILTER (WHERE keep), median(clip_score) FILTER (WHERE selected)
              FROM {build} WHERE keep AND clip_score IS NOT NULL GROUP BY 1 ORDER BY 1"""
    rows = [list(r) for r in con.sql(sql).fetchall()]
    if not has_plot:
        return "## CLIP scores\n\nNo kept row has a CLIP score."
    headers = ["domain", "kept", "selected", "median score, kept", "median score, selected"]
    return "## CLIP scores\n\n![CLIP scores per domain](plots/clip_scores.png)\n\n" + markdown_table(headers, rows)


def _mixing_section(mixing: dict | None) -> str:
    if not mixing:
        return "## Mixing law\n\nNo mixing-law fit for this release: the general share comes from the recipe."
    fit = json.dumps(mixing.get("fit", {}), indent=2, sort_keys=True, default=str)
    used = mixing.get("used_by_sample", True)
    share = f"General-domain share chosen by the fit ({mixing.get('rule', 'rule')} rule): {mixing.get('share')}"
    share += "; the sample used it." if used else "; the sample used the recipe's share instead."
    lines = ["## Mixing law", share, "![mixing law](plots/mixing_law.png)", f"```json\n{fit}\n```"]
    if mixing.get("problems"):
        lines.insert(2, "Flagged unreliable: " + "; ".join(mixing["problems"]))
    return "\n\n".join(lines)


def _recipe_section(release: dict) -> str:
    """The recipe file's own text where release.json has it (its sha256 must match), else the recipe as YAML."""
    sha = release.get("recipe_sha256")
    text = release.get("recipe_yaml")
    if text is None:
        text = yaml.safe_dump(release.get("recipe", {}), sort_keys=False, allow_unicode=True, default_flow_style=False)
        note = f"sha256 `{sha}`"
    elif hashlib.sha256(text.encode()).hexdigest() != sha:
        raise ValueError(f"recipe_sha256 {sha} is not the sha256 of release.json's recipe_yaml")
    else:
        note = f"sha256 of the text below: `{sha}`"
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", text)), default=0))
    return f"## Recipe\n\n{note}\n\n{fence}yaml\n{text.rstrip()}\n{fence}"


def _training_section(release: dict, packing: dict[str, Any]) -> str:
    """Both trainers, with the real shard range (open_clip expands the braces) and sample count filled in."""
    return "\n\n".join([
        "## Train on it",
        "`RELEASE` is the folder that holds this file. DALIP reads the manifest (captions, shards and keys):",
        f"```bash\nRELEASE=path/to/{release['name']}\n"
        'python -m dalip.train --manifest "$RELEASE/manifest.parquet" --output-dir runs/dalip \\\n'
        "    --model ViT-B-16-quickgelu --pretrained openai --batch-size 256 --epochs 1\n```",
        "open_clip's own trainer reads the shards (`<key>.jpg`, `<key>.txt`):",
        "```bash\npython -m open_clip_train.main --dataset-type webdataset \\\n"
        f"    --train-data \"$RELEASE/{_shard_pattern(packing['shards'])}\" "
        f"--train-num-samples {packing['packed']} \\\n"
        "    --model ViT-B-16-quickgelu --pretrained openai --batch-size 256 --epochs 1 --logs runs/open_clip\n```",
        f"URL-only rows ({packing['url_only']:,}) are in the manifest with `keep = false`: fetch them yourself "
        "(e.g. with img2dataset) under their own licenses if you want them.",
    ])  # fmt: skip


def _shard_pattern(shards: list[str]) -> str:
    """``shards/{00000..00012}.tar`` for the release's shards; they must be one run of numbered names."""
    if not shards:
        raise ValueError("the release manifest has no packed row (keep = true): there is nothing to train on")
    folders = {s.rpartition("/")[0] for s in shards}
    stems = [s.rpartition("/")[2].removesuffix(".tar") for s in shards]
    first = int(stems[0]) if stems[0].isdigit() else -1
    expected = [f"{i:0{len(stems[0])}d}" for i in range(first, first + len(stems))]
    if len(folders) != 1 or first < 0 or stems != expected or not all(s.endswith(".tar") for s in shards):
        raise ValueError(f"release shards are not one numbered run ({shards[0]} .. {shards[-1]}, {len(shards)} names)")
    (folder,) = folders
    prefix = f"{folder}/" if folder else ""
    return f"{prefix}{{{stems[0]}..{stems[-1]}}}.tar"
