"""datagen.images.decode_rgb: every reader's bytes → RGB array, with EXIF orientation and clear failures."""

import io

import numpy as np
import pytest
from PIL import Image

from datagen.images import ORIENTATION, decode_rgb
from datagen.units import BadInput


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture
def picture():
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (6, 10, 3), dtype=np.uint8)  # wider than tall: a rotation shows in the shape


def test_rgb_palette_grey_and_alpha_images_come_back_as_rgb(picture):
    im = Image.fromarray(picture)
    assert np.array_equal(decode_rgb(encode(im)), picture)
    for mode in ("L", "P", "RGBA", "CMYK"):
        converted = im.convert(mode)
        out = decode_rgb(encode(converted, "JPEG" if mode == "CMYK" else "PNG"))
        assert out.shape == (6, 10, 3) and out.dtype == np.uint8, mode
        if mode in ("L", "P", "RGBA"):
            assert np.array_equal(out, np.asarray(converted.convert("RGB"))), mode


def test_exif_orientation_is_applied(picture):
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90° clockwise to display"
    out = decode_rgb(encode(Image.fromarray(picture), exif=exif))
    assert np.array_equal(out, np.rot90(picture, k=-1))
    exif[ORIENTATION] = 1  # upright: unchanged
    assert np.array_equal(decode_rgb(encode(Image.fromarray(picture), exif=exif)), picture)


@pytest.mark.parametrize("data, reason", [(b"<html>not found</html>", "not_an_image"), (None, "corrupt_image")])
def test_bad_bytes_raise_bad_input_with_the_reason(picture, data, reason):
    data = data if data is not None else encode(Image.fromarray(picture).resize((200, 120)), "JPEG")[:400]
    with pytest.raises(BadInput) as e:
        decode_rgb(data, "x.jpg")
    assert e.value.reason == reason and "x.jpg" in e.value.detail
