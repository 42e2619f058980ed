"""DeepFashion2 reader on a tree in the official layout (the project's sample inputs, edited per case): shop/user
pairing by pair_id and style, masks equal to the rasterised polygons, and every dropped item or pair counted."""

import json
import os
import shutil

import numpy as np
import pytest

from datagen import images
from datagen.readers import deepfashion2 as df2
from datagen.readers.coco import segmentation_mask
from datagen.labeling.filters import FilterParams
from datagen.samples import deepfashion2 as inputs
from datagen.units import BadInput, Item, Rejected


@pytest.fixture
def root(tmp_path_factory, tmp_path):
    made = inputs.make(str(tmp_path_factory.getbasetemp() / "df2-inputs"))["root"]
    shutil.copytree(made, tmp_path / "train")
    return str(tmp_path / "train")


def units_by_pair(root):
    return {u.ref["pair_id"]: u for u in df2.list_units(root)}


def load(unit, **kw):
    item = Item(unit)
    df2.load_pairs(item, df2.DeepFashion2Params(**kw))
    return item


def edit(root, name, fn):
    path = os.path.join(root, "annos", f"{name}.json")
    with open(path) as f:
        anno = json.load(f)
    fn(anno)
    with open(path, "w") as f:
        json.dump(anno, f)


def test_groups_by_pair_id(root):
    units = df2.list_units(root)
    assert [u.id for u in units] == [f"deepfashion2:train:{i}" for i in (1, 2, 3, 4)]
    assert [(u.ref["shop"], u.ref["user"]) for u in units] == [
        (["000001"], ["000002", "000003"]), (["000004"], ["000005"]), (["000006"], []), (["000007"], ["000008"])]


def test_shop_and_user_photos_pair_on_style_with_exact_masks(root):
    item = load(units_by_pair(root)[1])
    pairs = [(s.provenance["shop"], s.provenance["user"]) for s in item.samples]
    assert pairs == [("000001", "000002"), ("000001", "000003")]
    full, partial = item.samples
    assert [x.phrase for x in full.subjects] == ["short sleeve top", "trousers"]
    assert [x.phrase for x in partial.subjects] == ["short sleeve top"]  # the user's skirt is style 0
    assert item.drops == {"deepfashion2/style_0": 1}
    for s in item.samples:
        assert s.source == "image" and len(s.frames) == 2
        shop, user = ([f.width, f.height] for f in s.frames)  # ~740×500: stored as they are
        assert [f.fields for f in s.frames] == [
            {"image": s.provenance["shop"], "domain": "shop", "original_size": shop},
            {"image": s.provenance["user"], "domain": "user", "original_size": user}]
        for sub in s.subjects:
            for j, name in enumerate((s.provenance["shop"], s.provenance["user"])):
                with open(os.path.join(root, "annos", f"{name}.json")) as f:
                    ann = json.load(f)[sub.fields["items"][j]]
                assert ann["style"] == sub.fields["style"] and ann["category_name"] == sub.phrase
                h, w = s.frames[j].image.shape[:2]
                expect = segmentation_mask(ann["segmentation"], h, w)
                assert np.array_equal(sub.masks[j], expect) and expect.sum() > 5000
                assert sub.boxes[j] == pytest.approx(ann["bounding_box"])
    assert full.frames[1].caption == "a photo of a person wearing a short sleeve top and trousers"
    assert full.frames[0].caption == "a photo of a short sleeve top and trousers"
    assert len({s.key for s in item.samples}) == 2
    assert [s.key for s in load(units_by_pair(root)[1]).samples] == [s.key for s in item.samples]


def test_photos_over_max_side_are_downscaled_with_their_masks_and_boxes(root):
    """At max_side 370 the photos (~740×500) are stored at about half size; rules ran on the polygons at full size (the
    same subjects survive) and each mask and box is the full-size one scaled with the photo."""
    full = load(units_by_pair(root)[1])
    half = load(units_by_pair(root)[1], max_side=370)
    assert [s.key for s in half.samples] == [s.key for s in full.samples] and half.drops == full.drops
    for big, small in zip(full.samples, half.samples):
        for fb, fs in zip(big.frames, small.frames):
            assert max(fs.width, fs.height) == 370 and fs.fields["original_size"] == [fb.width, fb.height]
            scale = 370 / max(fb.width, fb.height)
            assert (fs.width, fs.height) == (round(fb.width * scale), round(fb.height * scale))
        assert [x.phrase for x in small.subjects] == [x.phrase for x in big.subjects]
        for xb, xs in zip(big.subjects, small.subjects):
            for j, fr in enumerate(small.frames):
                assert xs.masks[j].shape == (fr.height, fr.width)
                expect = images.resize_mask(xb.masks[j], fr.width, fr.height)
                assert (xs.masks[j] != expect).mean() < 1e-3  # the same mask, at the photo's size
                sx, sy = fr.width / big.frames[j].width, fr.height / big.frames[j].height
                assert xs.boxes[j] == pytest.approx([v * s for v, s in zip(xb.boxes[j], (sx, sy, sx, sy))])


def test_items_without_a_partner_are_dropped_with_a_reason(root):
    units = units_by_pair(root)
    item = load(units[2])  # shop: dress + vest (style 2); user: dress + sling (style 3)
    [s] = item.samples
    assert [x.phrase for x in s.subjects] == ["long sleeve dress"]
    assert item.drops == {"deepfashion2/no_partner": 2}
    lonely = Item(units[3])  # a shop image and no consumer photo
    with pytest.raises(Rejected) as e:
        df2.load_pairs(lonely, df2.DeepFashion2Params())
    assert e.value.reason == "no_pairs" and lonely.drops == {"deepfashion2/no_partner": 1}


def test_corrupt_photo_fails_the_group_naming_the_file(root):
    with pytest.raises(BadInput) as e:
        load(units_by_pair(root)[4])
    assert e.value.reason == "corrupt_image" and "000008.jpg" in e.value.detail


def test_mislabelled_and_ambiguous_items_are_dropped(root):
    def relabel(anno):
        anno["item2"]["category_id"], anno["item2"]["category_name"] = 7, "shorts"  # trousers style 2 → shorts

    edit(root, "000002", relabel)
    edit(root, "000003", lambda a: a["item2"].update(style=1))  # skirt claims the top's style
    item = load(units_by_pair(root)[1])
    [s] = item.samples  # 000003 has no unambiguous match left
    assert [x.phrase for x in s.subjects] == ["short sleeve top"]
    assert item.drops == {"deepfashion2/category_mismatch": 1, "deepfashion2/duplicate_style": 2}


def test_filters_and_caps_count_what_they_drop(root):
    unit = units_by_pair(root)[1]
    with pytest.raises(Rejected) as e:
        load(unit, filters=FilterParams(min_image_side=700))
    assert e.value.reason == "no_pairs_after_filters"
    capped = load(unit, max_pairs_per_group=1)
    assert len(capped.samples) == 1 and capped.drops["deepfashion2/pairs_over_cap"] == 1
    narrow = load(unit, filters=FilterParams(aspect_min=1.5, area_max=1.0, min_mask_box_ratio=0.0,
                                             unlabeled="ignore"))
    # 000002's trousers (box aspect 1.40) fail the aspect rule: the first pair keeps only the top; 000003's top
    # (1.07) and skirt (1.17) fail too, leaving its pair without a subject
    assert [len(s.subjects) for s in narrow.samples] == [1]
    assert narrow.drops == {"deepfashion2/style_0": 1, "deepfashion2/box_aspect": 3,
                            "deepfashion2/pair_without_subjects": 1}


def _box(root, name, item):
    with open(os.path.join(root, "annos", f"{name}.json")) as f:
        return json.load(f)[item]["bounding_box"]


def _pair(sample):
    return sample.provenance["shop"], sample.provenance["user"]


DF2_RULES = dict(area_max=1.0, min_mask_box_ratio=0.0)  # the source's defaults
NARROW = dict(DF2_RULES, aspect_min=1.5)  # 000002's trousers (aspect 1.40) fail


def test_a_garment_a_rule_drops_drops_its_pair_or_is_an_ignore_region(root):
    """Pair (000001, 000002) shows a top and trousers; the aspect rule drops the trousers in the user photo, where
    they stay visible without a slot. (Pair (000001, 000003) loses every subject to the rule.)"""
    item = Item(units_by_pair(root)[1])
    with pytest.raises(Rejected) as e:
        df2.load_pairs(item, df2.DeepFashion2Params(filters=FilterParams(**NARROW)))
    assert e.value.reason == "no_pairs_after_filters" and item.drops["deepfashion2/unlabeled_instance"] == 1
    kept = load(units_by_pair(root)[1], filters=FilterParams(**NARROW, unlabeled="ignore"))
    [s] = kept.samples
    assert _pair(s) == ("000001", "000002") and [x.phrase for x in s.subjects] == ["short sleeve top"]
    assert "ignore" not in s.frames[0].fields
    assert s.frames[1].fields["ignore"] == [pytest.approx(_box(root, "000002", "item2"))]
    assert "deepfashion2/unlabeled_instance" not in kept.drops


def test_a_garment_over_the_subject_cap_drops_its_pair_or_is_an_ignore_region(root):
    """With a cap of one subject, pair (000001, 000002) keeps its top and leaves the trousers visible in both."""
    capped = load(units_by_pair(root)[1], filters=FilterParams(**DF2_RULES, max_subjects=1))
    assert [_pair(s) for s in capped.samples] == [("000001", "000003")]
    assert capped.drops["deepfashion2/too_many_subjects"] == 1 and capped.drops["deepfashion2/unlabeled_instance"] == 1
    kept = load(units_by_pair(root)[1], filters=FilterParams(**DF2_RULES, max_subjects=1, unlabeled="ignore"))
    s = kept.samples[0]
    assert _pair(s) == ("000001", "000002") and [x.phrase for x in s.subjects] == ["short sleeve top"]
    for fr, name in zip(s.frames, ("000001", "000002")):
        assert fr.fields["ignore"] == [pytest.approx(_box(root, name, "item2"))]


def test_a_pair_of_740x500_photos_becomes_a_two_frame_sample_with_the_defaults(root):
    """Issue 12's tried case: DeepFashion2-sized photos (here 740×500 and 740×493) pass the default filters."""
    item = load(units_by_pair(root)[1])
    s = item.samples[0]
    assert [(f.width, f.height) for f in s.frames] == [(740, 500), (740, 493)] and len(s.subjects) == 2


def test_choose_pairs_prefers_shared_styles_and_spreads_ties():
    shop = {"a": {1}, "b": {1, 2}, "c": {1}}
    assert df2.choose_pairs(shop, {"u": {1, 2}}, 1) == [("b", "u")]
    ties = df2.choose_pairs(shop, {"u1": {1}, "u2": {1}, "u3": {1}}, 1)
    assert ties == [("a", "u1"), ("b", "u2"), ("c", "u3")]
    assert df2.choose_pairs(shop, {"u": {1, 2}}, 2) == [("b", "u"), ("a", "u")]
    assert df2.choose_pairs(shop, {"u": {3}}, 1) == []


def test_a_root_with_brackets_and_colons_is_a_name_not_a_pattern(tmp_path, root):
    odd = tmp_path / "df2[v2]::x"
    shutil.copytree(root, odd)
    units = df2.list_units(str(odd))
    assert [u.ref["pair_id"] for u in units] == [1, 2, 3, 4]  # glob read "[v2]" as a pattern: 0 units
    assert load(units[0]).samples  # annotations and images open under the same root


def test_unusable_annotations_are_quarantined_by_name_and_the_rest_listed(root):
    annos = os.path.join(root, "annos")
    with open(os.path.join(annos, "900001.json"), "w") as f:
        json.dump([1, 2], f)  # valid JSON, not an annotation
    with open(os.path.join(annos, "900002.json"), "w") as f:
        f.write('{"source": "shop", "pair_id"')  # truncated
    edit(root, "000007", lambda a: a.update(pair_id="seven"))
    units = df2.list_units(root)
    bad = {u.id: Item(u).outcome for u in units if u.ref.get("listing")}
    assert [u.ref["pair_id"] for u in units if not u.ref.get("listing")] == [1, 2, 3, 4]
    assert {k: (o.kind, o.stage, o.reason) for k, o in bad.items()} == {
        "deepfashion2:train:annos/000007.json": ("failed", "list", "not_a_deepfashion2_annotation"),
        "deepfashion2:train:annos/900001.json": ("failed", "list", "not_a_deepfashion2_annotation"),
        "deepfashion2:train:annos/900002.json": ("failed", "list", "corrupt_annotation"),
    }
    assert "'seven'" in bad["deepfashion2:train:annos/000007.json"].detail


def test_a_missing_annos_folder_stops_the_listing_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="annos"):
        df2.list_units(str(tmp_path))


def test_a_decompression_bomb_is_refused_before_decoding(root):
    from tests.bombs import png_bomb

    with open(os.path.join(root, "image", "000002.jpg"), "wb") as f:
        f.write(png_bomb())  # 16500²: between Pillow's warning and error limits
    item = load(units_by_pair(root)[1])
    assert item.drops["deepfashion2/too_many_pixels"] == 1
    assert [(s.provenance["shop"], s.provenance["user"]) for s in item.samples] == [("000001", "000003")]


def test_annotations_are_parsed_once_across_listings_until_a_file_changes(root, tmp_path, monkeypatch):
    """A second run lists a split from the file cache; an edited annotation (size, mtime) is read again, and an
    unusable one stays quarantined by name from the cache too."""
    from datagen.filecache import FileCache

    with open(os.path.join(root, "annos", "900001.json"), "w") as f:
        json.dump([1, 2], f)
    parsed = []
    real = df2._read_group
    monkeypatch.setattr(df2, "_read_group", lambda fs, p: parsed.append(os.path.basename(p)) or real(fs, p))
    db = str(tmp_path / "cache" / "files.sqlite")

    def listing(cache):
        return [(u.id, u.ref.get("shop"), u.ref.get("user")) for u in df2.list_units(root, cache)]

    first = listing(FileCache(db))
    n_files = len(os.listdir(os.path.join(root, "annos")))
    assert len(parsed) == n_files
    assert listing(FileCache(db)) == first and len(parsed) == n_files  # a new run: nothing parsed again
    assert "deepfashion2:train:annos/900001.json" in [uid for uid, _, _ in first]
    edit(root, "000007", lambda a: a.update(pair_id=3))  # moves 000007 from pair 4 into pair 3
    moved = listing(FileCache(db))
    assert parsed[n_files:] == ["000007.json"]
    assert moved != first and any("000007" in (shop or []) + (user or []) for uid, shop, user in moved
                                  if uid == "deepfashion2:train:3")
