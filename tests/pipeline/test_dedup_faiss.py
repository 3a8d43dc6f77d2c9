"""Image near-duplicate search (pipeline.stages.dedup.faiss_search): exact, IVF and SemDeDup on synthetic
embeddings with planted near-duplicates, float16 memmap input, determinism, and real (tiny-model) embeddings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.config import ImageDedupConfig
from pipeline.stages.dedup import faiss_search
from pipeline.stages.dedup.clusters import components

REPO = Path(__file__).resolve().parents[2]
DIM = 512


def normalised(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def noisy_copies(base: np.ndarray, copies: int, cosine: float, rng: np.random.Generator) -> np.ndarray:
    """``copies`` rows at about ``cosine`` from the unit row ``base`` (noise of norm t: cos = 1 / sqrt(1 + t^2))."""
    noise = rng.standard_normal((copies, base.size)) * np.sqrt(1 / cosine**2 - 1) / np.sqrt(base.size)
    return normalised(base + noise)


def planted(n: int, groups: int, per_group: int, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """``n`` unit rows drawn around 200 random centroids (cosine ~0.4 within, ~0 across: the density an IVF
    partition meets on real embeddings), of which ``groups`` groups of ``per_group`` rows at cosine ~0.99 to a
    common base (~0.98 between two members), at random positions. Returns the rows and the groups' rows."""
    rng = np.random.default_rng(seed)
    centroids = normalised(rng.standard_normal((200, DIM)))
    rows = normalised(centroids[rng.integers(0, 200, n)] + rng.standard_normal((n, DIM)) * 1.2 / np.sqrt(DIM))
    positions = rng.permutation(n)[: groups * per_group].reshape(groups, per_group)
    for members in positions:
        rows[members] = noisy_copies(rows[members[0]], per_group, 0.99, rng)
    return rows, list(positions)


def pair_set(pairs: faiss_search.Pairs) -> set[tuple[int, int]]:
    return set(zip(pairs[0].tolist(), pairs[1].tolist(), strict=True))


def same_cluster(labels: np.ndarray, members: np.ndarray) -> bool:
    return len(set(labels[members].tolist())) == 1


@pytest.fixture(scope="module")
def moderate() -> tuple[np.ndarray, list[np.ndarray], faiss_search.Pairs]:
    """10k rows with 300 planted groups of 3 (900 rows: ~90 duplicate rows among 1000 sampled queries), and
    their exact pairs."""
    rows, groups = planted(10_000, 300, 3)
    return rows, groups, faiss_search.near_duplicate_pairs(rows, ImageDedupConfig(exact_max_rows=10_000))


IVF = ImageDedupConfig(exact_max_rows=1_000, nprobe=4)  # forces IVF on the 10k rows (nlist 2 * sqrt(n) = 200)
SEMDEDUP = ImageDedupConfig(method="semdedup")


@pytest.fixture(scope="module")
def ivf(moderate) -> faiss_search.Pairs:
    return faiss_search.near_duplicate_pairs(moderate[0], IVF)


@pytest.fixture(scope="module")
def semdedup(moderate) -> faiss_search.Pairs:
    return faiss_search.semdedup_pairs(moderate[0], SEMDEDUP)


def test_planted_groups_found_and_distinct_rows_not_merged():
    rows, groups = planted(3_000, 20, 4)
    left, right, sims = faiss_search.near_duplicate_pairs(rows, ImageDedupConfig())
    assert (left < right).all() and (sims >= 0.95).all()
    expected = {(int(a), int(b)) for g in groups for a in g for b in g if a < b}
    assert pair_set((left, right, sims)) == expected  # every pair inside a group, nothing across
    labels = faiss_search.image_clusters(rows, ImageDedupConfig())
    assert all(same_cluster(labels, g) for g in groups)
    assert len(np.unique(labels)) == 3_000 - 20 * 3  # the 2,920 other rows stay alone


def test_transitive_chain_is_one_cluster():
    rng = np.random.default_rng(1)
    b = normalised(rng.standard_normal((1, DIM)))[0]
    u = rng.standard_normal(DIM)
    u = (u - (u @ b) * b) / np.linalg.norm(u - (u @ b) * b)  # orthogonal to b
    a, c = normalised(np.stack([b + 0.25 * u, b - 0.25 * u]))  # a.b = c.b = 0.970, a.c = 0.882
    rows = np.concatenate([np.stack([a, b, c]), normalised(rng.standard_normal((50, DIM)))])
    config = ImageDedupConfig()
    assert pair_set(faiss_search.near_duplicate_pairs(rows, config)) == {(0, 1), (1, 2)}
    labels = faiss_search.image_clusters(rows, config)
    assert labels[0] == labels[1] == labels[2] and len(np.unique(labels)) == 51


def test_ivf_matches_exact_on_moderate_set(moderate, ivf):
    rows, groups, exact = moderate
    assert len(exact[0]) == 300 * 3  # 3 pairs per group of 3, no others
    found, expected = pair_set(ivf), pair_set(exact)
    assert found <= expected
    assert len(found) >= 0.99 * len(expected)
    recall = faiss_search.recall_against_exact(rows, IVF, pairs=ivf)
    assert recall >= 0.99
    assert faiss_search.recall_against_exact(rows, IVF) == recall  # without pairs: searches again, same result
    in_both = np.isin(exact[0] * len(rows) + exact[1], ivf[0] * len(rows) + ivf[1])
    np.testing.assert_allclose(ivf[2], exact[2][in_both], atol=1e-5)


def test_float16_memmap_input_gives_the_same_pairs(moderate, ivf, tmp_path):
    rows = moderate[0]
    np.save(tmp_path / "image.npy", rows.astype(np.float16))
    stored = np.load(tmp_path / "image.npy", mmap_mode="r")
    assert pair_set(faiss_search.near_duplicate_pairs(stored, IVF)) == pair_set(ivf)
    exact, exact16 = (faiss_search.near_duplicate_pairs(x[:4_000], ImageDedupConfig()) for x in (rows, stored))
    assert pair_set(exact16) == pair_set(exact) and len(exact[0]) > 0
    np.testing.assert_allclose(exact16[2], exact[2], atol=2e-3)  # float16 rounding of the inputs


def test_semdedup_finds_planted_groups(moderate, semdedup):
    rows, groups, exact = moderate
    found = pair_set(semdedup)
    assert found <= pair_set(exact)  # exact inside each k-means cluster: nothing below the threshold
    assert len(found) >= 0.9 * len(exact[0])  # a group split by k-means loses its pairs across the split
    labels = components(len(rows), semdedup[0], semdedup[1])
    assert np.mean([same_cluster(labels, g) for g in groups]) >= 0.9


def test_deterministic(moderate, ivf, semdedup):
    rows = moderate[0]
    for first, config in ((ivf, IVF), (semdedup, SEMDEDUP)):
        for a, b in zip(first, faiss_search.duplicate_pairs(rows, config), strict=True):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(faiss_search.image_clusters(rows, SEMDEDUP), components(len(rows), *semdedup[:2]))


def test_empty_and_single_row():
    for n in (0, 1):
        rows = np.zeros((n, DIM), np.float32) + np.float32(1 / np.sqrt(DIM))
        for config in (ImageDedupConfig(), ImageDedupConfig(method="semdedup")):
            assert all(len(part) == 0 for part in faiss_search.duplicate_pairs(rows, config))
            assert len(faiss_search.image_clusters(rows, config)) == n


def test_real_images_tiny_random_model():
    """Photo-like images and their edits through the random-init DALIP-Tiny (32 px input): re-encoding and
    resizing leave the embedding unchanged (cosine >= 0.999), but distinct images also sit at 0.96-0.995 and
    crops and flips at ~0.99, so only a threshold near 0.999 separates anything with this model."""
    open_clip = pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    from PIL import Image, ImageDraw, ImageFilter

    def photo(seed: int, size: int = 256) -> Image.Image:
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:size, 0:size] / size
        waves = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 3) * x + rng.uniform(0.5, 3) * y)) for _ in range(3)])
        pixels = (waves.transpose(1, 2, 0) * 100 + 128 + rng.normal(0, 12, (size, size, 3))).clip(0, 255)
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            cx, cy, r = int(rng.integers(0, size)), int(rng.integers(0, size)), int(rng.integers(10, 60))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        return image.filter(ImageFilter.GaussianBlur(1))

    def jpeg(image: Image.Image, quality: int) -> Image.Image:
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=quality)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    originals = [photo(seed) for seed in range(6)]
    edits = {
        "jpeg q30": lambda im: jpeg(im, 30),
        "resize 1/2": lambda im: im.resize((128, 128), Image.BICUBIC),
        "crop 90%": lambda im: im.crop((13, 13, 243, 243)),
        "flip": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
    }
    images = [jpeg(im, 95) for im in originals] + [edit(im) for im in originals[:2] for edit in edits.values()]
    open_clip.add_model_config(REPO / "dalip" / "model_configs" / "DALIP-Tiny.json")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms("DALIP-Tiny")
    model.eval()
    with torch.no_grad():
        vectors = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True).numpy()
    sims = vectors @ vectors.T
    edit_sims = {name: [float(sims[i, 6 + i * len(edits) + k]) for i in range(2)] for k, name in enumerate(edits)}
    distinct = sims[:6, :6][np.triu_indices(6, 1)]
    print("cosine to the original:", {name: [round(s, 4) for s in v] for name, v in edit_sims.items()})
    print(f"cosine between distinct originals: {distinct.min():.4f}-{distinct.max():.4f}")
    assert min(edit_sims["jpeg q30"] + edit_sims["resize 1/2"]) >= 0.999
    # At a threshold of 0.999 the re-encoded and resized copies join their original and distinct images stay apart.
    labels = faiss_search.image_clusters(vectors, ImageDedupConfig(threshold=0.999))
    for i in range(2):
        assert labels[i] == labels[6 + i * len(edits)] == labels[6 + i * len(edits) + 1]
    assert len(np.unique(labels[:6])) == 6
