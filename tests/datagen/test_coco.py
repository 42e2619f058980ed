"""COCO reader: masks equal pycocotools' own COCO API for every segmentation form, category filters, and the
router rules (2–N people) with a reason for every rejected image and dropped person."""

import json

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from datagen import images, shards
from datagen.readers import coco
from datagen.labeling import router_data
from datagen.labeling.filters import FilterParams
from datagen.units import BadInput, Item, Rejected

W, H = 640, 480  # COCO's most common size


def person(x0, y0, w, h):
    """A non-rectangular polygon (a diamond on top of a box) and its xywh bbox."""
    poly = [x0 + w / 2, y0, x0 + w, y0 + h / 3, x0 + w, y0 + h, x0, y0 + h, x0, y0 + h / 3]
    return poly, [x0, y0, w, h]


def rle_of(poly, compressed):
    rle = mask_utils.merge(mask_utils.frPyObjects([poly], H, W))
    if compressed:
        return {"size": rle["size"], "counts": rle["counts"].decode()}
    m = mask_utils.decode(rle)
    runs, flat, value, n = [], m.flatten(order="F"), 0, 0
    for v in flat:  # uncompressed RLE counts, column-major, starting with a run of zeros
        if v != value:
            runs.append(n)
            value, n = v, 0
        n += 1
    runs.append(n)
    return {"size": [H, W], "counts": runs}


def make_doc(images, anns, categories=("person", "dog")):
    cats = [{"id": i + 1, "name": n, "supercategory": n} for i, n in enumerate(categories)]
    return {"images": images, "annotations": anns, "categories": cats}


def write(tmp_path, doc):
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_masks_match_the_coco_api_for_polygons_and_both_rles():
    segs = []
    for k, form in enumerate(("polygon", "rle", "compressed")):
        poly, box = person(40 + 180 * k, 60, 140, 380)
        seg = [poly, [10, 10, 30, 10, 20, 40]] if form == "polygon" else rle_of(poly, form == "compressed")
        segs.append({"id": k + 1, "image_id": 1, "category_id": 1, "bbox": box, "area": 1.0, "iscrowd": 0,
                     "segmentation": seg})
    api = COCO()
    api.dataset = make_doc([{"id": 1, "file_name": "a.jpg", "width": W, "height": H}], segs)
    api.createIndex()
    for ann in segs:
        ours = coco.segmentation_mask(ann["segmentation"], H, W)
        theirs = api.annToMask(ann).astype(bool)
        assert ours.shape == (H, W) and ours.sum() > 10_000
        assert np.array_equal(ours, theirs)
    # a 4-number "polygon" is not read as a box, and a polygon list made only of those is an empty mask
    poly, _ = person(40, 60, 140, 380)
    with_stub = coco.segmentation_mask([poly, [0, 0, 600, 500]], H, W)
    assert np.array_equal(with_stub, coco.segmentation_mask([poly], H, W))
    assert coco.segmentation_mask([[0, 0, 600, 500]], H, W).sum() == 0


def test_list_units_filters_by_category_and_refuses_unknown_names(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in (3, 1, 2)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": [], "iscrowd": 0},
        {"id": 2, "image_id": 2, "category_id": 2, "bbox": [0, 0, 1, 1], "segmentation": [], "iscrowd": 0},
        {"id": 3, "image_id": 3, "category_id": 1, "bbox": [0, 0, 1, 1], "segmentation": [], "iscrowd": 0},
        {"id": 4, "image_id": 3, "category_id": 2, "bbox": [0, 0, 1, 1], "segmentation": [], "iscrowd": 0},
    ]
    path = write(tmp_path, make_doc(images, anns))
    people = coco.list_units(path, str(tmp_path), coco.CocoParams())
    assert [u.id for u in people] == ["coco:instances_test.json:1", "coco:instances_test.json:3"]
    assert [len(u.ref["annotations"]) for u in people] == [1, 1]  # the dog of image 3 is not a subject
    dogs = coco.list_units(path, str(tmp_path), coco.CocoParams(categories=["dog"]))
    assert [u.id.rsplit(":", 1)[1] for u in dogs] == ["2", "3"]
    both = coco.list_units(path, str(tmp_path), coco.CocoParams(categories=["person", "dog"]))
    assert [len(u.ref["annotations"]) for u in both] == [1, 1, 2]
    with pytest.raises(ValueError, match=r"\['persn'\] are not in the file"):
        coco.list_units(path, str(tmp_path), coco.CocoParams(categories=["persn"]))


def scene(tmp_path, boxes, name="im.jpg", crowd=(), corrupt=False, size=(W, H), category=1, ann_size=None):
    """An image file plus its unit: one polygon person per box (x0, y0, w, h); the annotation says the image
    is ``ann_size`` (default: its real size)."""
    rng = np.random.default_rng(len(boxes))
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(tmp_path / name)
    if corrupt:
        (tmp_path / name).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    anns = []
    for k, b in enumerate(boxes):
        poly, box = person(*b)
        anns.append({"id": k + 1, "image_id": 1, "category_id": category, "bbox": box, "iscrowd": int(k in crowd),
                     "segmentation": [poly]})
    aw, ah = ann_size or size
    images = [{"id": 1, "file_name": name, "width": aw, "height": ah}]
    path = write(tmp_path, make_doc(images, anns))
    [unit] = coco.list_units(path, str(tmp_path), coco.CocoParams())
    return unit


TWO = [(40, 60, 140, 380), (300, 80, 160, 380)]


@pytest.mark.parametrize("size,boxes", [
    ((640, 480), TWO),
    ((640, 427), [(40, 40, 140, 360), (300, 50, 160, 360)]),
    ((480, 640), [(20, 100, 200, 500), (250, 120, 210, 500)]),
])
def test_coco_sizes_with_two_people_become_router_samples_with_the_defaults(tmp_path, size, boxes):
    """Issue 12's tried case: COCO's real sizes (short side 427–480) used to fail ``image_too_small``. They are
    below the default ``max_side``: stored as decoded, with the annotations' exact masks."""
    unit = scene(tmp_path, boxes, size=size)
    item = coco.load_sample(Item(unit), coco.CocoParams())
    [s] = item.samples
    assert (s.frames[0].width, s.frames[0].height) == size and len(s.subjects) == 2 and not item.drops
    assert np.array_equal(s.frames[0].image, np.asarray(Image.open(tmp_path / "im.jpg").convert("RGB")))
    for sub, ann in zip(s.subjects, unit.ref["annotations"]):
        assert np.array_equal(sub.masks[0], coco.segmentation_mask(ann["segmentation"], size[1], size[0]))
    assert s.provenance["original_size"] == list(size)


def test_a_photo_over_max_side_is_downscaled_at_decode_with_its_masks_and_boxes(tmp_path):
    """A 12 MP phone photo (4032×3024) is stored with its long side at the default max_side (1536×1152, JPEG
    draft then area resize); the rules ran on the annotations at full size and the kept masks and boxes are the
    full-size ones scaled with the image. The original size stays in provenance."""
    size = (4032, 3024)
    unit = scene(tmp_path, [(400, 600, 1400, 2200), (2200, 500, 1500, 2300)], size=size)
    item = coco.load_sample(Item(unit), coco.CocoParams())
    [s] = item.samples
    fr = s.frames[0]
    assert (fr.width, fr.height) == (images.MAX_SIDE, 1152) and s.provenance["original_size"] == [4032, 3024]
    scale = fr.width / size[0]
    for sub, ann in zip(s.subjects, unit.ref["annotations"]):
        expect = images.resize_mask(coco.segmentation_mask(ann["segmentation"], size[1], size[0]), fr.width, fr.height)
        assert sub.masks[0].shape == (fr.height, fr.width) and np.array_equal(sub.masks[0], expect)
        x, y, w, h = ann["bbox"]
        assert sub.boxes[0] == pytest.approx([v * scale for v in (x, y, x + w, y + h)])
        assert shards.mask_box(sub.masks[0]) == pytest.approx(sub.boxes[0], abs=2)


def test_two_people_become_a_router_sample_with_exact_masks(tmp_path):
    unit = scene(tmp_path, TWO)
    item = coco.load_sample(Item(unit), coco.CocoParams())
    [s] = item.samples
    assert s.source == "router" and len(s.frames) == 1 and s.frames[0].caption == "a photo of two people"
    assert [x.phrase for x in s.subjects] == ["person", "person"]
    for sub, ann in zip(s.subjects, unit.ref["annotations"]):
        expect = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], H, W))).astype(bool)
        assert np.array_equal(sub.masks[0], expect)
        x, y, w, h = ann["bbox"]
        assert sub.boxes[0] == [x, y, x + w, y + h] and sub.det_score is None
        assert sub.fields == {"annotation_id": ann["id"]}
    assert s.provenance["file_name"] == "im.jpg" and not item.drops
    again = coco.load_sample(Item(unit), coco.CocoParams())
    assert again.samples[0].key == s.key  # deterministic keys


@pytest.mark.parametrize("case,boxes,kw,exc,reason", [
    ("one person", TWO[:1], {}, Rejected, "too_few_subjects"),
    ("crowd", TWO, {"crowd": (0,)}, Rejected, "crowd"),
    ("corrupt", TWO, {"corrupt": True}, BadInput, "corrupt_image"),
    ("size mismatch", TWO, {"size": (W, H + 8), "ann_size": (W, H)}, BadInput, "size_mismatch"),
    ("thin people", [(40 + 120 * k, 60, 30, 400) for k in range(3)], {}, Rejected, "too_few_subjects"),
    ("five people", [(8 + 126 * k, 60, 110, 300) for k in range(5)], {}, Rejected, "too_many_subjects"),
])
def test_rejections_carry_their_reason(tmp_path, case, boxes, kw, exc, reason):
    unit = scene(tmp_path, boxes, **kw)
    item = Item(unit)
    with pytest.raises(exc) as e:
        coco.load_sample(item, coco.CocoParams())
    assert e.value.reason == reason, case
    if case == "thin people":
        assert item.drops == {"coco/box_aspect": 3}


def test_one_person_is_rejected_before_the_image_is_read(tmp_path):
    unit = scene(tmp_path, TWO[:1])
    (tmp_path / "im.jpg").unlink()  # a read would fail with missing_file
    with pytest.raises(Rejected, match="too_few_subjects"):
        coco.load_sample(Item(unit), coco.CocoParams())


def test_cap_keeps_the_largest_and_counts_the_rest(tmp_path):
    boxes = [(8 + 126 * k, 60, 120, 300 + 20 * k) for k in range(5)]
    unit = scene(tmp_path, boxes)
    with pytest.raises(Rejected, match="unlabeled_instance"):  # by default the capped person may not stay unlabeled
        coco.load_sample(Item(unit), coco.CocoParams(too_many="cap"))
    p = coco.CocoParams(too_many="cap", filters=FilterParams(unlabeled="ignore"))
    item = coco.load_sample(Item(unit), p)
    [s] = item.samples
    assert [x.fields["annotation_id"] for x in s.subjects] == [2, 3, 4, 5]  # the shortest person goes
    assert item.drops == {"coco/too_many_subjects": 1}
    assert s.frames[0].caption == "a photo of four people"
    assert s.frames[0].fields["ignore"] == [[8.0, 60.0, 128.0, 360.0]]  # it is left out of the routing loss


def test_filters_are_configurable(tmp_path):
    unit = scene(tmp_path, [(40 + 150 * k, 60, 50, 400) for k in range(3)])
    p = coco.CocoParams(filters=FilterParams(aspect_min=0.05))
    assert len(coco.load_sample(Item(unit), p).samples[0].subjects) == 3
    small = scene(tmp_path, TWO, name="small.jpg")
    with pytest.raises(Rejected, match="image_too_small"):
        coco.load_sample(Item(small), coco.CocoParams(filters=FilterParams(min_image_side=600)))


def test_captions_name_counts_and_categories():
    assert router_data.caption(["person", "person", "person"]) == "a photo of three people"
    assert router_data.caption(["person", "dog", "person"]) == "a photo of a dog and two people"
    assert router_data.caption(["elephant", "cat", "cat"]) == "a photo of two cats and an elephant"


def ann(k, image_id, box=(0, 0, 10, 10)):
    return {"id": k, "image_id": image_id, "category_id": 1, "bbox": list(box), "segmentation": [], "iscrowd": 0}


def test_duplicate_image_ids_and_file_names_are_quarantined_not_written_twice(tmp_path):
    images = [{"id": i, "file_name": f, "width": W, "height": H}
              for i, f in ((1, "a.jpg"), (2, "a.jpg"), (3, "c.jpg"), (3, "c.jpg"), (4, "d.jpg"), (4, "e.jpg"),
                           (10, "f.jpg"))]
    images.append({"file_name": "g.jpg"})  # no id
    anns = [ann(k, i) for k, i in enumerate((1, 2, 3, 4, 10), 1)] + [{"id": 9, "bbox": [0, 0, 1, 1]}]
    units = coco.list_units(write(tmp_path, make_doc(images, anns)), str(tmp_path), coco.CocoParams())
    ids = [u.id.rsplit(":", 1)[1] for u in units]
    assert len(ids) == len(set(ids))  # the runner refuses repeated unit ids (a raw ValueError before)
    good = [u for u in units if not u.ref.get("listing")]
    assert [u.id.rsplit(":", 1)[1] for u in good] == ["1", "3", "10"]  # numeric order; 3 listed twice, same entry
    assert len({u.ref["file_name"] for u in good}) == len(good)  # one sample key per file name
    outcomes = {u.id.rsplit(":", 1)[1]: Item(u).outcome for u in units if u.ref.get("listing")}
    assert {k: (o.kind, o.stage, o.reason) for k, o in outcomes.items()} == {
        "2": ("filtered", "list", "duplicate_file_name"),
        "4": ("failed", "list", "conflicting_image_entries"),
        "images[7]": ("failed", "list", "bad_image_entry"),
        "annotations[5]": ("failed", "list", "bad_annotation"),
    }
    assert "a.jpg is also image 1" in outcomes["2"].detail


def test_masks_are_built_only_for_instances_that_pass_the_box_rules(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    many = [(float(x), float(y), 12.0, 30.0) for x, y in rng.integers(0, 480, (10_000, 2))]  # tiny: area rule
    unit = scene(tmp_path, TWO + many)
    built = []
    real = coco.segmentation_mask
    monkeypatch.setattr(coco, "segmentation_mask", lambda *a: built.append(1) or real(*a))
    with pytest.raises(Rejected, match="too_many_annotations"):  # bounded by default, before reading the image
        coco.load_sample(Item(unit), coco.CocoParams())
    assert not built
    item = coco.load_sample(Item(unit), coco.CocoParams(max_annotations=20_000,
                                                         filters=FilterParams(unlabeled="ignore")))
    assert len(built) == 2 and len(item.samples[0].subjects) == 2  # 10 002 annotations, 2 masks
    assert item.drops["coco/box_area_small"] == 10_000


def test_a_declared_bomb_is_refused_before_reading(tmp_path):
    from tests.bombs import png_bomb

    unit = scene(tmp_path, TWO)
    (tmp_path / "im.jpg").write_bytes(png_bomb())
    with pytest.raises(Rejected, match="too_many_pixels"):  # the file's header: refused, not decoded
        coco.load_sample(Item(unit), coco.CocoParams())
    big = {**unit.ref, "width": 20_000, "height": 20_000}
    with pytest.raises(Rejected, match="too_many_pixels"):  # the annotation's size: refused, not read
        coco.load_sample(Item(type(unit)(unit.id, big)), coco.CocoParams())
