"""img2dataset's Resizer, decoding a big JPEG at 1/2, 1/4 or 1/8 scale when the resize would throw the pixels away.

img2dataset's ``Resizer.__call__`` decodes every image whole (``cv2.imdecode(buf, IMREAD_UNCHANGED)``) and then
shrinks it to ``image_size``; for a 2048x1536 photo going to 224 px the full decode is most of the time. libjpeg
can decode straight to a fraction of the size (DCT scaling, OpenCV's ``IMREAD_REDUCED_*`` flags).
:class:`ReducedDecodeResizer` picks the largest factor whose decode is still at least the size the parent would
resize to, so it never upscales from a reduced decode.

Reused from img2dataset, unchanged: the constructor and every setting (modes, interpolations, encode params),
``SuppressStdoutStderr`` and the one-thread OpenCV setting, the same albumentations ``CenterCrop``/``PadIfNeeded``
and ``cv2.imencode`` calls, and the parent's whole ``__call__`` for everything the fast path does not take: PNG,
WebP, GIF, CMYK or unreadable JPEG headers, blurring, ``disable_all_reencoding``, no downscale (``resize_mode``
"no", ``resize_only_if_bigger``, small images), a decode the parent must judge (``None``), or any exception.

Repeated, because the parent's ``__call__`` is one block that cannot take an already decoded array: its three
refusals (checked on the full size from the JPEG header, in its order and with its messages, after the decode
as the parent does), and the ``SmallestMaxSize``/``LongestMaxSize`` target size (scale from the full size,
rounded as albumentations rounds), so the output size is exactly the parent's. The reduced image is resized to
that size with the ``cv2.resize`` call albumentations makes, with the parent's downscale interpolation.

Orientation: ``IMREAD_UNCHANGED`` ignores EXIF orientation, so the reduced flags carry ``IMREAD_IGNORE_ORIENTATION``;
a greyscale JPEG is decoded greyscale so the channel count matches the parent's.
"""

from __future__ import annotations

import io

import albumentations as A
import cv2
import numpy as np
from img2dataset.resizer import ResizeMode, Resizer, SuppressStdoutStderr
from PIL import Image

JPEG_MAGIC = b"\xff\xd8\xff"
FACTORS = (8, 4, 2)  # largest first: the cheapest decode that is still big enough wins
REDUCED_FLAGS = {  # PIL's mode of the JPEG -> factor -> flag giving the channels IMREAD_UNCHANGED would give
    "RGB": {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8},
    "L": {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8},
}

Result = tuple  # (img_str, width, height, original_width, original_height, err), img2dataset's contract


def _reduced_side(side: int, factor: int) -> int:
    return -(-side // factor)  # libjpeg rounds a scaled side up


class ReducedDecodeResizer(Resizer):
    """Drop-in for img2dataset's ``Resizer`` (same arguments and result) that decodes big JPEGs reduced."""

    def __call__(self, img_stream, blurring_bbox_list=None) -> Result:
        if self.disable_all_reencoding or blurring_bbox_list is not None:
            return super().__call__(img_stream, blurring_bbox_list)
        try:
            result = self._reduced_call(img_stream)
        except Exception:  # noqa: BLE001 - anything odd: the parent's full path gives the verdict
            result = None
        return super().__call__(img_stream, blurring_bbox_list) if result is None else result

    def target_shape(self, height: int, width: int) -> tuple[int, int] | None:
        """(height, width) the parent downscales an image of this full size to; None when it does not downscale."""
        if self.resize_mode in (ResizeMode.keep_ratio, ResizeMode.center_crop):
            side = min(height, width)  # SmallestMaxSize
        elif self.resize_mode in (ResizeMode.border, ResizeMode.keep_ratio_largest):
            side = max(height, width)  # LongestMaxSize
        else:
            return None
        if side <= self.image_size:  # an upscale or no resize: a reduced decode saves nothing
            return None
        scale = self.image_size / side
        return max(1, round(height * scale)), max(1, round(width * scale))  # albumentations' MaxSizeTransform

    def reduction_factor(self, height: int, width: int) -> int | None:
        """Largest factor in (8, 4, 2) whose reduced decode still covers the parent's target size, or None."""
        target = self.target_shape(height, width)
        if target is None:
            return None
        for factor in FACTORS:
            if _reduced_side(height, factor) >= target[0] and _reduced_side(width, factor) >= target[1]:
                return factor
        return None

    def _reduced_call(self, img_stream) -> Result | None:
        """The fast path's result, or None to hand the image to the parent."""
        img_stream.seek(0)
        data = img_stream.read()
        if data[:3] != JPEG_MAGIC:
            return None
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
            flags = REDUCED_FLAGS.get(header.mode)
        factor = self.reduction_factor(height, width) if flags is not None else None
        if factor is None:
            return None
        with SuppressStdoutStderr():
            cv2.setNumThreads(1)
            img = cv2.imdecode(np.frombuffer(data, np.uint8), flags[factor] | cv2.IMREAD_IGNORE_ORIENTATION)
            if img is None or img.shape[:2] != (_reduced_side(height, factor), _reduced_side(width, factor)):
                return None
            # the parent's refusals, on the full size and in its order
            if min(height, width) < self.min_image_size:
                return None, None, None, None, None, "image too small"
            if height * width > self.max_image_area:
                return None, None, None, None, None, "image area too large"
            if max(height, width) / min(height, width) > self.max_aspect_ratio:
                return None, None, None, None, None, "aspect ratio too large"
            target_height, target_width = self.target_shape(height, width)
            if img.shape[:2] != (target_height, target_width):  # albumentations' resize, minus its ~2 ms of setup
                img = cv2.resize(img, (target_width, target_height), interpolation=self.downscale_interpolation)
            if self.resize_mode == ResizeMode.center_crop:
                img = A.CenterCrop(height=self.image_size, width=self.image_size)(image=img)["image"]
            elif self.resize_mode == ResizeMode.border:
                img = A.PadIfNeeded(
                    min_height=self.image_size,
                    min_width=self.image_size,
                    border_mode=cv2.BORDER_CONSTANT,
                    value=[255, 255, 255],
                    p=1.0,
                )(image=img)["image"]
            out_height, out_width = img.shape[:2]
            img_str = cv2.imencode(f".{self.encode_format}", img, params=self.encode_params)[1].tobytes()
        return img_str, out_width, out_height, width, height, None
