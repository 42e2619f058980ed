"""Shard format v2 (docs/format.md): codec round trip, contract checks, the size-capped atomic writer, readers."""

import json
import os
import tarfile

import numpy as np
import pytest
import webdataset as wds

from datagen import shards
from datagen.shards.validate import validate


def test_round_trip_keeps_masks_boxes_meta_and_frames(sample_factory):
    s = sample_factory(n_frames=3, n_subjects=2)
    s.subjects[1].masks.pop(2)  # subject 1 absent from frame 2
    s.subjects[0].fields["reference"] = "target_crop"
    s.frames[1].fields = {"view": {"azimuth": 30.0, "K": np.eye(3)}}
    raw = shards.encode_sample(s)
    assert sorted(raw) == sorted(["__key__", "frame.0.jpg", "frame.1.jpg", "frame.2.jpg", "mask.0.0.png",
                                  "mask.1.0.png", "mask.2.0.png", "mask.0.1.png", "mask.1.1.png", "meta.json"])
    back = shards.decode_sample(raw)
    assert back.key == s.key and back.source == "video" and len(back.frames) == 3
    for a, b in zip(s.subjects, back.subjects):
        assert sorted(a.masks) == sorted(b.masks)
        for j in a.masks:
            np.testing.assert_array_equal(a.masks[j], b.masks[j])  # PNG masks are lossless
        assert b.box(0) == shards.mask_box(a.masks[0])
    assert back.subjects[0].fields == {"reference": "target_crop"}
    assert back.frames[1].fields["view"]["K"] == np.eye(3).tolist()
    assert back.frames[0].fields == {"time_s": 0.0} and back.frames[0].caption == "caption 0"
    assert back.scores == {"det": 0.7} and back.provenance["license"] == "cc0"
    # JPEG at quality 95: close, not exact (PSNR above 30 dB)
    mse = np.mean((back.frames[0].image.astype(float) - s.frames[0].image) ** 2)
    assert 10 * np.log10(255**2 / mse) > 30
    meta = json.loads(raw["meta.json"])
    assert meta["version"] == 1
    assert meta["subjects"][1]["boxes"].keys() == {"0", "1"}
    assert set(meta["frames"][0]) == {"caption", "width", "height", "time_s"}


def test_mask_box_is_tight_and_exclusive():
    m = np.zeros((10, 20), bool)
    m[2:5, 3:9] = True
    assert shards.mask_box(m) == [3.0, 2.0, 9.0, 5.0]


@pytest.mark.parametrize("breakage, message", [
    (lambda s: setattr(s, "key", "a.b"), "bad key"),
    (lambda s: setattr(s, "source", "web"), "not one of"),
    (lambda s: s.subjects[0].masks.__setitem__(0, np.zeros((5, 5), bool)), "mask 0.0"),
    (lambda s: s.subjects[0].masks.__setitem__(7, s.subjects[0].masks[0]), "missing frame 7"),
    (lambda s: setattr(s.subjects[1], "id", 0), "duplicate subject ids"),
    (lambda s: setattr(s, "frames", []), "no frames"),
])
def test_contract_violations_are_refused(sample_factory, breakage, message):
    s = sample_factory()
    breakage(s)
    with pytest.raises(shards.FormatError, match=message):
        shards.encode_sample(s)


def test_stable_key_is_deterministic_and_dot_free():
    a = shards.stable_key("vid", "s3://bucket/clip.mp4", 0, 12, "a.b")
    assert a == shards.stable_key("vid", "s3://bucket/clip.mp4", 0, 12, "a.b")
    assert a != shards.stable_key("vid", "s3://bucket/clip2.mp4", 0, 12, "a.b")
    assert "." not in a and "/" not in a and a.startswith("vid-")


def test_writer_caps_size_names_shards_and_keeps_samples_adjacent(tmp_path, sample_factory):
    samples = [sample_factory(key=f"k{i}", size=(96, 64), seed=i) for i in range(9)]
    docs = [shards.encode_sample(s) for s in samples]
    one = sum(512 + -(-len(v) // 512) * 512 for k, v in docs[0].items() if not k.startswith("_"))
    numbers = iter(range(100))
    cap = int(one * 3.5)
    with shards.ShardWriter(str(tmp_path), lambda: shards.shard_name("video", next(numbers)), cap) as w:
        for d in docs:
            w.write(d)
    names = sorted(os.listdir(tmp_path))
    assert names == [f"video-{i:06d}.tar" for i in range(3)]  # 3 samples fit per shard, 9 samples
    assert w.finished["video-000000.tar"] == ["k0", "k1", "k2"]
    for n in names:
        assert os.path.getsize(tmp_path / n) <= cap + tarfile.RECORDSIZE  # tar pads to whole records
        with tarfile.open(tmp_path / n) as tar:
            keys = [m.name.split(".", 1)[0] for m in tar.getmembers()]
        # a sample's files are adjacent: keys change exactly (samples in shard − 1) times
        assert sum(a != b for a, b in zip(keys, keys[1:])) == len(set(keys)) - 1


def test_writer_is_atomic_and_abort_publishes_nothing(tmp_path, sample_factory):
    w = shards.ShardWriter(str(tmp_path), lambda: "video-000000.tar")
    w.write(shards.encode_sample(sample_factory()))
    assert not (tmp_path / "video-000000.tar").exists()  # not visible until complete
    assert [n for n in os.listdir(tmp_path) if shards.TMP_NAME.match(n) and n.startswith(".video-000000.tar.")]
    w.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(RuntimeError):
        with shards.ShardWriter(str(tmp_path), lambda: "video-000001.tar") as w2:
            w2.write(shards.encode_sample(sample_factory()))
            raise RuntimeError("crash mid-shard")
    assert os.listdir(tmp_path) == []


def test_writer_refuses_names_outside_the_contract(tmp_path, sample_factory):
    w = shards.ShardWriter(str(tmp_path), lambda: "Video_1.tar")
    with pytest.raises(shards.FormatError, match="bad shard name"):
        w.write(shards.encode_sample(sample_factory()))


def test_index_row(sample_factory):
    s = sample_factory(size=(64, 48), n_subjects=2)
    row = shards.index_row(s, "video-000003.tar")
    assert row["shard"] == "video-000003.tar" and row["n_frames"] == 2 and row["n_subjects"] == 2
    assert (row["width"], row["height"]) == (64, 48)
    area = 24 * 10 / (64 * 48)
    assert row["subject_area_min"] == pytest.approx(area) and row["subject_area_max"] == pytest.approx(area)
    assert row["score_det"] == 0.7


def test_plain_webdataset_reads_what_we_write(dataset_factory, sample_factory):
    samples = [sample_factory(key=f"k{i}", seed=i) for i in range(4)]
    root = dataset_factory([samples[:2], samples[2:]])
    urls = shards.shard_urls(root)
    got = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("rgb8"))
    assert [g["__key__"] for g in got] == ["k0", "k1", "k2", "k3"]
    assert got[0]["frame.1.jpg"].shape == (48, 64, 3)
    assert got[0]["meta.json"]["version"] == 1
    decoded = list(shards.iter_samples(root))
    assert [d.key for d in decoded] == ["k0", "k1", "k2", "k3"]
    assert shards.read_table(root, shards.INDEX_FILE).num_rows == 4


def test_dataset_files_have_contract_columns(dataset_factory, sample_factory):
    root = dataset_factory([[sample_factory()]])
    assert shards.read_table(root, shards.INDEX_FILE).column_names[:10] == list(shards.INDEX_COLUMNS)
    assert shards.read_table(root, shards.QUARANTINE_FILE).column_names[:4] == list(shards.QUARANTINE_COLUMNS)
    empty = os.path.join(root, "empty")
    shards.write_index(empty, [])
    assert shards.read_table(empty, shards.INDEX_FILE).column_names == shards.INDEX_SCHEMA.names
    assert shards.INDEX_SCHEMA.names[:10] == list(shards.INDEX_COLUMNS)


def test_index_is_a_folder_a_run_appends_to_and_read_table_reads_whole(dataset_factory, sample_factory):
    root = dataset_factory([[sample_factory(key="k0")]])
    row = shards.index_row(sample_factory(key="k1"), "test-000001.tar")
    shards.write_index_part(root, "test-000001-run2", [row])
    import pyarrow.parquet as pq

    for table in (shards.read_table(root, shards.INDEX_FILE), pq.read_table(os.path.join(root, shards.INDEX_FILE))):
        assert sorted(table["key"].to_pylist()) == ["k0", "k1"] and table.schema == shards.INDEX_SCHEMA
    shards.write_index(root, [row])  # a whole rewrite leaves one file
    assert shards.index_parts(root) == ["all"] and shards.read_table(root, shards.INDEX_FILE).num_rows == 1


def test_a_score_outside_the_index_schema_breaks_the_contract(sample_factory):
    sample = sample_factory()
    sample.scores["aesthetic"] = 5.0
    with pytest.raises(shards.FormatError, match="aesthetic"):
        shards.encode_sample(sample)


def test_pairs_travel_in_meta_and_are_summarised_in_the_index(dataset_factory, sample_factory):
    from datagen.labeling import pairs

    s = sample_factory(key="k0", n_frames=3, n_subjects=2)
    s.pairs = pairs.measure(s)
    assert len(s.pairs) == 6  # 2 subjects × 3 frame pairs
    s.pairs[4]["identity"] = 0.42  # the least identical pair
    row = shards.index_row(s, "test-000000.tar")
    assert row["n_pairs"] == 6 and row["pair_identity_min"] == 0.42
    assert row["pair_change_min"] == min(p["change_score"] for p in s.pairs) > 0  # subjects move 2 px a frame
    single = sample_factory(key="k1", n_frames=1)
    assert {c: shards.index_row(single, "x")[c] for c in shards.PAIR_COLUMNS} == {
        "n_pairs": 0, "pair_identity_min": None, "pair_change_min": None}
    assert shards.sample_meta(single)["pairs"] == []  # nothing to measure: no pair
    unmeasured = sample_factory(key="k2")  # two frames, no measures: as 2.0, no key and null columns
    assert "pairs" not in shards.sample_meta(unmeasured)
    assert {c: shards.index_row(unmeasured, "x")[c] for c in shards.PAIR_COLUMNS} == dict.fromkeys(shards.PAIR_COLUMNS)
    root = dataset_factory([[s, single]])
    assert list(shards.iter_samples(root))[0].pairs == s.pairs
    table = shards.read_table(root, shards.INDEX_FILE)
    assert table.column("n_pairs").to_pylist() == [6, 0]
    assert validate(root).ok
    s.pairs.append({**s.pairs[0], "frames": [0, 5]})  # a frame the subject is not in
    with pytest.raises(shards.FormatError, match="not a subject seen in two frames"):
        shards.encode_sample(s)


def test_a_20_dataset_without_pair_columns_still_reads(dataset_factory, sample_factory):
    import pyarrow.parquet as pq

    root = dataset_factory([[sample_factory(key="k0")]])
    old = shards.read_table(root, shards.INDEX_FILE).drop_columns(list(shards.PAIR_COLUMNS))
    shards.remove_index_part(root, "all")
    pq.write_table(old, os.path.join(root, shards.INDEX_FILE, "old.parquet"))  # as a 2.0 run wrote it
    new = shards.index_row(sample_factory(key="k1", n_frames=1), "test-000000.tar")
    shards.write_index_part(root, "new", [new])
    table = shards.read_table(root, shards.INDEX_FILE).sort_by("key")
    assert table.column("n_pairs").to_pylist() == [None, 0]
    assert table.column("key").to_pylist() == ["k0", "k1"]
