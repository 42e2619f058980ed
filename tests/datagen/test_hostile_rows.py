"""Issue 24 (hostile inputs, round 2): one bad row of a URL list is quarantined at `list`, never reaching the
writer (a number as caption used to raise ArrowTypeError there, in this run and every rerun)."""

import json

from datagen.readers import urls
from datagen.units import Item


def test_a_caption_that_is_not_a_string_is_quarantined_at_list(tmp_path):
    path = tmp_path / "list.jsonl"
    rows = [{"url": "http://example.com/a.jpg", "caption": 2024}, {"url": "http://example.com/b.jpg", "caption": ["x"]},
            {"url": "http://example.com/c.jpg", "caption": "two friends"}, {"url": "http://example.com/d.jpg"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    units = urls.list_units(str(path))
    outcomes = [Item(u).outcome for u in units]
    assert [(o.stage, o.reason) for o in outcomes[:2]] == [("list", "bad_caption")] * 2
    assert "caption is 2024, not a string" in outcomes[0].detail
    assert outcomes[2] is None and units[2].ref["caption"] == "two friends"
    assert outcomes[3] is None and units[3].ref["caption"] is None


def test_csv_captions_are_text_even_when_they_look_like_numbers(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("url,caption\nhttp://example.com/a.jpg,2024\nhttp://example.com/b.jpg,1.5\n")
    assert [u.ref["caption"] for u in urls.list_units(str(path))] == ["2024", "1.5"]
