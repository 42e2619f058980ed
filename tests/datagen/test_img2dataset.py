"""img2dataset output folders as input of the ``urls`` source, in each of img2dataset's three layouts (written by
``tests/img2dataset_layout.py`` with its names and fields, images at LAION-like sizes): the stored images are read
and never fetched, failed rows are not units, a repeated URL is a duplicate, a URL gives the same sample key and
pixels as when it comes from a URL list, and parquet row groups map back to their rows."""

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen import images
from datagen.readers import img2dataset, urls
from datagen.readers.download import DownloadParams
from datagen.shards import stable_key
from datagen.units import Item
from tests import img2dataset_layout
from tests.datagen.test_download import encoded
from tests.image_server import ImageServer

# LAION-like sizes: 3:2 landscape, 2:3 portrait, 1080p, a thumbnail below the size rule
PHOTOS = {"beach.jpg": (1280, 853), "couple.jpg": (1024, 1536), "office.jpg": (1920, 1080), "thumb.jpg": (500, 333)}
# the test server is on loopback; full size, so stored pixels compare with a plain decode (downscale: test_download)
P = DownloadParams(min_side=512, max_side=None, threads=4, allow_private_addresses=True)


@pytest.fixture(scope="module")
def server():
    data = {name: encoded("JPEG", w, h, seed=i) for i, (name, (w, h)) in enumerate(PHOTOS.items())}
    with ImageServer(data) as s:
        s.data = data
        yield s


def laion_rows(s):
    """Two shards of 4 rows: stored photos, failed downloads, a URL stored twice, a thumbnail, broken bytes."""
    def stored(name, caption, license_="cc-by"):
        return {"url": s.url("good", name), "caption": caption, "LICENSE": license_, "jpg": s.data[name],
                "size": PHOTOS[name]}

    def failed(name, status, error):
        return {"url": s.url("good", name), "caption": "lost", "LICENSE": "?", "status": status, "error": error}

    broken = stored("beach.jpg", "cut short") | {"url": s.url("good", "broken.jpg")}
    broken["jpg"] = broken["jpg"][:len(broken["jpg"]) // 3]
    return [stored("beach.jpg", "two friends on a beach"), failed("gone.jpg", "failed_to_download", "HTTP Error 404"),
            stored("couple.jpg", "a couple in the park"), stored("office.jpg", "three colleagues", "cc-by-sa"),
            stored("beach.jpg", "the same photo, other alt text"), stored("thumb.jpg", "two people, a thumbnail"),
            broken, failed("bad.jpg", "failed_to_resize", "cannot identify image")]


def settle(units):
    return {it.unit.ref["row"]: it for it in urls.Download(P, ["person"])([Item(u) for u in units])}


@pytest.mark.parametrize("fmt", [*img2dataset.FORMATS, "tars-only"])
def test_stored_images_are_read_not_fetched_with_the_url_lists_keys(server, tmp_path, fmt):
    """``tars-only``: webdataset tars copied without img2dataset's metadata parquets (listed from the tars). The
    folder's ``[1]`` is a name, not a glob pattern."""
    rows = laion_rows(server)
    out = tmp_path / "laion-out[1]"
    layout = "webdataset" if fmt == "tars-only" else fmt
    metas = img2dataset_layout.write(str(out), rows, layout, number_sample_per_shard=4, extra=("LICENSE",))
    if fmt == "tars-only":
        for p in out.glob("*.parquet"):
            p.unlink()
    assert img2dataset.detect_format(str(out)) == layout
    units = img2dataset.list_units(str(out), keep_columns=("LICENSE",))
    key = {m["url"]: m["key"] for m in reversed(metas)}  # the first row of a repeated URL
    # failed rows (1, 7) are no units; ids name the folder and img2dataset's key
    assert sorted(u.ref["row"] for u in units) == ["000000", "000002", "000003", "000010", "000011", "000012"]
    assert len({u.id for u in units}) == 6 and all(u.id.startswith("img2dataset:") for u in units)
    by_row = settle(units)
    assert server.hits == {}  # nothing downloaded again

    assert by_row["000010"].outcome.reason == "duplicate_url"  # the beach photo, stored twice
    assert f"is also unit {by_row['000000'].unit.id}" in by_row["000010"].outcome.detail
    assert (by_row["000011"].outcome.kind, by_row["000011"].outcome.reason) == ("filtered", "image_too_small")
    assert (by_row["000012"].outcome.kind, by_row["000012"].outcome.reason) == ("failed", "corrupt_image")
    kept = {row: it.samples[0] for row, it in by_row.items() if it.alive}
    assert sorted(kept) == ["000000", "000002", "000003"]
    for row, sample in kept.items():
        url = sample.provenance["url"]
        name = url.rsplit("/", 1)[1]
        assert key[url] == row and sample.key == stable_key("url", url)
        assert sample.frames[0].image.shape == (PHOTOS[name][1], PHOTOS[name][0], 3)
        assert np.array_equal(sample.frames[0].image, images.decode_rgb(server.data[name])[0])
        assert sample.provenance["img2dataset"] == {"shard": sample.provenance["dataset"], "key": row,
                                                    "original_size": list(PHOTOS[name])}
    assert kept["000000"].frames[0].caption == "two friends on a beach"
    assert kept["000003"].provenance["LICENSE"] == "cc-by-sa"

    # the same URLs as a URL list: downloaded this time, the same samples (key, pixels) as from the stored output
    listing = tmp_path / "list.jsonl"
    listing.write_text("".join(json.dumps({"url": r["url"], "caption": r["caption"]}) + "\n" for r in rows))
    fetched = {it.samples[0].key: it.samples[0] for it in settle(urls.list_units(str(listing))).values() if it.alive}
    assert server.hits and sorted(fetched) == sorted(s.key for s in kept.values())
    assert all(np.array_equal(fetched[s.key].frames[0].image, s.frames[0].image) for s in kept.values())
    server.hits.clear()


def png(color):
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), color).save(buf, "PNG")
    return buf.getvalue()


def test_parquet_rows_map_back_across_row_groups(tmp_path):
    """250 rows in one parquet shard, written out of order in groups of 100; every 7th row stored: each unit
    reads its own image, not its neighbour's in another row group."""
    rows = []
    for i in range(250):
        row = {"url": f"http://laion.example/{i}.jpg", "caption": f"row {i}"}
        if i % 7 == 0:
            row |= {"jpg": png((i, 255 - i, 7)), "size": (64, 48)}
        else:
            row |= {"status": "failed_to_download", "error": "timed out"}
        rows.append(row)
    img2dataset_layout.write(str(tmp_path / "out"), rows, "parquet")
    assert pq.ParquetFile(tmp_path / "out" / "00000.parquet").num_row_groups == 3
    units = img2dataset.list_units(str(tmp_path / "out"))
    assert len(units) == 36
    out = urls.Download(DownloadParams(min_side=1), ["person"])([Item(u) for u in units])
    for it in out:
        i = int(it.unit.ref["url"].rsplit("/", 1)[1].split(".")[0])
        assert it.alive and tuple(it.samples[0].frames[0].image[0, 0]) == (i, 255 - i, 7)
        assert it.samples[0].frames[0].caption == f"row {i}"


def test_a_folder_that_is_no_img2dataset_output_fails_at_listing(tmp_path, server):
    (tmp_path / "urls.jsonl").write_text('{"url": "http://a/b.jpg"}\n')
    with pytest.raises(ValueError, match="no img2dataset output"):
        img2dataset.list_units(str(tmp_path))
    img2dataset_layout.write(str(tmp_path / "out"), laion_rows(server)[:1], "webdataset")
    with pytest.raises(ValueError, match=r"no field \['LICENSE'\]"):
        img2dataset.list_units(str(tmp_path / "out"), keep_columns=("LICENSE",))
