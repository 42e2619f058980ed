"""Issue 24 (hostile inputs, round 2), images: every mode a photo may come in is stored as the 8-bit RGB it shows
(a 16-bit grey PNG was stored nearly all white: Pillow's convert clips 16-bit values at 255)."""

import io

import numpy as np
import pytest
from PIL import Image

from datagen import images
from datagen.readers import coco
from datagen.units import Item
from tests.datagen.test_coco import TWO, scene

GREY = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))  # a ramp, black to white


def encoded(image: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def as_mode(mode):
    """The ramp in ``mode``, built the way such files are made (not by Pillow's convert of the same image)."""
    if mode == "I;16":
        return Image.fromarray(GREY.astype(np.uint16) * 257)  # 16-bit: 0…65535
    if mode == "LA":
        return Image.merge("LA", [Image.fromarray(GREY), Image.new("L", (64, 48), 128)])
    if mode == "P":
        return Image.fromarray(np.stack([GREY] * 3, -1)).quantize(256)
    if mode == "CMYK":
        k = 255 - GREY
        zero = np.zeros_like(GREY)
        return Image.fromarray(np.stack([zero, zero, zero, k], -1), "CMYK")
    return Image.fromarray(GREY).convert(mode)


@pytest.mark.parametrize("mode,fmt", [("I;16", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("CMYK", "TIFF"), ("L", "PNG"),
                                      ("1", "PNG")])
def test_every_mode_decodes_to_the_8bit_rgb_it_shows(mode, fmt):
    data = encoded(as_mode(mode), fmt)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == mode
    rgb, size = images.decode_rgb(data)
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3) and size == (64, 48)
    expected = np.stack([GREY] * 3, -1).astype(int)
    if mode == "1":  # dithered black and white: the mean grey survives, not each pixel
        assert abs(rgb.mean() - expected.mean()) < 16
    else:
        assert np.abs(rgb.astype(int) - expected).max() <= 3


def test_a_16bit_grey_coco_photo_is_stored_grey_not_white(tmp_path):
    unit = scene(tmp_path, TWO)
    photo = np.random.default_rng(0).integers(0, 65536, (480, 640), dtype=np.uint16)
    Image.fromarray(photo).save(tmp_path / "im.jpg", "PNG")  # COCO-style name, 16-bit PNG content
    [sample] = coco.load_sample(Item(unit), coco.CocoParams()).samples
    stored = sample.frames[0].image
    assert stored.dtype == np.uint8 and stored.shape == (480, 640, 3)
    assert np.abs(stored[..., 0].astype(int) - photo.astype(int) // 257).max() <= 1
    assert 100 < stored.mean() < 155  # uniform noise: mean grey, not white
