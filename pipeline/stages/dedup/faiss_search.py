"""Pairs of near-duplicate images: rows of an embedding matrix whose cosine similarity reaches a threshold (FAISS).

Input: L2-normalised image embeddings, one row per image (float32, or float16 as the embed stage stores them,
possibly a ``np.load(mmap_mode="r")`` memmap); output: the pairs ``(left < right, similarity)``, sorted.
Two methods (``ImageDedupConfig.method``):

* ``"threshold"``: every pair at or above the threshold. Up to ``exact_max_rows`` rows an exact
  ``IndexFlatIP``; above, an ``IndexIVFFlat`` (inner product) whose coarse assignment (the ``nprobe`` nearest
  lists of each row) is computed once, used to add the row to its nearest list and then to search: the
  (row, probed list) entries are sorted by list and range-searched with one probe each, so that consecutive
  queries scan the same list while it is in cache. A pair is found if either row probes the other's list.
* ``"semdedup"`` (SemDeDup, Abbas et al. 2023): k-means, then every pair at or above the threshold inside each
  k-means cluster. Cheaper, but a pair split across two clusters is never compared: that is the trade-off.

Memory: the float32 copy of the matrix is made once, inside the index (float16 input is converted chunk by
chunk), plus one chunk of queries and its results; never an n x n structure.
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

NLIST_PER_SQRT_ROW = 2  # default nlist = 2 * sqrt(n): balances the coarse assignment (n * nlist) and the scan
TRAIN_ROWS_PER_LIST = 32  # k-means training sample per centroid: enough for lists of even size
KMEANS_ITERATIONS = 5  # a rough partition is enough: recall comes from nprobe more cheaply than from iterations
KMEANS_SEED = 1234
RECALL_CHUNK_ROWS = 65_536  # database rows per brute-force block when measuring recall
SMALL_CLUSTER_ROWS = 2_048  # SemDeDup clusters below this size are searched on one thread


def near_duplicate_pairs(embeddings: np.ndarray, config: ImageDedupConfig) -> Pairs:
    """All pairs ``i < j`` of rows with cosine similarity >= ``config.threshold``, sorted by ``(i, j)``."""
    with _threads():
        if len(embeddings) <= config.exact_max_rows:
            return _exact_pairs(embeddings, config)
        return _ivf_pairs(embeddings, config)


def semdedup_pairs(embeddings: np.ndarray, config: ImageDedupConfig) -> Pairs:
    """Pairs >= threshold inside each k-means cluster (SemDeDup): misses pairs that k-means splits apart."""
    n = len(embeddings)
    if n < 2:
        return _no_pairs()
    clusters = config.semdedup_clusters or max(1, round(math.sqrt(n)))
    clusters = min(clusters, n)
    with _threads():
        dim = embeddings.shape[1]
        kmeans = faiss.Kmeans(dim, clusters, niter=KMEANS_ITERATIONS, seed=KMEANS_SEED, spherical=True)
        kmeans.cp.min_points_per_centroid = 1  # the sample is sized on purpose; no warning about it
        kmeans.train(_training_sample(embeddings, clusters * TRAIN_ROWS_PER_LIST))
        labels = np.empty(n, np.int64)
        for start, stop in _chunks(n, config.chunk_rows):
            labels[start:stop] = kmeans.index.search(_rows(embeddings, start, stop), 1)[1][:, 0]
        order = np.argsort(labels, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=clusters))])
        found = []
        for cluster in range(clusters):
            found += _pairs_within(embeddings, order[bounds[cluster] : bounds[cluster + 1]], config)
    return _canonical(found)


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
    embeddings: np.ndarray, config: ImageDedupConfig, sample: int = 1000, seed: int = 0, pairs: Pairs | None = None
) -> float:
    """Fraction of the exact neighbours (>= threshold, other than itself) of ``sample`` random rows that the
    configured method finds; 1.0 if those rows have none. ``pairs``: the method's result if already computed
    (otherwise it is computed here, a second full search)."""
    n = len(embeddings)
    queries = np.sort(np.random.default_rng(seed).choice(n, min(sample, n), replace=False))
    with _threads():
        query, neighbour = _exact_neighbours(embeddings, queries, config.threshold)
    if len(query) == 0:
        return 1.0
    left, right, _ = pairs if pairs is not None else duplicate_pairs(embeddings, config)
    found = np.isin(
        _pair_keys(np.minimum(query, neighbour), np.maximum(query, neighbour), n), _pair_keys(left, right, n)
    )
    return float(found.mean())


# --- exact search -------------------------------------------------------------------------------------------


def _exact_pairs(embeddings: np.ndarray, config: ImageDedupConfig) -> Pairs:
    """Every row against every row with a flat index, one chunk of queries at a time."""
    n = len(embeddings)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    for start, stop in _chunks(n, config.chunk_rows):
        index.add(_rows(embeddings, start, stop))
    found = []
    for start, stop in _chunks(n, config.chunk_rows):
        queries = np.arange(start, stop)
        lims, sims, ids = index.range_search(_rows(embeddings, start, stop), _radius(config.threshold))
        found.append(_from_range_result(queries, lims, sims, ids))
    return _canonical(found)


def _exact_neighbours(embeddings: np.ndarray, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Brute force: ``(query row, neighbour row)`` for every neighbour >= threshold of the ``queries`` rows, one
    block of the matrix at a time (the queries are few; the matrix is never copied whole)."""
    query_vectors = _rows_at(embeddings, queries)
    found_query, found_neighbour = [], []
    for start, stop in _chunks(len(embeddings), RECALL_CHUNK_ROWS):
        block = faiss.IndexFlatIP(embeddings.shape[1])
        block.add(_rows(embeddings, start, stop))
        lims, _, ids = block.range_search(query_vectors, _radius(threshold))
        found_query.append(np.repeat(queries, np.diff(lims).astype(np.int64)))
        found_neighbour.append(ids + start)
    query, neighbour = np.concatenate(found_query), np.concatenate(found_neighbour)
    keep = query != neighbour
    return query[keep], neighbour[keep]


# --- IVF search ---------------------------------------------------------------------------------------------


def _ivf_pairs(embeddings: np.ndarray, config: ImageDedupConfig) -> Pairs:
    """Pairs from an IVF index: each row searched in the ``nprobe`` lists nearest to it."""
    index, probes = _ivf_index(embeddings, config)
    # Entries (row, probed list) in list order: a query chunk scans few lists, each many times while cached.
    entry_lists = probes.ravel()
    order = np.argsort(entry_lists, kind="stable")
    index.nprobe = 1  # each entry probes one list; a row's other lists are other entries
    found = []
    for start, stop in _chunks(len(order), config.chunk_rows):
        entries = order[start:stop]
        rows = entries // probes.shape[1]
        lists = entry_lists[entries][:, None]
        lims, sims, ids = index.range_search_preassigned(
            _rows_at(embeddings, rows), _radius(config.threshold), lists, None
        )
        found.append(_from_range_result(rows, lims, sims, ids))
    return _canonical(found)


def _ivf_index(embeddings: np.ndarray, config: ImageDedupConfig) -> tuple[faiss.IndexIVFFlat, np.ndarray]:
    """A trained ``IndexIVFFlat`` holding every row in its nearest list, and the ``nprobe`` nearest lists of each
    row (n x nprobe), from one coarse search per row: the costliest step, done once for adding and searching."""
    n, dim = embeddings.shape
    nlist = ivf_lists(n, config)
    nprobe = min(config.nprobe, nlist)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = KMEANS_ITERATIONS
    index.cp.seed = KMEANS_SEED
    index.cp.min_points_per_centroid = 1  # the sample below is sized on purpose; no warning about it
    index.train(_training_sample(embeddings, nlist * TRAIN_ROWS_PER_LIST))
    probes = np.empty((n, nprobe), np.int64)
    for start, stop in _chunks(n, config.chunk_rows):
        probes[start:stop] = index.quantizer.search(_rows(embeddings, start, stop), nprobe)[1]
    _fill_lists(index, embeddings, probes[:, 0], config.chunk_rows)
    return index, probes


def _fill_lists(index: faiss.IndexIVFFlat, embeddings: np.ndarray, nearest: np.ndarray, chunk_rows: int) -> None:
    """Every row into its ``nearest`` list, all of a list's rows in one ``add_entries`` call (rows read in list
    order, a chunk at a time). Adding row by row (``index.add``) grows each list's buffer by doubling, which left
    ~0.4x the matrix in unused capacity; one call per list allocates each list's exact size."""
    order = np.argsort(nearest, kind="stable")
    for start, stop in _chunks(len(order), chunk_rows):
        rows = order[start:stop]
        codes = _rows_at(embeddings, rows).view(np.uint8)  # IVFFlat's codes are the float32 vectors themselves
        lists = nearest[rows]
        bounds = np.concatenate([[0], np.flatnonzero(np.diff(lists)) + 1, [len(rows)]])
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            ids, list_codes = rows[lo:hi], codes[lo:hi]  # named: faiss gets raw pointers into them
            index.invlists.add_entries(int(lists[lo]), hi - lo, faiss.swig_ptr(ids), faiss.swig_ptr(list_codes))
    index.ntotal = len(order)


# --- SemDeDup -----------------------------------------------------------------------------------------------


def _pairs_within(embeddings: np.ndarray, members: np.ndarray, config: ImageDedupConfig) -> list[Pairs]:
    """Exact pairs >= threshold among ``members`` (one k-means cluster), queries in blocks of ``chunk_rows``."""
    if len(members) < 2:
        return []
    members = np.sort(members)  # ascending rows: memmap reads in file order
    vectors = _rows_at(embeddings, members)
    index = faiss.IndexFlatIP(embeddings.shape[1])
    index.add(vectors)
    found = []
    # A small cluster is a few milliseconds of work: waking a second thread for it costs more than it saves.
    with _threads(1 if len(members) < SMALL_CLUSTER_ROWS else None):
        for start, stop in _chunks(len(members), config.chunk_rows):
            lims, sims, ids = index.range_search(vectors[start:stop], _radius(config.threshold))
            left, right, sim = _from_range_result(np.arange(start, stop), lims, sims, ids)
            found.append((members[left], members[right], sim))
    return found


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


def _training_sample(embeddings: np.ndarray, size: int) -> np.ndarray:
    """A seeded random sample of rows (all rows if fewer), read in file order."""
    n = len(embeddings)
    if size >= n:
        return _rows(embeddings, 0, n)
    return _rows_at(embeddings, np.sort(np.random.default_rng(0).choice(n, size, replace=False)))


def _radius(threshold: float) -> float:
    """FAISS range search keeps similarities strictly above its radius; just below the threshold keeps ``>=``."""
    return float(np.nextafter(np.float32(threshold), np.float32(-np.inf)))


def _from_range_result(queries: np.ndarray, lims: np.ndarray, sims: np.ndarray, ids: np.ndarray) -> Pairs:
    """``(query, neighbour, similarity)`` of a range search whose i-th query is row ``queries[i]``, without the
    query itself."""
    query = np.repeat(queries.astype(np.int64), np.diff(lims).astype(np.int64))
    keep = query != ids
    return query[keep], ids[keep], sims[keep]


def _pair_keys(left: np.ndarray, right: np.ndarray, n: int) -> np.ndarray:
    return left.astype(np.int64) * n + right


def _canonical(found: list[Pairs]) -> Pairs:
    """The pairs of every part, each once as ``(min, max)``, sorted; a pair found several times (from both rows,
    from several lists) keeps its largest similarity, so the result does not depend on which search found it."""
    if not found:
        return _no_pairs()
    first, second, sims = (np.concatenate([part[i] for part in found]) for i in range(3))
    left, right = np.minimum(first, second), np.maximum(first, second)
    keys = _pair_keys(left, right, int(right.max()) + 1 if len(right) else 1)
    order = np.lexsort((-sims, keys))
    first_of_key = np.ones(len(order), bool)
    first_of_key[1:] = keys[order][1:] != keys[order][:-1]
    keep = order[first_of_key]
    return left[keep], right[keep], sims[keep].astype(np.float32)


def _no_pairs() -> Pairs:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
