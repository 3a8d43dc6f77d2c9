"""Benchmark: image near-duplicate search (``faiss_search.near_duplicate_pairs``) vs exact flat search.

Synthetic L2-normalised 512-d embeddings with a clustered structure (rows drawn around a few thousand random
centroids, so that an IVF partition meets the kind of density real embeddings have) and planted near-duplicates:
1% of the rows are noisy copies of other rows at cosine ~0.97 (0.96-0.985). Ours runs at several sizes (the
growth exponent of its time); the baseline, an exact ``IndexFlatIP`` range search over the largest matrix, is
timed on a sample of queries and extrapolated to all of them. Recall: of the planted pairs, and vs exact
(``recall_against_exact``) on 1000 sampled queries, uniform and among the rows with a planted copy. Memory: peak
RSS growth during our search (sampled by a thread; baseline taken once the matrix exists) over the bytes of the
float32 matrix.

    python benchmarks/image_dedup.py                      # 100k, 300k and 1M rows
    python benchmarks/image_dedup.py --rows 20000 50000   # quicker
Last line: RESULT image_dedup ratio=<exact s / ours s> seconds=<ours> recall=<vs exact> mem_ratio=<> exponent=<>
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from dataclasses import replace

import faiss
import numpy as np
import psutil

from pipeline.core.config import ImageDedupConfig
from pipeline.stages.dedup import faiss_search

DIM = 512
CENTROIDS = 4000
SPREAD = 1.2  # noise norm around a centroid: rows of one centroid have cosine ~0.4, of two centroids ~0
DUPLICATE_FRACTION = 0.01
DUPLICATE_COSINE = (0.96, 0.985)
EXACT_QUERIES = 1000


def embeddings(n: int, seed: int = 0, chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` x 512 normalised float32 rows and the planted pairs ``(original, copy)``."""
    rng = np.random.default_rng(seed)
    centroids = _normalised(rng.standard_normal((CENTROIDS, DIM), dtype=np.float32))
    matrix = np.empty((n, DIM), np.float32)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        noise = rng.standard_normal((stop - start, DIM), dtype=np.float32) * np.float32(SPREAD / np.sqrt(DIM))
        matrix[start:stop] = _normalised(centroids[rng.integers(0, CENTROIDS, stop - start)] + noise)
    # Copies overwrite rows that are not originals, so every planted pair is one original and one copy.
    rows = rng.permutation(n)
    copies = int(n * DUPLICATE_FRACTION)
    original, copy = rows[:copies], rows[copies : 2 * copies]
    cosine = rng.uniform(*DUPLICATE_COSINE, copies).astype(np.float32)
    noise_norm = np.sqrt(1 / cosine**2 - 1)  # |x + e| with e orthogonal-ish to x, |e| = t: cos = 1 / sqrt(1 + t^2)
    noise = rng.standard_normal((copies, DIM), dtype=np.float32) * (noise_norm / np.sqrt(DIM))[:, None]
    matrix[copy] = _normalised(matrix[original] + noise)
    return matrix, original, copy


def _normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class PeakRss:
    """Peak resident memory of this process while the block runs, sampled every 5 ms by a thread."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


def exact_seconds(matrix: np.ndarray, threshold: float, queries: int, seed: int = 1) -> tuple[float, float]:
    """Wall and CPU seconds of an exact ``IndexFlatIP`` range search of every row, from ``queries`` sampled rows."""
    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(matrix)
    sample = matrix[np.sort(np.random.default_rng(seed).choice(len(matrix), queries, replace=False))]
    start, cpu = time.perf_counter(), time.process_time()
    index.range_search(sample, threshold)
    scale = len(matrix) / queries
    return (time.perf_counter() - start) * scale, (time.process_time() - cpu) * scale


def planted_recall(pairs: faiss_search.Pairs, original: np.ndarray, copy: np.ndarray, n: int) -> float:
    left, right, _ = pairs
    planted = np.minimum(original, copy).astype(np.int64) * n + np.maximum(original, copy)
    return float(np.isin(planted, left * n + right).mean())


def ours(matrix: np.ndarray, config: ImageDedupConfig) -> tuple[faiss_search.Pairs, float, float, float]:
    """Our pairs, wall and CPU seconds, and peak RSS growth over the matrix bytes. CPU seconds too: on a shared
    machine wall time depends on what else runs (cores used = CPU / wall)."""
    with PeakRss() as rss:
        start, cpu = time.perf_counter(), time.process_time()
        pairs = faiss_search.near_duplicate_pairs(matrix, config)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return pairs, wall, cpu, rss.growth / matrix.nbytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the config's rule)")
    parser.add_argument("--nprobe", type=int, default=None, help="default: ImageDedupConfig's")
    parser.add_argument("--exact-max-rows", type=int, default=None, help="default: ImageDedupConfig's")
    parser.add_argument("--exact-queries", type=int, default=EXACT_QUERIES)
    args = parser.parse_args(argv)
    overrides = {"nlist": args.nlist, "nprobe": args.nprobe, "exact_max_rows": args.exact_max_rows}
    config = replace(ImageDedupConfig(), **{k: v for k, v in overrides.items() if v is not None})
    threads = faiss.omp_get_max_threads()
    print(f"config: {config}; faiss threads: {threads}; load average {os.getloadavg()[0]:.1f}", flush=True)

    ours(embeddings(20_000)[0], replace(config, exact_max_rows=0))  # warm-up: thread pools, first-call costs
    seconds, cpu_seconds = {}, {}
    for n in sorted(args.rows):
        matrix, original, copy = embeddings(n)
        pairs, seconds[n], cpu_seconds[n], mem_ratio = ours(matrix, config)
        print(f"rows={n} {'exact' if n <= config.exact_max_rows else 'ivf'}: {seconds[n]:.1f} s "
              f"({cpu_seconds[n]:.1f} CPU s), pairs={len(pairs[0])}, "
              f"planted recall={planted_recall(pairs, original, copy, n):.4f}, mem_ratio={mem_ratio:.3f}",
              flush=True)  # fmt: skip
    # matrix, pairs, mem_ratio: of the largest size from here on

    # Recall vs exact (brute force) on sampled queries. Uniform rows have a near-duplicate 2% of the time (~15
    # neighbours in 1000 queries: one miss is -0.07), so also on queries sampled among rows with a planted copy.
    recall_uniform = faiss_search.recall_against_exact(matrix, config, sample=args.exact_queries, pairs=pairs)
    planted_rows = np.concatenate([original, copy])
    queries = np.random.default_rng(2).choice(planted_rows, min(args.exact_queries, len(planted_rows)), replace=False)
    recall = faiss_search.recall_against_exact(matrix, config, pairs=pairs, queries=queries)
    print(f"recall vs exact on {args.exact_queries} sampled queries: {recall_uniform:.4f} (uniform rows), "
          f"{recall:.4f} (rows with a planted copy)", flush=True)  # fmt: skip
    exact, exact_cpu = exact_seconds(matrix, config.threshold, args.exact_queries)
    print(f"exact flat search, extrapolated from {args.exact_queries} queries: {exact:.0f} s ({exact_cpu:.0f} CPU s)")
    sizes, largest = sorted(seconds), max(seconds)
    exponent, cpu_exponent = (growth(sizes, [times[n] for n in sizes]) for times in (seconds, cpu_seconds))
    print(f"seconds by rows: {', '.join(f'{n}: {seconds[n]:.1f}' for n in sizes)}; exponent {exponent:.2f} "
          f"(CPU seconds: {cpu_exponent:.2f}); load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"RESULT image_dedup ratio={exact / seconds[largest]:.1f} seconds={seconds[largest]:.1f} "
          f"recall={recall:.4f} recall_uniform={recall_uniform:.4f} mem_ratio={mem_ratio:.3f} exponent={exponent:.2f} "
          f"cpu_seconds={cpu_seconds[largest]:.1f} cpu_ratio={exact_cpu / cpu_seconds[largest]:.1f} "
          f"cpu_exponent={cpu_exponent:.2f} rows={largest} "
          f"nlist={faiss_search.ivf_lists(largest, config)} nprobe={config.nprobe} threads={threads}")  # fmt: skip


def growth(sizes: list[int], times: list[float]) -> float:
    """Exponent b of a least-squares fit time = a * rows^b."""
    return float(np.polyfit(np.log(sizes), np.log(times), 1)[0]) if len(sizes) > 1 else float("nan")


if __name__ == "__main__":
    main()
