"""Image decoding shared by every reader: one place that turns bytes into RGB arrays or a clear BadInput.

Decompression bombs (a few hundred KB of PNG that decode to gigabytes) are refused from the size the header
declares, before any pixel is decoded: ``max_pixels`` (each reader's config) caps width × height.
"""

from __future__ import annotations

import io
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from datagen import files
from datagen.units import BadInput, Rejected

MAX_PIXELS = 1 << 28  # ~268 MP: the default cap of every reader (Pillow's own default warning limit is 89 MP)
# Pillow's own check (at open, for every image incl. mesh textures) raises only above twice this: a ceiling for
# textures and for any reader's max_pixels, not the cap itself (check_pixels is).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ORIENTATION = 0x0112  # EXIF tag
# Every reader's default ``max_side``: a frame's long side above it is downscaled at decode. The trainer fits each
# frame into the nearest SDXL aspect bucket of area 1024² by resize-to-cover then crop (training/augment.py); at
# 1536 (1.5 × 1024) every aspect up to 2.18:1 still covers its bucket without upscaling: 1:1 needs 1024, 4:3 1195,
# 3:2 1280, 16:9 1366 (a 1080p frame is stored 1536×864 for the 768×1344 bucket), 2:1 1472, a 19.5:9 phone screen
# 1526. A 4K frame or a 12 MP photo then keeps ~1/7 of its pixels, which bounds a unit's memory (README "Frame size").
MAX_SIDE = 1536


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """Refuse a declared size above ``max_pixels`` (``too_many_pixels``) before it is decoded."""
    if width * height > max_pixels:
        raise Rejected("too_many_pixels", f"{name}: {width}x{height} = {width * height} pixels > {max_pixels}")


def decode_rgb(data: bytes, name: str = "image", max_pixels: int = MAX_PIXELS,
               scale_for: Callable[[int, int], float] | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Bytes → (H×W×3 uint8 with EXIF orientation applied, its full (width, height) upright).

    ``scale_for(width, height)`` < 1: the caller downsizes by this factor anyway, so a JPEG decodes at the
    smallest 1/2^k size still at least that large (Pillow's ``draft``: less memory and time). Truncated or
    non-image bytes raise BadInput; a declared size above ``max_pixels`` raises Rejected before decoding.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            size = im.size
            check_pixels(*size, max_pixels, name)
            scale = scale_for(*size) if scale_for else 1.0
            if scale < 1.0:
                im.draft("RGB", (max(1, round(size[0] * scale)), max(1, round(size[1] * scale))))
            im.load()
            # copies only when needed: an upright RGB image (most JPEGs) decodes ~1.7x faster than via
            # exif_transpose + convert, which copy unconditionally
            orientation = im.getexif().get(ORIENTATION, 1)
            if orientation != 1:
                im = ImageOps.exif_transpose(im)
            upright = size[::-1] if orientation in (5, 6, 7, 8) else size  # these turn the image a quarter
            return rgb8(im), upright
    except UnidentifiedImageError as e:
        raise BadInput("not_an_image", f"{name}: {e}") from None
    except Image.DecompressionBombError as e:
        raise Rejected("too_many_pixels", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput("corrupt_image", f"{name}: {e}") from None


def rgb8(im: Image.Image) -> np.ndarray:
    """Any Pillow mode → H×W×3 uint8. 16-bit grey (``I;16*``, and ``I`` as 16-bit PNGs open) is scaled to 8 bits:
    Pillow's ``convert("RGB")`` clips it at 255, so a 16-bit photo would be stored nearly all white. Palette, LA,
    CMYK and the rest convert as Pillow defines (alpha is dropped)."""
    if im.mode == "RGB":
        return np.asarray(im)
    if im.mode.startswith("I;16") or im.mode == "I":
        grey = np.asarray(im).astype(np.int64).clip(0, 65535)
        return np.repeat(((grey * 255 + 32767) // 65535).astype(np.uint8)[..., None], 3, axis=2)
    return np.asarray(im.convert("RGB"))


def read_rgb(url: str, max_pixels: int = MAX_PIXELS,
             max_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Local path or fsspec URL → (RGB array with its long side at most ``max_side``, the original (width,
    height) upright); a missing file is BadInput too, a bomb Rejected."""
    try:
        with files.open_url(url, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadInput("missing_file", url) from None
    image, size = decode_rgb(data, url, max_pixels, lambda w, h: scale_factor(w, h, None, max_side))
    return resize(image, None, max_side, size), size


def scale_factor(width: int, height: int, short_side: int | None, max_side: int | None) -> float:
    """The factor (≤ 1: never up) that brings the short side to ≤ ``short_side`` and the long side to ≤
    ``max_side`` (None: no bound)."""
    return min(1.0, short_side / min(width, height) if short_side else 1.0,
               max_side / max(width, height) if max_side else 1.0)


def resize(image: np.ndarray, short_side: int | None, max_side: int | None,
           original: tuple[int, int] | None = None) -> np.ndarray:
    """Downscale (never up) so the short side is ≤ ``short_side`` and the long side ≤ ``max_side``
    (img2dataset's keep_ratio / keep_ratio_largest), with area interpolation as it does for downscaling.

    ``original``: the (width, height) of an image that ``decode_rgb`` drafted to a reduced size; the result is
    the size the full decode would give (a draft rounds its sides up), so the stored size never depends on it."""
    h, w = image.shape[:2]
    ow, oh = original or (w, h)
    scale = scale_factor(ow, oh, short_side, max_side)
    size = (max(1, round(ow * scale)), max(1, round(oh * scale)))
    if size == (w, h):
        return image
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def resize_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    """A boolean mask of an image resized to ``width`` × ``height``: area-averaged like the image, a pixel kept
    when at least half covered."""
    if mask.shape == (height, width):
        return mask
    return cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) >= 0.5
