"""Union-find over duplicate pairs and the keep rule that picks one representative per cluster.

Shared by every dedup method: a method finds pairs of row indices that duplicate each other; connected
components turn pairs into clusters transitively (a~b, b~c => {a, b, c}); the representative of a cluster is
the row ranked first by a deterministic rank (see :data:`KEEP_RULE`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

KEEP_RULE = (
    "plant domain first, then the more open license (cc0/public domain, cc-by, cc-by-sa, cc-by-nc, cc-by-nc-sa, "
    "cc-by-nd, cc-by-nc-nd, other), then the larger original image, then the smallest sample_id"
)


def components(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Cluster label (0..k-1) of each of ``n`` rows, joining ``left[i]`` with ``right[i]``; O(n + pairs)."""
    if n == 0:
        return np.zeros(0, np.int64)
    left, right = np.asarray(left, np.int64), np.asarray(right, np.int64)
    graph = coo_matrix((np.ones(left.size, np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    return labels.astype(np.int64)


def representatives(labels: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Index of the representative of each row's cluster: the member with the smallest ``rank`` (ties: index)."""
    order = np.lexsort((np.arange(labels.size), rank, labels))  # by cluster, then rank, then position
    first = np.ones(labels.size, bool)
    first[1:] = labels[order][1:] != labels[order][:-1]
    rep_of_label = np.empty(labels.max() + 1 if labels.size else 0, np.int64)
    rep_of_label[labels[order][first]] = order[first]
    return rep_of_label[labels]


def cluster_table(
    ids: pa.Array, positions: np.ndarray, left: np.ndarray, right: np.ndarray, rank: np.ndarray, column: str
) -> tuple[pa.Table, dict[str, int]]:
    """Pairs among ``ids[positions]`` -> ``sample_id`` + ``column`` (its cluster's representative) for members of
    clusters of two or more, and the counts a stage reports (``clusters``, ``duplicates``)."""
    labels = components(len(positions), left, right)
    reps = representatives(labels, rank)
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    in_cluster = sizes[labels] > 1
    members = ids.take(pa.array(positions[in_cluster]))
    chosen = ids.take(pa.array(positions[reps[in_cluster]]))
    clusters = int((sizes > 1).sum())
    table = pa.table({"sample_id": members, column: chosen})
    return table, {"clusters": clusters, "duplicates": int(in_cluster.sum()) - clusters}
