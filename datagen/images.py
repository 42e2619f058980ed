"""Image decoding shared by every reader: one place that turns bytes into RGB arrays or a clear BadInput.

Decompression bombs (a few hundred KB of PNG that decode to gigabytes) are refused from the size the header
declares, before any pixel is decoded: ``max_pixels`` (each reader's config) caps width × height.
"""

from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from datagen import files
from datagen.units import BadInput, Rejected

MAX_PIXELS = 1 << 28  # ~268 MP: the default cap of every reader (Pillow's own default warning limit is 89 MP)
# Pillow's own check (at open, for every image incl. mesh textures) raises only above twice this: a ceiling for
# textures and for any reader's max_pixels, not the cap itself (check_pixels is).
Image.MAX_IMAGE_PIXELS = MAX_PIXELS
ORIENTATION = 0x0112  # EXIF tag


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
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), upright
    except UnidentifiedImageError as e:
        raise BadInput("not_an_image", f"{name}: {e}") from None
    except Image.DecompressionBombError as e:
        raise Rejected("too_many_pixels", f"{name}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadInput("corrupt_image", f"{name}: {e}") from None


def read_rgb(url: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Local path or fsspec URL → RGB array; a missing file is BadInput too, a bomb Rejected."""
    try:
        with files.open_url(url, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise BadInput("missing_file", url) from None
    return decode_rgb(data, url, max_pixels)[0]
