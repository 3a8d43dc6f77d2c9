"""The DuckDB iNaturalist adapter gives the same rows as the dict-per-row adapter it replaced, value for value.

The old adapter is kept verbatim in ``inat_reference.py`` as the oracle. Exports are generated from a seeded
pool of hostile values (quotes, backslashes, non-ASCII whitespace, IRIs that need encoding, odd ranks and
licenses, short and long rows, blank lines, dangling references), under several configurations.
"""

from __future__ import annotations

import random
import sys

import inat_reference
import pytest
from source_fixtures import INAT_TAXA, OBSERVATIONS, OBSERVERS, PHOTOS, TAXA, tsv

from pipeline.sources import inaturalist
from pipeline.sources.base import ConfigError, CrawlContext
from pipeline.sources.registry import read_source_batches

IDS = ["101", "102", "1 03", "10ü", "1%2", "1%zz", "1#x", "a'b", 'q"', "back\\s", "", "7?x=1", "x[y]", "\u3000"]
EXTENSIONS = ["jpg", "jpeg", "png", "", "JPG ", "p\u00e9g"]
LICENSES = ["CC-BY", "CC-BY-NC", "CC0", "", "cc-by-sa", "http://creativecommons.org/licenses/by/4.0/",
            "all rights reserved", "WTFPL", " CC-BY ", "unspecified", "PD"]  # fmt: skip
OBSERVER_IDS = ["7", "8", "9", "99", "", "it's", "\u00a0"]
OBSERVATION_IDS = ["o1", "o2", "o3", "o4", "o5", "nope", "", "o'1"]
# Canonical UUIDs (as real exports write them) and spellings DuckDB would cast to the same UUID: each spelling is
# an id of its own, so a photo joins only the observation with exactly its text.
CANONICAL = {name: f"8f14e45f-ceea-467f-a0b6-c3d1e1e2e3{i:02x}" for i, name in enumerate(OBSERVATION_IDS)}
TWINS = [CANONICAL["o1"].upper(), "{" + CANONICAL["o2"] + "}", CANONICAL["o4"].replace("-", ""), CANONICAL["o5"] + " "]
HOLDERS = [["7", "jdoe", "Jane Doe"], ["8", "kiwi", ""], ["9", "", "\u3000Zoë\u00a0"], ["", "nobody", " "],
           ["it's", "x", "\x1cNamé\x1f"]]  # fmt: skip
EXTRA_TAXA = [
    ["15", "48460/47126/211194/9999", "10", "Species", "Odd rank", "true"],  # missing ancestor, capital rank
    ["16", "48460/47126//12", "5", "variety", "Iris tectorum alba", "true"],
    ["17", "", "10", "ſpecies", "", "true"],  # non-ASCII rank, no name
    ["18", "48460/47126", "20", "genus", "Genus 'quoted'", "true"],
]


def write_export(folder, rng: random.Random, photos: int, uuids: str = "none") -> None:
    """``uuids``: ``none`` (ids like ``o1``), ``canonical`` (every observation's a canonical UUID) or ``mixed``
    (both, and observations whose uuid is another's in capitals or braces); photos name them and their twins."""
    folder.mkdir()
    rename = CANONICAL if uuids == "canonical" else {}
    picks = [rename.get(name, name) for name in OBSERVATION_IDS] + (TWINS if uuids != "none" else [])
    picks += [CANONICAL["o1"], CANONICAL["o3"]] if uuids == "mixed" else []
    lines = [
        [f"u{i}", rng.choice(IDS) if rng.random() < 0.5 else str(1000 + i), rng.choice(picks),
         rng.choice(OBSERVER_IDS), rng.choice(EXTENSIONS), rng.choice(LICENSES), "1", "1", "0"]
        for i in range(photos)
    ]  # fmt: skip
    for row in lines:
        if rng.random() < 0.05:
            del row[rng.randrange(3, 9) :]  # a short row
        elif rng.random() < 0.03:
            row.append("extra")
    text = "\t".join(PHOTOS) + "\n"
    for row in lines:
        text += "\t".join(row) + "\n" + ("\n" if rng.random() < 0.03 else "")
    (folder / "photos.csv").write_text(text, encoding="utf-8")
    observations = [
        ["o1", "7", "0", "0", "1", "13", "research", "d"],
        ["o2", "8", "0", "0", "1", "14", "research", "d"],
        ["o3", "8", "0", "0", "1", "15", "", "d"],
        ["o4", "7", "0", "0", "1", "16", "research", "d"],
        ["o5", "7", "0", "0", "1", "17", "casual", "d"],
        ["o'1", "7", "0", "0", "1", "1'8", "research", "d"],
        ["", "7", "0", "0", "1", "18", "needs_id", "d"],
        ["o6", "8", "0", "0", "1", "", "research", "d"],  # an unidentified observation
        ["o7", "9", "0", "0", "1", "14", " Research", "d"],
    ]
    for row in observations:
        row[0] = rename.get(row[0], row[0])
    if uuids == "mixed":
        observations += [[CANONICAL["o1"], "7", "0", "0", "1", "14", "research", "d"],
                         [TWINS[0], "8", "0", "0", "1", "13", "research", "d"],
                         ["{" + CANONICAL["o3"] + "}", "8", "0", "0", "1", "13", "research", "d"]]  # fmt: skip
    tsv(folder / "observations.csv", OBSERVATIONS, observations)
    tsv(folder / "taxa.csv", TAXA, INAT_TAXA + EXTRA_TAXA)
    tsv(folder / "observers.csv", OBSERVERS, HOLDERS)
    (folder / "common_names.csv").write_text(
        'taxon_id,common_name\n13,Wall iris\n14,"Western ""honey"" bee"\n16,\n18, spaced  name \n', encoding="utf-8"
    )


CONFIGS = [
    {},
    {"quality_grades": [], "min_rank": None, "kingdoms": []},
    {"min_rank": "genus", "kingdoms": ["Plantae", "Animalia"], "quality_grades": ["research", ""], "size": "small"},
    {"base_url": "http://Mirror.Example:8080/inat/", "url_rewrite": {"http://Mirror.Example:8080/": "https://m/"}},
    {"base_url": "https://x.invalid", "url_rewrite": {"https://x.invalid/photos/1": "ftp://y/"}},
]


UUIDS = {0: "none", 1: "mixed", 2: "canonical"}  # by seed


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"config{i}" for i in range(len(CONFIGS))])
@pytest.mark.parametrize("style", ["dalip", "bioclip_taxonomic_common", "original"])
def test_rows_equal_the_dict_per_row_adapter(tmp_path, seed, config, style):
    write_export(tmp_path / "inat", random.Random(seed), 120, UUIDS[seed])
    options = {"directory": str(tmp_path / "inat"), "common_names": "common_names.csv", **config}
    ctx = CrawlContext(caption_style=style)
    ours = list(inaturalist.read(inaturalist.Config.from_dict(options), ctx))
    reference = list(inat_reference.read(inat_reference.Config.from_dict(options), ctx))
    assert len(ours) == len(reference) == 120
    for mine, theirs in zip(ours, reference, strict=True):
        assert mine == theirs


def test_the_sql_rules_match_python_on_every_code_point():
    """strip, lower, repr and clean in SQL (with their Python fallbacks) agree with Python for every character."""
    import duckdb

    from pipeline.sources import duck_rules

    con = duckdb.connect()
    duck_rules.register_udfs(con, ("http", "https"))
    chars = [chr(c) for c in range(1, sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF]
    spaced = [c for c in chars if c < "\x80" or c.isspace()]  # the others take clean's Python fallback anyway
    assert duck_rules.WHITESPACE == "".join(c for c in chars if c.isspace())
    texts = [f"{c}a{c}" for c in chars] + [f"A{c}" for c in chars] + [f"{c}A" for c in chars]
    texts += [f"a {c}  b{c} " for c in spaced] + ["", " ", "\u3000", "x"]
    con.register("t", __import__("pyarrow").table({"s": texts}))
    got = con.sql(
        f"SELECT {duck_rules.strip_sql('s')}, {duck_rules.lower_sql('s')}, {duck_rules.repr_sql('s')}, "
        f"{duck_rules.clean_sql('s')} FROM t"
    ).fetchall()
    con.close()
    for text, (stripped, lowered, shown, cleaned) in zip(texts, got, strict=True):
        assert (stripped, lowered, shown, cleaned) == (text.strip(), text.lower(), repr(text), " ".join(text.split()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hash_partitions_hold_every_row_once_with_the_whole_crawls_values(tmp_path, seed):
    """``partitions: n``: n parts whose rows, together, are the whole export's (hostile rows, blank lines and
    dangling references included), each row in exactly one part, each part in photos.csv order."""
    write_export(tmp_path / "inat", random.Random(seed), 300, UUIDS[seed])
    options = {"directory": str(tmp_path / "inat"), "common_names": "common_names.csv"}
    ctx = CrawlContext()
    whole = list(inaturalist.read(inaturalist.Config.from_dict(options), ctx))
    partitioned = {**options, "partitions": 4}
    parts = inaturalist.parts(inaturalist.Config.from_dict(partitioned))
    assert parts == [f"{tmp_path / 'inat'}#partition={k}/4" for k in range(1, 5)]
    rows = [
        [
            row
            for batch in read_source_batches("inaturalist", partitioned, ctx, 64, part=part)
            for row in batch.to_pylist()
        ]
        for part in parts
    ]
    assert all(len(part_rows) > 10 for part_rows in rows)  # the hash spreads the rows (of ~15 observation ids)
    for part_rows in rows:
        assert [r["input_row"] for r in part_rows] == sorted(r["input_row"] for r in part_rows)
    joined = sorted((row for part_rows in rows for row in part_rows), key=lambda r: r["input_row"])
    for row in joined:
        row["caption_variants"] = dict(row["caption_variants"]) if row["caption_variants"] is not None else None
    assert joined == whole
    assert inaturalist.parts(inaturalist.Config.from_dict({**options, "partitions": 1})) == []


@pytest.mark.parametrize("partitions", [0, -2, True, "4"])
def test_partitions_must_be_a_positive_count(tmp_path, partitions):
    with pytest.raises(ConfigError, match="partitions must be a positive number"):
        inaturalist.Config.from_dict({"directory": str(tmp_path), "partitions": partitions})


def test_the_plain_url_hint_never_calls_a_url_plain_that_is_not():
    """The cheap test on a URL's parts (its prefix matched once in Python) is sound: where it says plain, the
    whole URL matches plain_url_sql; where it says nothing, the whole URL is matched as before."""
    import duckdb
    import pyarrow as pa

    from pipeline.sources import duck_rules

    con = duckdb.connect()
    parts = ["1", "", "a b", "%", "?", "#", "é", "/", "x.y", "~", "A", "\t"] + [chr(c) for c in range(33, 127)]
    prefixes = ["https://h.org/photos/", "http://Mirror.Example:8080/photos/", "https://h:080/p/", "ftp://h/p/",
                "https://h/p?q=", "https://h/photos/", "https://h"]  # fmt: skip
    for prefix in prefixes:
        hint = duck_rules.plain_url_parts_sql(prefix, ["a", "'/medium.'", "b"], ("http", "https"))
        rows = [{"a": a, "b": b} for a in parts for b in ("jpg", "j?g", "p g", "")]
        con.register("t", pa.Table.from_pylist(rows))
        url = f"{duck_rules.literal(prefix)} || a || '/medium.' || b"
        got = con.sql(f"SELECT {hint}, {duck_rules.plain_url_sql(url, ('http', 'https'))} FROM t").fetchall()
        assert all(whole for said, whole in got if said), prefix
        if prefix == "https://h.org/photos/":
            assert sum(said for said, _ in got) > 100  # and it does say so for the plain ones
