"""Caption near-duplicates: pairs of rows whose captions' estimated Jaccard similarity reaches a threshold.

One job: captions in, verified duplicate pairs (and union-find clusters) out, with datasketch's MinHash + LSH
semantics computed in bulk. :func:`signatures` equals ``datasketch.MinHash(num_perm, seed)`` updated with
:func:`shingles` row for row, but hashes each distinct shingle of a chunk once and applies the permutations to
all shingles at once in numpy. :func:`candidate_pairs` bands the signatures as ``datasketch.MinHashLSH`` would
(:func:`lsh_params`), either in memory (numpy grouping) or in datasketch's Redis-backed index, and keeps only the
pairs whose estimated Jaccard similarity reaches ``threshold``. The pipeline stage that reads captions and writes
drop decisions lives elsewhere; this module has no I/O beyond the optional Redis index.
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Sequence
from functools import lru_cache
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd
from datasketch import MinHash, MinHashLSH
from datasketch.lsh import _optimal_param

from pipeline.core.config import CaptionDedupConfig
from pipeline.stages.dedup.clusters import components

# datasketch >= 2.0 defaults to the "affine32" permutation scheme (pre-mix the input hash with the 32-bit
# MurmurHash3 finalizer, then a * h + b mod 2^32); older releases only have "legacy" ((a * h + b) mod (2^61 - 1),
# truncated to 32 bits). We follow whichever the installed datasketch's MinHash uses by default, so signatures
# stay equal to its MinHash and can be handed to its MinHashLSH.
SCHEME: str = getattr(MinHash(num_perm=2), "scheme", "legacy")
# Both schemes produce values below 2^32: uint32 halves the memory of datasketch's legacy uint64 storage
# (13M captions x 128 permutations = 6.7 GB instead of 13 GB) without changing a single value.
SIGNATURE_DTYPE = np.uint32
EMPTY = np.uint32((1 << 32) - 1)  # datasketch's value for a MinHash that saw nothing (its _max_hash)
_MERSENNE_PRIME = np.uint64((1 << 61) - 1)  # legacy scheme only

_BLOCK_TEXTS = 50_000  # texts tokenized together: shingles repeating inside a block are SHA-1 hashed once
_PERMUTE_CHUNK = 4_096  # shingle occurrences per permutation step: a (num_perm x 4096) uint32 block stays in cache
_STAR_ABOVE = 200  # LSH buckets larger than this are joined as a star (see _bucket_pairs)
_VERIFY_CHUNK = 65_536  # candidate pairs compared per step (2 x 65536 x num_perm gathered values)
_REDIS_BUFFER = 10_000  # commands per Redis pipeline flush while inserting
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit multiplier of polynomial keys (LSH bands, wide windows)

# Characters that are neither word characters nor whitespace (punctuation, symbols, emoji), in a run that
# touches a word's start or end.
_EDGE_PUNCT = re.compile(r"(?<!\S)[^\w\s]+|[^\w\s]+(?!\S)")
_SEPARATOR = "\x1e"  # joins a block's texts for _normalize_many

try:  # CPython's own SHA-1 is ~30% faster than OpenSSL's on inputs this short (no EVP context per call)
    from _sha1 import sha1 as _sha1
except ImportError:  # builds without it: the same digest from hashlib
    from hashlib import sha1 as _sha1


def normalize(text: str) -> str:
    """The form captions are compared in: NFKC, lower case, edge punctuation removed, single spaces.

    NFKC folds compatibility forms (full-width letters, ligatures, superscripts) before lower-casing, since
    NFKC can itself produce capitals ("Ⅸ" -> "IX"). Punctuation and symbols are removed only at word edges,
    so "Rose, red!" and "rose red" compare equal while "x-ray", "3.5" and "don't" keep their inner marks;
    a word made only of punctuation ("-", "...") disappears. Whitespace runs (any Unicode space) become one
    space, with none at the ends.
    """
    text = unicodedata.normalize("NFKC", text).lower()
    return " ".join(_EDGE_PUNCT.sub("", text).split())


def shingles(text: str, config: CaptionDedupConfig) -> list[bytes]:
    """Distinct character or word n-grams of ``normalize(text)``, UTF-8, in order of first occurrence.

    Word n-grams are joined by one space. A text shorter than one n-gram is a single shingle (all of it),
    so short alt texts still compare; an empty text has no shingles (and never matches anything).
    """
    text = normalize(text)
    if not text:
        return []
    units: str | list[str] = text if config.shingle == "char" else text.split(" ")
    n = min(config.ngram, len(units))
    glue = "" if config.shingle == "char" else " "
    grams = (glue.join(units[i : i + n]) for i in range(len(units) - n + 1))
    return [g.encode("utf-8", "surrogatepass") for g in dict.fromkeys(grams)]


def signatures(texts: Sequence[str], config: CaptionDedupConfig) -> np.ndarray:
    """MinHash signature of every text, shape ``(len(texts), num_perm)``, dtype :data:`SIGNATURE_DTYPE`.

    Row ``i`` equals ``datasketch.MinHash(num_perm, seed)`` updated with ``shingles(texts[i], config)``
    (its ``hashvalues``); a text without shingles (or ``None``) gets datasketch's empty value, :data:`EMPTY`
    everywhere.
    """
    a, b = _permutations(config.num_perm, config.seed)
    out = np.full((len(texts), config.num_perm), EMPTY, SIGNATURE_DTYPE)
    for lo in range(0, len(texts), _BLOCK_TEXTS):
        block = _normalize_many(texts[lo : lo + _BLOCK_TEXTS])
        hashes, doc_of = _shingle_hashes(block, config)
        _minhash_into(out[lo : lo + len(block)], hashes, doc_of, a, b)
    return out


def lsh_params(config: CaptionDedupConfig) -> tuple[int, int]:
    """(bands, rows per band) that ``MinHashLSH(threshold, num_perm)`` picks with its default weights."""
    return _lsh_params(config.threshold, config.num_perm)


def candidate_pairs(
    signatures: np.ndarray, config: CaptionDedupConfig, id_prefix: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(left[k] < right[k])`` that share an LSH band and whose estimated Jaccard >= threshold.

    The estimate is datasketch's ``MinHash.jaccard``: the fraction of equal signature entries. Rows with no
    shingles (all :data:`EMPTY`) are never paired. ``config.backend`` picks where the banding happens:
    ``"memory"`` groups equal bands in numpy; ``"redis"`` inserts the rows into datasketch's
    ``MinHashLSH`` on ``config.redis_url`` (keys ``f"{id_prefix}{row}"``) and queries each row, removing
    its keys afterwards. Both return the same pairs (except inside buckets above ``_STAR_ABOVE`` rows, where
    the memory backend only proposes star pairs). Pairs come sorted by (left, right).
    """
    sig = np.asarray(signatures)
    if sig.ndim != 2 or sig.shape[1] != config.num_perm:
        raise ValueError(f"expected signatures of shape (n, {config.num_perm}), got {sig.shape}")
    live = np.flatnonzero(sig.min(axis=1, initial=EMPTY) != EMPTY)
    bands, rows = lsh_params(config)
    if config.backend == "redis":
        left, right = _redis_candidates(sig, live, config, bands, rows, id_prefix)
    else:
        left, right = _memory_candidates(sig, live, bands, rows)
    return _verified(sig, left, right, config.threshold)


def caption_clusters(texts: Sequence[str], config: CaptionDedupConfig) -> np.ndarray:
    """Cluster label of every caption: near-duplicate pairs joined transitively (union-find)."""
    left, right = candidate_pairs(signatures(texts, config), config)
    return components(len(texts), left, right)


# --- signatures ---------------------------------------------------------------------------------------------


def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) permutation parameters, taken from a datasketch MinHash so they match it by construction."""
    a, b = MinHash(num_perm=num_perm, seed=seed, **_scheme_argument()).permutations
    return np.ascontiguousarray(a), np.ascontiguousarray(b)


def _normalize_many(texts: Sequence[str]) -> list[str]:
    """``[normalize(t) for t in texts]`` in a few C-level passes over the texts joined by a separator.

    The separator (U+001E) is whitespace to ``str.split`` and the regex, a starter that never composes under
    NFKC, and neither cased nor case-ignorable (so Greek final sigma is decided as at a text end): each step
    treats it as a text boundary. A text that already contains it falls back to one call per text.
    """
    try:
        joined = _SEPARATOR.join(texts)
    except TypeError:  # a missing caption (None) among them: it is an empty one
        texts = ["" if t is None else t for t in texts]
        joined = _SEPARATOR.join(texts)
    if len(texts) < 2 or joined.count(_SEPARATOR) != len(texts) - 1:
        return [normalize(t) for t in texts]
    joined = _EDGE_PUNCT.sub("", unicodedata.normalize("NFKC", joined).lower())
    return [" ".join(part.split()) for part in joined.split(_SEPARATOR)]


def _shingle_hashes(normalized: list[str], config: CaptionDedupConfig) -> tuple[np.ndarray, np.ndarray]:
    """Datasketch input hash (``sha1_hash32``) of every shingle occurrence, and the text it belongs to.

    Texts become token arrays (code points, or word ids); each shingle is a window of ``ngram`` tokens
    (fewer for a short text). Windows are grouped by content first, so SHA-1 runs once per distinct shingle
    of the block rather than once per occurrence. Occurrences come out grouped by text, in text order;
    repeats of a shingle inside one text are kept, since they cannot change a minimum.
    """
    flat, tokens, alphabet, lengths, char_start, char_end = _tokenize(normalized, config.shingle)
    n = config.ngram
    count = np.where(lengths > 0, np.maximum(lengths - n + 1, 1), 0)  # windows per text
    doc_of = np.repeat(np.arange(len(normalized)), count)
    text_start = np.cumsum(lengths) - lengths
    offset = np.arange(doc_of.size) - np.repeat(np.cumsum(count) - count, count)  # window index inside its text
    first_token = text_start[doc_of] + offset
    width = np.minimum(lengths, n)[doc_of]
    # Each text is followed by n - 1 sentinels, so every window can read n tokens: a short text's window is
    # its tokens then sentinels, which no full n-gram contains.
    padded = np.full(tokens.size + len(normalized) * (n - 1), alphabet, np.uint32)
    padded[np.arange(tokens.size) + np.repeat(np.arange(len(normalized)) * (n - 1), lengths)] = tokens
    codes, first = _distinct_windows(padded, first_token + doc_of * (n - 1), n, alphabet + 1)
    # One distinct shingle is the UTF-8 slice from its first token's start to its last token's end.
    data = flat.encode("utf-8", "surrogatepass")
    byte_at = _utf8_offsets(flat) if len(data) != len(flat) else None
    lo, hi = char_start[first_token[first]], char_end[first_token[first] + width[first] - 1]
    if byte_at is not None:
        lo, hi = byte_at[lo], byte_at[hi]
    digests = b"".join([_sha1(data[s:e]).digest()[:4] for s, e in zip(lo.tolist(), hi.tolist(), strict=True)])
    # sha1_hash32 is struct.unpack("<I", sha1(data).digest()[:4]): the same bytes, read little-endian.
    return np.frombuffer(digests, "<u4")[codes], doc_of


def _tokenize(normalized: list[str], shingle: str) -> tuple[str, np.ndarray, int, np.ndarray, np.ndarray, np.ndarray]:
    """The texts' tokens end to end: (the string they index, token ids, number of distinct tokens, tokens per
    text, start and end of each token in the string).

    ``char`` tokens are code points (UTF-32 gives one uint32 per code point, the unit Python strings and so
    char n-grams index by) of the texts concatenated, renumbered 0..k-1 in code point order so that windows
    pack into few bits. ``word`` tokens are word ids of all words joined by single spaces, so a word n-gram is
    the slice from its first word's start to its last word's end.
    """
    if shingle == "char":
        flat = "".join(normalized)
        code_points = np.frombuffer(flat.encode("utf-32-le", "surrogatepass"), "<u4")
        present = np.zeros(0x110000, bool)  # every code point, surrogates included, is below 0x110000
        present[code_points] = True
        dense = (np.cumsum(present, dtype=np.uint32) - np.uint32(1))[code_points]
        lengths = np.fromiter(map(len, normalized), np.int64, len(normalized))
        return flat, dense, int(present.sum()), lengths, np.arange(dense.size), np.arange(1, dense.size + 1)
    words = " ".join(normalized).split()
    vocabulary: dict[str, int] = {}
    ids = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in words), np.uint32, len(words))
    lengths = np.fromiter((t.count(" ") + 1 if t else 0 for t in normalized), np.int64, len(normalized))
    size = np.fromiter(map(len, words), np.int64, len(words))
    end = np.cumsum(size + 1) - 1  # one space after each word
    return " ".join(words), ids, len(vocabulary), lengths, end - size, end


def _utf8_offsets(text: str) -> np.ndarray:
    """Byte offset in ``text.encode("utf-8", "surrogatepass")`` of every character offset 0..len(text)."""
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4")
    size = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    return np.r_[0, np.cumsum(size)]


def _distinct_windows(padded: np.ndarray, start: np.ndarray, n: int, alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct-content id of each window ``padded[start : start + n]`` (tokens below ``alphabet``), and one
    window index per id.

    The windows' tokens are packed into one 64-bit key when they fit (``n`` tokens of ``alphabet.bit_length()``
    bits: 5 characters of a block with up to 4,095 distinct characters), which is exact; otherwise the key
    is a polynomial hash, checked against the windows it stands for, and a collision falls back to an exact
    sort of the windows. Keys are factorized with a hash table, not a sort.
    """
    bits = (alphabet - 1).bit_length()
    packed = bits * n <= 64
    key = np.zeros(start.size, np.uint64)
    for k in range(n):
        if packed:
            key |= padded[start + k].astype(np.uint64) << np.uint64(bits * k)
        else:
            key = key * _MIX + padded[start + k]
    codes, _ = pd.factorize(key)
    first = np.empty(codes.max() + 1 if codes.size else 0, np.int64)
    first[codes] = np.arange(codes.size)  # any occurrence will do: they all hold the same shingle
    if packed or all(np.array_equal(padded[start + k], padded[start[first[codes]] + k]) for k in range(n)):
        return codes, first
    windows = np.stack([padded[start + k] for k in range(n)], axis=1)
    _, first, codes = np.unique(windows, axis=0, return_index=True, return_inverse=True)
    return codes.reshape(-1), first


def _minhash_into(out: np.ndarray, hashes: np.ndarray, doc_of: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Lower ``out[doc]`` to the permuted minimum of its shingles' hashes, exactly as ``MinHash.update_batch``.

    Occurrences are processed ``_PERMUTE_CHUNK`` at a time as a (num_perm x chunk) matrix: permutations run
    along rows, and ``np.minimum.reduceat`` over each text's contiguous run of columns gives per-text minima
    (the transposed layout makes reduceat's runs contiguous, several times faster than reducing rows).
    A text split by a chunk boundary gets the minimum of both parts.
    """
    legacy = SCHEME == "legacy"
    hv = hashes.astype(np.uint64) if legacy else _fmix32(hashes.astype(np.uint32))
    a, b = a[:, None], b[:, None]
    # Every run start: where the text changes, and where a chunk starts (a text may span chunks).
    cuts = np.union1d(np.flatnonzero(np.diff(doc_of)) + 1, np.arange(0, hv.size, _PERMUTE_CHUNK))
    chunk_cuts = np.searchsorted(cuts, np.arange(0, hv.size + _PERMUTE_CHUNK, _PERMUTE_CHUNK))
    permuted = np.empty((a.size, _PERMUTE_CHUNK), np.uint32)  # reused: a fresh array per chunk costs page faults
    for c, lo in enumerate(range(0, hv.size, _PERMUTE_CHUNK)):
        chunk = hv[lo : lo + _PERMUTE_CHUNK]
        if legacy:
            block = np.bitwise_and((a * chunk + b) % _MERSENNE_PRIME, np.uint64(EMPTY))
        else:
            block = np.multiply(a, chunk, out=permuted[:, : chunk.size])  # uint32 wraps: the mod 2^32 of affine32
            block += b
        runs = cuts[chunk_cuts[c] : chunk_cuts[c + 1]]
        rows = doc_of[runs]
        out[rows] = np.minimum(out[rows], np.minimum.reduceat(block, runs - lo, axis=1).T)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, datasketch's pre-mix of every input hash in the affine32 scheme."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


# --- LSH ------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    return _optimal_param(threshold, num_perm, 0.5, 0.5)  # MinHashLSH's default weights


def _memory_candidates(sig: np.ndarray, live: np.ndarray, bands: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of live rows that agree on all ``rows`` values of at least one band, band by band in numpy."""
    left, right = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for band in range(bands):
        # A 64-bit polynomial key per row stands for the band's values; two different bands sharing a key
        # only adds a candidate, which verification then rejects.
        values = sig[live, band * rows : (band + 1) * rows]  # one gather of whole row segments, not r columns
        key = np.zeros(live.size, np.uint64)
        for column in range(rows):
            key = key * _MIX + values[:, column]
        order = np.argsort(key, kind="stable")
        band_left, band_right = _bucket_pairs(key[order])
        left.append(live[order[band_left]])
        right.append(live[order[band_right]])
    return np.concatenate(left), np.concatenate(right)


def _bucket_pairs(sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of pairs inside each run of equal sorted keys: all pairs, or a star for a large run.

    A run of ``m`` rows gives all ``m (m - 1) / 2`` pairs up to ``_STAR_ABOVE`` rows; above it (thousands of
    identical captions) only each member with the run's first, ``m - 1`` pairs, so one caption repeated
    a million times costs a million pairs, not 5e11. Union-find joins a star as it would the full set, as long
    as the pairs verify: a member similar to another member but not to the first one loses that pair here
    (an approximation confined to huge buckets; its other bands usually recover it).
    """
    n = sorted_keys.size
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, n])
    run_start, run_end = np.repeat(starts, sizes), np.repeat(starts + sizes, sizes)
    position = np.arange(n)
    star = np.repeat(sizes > _STAR_ABOVE, sizes)
    left, right = [run_start[star & (position > run_start)]], [position[star & (position > run_start)]]
    # All pairs of small runs, one offset at a time: position p pairs with p + d while both are in its run.
    pending = position[~star & (run_end - position > 1)]
    offset = 1
    while pending.size:
        left.append(pending)
        right.append(pending + offset)
        offset += 1
        pending = pending[pending + offset < run_end[pending]]
    return np.concatenate(left), np.concatenate(right)


def _redis_candidates(
    sig: np.ndarray, live: np.ndarray, config: CaptionDedupConfig, bands: int, rows: int, id_prefix: str
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs from datasketch's own Redis-backed ``MinHashLSH``: insert every live row, then query each one."""
    if bands < 2:  # MinHashLSH refuses a single band; the memory backend does not need one
        raise ValueError(f"threshold {config.threshold} gives {bands} LSH band; the redis backend needs >= 2")
    connection = _redis_connection(config.redis_url)
    # A fresh basename per call: concurrent builds never share buckets, and cleanup can delete by prefix.
    basename = f"plantmix:minhash:{uuid.uuid4().hex}".encode()
    lsh = MinHashLSH(
        threshold=config.threshold,
        num_perm=config.num_perm,
        params=(bands, rows),
        storage_config={"type": "redis", "basename": basename, "redis": connection},
    )
    left, right = [], []
    try:
        with lsh.insertion_session(buffer_size=_REDIS_BUFFER) as session:
            for i in live.tolist():  # keys are fresh by construction: skip datasketch's round trip per check
                session.insert(f"{id_prefix}{i}", _minhash(sig[i], config), check_duplication=False)
        for i in live.tolist():
            for key in lsh.query(_minhash(sig[i], config)):
                j = int(key[len(id_prefix) :])
                if i < j:  # each pair is found from both ends; keep one
                    left.append(i)
                    right.append(j)
    finally:
        _delete_prefix(connection, basename)
    return np.asarray(left, np.int64), np.asarray(right, np.int64)


def _minhash(row: np.ndarray, config: CaptionDedupConfig) -> MinHash:
    """A datasketch MinHash holding a signature row (same scheme, seed and permutations)."""
    return MinHash(num_perm=config.num_perm, seed=config.seed, hashvalues=row, **_scheme_argument())


def _scheme_argument() -> dict[str, str]:
    """MinHash's ``scheme`` keyword for :data:`SCHEME`: datasketch < 2.0 has no such argument (only "legacy")."""
    return {"scheme": SCHEME} if hasattr(MinHash(num_perm=2), "scheme") else {}


def _redis_connection(url: str | None) -> dict[str, Any]:
    """``redis.Redis`` keyword arguments from ``redis://[[user]:password@]host[:port][/db]`` (``rediss``: TLS)."""
    parsed = urlparse(url or "")
    if parsed.scheme not in ("redis", "rediss"):
        raise ValueError(f"redis_url: expected redis://host:port/db, got {url!r}")
    connection: dict[str, Any] = {
        "host": parsed.hostname or "localhost",
        "port": parsed.port or 6379,
        "db": int(parsed.path.strip("/") or 0),
    }
    if parsed.username:
        connection["username"] = unquote(parsed.username)
    if parsed.password:
        connection["password"] = unquote(parsed.password)
    if parsed.scheme == "rediss":
        connection["ssl"] = True
    return connection


def _delete_prefix(connection: dict[str, Any], prefix: bytes) -> None:
    """Delete every Redis key starting with ``prefix`` (the buckets and key lists of one LSH index)."""
    import redis  # only the redis backend needs the client

    client = redis.Redis(**connection)
    try:
        batch = []
        for key in client.scan_iter(match=prefix + b"*", count=1_000):  # prefix is [a-z0-9:]: no glob escapes
            batch.append(key)
            if len(batch) >= 1_000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
    finally:
        client.close()


# --- verification ---------------------------------------------------------------------------------------------


def _verified(sig: np.ndarray, left: np.ndarray, right: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pairs (i < j), sorted, whose fraction of equal signature entries reaches ``threshold``."""
    left, right = np.minimum(left, right).astype(np.int64), np.maximum(left, right).astype(np.int64)
    n = np.int64(sig.shape[0])
    pair = np.unique((left * n + right)[left != right])
    left, right = pair // n, pair % n
    keep = np.zeros(pair.size, bool)
    for lo in range(0, pair.size, _VERIFY_CHUNK):
        i, j = left[lo : lo + _VERIFY_CHUNK], right[lo : lo + _VERIFY_CHUNK]
        equal = np.count_nonzero(sig[i] == sig[j], axis=1)
        keep[lo : lo + i.size] = equal / sig.shape[1] >= threshold  # as MinHash.jaccard, float division
    return left[keep], right[keep]
