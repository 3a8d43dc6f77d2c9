"""ReducedDecodeResizer against img2dataset's Resizer on the same photo-like bytes: sizes, quality, refusals."""

from __future__ import annotations

import io
import time

import cv2
import numpy as np
import pytest
from img2dataset.resizer import Resizer
from PIL import Image

from pipeline.stages.download.resizer import ReducedDecodeResizer

REDUCED = {
    cv2.IMREAD_REDUCED_COLOR_2,
    cv2.IMREAD_REDUCED_COLOR_4,
    cv2.IMREAD_REDUCED_COLOR_8,
    cv2.IMREAD_REDUCED_GRAYSCALE_2,
    cv2.IMREAD_REDUCED_GRAYSCALE_4,
    cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


def photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """RGB uint8 that compresses like a photo: smooth gradients, sensor noise, a few hard edges."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([128 + 90 * np.sin(x / (170 + 30 * c) + c) * np.cos(y / 120 - c) for c in range(3)], axis=-1)
    img += rng.normal(0, 6, img.shape)
    img[height // 3 : height // 2, width // 4 : width // 2] += 60  # a bright block: sharp edges
    img[:, (2 * width) // 3 : (2 * width) // 3 + 4] = 20  # a thin dark line
    return img.clip(0, 255).astype(np.uint8)


def jpeg(arr: np.ndarray, **save_args) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90, **save_args)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 CW to display
    big = photo(2048, 1536, seed=1)
    png = io.BytesIO()
    Image.fromarray(big).save(png, "PNG", compress_level=1)
    return {
        "1024x768": jpeg(photo(1024, 768, seed=0)),
        "2048x1536": jpeg(big),
        "portrait_1500x2000": jpeg(photo(1500, 2000, seed=2)),
        "grey_1600x1200": jpeg(photo(1600, 1200, seed=3)[..., 1]),
        "exif6_1280x960": jpeg(photo(1280, 960, seed=4), exif=exif),
        "progressive_2048x1536": jpeg(big, progressive=True),
        "cmyk_2048x1536": _cmyk(big),
        "png_2048x1536": png.getvalue(),
    }


def _cmyk(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).convert("CMYK").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def decode_flags(monkeypatch) -> list[int]:
    """Every flag cv2.imdecode is called with (ours and the parent's), with orientation handling masked off."""
    seen: list[int] = []
    real = cv2.imdecode

    def spy(buf, flags):
        seen.append(flags if flags < 0 else flags & ~cv2.IMREAD_IGNORE_ORIENTATION)
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return seen


def psnr(a: bytes, b: bytes) -> float:
    x, y = (cv2.imdecode(np.frombuffer(s, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float64) for s in (a, b))
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def both(data: bytes, **args):
    return Resizer(**args)(io.BytesIO(data)), ReducedDecodeResizer(**args)(io.BytesIO(data))


@pytest.mark.parametrize("image_size", [256, 224])
@pytest.mark.parametrize("mode", ["keep_ratio", "center_crop", "border", "keep_ratio_largest"])
@pytest.mark.parametrize(
    "name", ["1024x768", "2048x1536", "portrait_1500x2000", "grey_1600x1200", "exif6_1280x960", "progressive_2048x1536"]
)
def test_same_sizes_and_close_pixels_as_img2dataset(images, decode_flags, name, mode, image_size):
    parent, ours = both(images[name], image_size=image_size, resize_mode=mode, resize_only_if_bigger=False)
    assert parent[5] is None and ours[5] is None
    assert ours[1:5] == parent[1:5]  # width, height, original_width, original_height
    assert any(f in REDUCED for f in decode_flags), "the fast path should have decoded reduced"
    assert psnr(ours[0], parent[0]) >= 35
    if name.startswith("exif6"):
        assert parent[3:5] == (1280, 960)  # stored orientation, as IMREAD_UNCHANGED leaves it


def test_picks_the_largest_factor_that_still_covers_the_target():
    r = ReducedDecodeResizer(image_size=256, resize_mode="keep_ratio", resize_only_if_bigger=False)
    assert r.reduction_factor(1536, 2048) == 4  # 384 >= 256, but 1/8 gives 192
    assert r.reduction_factor(768, 1024) == 2
    assert r.reduction_factor(511, 700) is None  # smaller than 2x the target
    border = ReducedDecodeResizer(image_size=256, resize_mode="border", resize_only_if_bigger=False)
    assert border.reduction_factor(1536, 2048) == 8  # 256x192 is exactly the target


@pytest.mark.parametrize(
    "name, args",
    [
        ("1024x768", dict(image_size=512, resize_mode="keep_ratio")),  # 768 < 2 x 512
        ("png_2048x1536", dict(image_size=224, resize_mode="keep_ratio")),
        ("cmyk_2048x1536", dict(image_size=224, resize_mode="center_crop")),
        ("2048x1536", dict(image_size=224, resize_mode="no")),
        ("1024x768", dict(image_size=1024, resize_mode="keep_ratio", resize_only_if_bigger=True)),  # no downscale
    ],
)
def test_falls_back_to_the_full_decode(images, decode_flags, name, args):
    args = {"resize_only_if_bigger": False, **args}
    decode_flags.clear()
    ours = ReducedDecodeResizer(**args)(io.BytesIO(images[name]))
    assert decode_flags == [cv2.IMREAD_UNCHANGED]
    parent = Resizer(**args)(io.BytesIO(images[name]))
    assert ours == parent  # the parent's own path: identical bytes


def test_not_an_image_gets_the_parents_error():
    parent, ours = both(
        b"\xff\xd8\xff not really a jpeg", image_size=224, resize_mode="keep_ratio", resize_only_if_bigger=False
    )
    assert ours == parent and ours[5] == "Image decoding error"


@pytest.mark.parametrize(
    "limit, error",
    [
        (dict(min_image_size=1600), "image too small"),
        (dict(max_image_area=2048 * 1536 - 1), "image area too large"),
        (dict(max_aspect_ratio=1.3), "aspect ratio too large"),
    ],
)
def test_refusals_match_img2dataset(images, decode_flags, limit, error):
    parent, ours = both(
        images["2048x1536"], image_size=224, resize_mode="keep_ratio", resize_only_if_bigger=False, **limit
    )
    assert ours == parent == (None, None, None, None, None, error)
    assert any(f in REDUCED for f in decode_flags)  # refused by the fast path, on the full size from the header
    inside = {"min_image_size": 1536, "max_image_area": 2048 * 1536, "max_aspect_ratio": 2048 / 1536}
    passes = {k: inside[k] for k in limit}  # exactly at each limit: accepted by both
    parent, ours = both(
        images["2048x1536"], image_size=224, resize_mode="keep_ratio", resize_only_if_bigger=False, **passes
    )
    assert ours[5] is None and ours[1:5] == parent[1:5]


def test_speed_is_printed(images, capsys):
    data = images["2048x1536"]
    timings = {}
    for cls in (Resizer, ReducedDecodeResizer):
        resizer = cls(image_size=224, resize_mode="center_crop", resize_only_if_bigger=False)
        resizer(io.BytesIO(data))  # warm up
        start = time.perf_counter()
        for _ in range(20):
            resizer(io.BytesIO(data))
        timings[cls.__name__] = 20 / (time.perf_counter() - start)
    with capsys.disabled():
        print(
            f"\n2048x1536 JPEG -> 224 center_crop, 20 images: img2dataset Resizer {timings['Resizer']:.1f} img/s,"
            f" ReducedDecodeResizer {timings['ReducedDecodeResizer']:.1f} img/s"
            f" ({timings['ReducedDecodeResizer'] / timings['Resizer']:.1f}x)"
        )
