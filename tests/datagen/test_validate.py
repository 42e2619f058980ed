"""`python -m datagen.shards validate` accepts a valid dataset and catches each kind of hand-made breakage."""

import io
import json
import os
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen import shards
from datagen.shards.__main__ import main as shards_main
from datagen.shards.validate import validate


@pytest.fixture
def dataset(dataset_factory, sample_factory):
    return dataset_factory([[sample_factory(key=f"k{i}", seed=i) for i in range(3)],
                            [sample_factory(key="k3", n_frames=3, seed=3)]])


def rewrite_tar(path, edit):
    """Rewrite a tar through ``edit(list of (name, bytes)) -> list of (name, bytes)``."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    members = edit(members)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def first_shard(root):
    return os.path.join(root, "shards", shards.list_shards(root)[0])


def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def test_valid_dataset_passes_and_cli_exits_zero(dataset, capsys):
    report = validate(dataset)
    assert report.ok, report.violations
    assert (report.shards, report.samples) == (2, 4)
    assert shards_main(["validate", dataset]) == 0
    assert "OK" in capsys.readouterr().out


def test_mask_of_wrong_size(dataset, capsys):
    small = png(np.zeros((10, 10), np.uint8))
    rewrite_tar(first_shard(dataset), lambda ms: [(n, small if n == "k0.mask.0.1.png" else d) for n, d in ms])
    report = validate(dataset)
    assert any("k0: mask.0.1.png is 10x10, frame 0 is 64x48" in v for v in report.violations)
    assert shards_main(["validate", dataset]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_mask_not_8bit(dataset):
    rgb = png(np.zeros((48, 64, 3), np.uint8))
    rewrite_tar(first_shard(dataset), lambda ms: [(n, rgb if n == "k1.mask.1.0.png" else d) for n, d in ms])
    assert any("k1/mask.1.0.png: image mode RGB" in v for v in validate(dataset).violations)


def test_missing_meta(dataset):
    rewrite_tar(first_shard(dataset), lambda ms: [(n, d) for n, d in ms if n != "k2.meta.json"])
    assert any("k2: missing meta.json" in v for v in validate(dataset).violations)


def test_wrong_meta_version(dataset):
    def edit(ms):
        out = []
        for n, d in ms:
            if n == "k0.meta.json":
                meta = json.loads(d)
                meta["version"] = 2
                d = json.dumps(meta).encode()
            out.append((n, d))
        return out

    rewrite_tar(first_shard(dataset), edit)
    assert any("k0: meta version 2, expected 1" in v for v in validate(dataset).violations)


def test_missing_frame_and_mask_of_unknown_subject(dataset):
    def edit(ms):
        ms = [(n, d) for n, d in ms if n != "k1.frame.1.jpg"]
        return ms + [("k1.mask.0.7.png", png(np.zeros((48, 64), np.uint8)))]

    rewrite_tar(first_shard(dataset), edit)
    violations = validate(dataset).violations
    assert any("k1: missing frame.1.jpg" in v for v in violations)
    assert any("mask.0.7.png names subject 7" in v for v in violations)


def test_files_of_a_sample_not_adjacent(dataset):
    rewrite_tar(first_shard(dataset), lambda ms: ms[1:] + ms[:1])  # k0's first file moved to the end
    assert any("files of k0 are not adjacent" in v for v in validate(dataset).violations)


def test_index_missing_row_extra_row_and_wrong_column(dataset):
    path = os.path.join(dataset, shards.INDEX_FILE)
    rows = pq.read_table(path).to_pylist()
    rows[1]["n_subjects"] = 5
    rows = rows[1:] + [{**rows[1], "key": "ghost"}]
    shards.write_index(dataset, rows)
    violations = validate(dataset).violations
    assert any("sample k0 (in test-000000.tar) missing from the index" in v for v in violations)
    assert any("lists ghost, which no shard holds" in v for v in violations)
    assert any("k1: n_subjects = 5, shard says 2" in v for v in violations)


def test_manifest_count_and_fields(dataset):
    manifest = shards.read_manifest(dataset)
    manifest["counts"]["samples"] = 99
    del manifest["code_version"]
    shards.write_manifest(dataset, manifest)
    violations = validate(dataset).violations
    assert any("counts.samples = 99, shards hold 4" in v for v in violations)
    assert any("missing field 'code_version'" in v for v in violations)


def test_duplicate_key_across_shards(dataset_factory, sample_factory):
    root = dataset_factory([[sample_factory(key="same")], [sample_factory(key="same")]], name="dup")
    assert any("key same already in test-000000.tar" in v for v in validate(root).violations)


def test_truncated_tar_and_bad_shard_name(dataset):
    path = first_shard(dataset)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])
    os.rename(os.path.join(dataset, "shards", "test-000001.tar"), os.path.join(dataset, "shards", "Test_1.tar"))
    violations = validate(dataset).violations
    assert any(v.startswith("test-000000.tar: unreadable tar") for v in violations)
    assert any("Test_1.tar: shard name does not match" in v for v in violations)


def test_box_outside_frame(dataset):
    def edit(ms):
        out = []
        for n, d in ms:
            if n == "k2.meta.json":
                meta = json.loads(d)
                meta["subjects"][0]["boxes"]["0"] = [0, 0, 65, 10]
                d = json.dumps(meta).encode()
            out.append((n, d))
        return out

    rewrite_tar(first_shard(dataset), edit)
    assert any("k2: subject 0 box [0, 0, 65, 10] outside frame 0" in v for v in validate(dataset).violations)


def test_pairs_that_break_the_contract(dataset_factory, sample_factory):
    from datagen.labeling import pairs

    s = sample_factory(key="k0")
    s.pairs = pairs.measure(s)
    root = dataset_factory([[s]])
    assert validate(root).ok
    meta = json.loads(shards.encode_sample(s)["meta.json"])
    meta["pairs"][0]["change_score"] = 1.5
    meta["pairs"].append({**meta["pairs"][1], "frames": [0, 0]})
    rewrite_tar(first_shard(root), lambda ms: [(n, json.dumps(meta).encode() if n == "k0.meta.json" else d)
                                               for n, d in ms])
    violations = validate(root).violations
    assert any("change_score 1.5 outside [0, 1]" in v for v in violations)
    assert any("pair 1@[0, 0]: the subject is not masked in two frames" in v for v in violations)
    assert any("k0: n_pairs = 2, shard says 3" in v for v in violations)


def test_an_ignore_box_outside_its_frame(dataset_factory, sample_factory):
    s = sample_factory(key="k0")  # 64×48 frames
    s.frames[0].fields["ignore"] = [[10.0, 10.0, 30.0, 40.0]]
    s.frames[1].fields["ignore"] = [[50.0, 10.0, 70.0, 40.0]]
    violations = validate(dataset_factory([[s]])).violations
    assert violations == ["k0: frame 1 ignore box [50.0, 10.0, 70.0, 40.0] outside the frame (64x48)"]


def test_a_manifest_of_a_newer_minor_version_is_refused(dataset):
    manifest = shards.read_manifest(dataset)
    assert validate(dataset).ok  # no format_minor: a 2.0 dataset
    shards.write_manifest(dataset, {**manifest, "format_minor": shards.FORMAT_MINOR + 1})
    assert any("format_minor" in v for v in validate(dataset).violations)
