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


def finishes_in(seconds, fn, fifos=()):
    """fn() run in a thread: its result, or a failure when it blocks (the FIFOs are then unblocked so the
    thread can end)."""
    import threading

    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("result", fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # a writer that leaves: the reader sees EOF
        thread.join(5)
        pytest.fail(f"{fn} blocked on a FIFO")
    return box["result"]


@pytest.fixture
def df2_root(tmp_path_factory, tmp_path):
    from tests.datagen.test_deepfashion2 import root

    return root.__wrapped__(tmp_path_factory, tmp_path)


def test_deepfashion2_fifo_annotation_and_infinite_pair_id_are_quarantined_by_name(df2_root):
    from datagen.readers import deepfashion2 as df2
    from tests.datagen.test_deepfashion2 import edit

    fifo = os.path.join(df2_root, "annos", "900003.json")
    os.mkfifo(fifo)
    with open(os.path.join(df2_root, "annos", "900004.json"), "w") as f:
        f.write('{"source": "user", "pair_id": Infinity, "item1": {}}')  # what Python's json writes for inf
    edit(df2_root, "000007", lambda a: a.update(pair_id=1.5))
    units = finishes_in(20, lambda: df2.list_units(df2_root), [fifo])
    assert {k.rsplit("/", 1)[1]: v for k, v in outcomes(units).items()} == {
        "900003.json": "not_a_regular_file", "000007.json": "not_a_deepfashion2_annotation",
        "900004.json": "not_a_deepfashion2_annotation"}
    assert [u.ref["pair_id"] for u in units if not u.ref.get("listing")] == [1, 2, 3, 4]


def test_a_fifo_mesh_a_device_linked_as_mesh_and_a_fifo_sidecar_never_block_the_listing(tmp_path):
    import trimesh

    from datagen.readers import objaverse

    trimesh.creation.box().export(tmp_path / "cube.glb")
    trimesh.creation.icosphere().export(tmp_path / "ball.glb")
    fifos = [str(tmp_path / "x.glb"), str(tmp_path / "ball.json")]
    for fifo in fifos:
        os.mkfifo(fifo)
    os.symlink("/dev/zero", tmp_path / "zero.glb")
    units, _ = finishes_in(20, lambda: objaverse.list_file_units(objaverse.mesh_files(str(tmp_path))), fifos)
    bad = {u.id: Item(u).outcome.reason for u in units if u.ref.get("listing")}
    assert bad == {f"file:{tmp_path / 'x.glb'}": "not_a_regular_file",
                   f"file:{tmp_path / 'zero.glb'}": "not_a_regular_file",
                   next(u.id for u in units if u.ref.get("listing") and "x.glb" not in u.id
                        and "zero" not in u.id): "bad_sidecar"}
    assert [u.ref["meta"]["name"] for u in units if not u.ref.get("listing")] == ["cube"]


def test_deepfashion2_symlinks_out_of_the_root_are_refused_unless_the_config_allows_it(tmp_path):
    """As COCO's: an annotation linked from outside is quarantined at list, an image linked from outside fails its
    group naming the link; ``allow_symlinks`` follows both."""
    import shutil

    from datagen.readers import deepfashion2 as df2
    from datagen.samples import deepfashion2 as inputs

    root = tmp_path / "train"
    shutil.copytree(inputs.make(str(tmp_path / "made"))["root"], root)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for rel in ("annos/000004.json", "image/000002.jpg"):  # pair 2's shop annotation, pair 1's first user photo
        shutil.move(root / rel, outside / os.path.basename(rel))
        os.symlink(outside / os.path.basename(rel), root / rel)
    units = df2.list_units(str(root))
    assert outcomes(units) == {"annos/000004.json": "path_outside_root"}
    [pair1] = [u for u in units if u.ref.get("pair_id") == 1]
    with pytest.raises(BadInput, match="path_outside_root") as e:
        df2.load_pairs(Item(pair1), df2.DeepFashion2Params())
    assert "image/000002.jpg" in e.value.detail
    allowed = df2.list_units(str(root), allow_symlinks=True)
    assert outcomes(allowed) == {} and len(allowed) == 4
    [pair1] = [u for u in allowed if u.ref.get("pair_id") == 1]
    assert len(df2.load_pairs(Item(pair1), df2.DeepFashion2Params(allow_symlinks=True)).samples) == 2
