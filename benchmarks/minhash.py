"""Benchmark: caption near-duplicates (MinHash + LSH clustering) against the plain datasketch loop.

Captions: generated alt texts (``--captions``, default 1M) from a plant/photo vocabulary -- a prefix ("Close-up
of"), adjectives, a plant, a pseudo-Latin binomial, a place, a city, a date, a credit or hashtags -- plus
realistic noise: 0.3% empty or punctuation-only captions and 0.5% of generic ones repeated many times
("image", "Untitled"). About 2% are planted near-duplicates of another caption by one small edit: case,
punctuation, spacing, an appended word, a one-character typo or a changed word.

Ours: ``signatures`` + ``candidate_pairs`` (memory backend) + ``clusters.components`` over all captions.
Baseline: the plain datasketch loop -- per caption a ``MinHash`` updated once per shingle (``MinHash.update``)
and one ``MinHashLSH.insert``, then one ``query`` per caption with the same verification (estimated Jaccard
>= threshold, empty captions skipped) and the same union-find -- timed on the first ``--naive-captions``
captions (default 20k) and extrapolated per caption. Both use ``shingles()`` and the same config (char 5-grams,
128 permutations, threshold 0.8). Checks: on that subset our pairs and clusters equal the baseline's, and the
recall of planted pairs (both ends in one cluster) over all captions.

    python benchmarks/minhash.py                     # 1M captions (a few minutes)
    python benchmarks/minhash.py --captions 100000   # a quick check
Last line: RESULT minhash ratio=<ours/naive captions/s> captions_per_s=... captions=... recall=...
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from datasketch import MinHash, MinHashLSH

from pipeline.core.config import CaptionDedupConfig
from pipeline.stages.dedup.clusters import components
from pipeline.stages.dedup.minhash import candidate_pairs, shingles, signatures

PREFIXES = ["", "", "", "Photo of", "Close-up of", "Picture of", "Macro shot of", "Image of", "View of", "A"]
ADJECTIVES = (
    "beautiful small tall wild dried young old fresh purple red yellow white pink blue green orange variegated "
    "flowering blooming fallen tiny giant native rare common climbing creeping wet frosted sunlit"
).split()
PLANTS = (
    "rose tulip oak maple fern moss orchid cactus sunflower daisy lily pine birch leaf leaves petals bark bud "
    "stem tree shrub vine mushroom lichen seedling grass reed willow poppy lavender thistle clover ivy magnolia"
).split()
PLACES = [
    "in the garden", "in a park", "in the forest", "in a meadow", "in the greenhouse", "in my backyard",
    "at the botanical garden", "by the roadside", "on a mountain trail", "on the riverbank", "on a windowsill",
    "near the lake", "in a pot", "on the balcony", "in the snow",
]  # fmt: skip
MONTHS = "January February March April May June July August September October November December".split()
HASHTAGS = ["#nature", "#flowers", "#plants", "#garden", "#macro", "#botany", "#spring", "#green", "#photography"]
GENERIC = ["image", "Untitled", "photo", "IMG", "picture", "Image", "untitled image", "no description"]
NOISE = ["", " ", "...", "-", "!!!", "()"]
APPENDED = ["photo", "2019", "(cropped)", "- stock photo", "jpg", "hd", "flickr", "closeup"]


def syllable_words(rng: np.random.Generator, count: int, low: int, high: int) -> list[str]:
    syllables = np.array("ra ca lo mi nus tha ria phy lum cus ta ve ro si an ex ol ga pe dis bi cor mo".split())
    return ["".join(rng.choice(syllables, rng.integers(low, high + 1))) for _ in range(count)]


def base_captions(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` alt-text-like captions, each assembled from optional parts drawn with numpy."""
    genera = [g.capitalize() for g in syllable_words(rng, 3_000, 2, 3)]
    epithets = syllable_words(rng, 5_000, 2, 4)
    cities = [c.capitalize() for c in syllable_words(rng, 2_000, 2, 3)]
    first, last = syllable_words(rng, 3_000, 1, 3), syllable_words(rng, 3_000, 2, 3)
    names = [f"{a.capitalize()} {b.capitalize()}" for a, b in zip(first, last, strict=True)]

    def pick(options: list[str], p: float) -> list[str]:
        chosen = np.asarray(options, dtype=object)[rng.integers(0, len(options), count)]
        chosen[rng.random(count) >= p] = ""
        return chosen.tolist()

    parts = [
        pick(PREFIXES, 1.0),
        pick(ADJECTIVES, 0.7),
        pick(ADJECTIVES, 0.3),
        pick(PLANTS, 1.0),
        [f"({g} {e})" if keep else "" for g, e, keep in zip(
            pick(genera, 1.0), pick(epithets, 1.0), (rng.random(count) < 0.5).tolist(), strict=True)],
        pick(PLACES, 0.6),
        [f", {c}" if c else "" for c in pick(cities, 0.4)],
        [f"{m} {y}" if m else "" for m, y in zip(pick(MONTHS, 0.3), rng.integers(1995, 2025, count).tolist(),
                                                 strict=True)],
        [f"by {n}" if n else "" for n in pick(names, 0.2)],
        [" ".join(rng.choice(HASHTAGS, 3)) if keep else "" for keep in (rng.random(count) < 0.1).tolist()],
    ]  # fmt: skip
    return [" ".join(p for p in row if p).replace(" ,", ",") for row in zip(*parts, strict=True)]


EDITS = ["case", "punctuation", "spacing", "appended word", "typo", "changed word"]


def near_duplicate(rng: np.random.Generator, text: str) -> tuple[str, str]:
    """One small edit of ``text``, and its kind. Edits that change shingles need a long enough caption
    (an appended word 40+ characters, a typo 60+, a changed word 80+) to stay near 0.8 Jaccard or above;
    a shorter caption gets a punctuation edit instead."""
    kind = EDITS[rng.integers(len(EDITS))]
    words = text.split()
    if kind == "case":
        return (text.upper() if rng.random() < 0.5 else text.title()), kind
    if kind == "spacing":
        return "  ".join(words), kind
    if kind == "appended word" and len(text) >= 40:
        return f"{text} {APPENDED[rng.integers(len(APPENDED))]}", kind
    if kind == "typo" and len(text) >= 60:
        at = int(rng.integers(len(text) // 3, 2 * len(text) // 3))
        return text[:at] + "abcdefghijklmnopqrstuvwxyz"[rng.integers(26)] + text[at + 1 :], kind
    if kind == "changed word" and len(text) >= 80:
        words[rng.integers(len(words))] = PLANTS[rng.integers(len(PLANTS))]
        return " ".join(words), kind
    return '"' + text.replace(",", "") + '!"', "punctuation"


def generate(count: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[str]]:
    """``count`` captions in random order, the (source, copy) positions of the planted near-duplicates and the
    kind of edit of each."""
    rng = np.random.default_rng(seed)
    planted = count // 50
    noise, generic = count * 3 // 1000, count // 200
    texts = base_captions(rng, count - planted - noise - generic)
    texts += [NOISE[i] for i in rng.integers(0, len(NOISE), noise)]
    texts += [GENERIC[i] for i in rng.integers(0, len(GENERIC), generic)]
    sources = rng.choice(len(texts) - noise - generic, planted, replace=False)
    copies, kinds = zip(*(near_duplicate(rng, texts[s]) for s in sources.tolist()), strict=True)
    texts += copies
    order = rng.permutation(count)  # order[k] = original index at position k
    position = np.empty(count, np.int64)
    position[order] = np.arange(count)
    pairs = np.stack([position[sources], position[np.arange(count - planted, count)]], axis=1)
    return [texts[i] for i in order.tolist()], pairs, list(kinds)


def ours(texts: list[str], config: CaptionDedupConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    left, right = candidate_pairs(signatures(texts, config), config)
    return left, right, components(len(texts), left, right)


def naive(texts: list[str], config: CaptionDedupConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The plain datasketch loop: a MinHash per caption, one insert each, one query each, then union-find."""
    lsh = MinHashLSH(threshold=config.threshold, num_perm=config.num_perm)
    sketches = []
    for i, text in enumerate(texts):
        m = MinHash(num_perm=config.num_perm, seed=config.seed)
        for shingle in shingles(text, config):
            m.update(shingle)
        lsh.insert(i, m)
        sketches.append(m)
    pairs = set()
    for i, m in enumerate(sketches):
        if m.is_empty():
            continue
        for j in lsh.query(m):
            if j > i and not sketches[j].is_empty() and m.jaccard(sketches[j]) >= config.threshold:
                pairs.add((i, j))
    ordered = np.array(sorted(pairs), np.int64).reshape(-1, 2)
    return ordered[:, 0], ordered[:, 1], components(len(texts), ordered[:, 0], ordered[:, 1])


def exact_jaccard(a: str, b: str, config: CaptionDedupConfig) -> float:
    """Jaccard similarity of the two captions' shingle sets."""
    x, y = set(shingles(a, config)), set(shingles(b, config))
    return len(x & y) / len(x | y) if x | y else 0.0


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label arrays group the rows the same way (label values may differ)."""
    joint = np.unique(np.stack([a, b], axis=1), axis=0)
    return len(joint) == len(np.unique(a)) == len(np.unique(b))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--naive-captions", type=int, default=20_000, help="the baseline's subset")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = CaptionDedupConfig()

    start = time.perf_counter()
    texts, planted, kinds = generate(args.captions, args.seed)
    lengths = np.fromiter(map(len, texts), np.int64, len(texts))
    print(
        f"generated {len(texts)} captions ({lengths.mean():.0f} chars on average, {len(planted)} planted "
        f"near-duplicates) in {time.perf_counter() - start:.1f} s"
    )

    start = time.perf_counter()
    left, right, labels = ours(texts, config)
    ours_s = time.perf_counter() - start
    ours_rate = len(texts) / ours_s
    found = labels[planted[:, 0]] == labels[planted[:, 1]]
    print(
        f"ours:  {len(texts)} captions in {ours_s:.1f} s = {ours_rate:.0f} captions/s; {left.size} pairs, "
        f"{len(np.unique(labels))} clusters; planted pairs found {found.sum()}/{len(planted)}"
    )
    exact = np.array([exact_jaccard(texts[i], texts[j], config) for i, j in planted.tolist()])
    for kind in EDITS:
        of_kind = np.array(kinds) == kind
        print(
            f"       {kind}: {found[of_kind].sum()}/{of_kind.sum()} found, exact Jaccard "
            f"min {exact[of_kind].min():.2f} median {np.median(exact[of_kind]):.2f}"
        )
    strong = exact >= config.threshold
    print(
        f"       planted pairs with exact Jaccard >= {config.threshold}: {(found & strong).sum()}/{strong.sum()} "
        f"found; below it: {(found & ~strong).sum()}/{(~strong).sum()} (MinHash estimates and LSH bands are "
        "probabilistic near the threshold)"
    )

    subset = texts[: args.naive_captions]
    start = time.perf_counter()
    naive_left, naive_right, naive_labels = naive(subset, config)
    naive_s = time.perf_counter() - start
    naive_rate = len(subset) / naive_s
    sub_left, sub_right, sub_labels = ours(subset, config)
    same_pairs = np.array_equal(sub_left, naive_left) and np.array_equal(sub_right, naive_right)
    same_clusters = same_partition(sub_labels, naive_labels)
    print(
        f"naive: {len(subset)} captions in {naive_s:.1f} s = {naive_rate:.0f} captions/s; {naive_left.size} "
        f"pairs; on this subset ours has {sub_left.size} pairs, same pairs: {same_pairs}, same clusters: "
        f"{same_clusters}"
    )
    if not same_clusters:
        raise SystemExit("ours and the naive loop disagree on the subset")
    print(
        f"RESULT minhash ratio={ours_rate / naive_rate:.1f} captions_per_s={ours_rate:.0f} captions={len(texts)} "
        f"recall={found.mean():.4f}"
    )


if __name__ == "__main__":
    main()
