"""URL lists: the three list formats, duplicates, the download batch stage (concurrent, one outcome per row) and the
people rules before and after SAM, on instances made here (the models are tested in test_model_stages)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datagen.readers import urls
from datagen.readers.download import DownloadParams
from datagen.labeling.filters import FilterParams, Instance
from datagen.units import Item, Rejected
from tests.datagen.test_download import encoded
from tests.image_server import ImageServer

ROWS = [{"url": "http://h/a.jpg", "caption": "two friends", "LICENSE": "cc-by"},
        {"url": "http://h/b.jpg", "caption": None, "LICENSE": "?"},
        {"url": "http://h/a.jpg", "caption": "again", "LICENSE": "cc-by"},
        {"url": "", "caption": "no url", "LICENSE": "?"}]


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_lists_in_every_format_mark_duplicates(tmp_path, fmt):
    path = tmp_path / f"part.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif fmt == "csv":
        path.write_text("url,caption,LICENSE\n" + "".join(f"{r['url']},{r['caption'] or ''},{r['LICENSE']}\n"
                                                           for r in ROWS))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    units = urls.list_units(str(path), keep_columns=("LICENSE",))
    name = urls.list_id(str(path))
    assert [u.id for u in units] == [f"urls:{name}:{i}" for i in range(4)]
    assert [u.ref["duplicate_of"] for u in units] == [None, None, f"urls:{name}:0", None]
    assert units[0].ref["caption"] == "two friends" and units[0].ref["extra"] == {"LICENSE": "cc-by"}
    with pytest.raises(ValueError, match=r"no column \['TEXT'\]"):
        urls.list_units(str(path), caption_col="TEXT")


def test_rows_whose_url_is_not_a_string_are_quarantined_by_row(tmp_path):
    path = tmp_path / "ids.jsonl"  # a column of numbers (an id column named url): no row can be fetched
    path.write_text('{"url": 123, "caption": "a"}\n{"url": 4.5, "caption": "b"}\n{"url": null, "caption": "c"}\n')
    units = urls.list_units(str(path))
    outcomes = [Item(u).outcome for u in units]
    assert [(o.stage, o.reason) for o in outcomes[:2]] == [("list", "bad_url")] * 2
    assert "row 0: url is 123" in outcomes[0].detail
    assert outcomes[2] is None and units[2].ref["url"] == ""  # empty: the download stage says bad_url


def test_an_untrusted_list_naming_a_local_file_and_a_loopback_server_fetches_neither(tmp_path):
    path = tmp_path / "secret.png"
    path.write_bytes(encoded("PNG", 800, 600))
    listing = tmp_path / "list.jsonl"
    with ImageServer({"a.jpg": encoded("JPEG")}) as s:
        rows = [str(path), f"file://{path}", s.url("good", "a.jpg"), s.url("good", "a.jpg").replace("127.0.0.1",
                                                                                                     "localhost")]
        listing.write_text("".join(json.dumps({"url": u, "caption": "x"}) + "\n" for u in rows))
        out = urls.Download(DownloadParams(retries=0), ["person"])([Item(u) for u in urls.list_units(str(listing))])
        assert not s.hits  # not one request reached the server
    assert [(it.outcome.kind, it.outcome.stage, it.outcome.reason) for it in out] == [
        ("failed", "download", "scheme_not_allowed")] * 2 + [("failed", "download", "address_not_allowed")] * 2
    assert not any(it.samples for it in out)
    trusted = DownloadParams(schemes=["http", "file"], allow_private_addresses=True)  # what a config may allow
    assert all(it.alive for it in urls.Download(trusted, ["person"])([Item(u) for u in urls.list_units(str(listing))][:2]))


def test_download_batch_is_concurrent_and_settles_every_row(tmp_path):
    listing = tmp_path / "list.jsonl"
    with ImageServer({"a.jpg": encoded("JPEG"), "small.jpg": encoded("JPEG", 300, 200)}, latency_s=0.3) as s:
        rows = [{"url": s.url("good", "a.jpg") + f"?{i}", "caption": f"photo {i}"} for i in range(12)]
        rows += [{"url": s.url("missing", "a.jpg"), "caption": "gone"},
                 {"url": s.url("good", "small.jpg"), "caption": "thumbnail"},
                 {"url": rows[0]["url"], "caption": "listed twice"}, {"url": "", "caption": "empty"}]
        listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
        items = [Item(u) for u in urls.list_units(str(listing))]
        out = urls.Download(DownloadParams(threads=16, timeout_s=5, allow_private_addresses=True), ["person"])(items)
        assert s.max_in_flight >= 8  # the rows were fetched at once, not one after the other
    assert [it.unit.id for it in out] == [it.unit.id for it in items]  # order kept
    good = out[:12]
    assert all(it.alive and it.samples[0].frames[0].image.shape == (600, 800, 3) for it in good)
    s0 = good[0].samples[0]
    assert s0.source == "router" and s0.frames[0].caption == "photo 0" and s0.subjects == []
    assert s0.provenance["original_size"] == [800, 600] and good[0].scratch["phrases"] == [["person"]]
    assert len({it.samples[0].key for it in good}) == 12
    assert [(it.outcome.kind, it.outcome.stage, it.outcome.reason) for it in out[12:]] == [
        ("failed", "download", "http_404"), ("filtered", "download", "image_too_small"),
        ("filtered", "download", "duplicate_url"), ("failed", "download", "bad_url")]


def downloaded(tmp_path, caption="three friends"):
    path = tmp_path / "a.png"
    path.write_bytes(encoded("PNG", 800, 600))
    listing = tmp_path / "list.jsonl"
    listing.write_text(json.dumps({"url": str(path), "caption": caption}) + "\n")
    [item] = urls.Download(DownloadParams(schemes=["file"]), ["person"])([Item(u) for u in urls.list_units(str(listing))])
    return item


def box_mask(box, fill=1.0):
    m = np.zeros((600, 800), bool)
    x0, y0, x1, y1 = box
    m[y0:y0 + int((y1 - y0) * fill), x0:x1] = True
    return m


PEOPLE = [[50, 100, 250, 560], [300, 120, 480, 580], [520, 90, 740, 570]]


def test_people_rules_before_and_after_sam(tmp_path):
    item = downloaded(tmp_path)
    found = [Instance("person", b, 0.9 - 0.1 * k) for k, b in enumerate(PEOPLE)]
    found.append(Instance("person", [10, 10, 40, 30], 0.8))  # a tiny box: below 5 % of the image
    item.scratch["instances"] = [list(found)]
    with pytest.raises(Rejected) as e:  # by default the tiny person may not stay in the image unlabeled
        urls.select_boxes(item, urls.PersonParams())
    assert e.value.reason == "unlabeled_instance" and "box_area_small" in e.value.detail
    item = downloaded(tmp_path)
    item.scratch["instances"] = [[Instance(x.phrase, x.box, x.score) for x in found]]
    rules = urls.PersonParams(filters=FilterParams(unlabeled="ignore"))
    urls.select_boxes(item, rules)
    assert len(item.scratch["instances"][0]) == 3 and item.drops == {"select_boxes/box_area_small": 1}
    for x, fill in zip(item.scratch["instances"][0], (1.0, 0.9, 0.3)):  # SAM's masks; the last one is poor
        x.mask = box_mask([int(v) for v in x.box], fill)
    urls.persons(item, rules, {"detector": {"id": "d"}})
    [s] = item.samples
    # both people the rules dropped are the frame's ignore region (the routing loss leaves them out)
    assert s.frames[0].fields["ignore"] == [[10.0, 10.0, 40.0, 30.0], [float(v) for v in PEOPLE[2]]]
    assert [sub.boxes[0] for sub in s.subjects] == PEOPLE[:2]
    assert [sub.det_score for sub in s.subjects] == pytest.approx([0.9, 0.8]) and s.scores["det"] == pytest.approx(0.8)
    assert item.drops["persons/mask_box_ratio"] == 1 and s.frames[0].caption == "three friends"
    assert s.models == {"detector": {"id": "d"}} and not item.scratch


def test_too_few_people_rejected_before_sam_and_caption_fallback(tmp_path):
    item = downloaded(tmp_path)
    item.scratch["instances"] = [[Instance("person", PEOPLE[0], 0.9), Instance("person", PEOPLE[1], 0.1)]]
    with pytest.raises(Rejected) as e:
        urls.select_boxes(item, urls.PersonParams())
    assert e.value.reason == "too_few_subjects" and item.drops == {"select_boxes/low_score": 1}
    (tmp_path / "bare").mkdir()
    item = downloaded(tmp_path / "bare", caption=None)
    item.scratch["instances"] = [[Instance("person", b, 0.9, box_mask(b)) for b in PEOPLE[:2]]]
    urls.persons(item, urls.PersonParams(), {})
    assert item.samples[0].frames[0].caption == "a photo of two people"  # no alt text: from the phrases


def test_unit_ids_differ_for_lists_of_one_name_in_two_folders(tmp_path):
    for month in ("2026-01", "2026-02"):
        (tmp_path / month).mkdir()
        pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / month / "part-0.parquet")
    a, b = (urls.list_units(str(tmp_path / m / "part-0.parquet")) for m in ("2026-01", "2026-02"))
    assert not {u.id for u in a} & {u.id for u in b}
    assert a[0].id.startswith("urls:part-0.parquet-")  # still says which file
