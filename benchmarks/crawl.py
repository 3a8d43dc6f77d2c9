"""Benchmark: crawling an iNaturalist open-data export (the real schema) vs a bare DuckDB join + filter.

A synthetic export in the open-data layout (``photos``, ``observations``, ``taxa``, ``observers``: tab-separated,
a header line, no quoting; see ``pipeline/sources/inaturalist.py``) is written by DuckDB at each ``--photos``
size: a taxon tree (kingdoms Plantae and Animalia, phyla down to species, ``ancestry`` root first), 1.3 photos per
observation, 50 photos per observer, quality grades research/needs_id/casual (70/20/10), 80% plant observations,
five photo licenses (one empty: all rights reserved), a few photos with a dangling observation.

Ours: the crawl stage's unit for an ``inaturalist`` source (adapter, candidate rows with sample ids, captions,
licenses, attribution, rejections with reasons; repeated-id check), as ``pipeline.runner`` runs it.
Baseline: one DuckDB statement doing the same join and filter (research grade, under Plantae, a license, species
rank) and writing the same columns to Parquet (sample id, URL, page, caption and its variants, taxonomy from the
ancestry, license, attribution, ...) for the accepted rows only: no rejected rows, no reasons, no checks of
hostile values, plain string templates instead of the license table and caption rules. Each side runs in its own
child process, so its peak RSS is its own; ``--memory-limit`` is the recipe's ``duckdb.memory_limit`` for ours.

    python benchmarks/crawl.py                       # 100k and 1M photos
    python benchmarks/crawl.py --photos 20000 200000 # a quick check
    python benchmarks/crawl.py --format gbif_dwca    # a GBIF-download-shaped DwC-A, 100k and 1M media rows
    python benchmarks/crawl.py --partitions 4        # ours as 4 crawl_parts units on --workers 2 processes + join

With ``--partitions K`` ours is the source option ``partitions: K``: K ``crawl_parts`` units run by ``--workers``
processes, then the crawl stage joins them; its peak RSS is that of the largest process (one worker's).
Each size runs ``--repeat`` times (3), the two sides in alternation; a single run's times move by 5% or more
between identical runs on a shared machine. Last line: RESULT crawl ratio=<median over the runs of duckdb s / ours
s at the largest size> rss_growth=<our median peak RSS largest / smallest> rows_per_s=<ours at the largest size>
ratios=<each run's>
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
from child_run import own_peak_rss_mb, run_side

PLANTAE, ANIMALIA = 47126, 1
FANOUT = 6  # children per taxon from phylum down to genus; species per genus
RANKS = (("phylum", 60), ("class", 50), ("order", 40), ("family", 30), ("genus", 20), ("species", 10))


def write_export(folder: Path, photos: int) -> None:
    """The four tables of an iNaturalist export for ``photos`` photos, written by DuckDB."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    observations = max(1, photos * 10 // 13)
    observers = max(1, photos // 50)
    species_per_kingdom = max(FANOUT, photos // 40)

    def copy(sql: str, name: str) -> None:
        con.execute(f"COPY ({sql}) TO '{folder / name}' (FORMAT csv, DELIMITER '\t', HEADER, QUOTE '')")

    # Taxa: per kingdom a tree whose level L has ceil(species / FANOUT**(5-L)) nodes; node i of a level hangs
    # under node i // FANOUT of the level above (the phyla under the kingdom). Ids: kingdom, then by level.
    levels = []
    for k, (kingdom, kingdom_name) in enumerate(((PLANTAE, "Plantae"), (ANIMALIA, "Animalia"))):
        levels.append(f"SELECT {kingdom} AS taxon_id, '48460' AS ancestry, 70 AS rank_level, 'kingdom' AS rank, "
                      f"'{kingdom_name}' AS name, true AS active")  # fmt: skip
        parent = f"'48460/{kingdom}'"
        for depth, (rank, level) in enumerate(RANKS):
            count = -(-species_per_kingdom // FANOUT ** (len(RANKS) - 1 - depth))
            base = 100_000 + k * 50_000_000 + depth * 5_000_000
            parent_base = 100_000 + k * 50_000_000 + (depth - 1) * 5_000_000
            up = f"a{k}_{depth - 1}"  # the level above, this kingdom's
            ancestry = parent if depth == 0 else f"{up}.ancestry || '/' || {up}.taxon_id"
            name = (f"'Genus' || (t.i // {FANOUT}) || ' species' || t.i" if rank == "species"
                    else f"'{rank.title()}' || t.i")  # fmt: skip
            con.execute(
                f"""CREATE TEMP TABLE a{k}_{depth} AS
                SELECT {base} + t.i AS taxon_id, {ancestry} AS ancestry, {level} AS rank_level, '{rank}' AS rank,
                       {name} || '{kingdom_name[0]}' AS name, true AS active, t.i
                FROM range({count}) t(i)
                {"" if depth == 0 else f"JOIN {up} ON {up}.taxon_id = {parent_base} + t.i // {FANOUT}"}
                """
            )
            levels.append(f"SELECT taxon_id, ancestry, rank_level, rank, name, active FROM a{k}_{depth}")
        con.execute(f"CREATE TEMP TABLE species{k} AS SELECT taxon_id FROM a{k}_{len(RANKS) - 1}")
    copy(" UNION ALL ".join(levels), "taxa.csv")
    copy(
        f"SELECT i AS observer_id, 'login' || i AS login, CASE WHEN i % 3 = 0 THEN '' ELSE 'Observer ' || i END "
        f"AS name FROM range({observers}) t(i)",
        "observers.csv",
    )
    n_plant = con.sql("SELECT count(*) FROM species0").fetchall()[0][0]
    n_animal = con.sql("SELECT count(*) FROM species1").fetchall()[0][0]
    con.execute("CREATE TEMP TABLE p AS SELECT row_number() OVER (ORDER BY taxon_id) - 1 AS n, taxon_id FROM species0")
    con.execute("CREATE TEMP TABLE q AS SELECT row_number() OVER (ORDER BY taxon_id) - 1 AS n, taxon_id FROM species1")
    con.execute(
        f"""CREATE TEMP TABLE obs AS
            SELECT md5('o' || i::VARCHAR)::UUID::VARCHAR AS observation_uuid, hash(i, 1) % {observers} AS observer_id,
                   round(-60 + (hash(i, 2) % 120000) / 1000.0, 4) AS latitude,
                   round(-180 + (hash(i, 3) % 360000) / 1000.0, 4) AS longitude, 10 AS positional_accuracy,
                   coalesce(p.taxon_id, q.taxon_id) AS taxon_id,
                   CASE WHEN hash(i, 4) % 10 < 7 THEN 'research' WHEN hash(i, 4) % 10 < 9 THEN 'needs_id'
                        ELSE 'casual' END AS quality_grade,
                   DATE '2020-01-01' + CAST(hash(i, 5) % 1500 AS INTEGER) AS observed_on, i
            FROM range({observations}) t(i)
            LEFT JOIN p ON hash(i, 6) % 10 < 8  -- plants: log-uniform species ranks (a long tail)
                       AND p.n = CAST(floor(exp((hash(i, 7) % 1000003) / 1000003.0 * ln({n_plant}))) AS BIGINT) - 1
            LEFT JOIN q ON hash(i, 6) % 10 >= 8 AND q.n = hash(i, 7) % {n_animal}"""
    )
    copy("SELECT * EXCLUDE (i) FROM obs ORDER BY i", "observations.csv")
    licenses = "['CC-BY', 'CC-BY-NC', 'CC0', '', 'CC-BY-SA']"
    copy(
        f"""SELECT md5('p' || t.i::VARCHAR)::UUID AS photo_uuid, 1000 + t.i AS photo_id,
                   CASE WHEN t.i % 997 = 0 THEN md5('missing' || t.i::VARCHAR)::UUID::VARCHAR
                        ELSE o.observation_uuid::VARCHAR END AS observation_uuid,
                   o.observer_id, ['jpg', 'jpeg', 'png'][1 + CAST(hash(t.i, 8) % 3 AS BIGINT)] AS extension,
                   {licenses}[1 + CAST(hash(t.i, 9) % 5 AS BIGINT)] AS license, 2048 AS width, 1536 AS height,
                   CAST(t.i % 2 AS INTEGER) AS position
            FROM range({photos}) t(i) JOIN obs o ON o.i = t.i * {observations} // {photos}
            ORDER BY t.i""",
        "photos.csv",
    )


BARE_SQL = """
COPY (
    WITH taxa AS (SELECT * FROM read_csv('{d}/taxa.csv', delim='\t', quote='', header=true, all_varchar=true)),
    photos AS (SELECT * FROM read_csv('{d}/photos.csv', delim='\t', quote='', header=true, all_varchar=true)),
    observations AS (SELECT * FROM read_csv('{d}/observations.csv', delim='\t', quote='', header=true,
                                            all_varchar=true)),
    observers AS (SELECT * FROM read_csv('{d}/observers.csv', delim='\t', quote='', header=true, all_varchar=true)),
    chain AS (
        SELECT taxon_id, unnest(nodes) AS node FROM (
            SELECT taxon_id, list_append(string_split(ancestry, '/'), taxon_id) AS nodes FROM taxa)
    ), taxonomy AS (
        SELECT chain.taxon_id, {{'kingdom': max(n.name) FILTER (n.rank = 'kingdom'),
            'phylum': max(n.name) FILTER (n.rank = 'phylum'), 'class': max(n.name) FILTER (n.rank = 'class'),
            'order': max(n.name) FILTER (n.rank = 'order'), 'family': max(n.name) FILTER (n.rank = 'family'),
            'genus': max(n.name) FILTER (n.rank = 'genus'), 'species': max(n.name) FILTER (n.rank = 'species')}}
            AS taxonomy
        FROM chain JOIN taxa n ON n.taxon_id = chain.node GROUP BY chain.taxon_id
    )
    SELECT left(sha256('inat' || chr(31) || p.photo_id || ':' || p.observation_uuid), 32) AS sample_id,
           'inat' AS source, p.photo_id || ':' || p.observation_uuid AS source_record_id, 'plant' AS domain,
           'https://inaturalist-open-data.s3.amazonaws.com/photos/' || p.photo_id || '/medium.' || p.extension AS url,
           NULL::VARCHAR AS url_original, 'https://www.inaturalist.org/photos/' || p.photo_id AS page_url,
           t.name || '.' AS caption, 'dalip' AS caption_kind,
           MAP {{'dalip': t.name || '.', 'bioclip_scientific': 'a photo of ' || t.name || '.'}} AS caption_variants,
           NULL::VARCHAR AS original_text, t.name AS scientific_name, NULL::VARCHAR AS common_name,
           t.rank AS taxon_rank, x.taxonomy, lower(p.license) AS license,
           'https://creativecommons.org/licenses/' || lower(p.license) AS license_url,
           coalesce(nullif(u.name, ''), u.login) AS rights_holder,
           '(c) ' || coalesce(nullif(u.name, ''), u.login) || ', some rights reserved (' || p.license || ')'
               AS attribution,
           'pending' AS status, NULL::VARCHAR AS error, '{d}/photos.csv' AS input_file, NULL::BIGINT AS input_row
    FROM photos p
    JOIN observations o USING (observation_uuid)
    JOIN taxa t ON t.taxon_id = o.taxon_id
    JOIN taxonomy x ON x.taxon_id = o.taxon_id
    JOIN observers u ON u.observer_id = p.observer_id
    WHERE o.quality_grade = 'research' AND p.license <> '' AND t.rank = 'species'
      AND (t.ancestry LIKE '48460/47126/%')
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
"""


DWC, DC, GBIF = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/", "http://rs.gbif.org/terms/1.0/"
GBIF_CORE = ["gbifID", "kingdom", "phylum", "class", "order", "family", "genus", "species", "taxonRank",
             "scientificName", "license"]  # fmt: skip
GBIF_MEDIA = ["gbifID", "type", "format", "identifier", "creator", "license", "rightsHolder"]
GBIF_URIS = {"gbifID": GBIF, "species": GBIF, "type": DC, "format": DC, "identifier": DC, "creator": DC,
             "license": DC, "rightsHolder": DC}  # fmt: skip


def write_dwca(folder: Path, media: int) -> None:
    """An unpacked GBIF-download-shaped DwC-A (meta.xml, occurrence.txt, multimedia.txt): 2 media per occurrence,
    20,011 species in a tree (7 per genus, ...; the higher ranks follow from the species, as in GBIF's backbone),
    80% plants, 90% at species rank, 5% sounds, four licenses (one of them no open license)."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()

    def block(tag: str, id_tag: str, row_type: str, location: str, terms: list[str], core: bool) -> str:
        fields = "".join(
            f'<field index="{i}" term="{GBIF_URIS.get(t, DWC) if core or t != "license" else DC}{t}"/>'
            for i, t in enumerate(terms)
        )
        return (f'<{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
                f'ignoreHeaderLines="1" rowType="{row_type}"><files><location>{location}</location></files>'
                f'<{id_tag} index="0"/>{fields}</{tag}>')  # fmt: skip

    (folder / "meta.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><archive xmlns="http://rs.tdwg.org/dwc/text/">'
        + block("core", "id", DWC + "Occurrence", "occurrence.txt", GBIF_CORE, True)
        + block("extension", "coreid", GBIF + "Multimedia", "multimedia.txt", GBIF_MEDIA, False)
        + "</archive>"
    )
    occurrences = max(1, media // 2)
    con.execute(
        f"""COPY (SELECT 1000 + i AS gbifID,
                    CASE WHEN s % 10 < 8 THEN 'Plantae' ELSE 'Animalia' END AS kingdom,
                    'Phylum' || s // 2000 AS phylum, 'Class' || s // 700 AS class, 'Order' || s // 200 AS "order",
                    'Family' || s // 50 AS family, 'Genus' || s // 7 AS genus,
                    'Genus' || s // 7 || ' species' || s AS species,
                    CASE WHEN hash(i, 2) % 10 < 9 THEN 'SPECIES' ELSE 'GENUS' END AS taxonRank,
                    'Genus' || s // 7 || ' species' || s || ' L.' AS scientificName,
                    'CC_BY_4_0' AS license
             FROM (SELECT i, hash(i, 1) % 20011 AS s FROM range({occurrences}) t(i)))
           TO '{folder / "occurrence.txt"}' (FORMAT csv, DELIMITER '\t', HEADER, QUOTE '')"""
    )
    licenses = "['http://creativecommons.org/licenses/by/4.0/', 'CC0_1_0', 'CC_BY_NC_4_0', 'All rights reserved']"
    con.execute(
        f"""COPY (SELECT 1000 + i // 2 AS gbifID, CASE WHEN hash(i, 3) % 20 = 0 THEN 'Sound' ELSE 'StillImage' END
                    AS type, 'image/jpeg' AS format, 'https://media.example.org/' || i || '.jpg' AS identifier,
                    'Author ' || i % 5000 AS creator, {licenses}[1 + CAST(hash(i, 4) % 4 AS BIGINT)] AS license,
                    '' AS rightsHolder
             FROM range({media}) t(i))
           TO '{folder / "multimedia.txt"}' (FORMAT csv, DELIMITER '\t', HEADER, QUOTE '')"""
    )


GBIF_BARE_SQL = """
COPY (
    WITH o AS (SELECT * FROM read_csv('{d}/occurrence.txt', delim='\t', quote='', header=true, all_varchar=true)),
    m AS (SELECT * FROM read_csv('{d}/multimedia.txt', delim='\t', quote='', header=true, all_varchar=true))
    SELECT left(sha256('gbif' || chr(31) || o.gbifID || ':' || m.identifier), 32) AS sample_id, 'gbif' AS source,
           o.gbifID || ':' || m.identifier AS source_record_id, 'plant' AS domain, m.identifier AS url,
           NULL::VARCHAR AS url_original, 'https://www.gbif.org/occurrence/' || o.gbifID AS page_url,
           o.species || '.' AS caption, 'dalip' AS caption_kind,
           MAP {{'dalip': o.species || '.', 'bioclip_scientific': 'a photo of ' || o.species || '.'}}
               AS caption_variants, NULL::VARCHAR AS original_text, o.species AS scientific_name,
           NULL::VARCHAR AS common_name, lower(o.taxonRank) AS taxon_rank,
           {{'kingdom': o.kingdom, 'phylum': o.phylum, 'class': o.class, 'order': o."order", 'family': o.family,
             'genus': o.genus, 'species': o.species}} AS taxonomy,
           lower(m.license) AS license, m.license AS license_url, m.creator AS rights_holder,
           '(c) ' || m.creator || ', some rights reserved (' || m.license || ')' AS attribution,
           'pending' AS status, NULL::VARCHAR AS error, '{d}/multimedia.txt' AS input_file, NULL::BIGINT AS input_row
    FROM m JOIN o USING (gbifID)
    WHERE m.type = 'StillImage' AND o.kingdom = 'Plantae' AND o.taxonRank = 'SPECIES'
      AND m.license <> 'All rights reserved'
) TO '{out}' (FORMAT parquet, COMPRESSION zstd)
"""


def run_bare(export: Path, out: Path, kind: str) -> dict:
    start = time.perf_counter()
    con = duckdb.connect()
    con.execute((BARE_SQL if kind == "inaturalist" else GBIF_BARE_SQL).format(d=export, out=out))
    rows = con.sql(f"SELECT count(*) FROM '{out}'").fetchall()[0][0]
    return {"seconds": time.perf_counter() - start, "rows": rows}


def _recipe(export: Path, out: Path, kind: str, memory_limit: str, partitions: int):
    from pipeline.core.config import DuckDBConfig, Recipe, SourceSpec

    options = {"directory" if kind == "inaturalist" else "path": str(export)}
    if partitions > 1:
        options["partitions"] = partitions
    return Recipe(name="bench", output_dir=str(out), sources=[SourceSpec("inat", kind, options)],
                  duckdb=DuckDBConfig(memory_limit=memory_limit))  # fmt: skip


def _crawl_part(arguments: tuple, unit: str) -> float:
    """One crawl_parts unit in a worker process; returns the worker's peak RSS in MB."""
    from pipeline.core.harness import Build, run_unit
    from pipeline.stages import stage_named

    run_unit(stage_named("crawl_parts"), Build.of(_recipe(*arguments)), unit)
    return own_peak_rss_mb()


def run_ours(export: Path, out: Path, kind: str, memory_limit: str = "2GB", partitions: int = 1,
             workers: int = 2) -> dict:  # fmt: skip
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from pipeline.core.harness import Build, run_unit
    from pipeline.stages import stage_named

    arguments = (export, out, kind, memory_limit, partitions)
    stage, build = stage_named("crawl"), Build.of(_recipe(*arguments))
    units = stage_named("crawl_parts").plan(build)
    start = time.perf_counter()
    worker_peak = 0.0
    if units:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            worker_peak = max(pool.map(_crawl_part, [arguments] * len(units), units))
    record = run_unit(stage, build, "inat")
    return {
        "seconds": time.perf_counter() - start,
        "rows": record["stats"]["rows"],
        "status": record["stats"]["status"],
        "worker_peak_mb": worker_peak,
    }


def child(side: str, kind: str, export: str, out: str, memory_limit: str, partitions: str, workers: str) -> None:
    """Run one side in this (child) process; print its result and peak RSS (its largest process's) as JSON."""
    if side == "bare":
        result = run_bare(Path(export), Path(out), kind)
    else:
        result = run_ours(Path(export), Path(out), kind, memory_limit, int(partitions), int(workers))
    result["peak_rss_mb"] = max(own_peak_rss_mb(), result.pop("worker_peak_mb", 0.0))
    print(json.dumps(result))


def in_child(side: str, kind: str, export: Path, out: Path, args: argparse.Namespace) -> dict:
    options = [args.memory_limit, str(args.partitions), str(args.workers)]
    return run_side(__file__, side, [kind, str(export), str(out), *options])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--memory-limit", default="2GB", help="ours: the recipe's duckdb.memory_limit")
    parser.add_argument("--format", choices=["inaturalist", "gbif_dwca"], default="inaturalist")
    parser.add_argument("--partitions", type=int, default=1, help="ours: the source's partitions (crawl_parts units)")
    parser.add_argument("--workers", type=int, default=2, help="ours: processes running the partitions")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side at each size (medians reported)")
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="plantmix-bench-crawl-"))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    results = {}
    try:
        for photos in sorted(args.photos):
            export = work / f"export-{photos}"
            start = time.perf_counter()
            (write_export if args.format == "inaturalist" else write_dwca)(export, photos)
            size = sum(p.stat().st_size for p in export.iterdir()) / 2**20
            print(
                f"{photos} photos: export of {size:.0f} MiB written in {time.perf_counter() - start:.1f} s", flush=True
            )
            runs = []
            for _ in range(args.repeat):  # the sides in alternation: a slow minute of the machine hits both
                bare = in_child("bare", args.format, export, work / f"bare-{photos}.parquet", args)
                ours = in_child("ours", args.format, export, work / f"ours-{photos}", args)
                shutil.rmtree(work / f"ours-{photos}", ignore_errors=True)
                runs.append((bare, ours))
                print(f"  bare DuckDB: {bare['seconds']:.1f} s, {bare['rows']} accepted rows, "
                      f"peak {bare['peak_rss_mb']:.0f} MB")  # fmt: skip
                print(f"  ours       : {ours['seconds']:.1f} s, {ours['rows']} rows {ours['status']}, "
                      f"peak {ours['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
            results[photos] = runs
            shutil.rmtree(export)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(result_line(results, args))


def result_line(results: dict[int, list[tuple[dict, dict]]], args: argparse.Namespace) -> str:
    """The RESULT line: medians over the runs at each size (each run's ratio is its own pair's)."""
    small, large = min(results), max(results)
    runs = results[large]
    ratios = [bare["seconds"] / ours["seconds"] for bare, ours in runs]
    ours_s = statistics.median(ours["seconds"] for _, ours in runs)
    peak = statistics.median(ours["peak_rss_mb"] for _, ours in runs)
    small_peak = statistics.median(ours["peak_rss_mb"] for _, ours in results[small])
    name = "crawl" if args.format == "inaturalist" else "crawl_gbif"
    return (
        f"RESULT {name} ratio={statistics.median(ratios):.3f} rss_growth={peak / small_peak:.2f} "
        f"rows_per_s={runs[0][1]['rows'] / ours_s:.0f} photos={large} ours_s={ours_s:.1f} "
        f"duckdb_s={statistics.median(bare['seconds'] for bare, _ in runs):.1f} peak_mb={peak:.0f} small={small} "
        f"runs={len(runs)} ratios={','.join(f'{r:.3f}' for r in ratios)} memory_limit={args.memory_limit} "
        f"format={args.format} partitions={args.partitions} workers={args.workers}"
    )


if __name__ == "__main__":
    main()
