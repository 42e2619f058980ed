"""Issue 24 (hostile inputs, round 2), readers: member paths stay inside their input root, rows of the wrong JSON
type are quarantined by name at `list`, and non-regular files (FIFOs, devices) are skipped, never opened."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from datagen import files
from datagen.readers import coco
from datagen.units import BadInput, Item
from tests.datagen.test_coco import H, W, ann, make_doc, write


def outcomes(units):
    return {u.id.rsplit(":", 1)[1]: (Item(u).outcome.reason) for u in units if u.ref.get("listing")}


def coco_root(tmp_path, entries):
    """An images folder beside a secret one, and a COCO file listing ``entries`` (image id → file_name)."""
    root, secret = tmp_path / "images", tmp_path / "secret"
    root.mkdir()
    secret.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    for folder in (root, secret):
        Image.fromarray(pixels).save(folder / "x.jpg")
    images = [{"id": i, "file_name": f, "width": W, "height": H} for i, f in entries.items()]
    doc = make_doc(images, [ann(k, i) for k, i in enumerate(entries, 1)])
    return write(tmp_path, doc), str(root), secret


def test_coco_file_names_leaving_the_images_root_are_quarantined(tmp_path):
    path, root, secret = coco_root(tmp_path, {1: "x.jpg", 2: "../secret/x.jpg", 3: str(tmp_path / "secret" / "x.jpg"),
                                              4: "sub/../x.jpg"})
    units = coco.list_units(path, root, coco.CocoParams())
    assert outcomes(units) == {"2": "path_outside_root", "3": "path_outside_root"}
    kept = {u.id.rsplit(":", 1)[1]: u.ref["image"] for u in units if not u.ref.get("listing")}
    assert kept == {"1": os.path.join(root, "x.jpg"), "4": os.path.join(root, "x.jpg")}


def test_a_symlink_out_of_the_root_is_refused_unless_the_config_allows_it(tmp_path):
    path, root, secret = coco_root(tmp_path, {1: "link.jpg", 2: "x.jpg"})
    os.symlink(secret / "x.jpg", os.path.join(root, "link.jpg"))
    assert outcomes(coco.list_units(path, root, coco.CocoParams())) == {"1": "path_outside_root"}
    allowed = coco.list_units(path, root, coco.CocoParams(allow_symlinks=True))
    assert outcomes(allowed) == {} and len(allowed) == 2


def test_object_store_member_paths_stay_under_their_prefix():
    assert files.inside_root("s3://bucket/coco/images", "a/b.jpg") == "s3://bucket/coco/images/a/b.jpg"
    for name in ("../../other/x.jpg", "/etc/passwd", "../images2/x.jpg"):
        with pytest.raises(BadInput, match="path_outside_root"):
            files.inside_root("s3://bucket/coco/images", name)


def test_coco_rows_of_the_wrong_json_type_are_quarantined_at_list(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": W, "height": H},
              {"id": [2], "file_name": "b.jpg", "width": W, "height": H},  # unhashable id
              {"id": 3, "file_name": 7, "width": W, "height": H},  # a number as file name
              {"id": 4, "file_name": "d.jpg", "width": "640", "height": H},  # a string as size
              {"id": 5, "file_name": "e.jpg", "width": -640, "height": H},
              {"id": True, "file_name": "f.jpg", "width": W, "height": H}]
    anns = [ann(1, 1), {**ann(2, 1), "category_id": {"id": 1}}, {**ann(3, 1), "image_id": [1]}]
    doc = make_doc(images, anns)
    doc["categories"] += ["dog", {"id": [3], "name": "cat"}, {"id": 4, "name": None}]
    units = coco.list_units(write(tmp_path, doc), str(tmp_path), coco.CocoParams())
    assert outcomes(units) == {
        "images[1]": "bad_image_entry", "images[2]": "bad_image_entry", "images[3]": "bad_image_entry",
        "images[4]": "bad_image_entry", "images[5]": "bad_image_entry",
        "annotations[1]": "bad_annotation", "annotations[2]": "bad_annotation",
        "categories[2]": "bad_category", "categories[3]": "bad_category", "categories[4]": "bad_category",
    }
    assert [u.id for u in units if not u.ref.get("listing")] == ["coco:instances_test.json:1"]


def test_a_coco_file_whose_lists_are_not_lists_cannot_be_listed(tmp_path):
    path = write(tmp_path, {"images": {"1": "a.jpg"}, "annotations": [], "categories": []})
    with pytest.raises(ValueError, match="`images` is a dict, not a list"):
        coco.list_units(path, str(tmp_path), coco.CocoParams(categories=[]))
