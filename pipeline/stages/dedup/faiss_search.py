"""Pairs of near-duplicate images: rows of an embedding matrix whose cosine similarity reaches a threshold (FAISS).

Input: L2-normalised image embeddings, one row per image (float32, or float16 as the embed stage stores them,
possibly a ``np.load(mmap_mode="r")`` memmap); output: the pairs ``(left < right, similarity)``, sorted by
``(left, right)``. Every search is a FAISS ``IndexFlatIP.range_search`` (similarity >= threshold, no cap on the
neighbours of a row); what changes is which rows are compared (``ImageDedupConfig.method``):

* ``"threshold"``, up to ``exact_max_rows`` rows: every row with every row (exact).
* ``"threshold"``, above: IVF. Spherical k-means (``faiss.Kmeans``) splits the rows into ``nlist`` lists, each
  row in the list of its nearest centroid; a row is compared with the rows of its ``nprobe`` nearest lists. The
  search runs list by list: all the rows probing a list are range-searched together against that list's rows
  (as ``faiss.contrib.big_batch_search`` does), so that the comparisons are one matrix product per list. Measured
  on 1M x 512 rows (``benchmarks/image_dedup.py``) this scan took 56 CPU seconds where ``IndexIVFFlat``
  (``range_search_preassigned``, queries sorted by list) took 120 and its k-NN search 30% more; and no float32
  copy of the whole matrix is needed. A pair is found when either row probes the other's list.
* ``"semdedup"`` (SemDeDup, Abbas et al. 2023): k-means into ``semdedup_clusters`` clusters, then every pair
  inside each cluster (the IVF search above with one probe). Cheaper, but a pair that k-means splits across two
  clusters is never compared: that is the method's trade-off.

Memory: the exact search holds a float32 copy of the matrix (its index); IVF and SemDeDup hold one list's rows
and its queries at a time (float16 input is converted to float32 a list or a chunk at a time), the ``nprobe``
list numbers of each row, and the pairs found; never an n x n structure. Results are the same for the same input and
thread count: seeded sampling and k-means, ties resolved by sorting.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from pipeline.core.config import ImageDedupConfig
from pipeline.stages.dedup.clusters import components

Pairs = tuple[np.ndarray, np.ndarray, np.ndarray]  # left (int64), right (int64, > left), cosine (float32)

NLIST_PER_SQRT_ROW = 2  # default nlist = 2 * sqrt(n): the coarse assignment (n * nlist) then costs about the scan
TRAIN_ROWS_PER_LIST = 32  # k-means training sample per centroid
KMEANS_ITERATIONS = 10  # planted-pair recall at 1M rows, nprobe 4: 0.9976 after 5, 0.9989 after 10, 0.9990 after 20
SEED = 1234
RECALL_BLOCK_ROWS = 65_536  # database rows per brute-force block when measuring recall
SMALL_SEARCH = 1 << 18  # query x database rows below which a search runs on one thread (waking a second costs more)


def near_duplicate_pairs(embeddings: np.ndarray, config: ImageDedupConfig) -> Pairs:
    """All pairs ``i < j`` of rows with cosine similarity >= ``config.threshold``: exact up to
    ``config.exact_max_rows`` rows, IVF (``nlist`` lists, ``nprobe`` probed) above."""
    n = len(embeddings)
    with _threads():
        if n <= config.exact_max_rows:
            rows = np.arange(n)
            return _canonical(_range_pairs(embeddings, rows, rows, config))
        nlist = ivf_lists(n, config)
        return _bucket_pairs(embeddings, _kmeans(embeddings, nlist), min(config.nprobe, nlist), config)


def semdedup_pairs(embeddings: np.ndarray, config: ImageDedupConfig) -> Pairs:
    """Pairs >= threshold inside each k-means cluster (SemDeDup): misses pairs that k-means splits apart."""
    n = len(embeddings)
    if n < 2:
        return _canonical([])
    clusters = min(n, config.semdedup_clusters or max(1, round(math.sqrt(n))))
    with _threads():
        return _bucket_pairs(embeddings, _kmeans(embeddings, clusters), 1, config)


def duplicate_pairs(embeddings: np.ndarray, config: ImageDedupConfig) -> Pairs:
    """The pairs of the configured method (``config.method``)."""
    if config.method == "semdedup":
        return semdedup_pairs(embeddings, config)
    return near_duplicate_pairs(embeddings, config)


def image_clusters(embeddings: np.ndarray, config: ImageDedupConfig) -> np.ndarray:
    """Cluster label of each row: connected components of the configured method's pairs (transitive)."""
    left, right, _ = duplicate_pairs(embeddings, config)
    return components(len(embeddings), left, right)


def ivf_lists(n: int, config: ImageDedupConfig) -> int:
    """Number of IVF lists for ``n`` rows: ``config.nlist``, by default ``NLIST_PER_SQRT_ROW * sqrt(n)``."""
    nlist = config.nlist or round(NLIST_PER_SQRT_ROW * math.sqrt(n))
    return max(1, min(nlist, n // TRAIN_ROWS_PER_LIST))  # k-means needs some rows per centroid


def recall_against_exact(
    embeddings: np.ndarray,
    config: ImageDedupConfig,
    sample: int = 1000,
    seed: int = 0,
    pairs: Pairs | None = None,
    queries: np.ndarray | None = None,
) -> float:
    """Fraction of the exact neighbours (>= threshold, other than itself) of ``sample`` random rows (or of the
    ``queries`` rows) that the configured method finds; 1.0 if those rows have none. ``pairs``: the method's
    result if already computed (otherwise this runs the method again)."""
    n = len(embeddings)
    if queries is None:
        queries = np.random.default_rng(seed).choice(n, min(sample, n), replace=False)
    queries = np.sort(np.asarray(queries, np.int64))
    with _threads():
        query, neighbour = _exact_neighbours(embeddings, queries, config.threshold)
    if len(query) == 0:
        return 1.0
    left, right, _ = pairs if pairs is not None else duplicate_pairs(embeddings, config)
    wanted = _pair_keys(np.minimum(query, neighbour), np.maximum(query, neighbour), n)
    return float(np.isin(wanted, _pair_keys(left, right, n)).mean())


# --- searches -----------------------------------------------------------------------------------------------


def _range_pairs(
    embeddings: np.ndarray, database: np.ndarray, queries: np.ndarray, config: ImageDedupConfig
) -> list[Pairs]:
    """``(query row, database row, similarity)`` for every similarity >= threshold between the ``queries`` rows
    and the ``database`` rows (a flat index; queries in blocks of ``chunk_rows``), without a row with itself."""
    index = faiss.IndexFlatIP(embeddings.shape[1])
    for start, stop in _chunks(len(database), config.chunk_rows):
        index.add(_rows_at(embeddings, database[start:stop]))
    found = []
    with _threads(1 if len(database) * len(queries) < SMALL_SEARCH else None):
        for start, stop in _chunks(len(queries), config.chunk_rows):
            block = queries[start:stop]
            lims, sims, ids = index.range_search(_rows_at(embeddings, block), _radius(config.threshold))
            query = np.repeat(block.astype(np.int64), np.diff(lims).astype(np.int64))
            neighbour = database[ids]
            keep = query != neighbour
            found.append((query[keep], neighbour[keep], sims[keep]))
    return found


def _kmeans(embeddings: np.ndarray, k: int) -> faiss.Index:
    """Spherical k-means (seeded) on a sample of ``TRAIN_ROWS_PER_LIST * k`` rows; returns the centroids' index."""
    kmeans = faiss.Kmeans(embeddings.shape[1], k, niter=KMEANS_ITERATIONS, seed=SEED, spherical=True)
    kmeans.cp.min_points_per_centroid = 1  # the sample is sized on purpose; no warning about it
    kmeans.train(_sample(embeddings, k * TRAIN_ROWS_PER_LIST))
    return kmeans.index


def _bucket_pairs(embeddings: np.ndarray, centroids: faiss.Index, nprobe: int, config: ImageDedupConfig) -> Pairs:
    """IVF search, list by list: a row belongs to the list of its nearest centroid and is a query of the lists
    of its ``nprobe`` nearest centroids; each list's queries are range-searched against its rows."""
    n = len(embeddings)
    probes = np.empty((n, nprobe), np.int64)  # one coarse search per row, for membership and for probing
    for start, stop in _chunks(n, config.chunk_rows):
        probes[start:stop] = centroids.search(_rows(embeddings, start, stop), nprobe)[1]
    members, member_bounds = _grouped(probes[:, 0], centroids.ntotal)
    entries, entry_bounds = _grouped(probes.ravel(), centroids.ntotal)  # entry = row * nprobe + probe rank
    found = []
    for lst in range(centroids.ntotal):
        database = members[member_bounds[lst] : member_bounds[lst + 1]]
        if len(database):
            queries = entries[entry_bounds[lst] : entry_bounds[lst + 1]] // nprobe
            found += _range_pairs(embeddings, database, queries, config)
    return _canonical(found)


def _exact_neighbours(embeddings: np.ndarray, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: ``(query row, neighbour row)`` for every neighbour >= threshold of the ``queries`` rows, one
    block of the matrix at a time (the queries are few; the matrix is never copied whole)."""
    query_vectors = _rows_at(embeddings, queries)
    found_query, found_neighbour = [], []
    for start, stop in _chunks(len(embeddings), RECALL_BLOCK_ROWS):
        block = faiss.IndexFlatIP(embeddings.shape[1])
        block.add(_rows(embeddings, start, stop))
        lims, _, ids = block.range_search(query_vectors, _radius(threshold))
        found_query.append(np.repeat(queries, np.diff(lims).astype(np.int64)))
        found_neighbour.append(ids + start)
    query, neighbour = np.concatenate(found_query), np.concatenate(found_neighbour)
    keep = query != neighbour
    return query[keep], neighbour[keep]


# --- helpers ------------------------------------------------------------------------------------------------


@contextmanager
def _threads(count: int | None = None) -> Iterator[None]:
    """FAISS (OpenMP) on ``count`` threads, by default the cores this process may use; restores the setting."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(count or len(os.sched_getaffinity(0)))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _chunks(n: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _rows(embeddings: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` as contiguous float32 (FAISS's type): a copy only if float16 or strided."""
    return np.ascontiguousarray(embeddings[start:stop], dtype=np.float32)


def _rows_at(embeddings: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(embeddings[rows], dtype=np.float32)


def _sample(embeddings: np.ndarray, size: int) -> np.ndarray:
    """A seeded random sample of rows (all rows if fewer), read in file order."""
    n = len(embeddings)
    if size >= n:
        return _rows(embeddings, 0, n)
    return _rows_at(embeddings, np.sort(np.random.default_rng(SEED).choice(n, size, replace=False)))


def _grouped(labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``labels`` grouped by label (stable: ascending within a group) and each group's bounds."""
    order = np.argsort(labels, kind="stable")
    return order, np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k))])


def _radius(threshold: float) -> float:
    """FAISS range search keeps similarities strictly above its radius; just below the threshold keeps ``>=``."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def _pair_keys(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    return left.astype(np.int64) * n + right


def _canonical(found: list[Pairs]) -> Pairs:
    """The pairs of every part, each once as ``(min, max)``, sorted; a pair found several times (from both rows,
    from several lists) keeps its largest similarity, so the result does not depend on which search found it."""
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    first, second, sims = (np.concatenate([part[i] for part in found]) for i in range(3))
    left, right = np.minimum(first, second).astype(np.int64), np.maximum(first, second).astype(np.int64)
    keys = _pair_keys(left, right, int(right.max()) + 1 if len(right) else 1)
    order = np.lexsort((-sims, keys))
    first_of_key = np.ones(len(order), bool)
    first_of_key[1:] = keys[order][1:] != keys[order][:-1]
    keep = order[first_of_key]
    return left[keep], right[keep], sims[keep].astype(np.float32)
