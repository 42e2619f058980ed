"""datagen.images.decode_rgb: every reader's bytes → RGB array, with EXIF orientation and clear failures."""

import io

import numpy as np
import pytest
from PIL import Image

from datagen.images import ORIENTATION, decode_rgb
from datagen.units import BadInput, Rejected


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
    assert np.array_equal(decode_rgb(encode(im))[0], picture)
    for mode in ("L", "P", "RGBA", "CMYK"):
        converted = im.convert(mode)
        out = decode_rgb(encode(converted, "JPEG" if mode == "CMYK" else "PNG"))[0]
        assert out.shape == (6, 10, 3) and out.dtype == np.uint8, mode
        if mode in ("L", "P", "RGBA"):
            assert np.array_equal(out, np.asarray(converted.convert("RGB"))), mode


def test_exif_orientation_is_applied(picture):
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # "rotate 90° clockwise to display"
    out = decode_rgb(encode(Image.fromarray(picture), exif=exif))[0]
    assert np.array_equal(out, np.rot90(picture, k=-1))
    exif[ORIENTATION] = 1  # upright: unchanged
    assert np.array_equal(decode_rgb(encode(Image.fromarray(picture), exif=exif))[0], picture)


@pytest.mark.parametrize("data, reason", [(b"<html>not found</html>", "not_an_image"), (None, "corrupt_image")])
def test_bad_bytes_raise_bad_input_with_the_reason(picture, data, reason):
    data = data if data is not None else encode(Image.fromarray(picture).resize((200, 120)), "JPEG")[:400]
    with pytest.raises(BadInput) as e:
        decode_rgb(data, "x.jpg")
    assert e.value.reason == reason and "x.jpg" in e.value.detail


def test_a_bomb_between_pillows_limits_is_refused_from_its_header():
    from tests.bombs import png_bomb

    data = png_bomb()  # 16500² = 272 MP in ~270 KB: Pillow alone would decode it (3.6 GB as RGB)
    assert len(data) < 300_000
    with pytest.raises(Rejected) as e:
        decode_rgb(data, "bomb.png")
    assert e.value.reason == "too_many_pixels" and "16500x16500" in e.value.detail
    small = png_bomb(600)
    with pytest.raises(Rejected, match="too_many_pixels"):
        decode_rgb(small, "small.png", max_pixels=600 * 599)  # the limit is the config's, checked exactly
    assert decode_rgb(small, "small.png", max_pixels=600 * 600)[0].shape == (600, 600, 3)


def test_draft_decodes_a_jpeg_that_is_downscaled_anyway_at_a_reduced_size(picture):
    big = Image.fromarray(picture).resize((2000, 1600))
    image, size = decode_rgb(encode(big, "JPEG"), scale_for=lambda w, h: 0.3)
    assert size == (2000, 1600)  # the original size is reported
    assert image.shape == (800, 1000, 3)  # 1/2: the smallest 1/2^k scale at least 0.3 of it
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # a phone photo stored on its side
    image, size = decode_rgb(encode(big, "JPEG", exif=exif))
    assert size == (1600, 2000) and image.shape == (2000, 1600, 3)
