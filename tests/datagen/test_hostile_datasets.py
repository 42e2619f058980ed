"""Issue 24 (hostile inputs, round 2), dataset tools: `validate` lists violations of any meta.json, however wrong
its types (it raised), sees corruption through the per-file sha256 of format 2.2, flags all-zero masks and
non-string captions; `view` of a valid empty dataset is an empty gallery (it raised IndexError)."""

import hashlib
import json

import numpy as np

from datagen import shards
from datagen.shards.__main__ import main as shards_main
from datagen.shards.validate import validate
from tests.datagen.test_validate import dataset, first_shard, png, rewrite_tar  # noqa: F401 (fixture)


def edit_meta(root, key, fn):
    """Rewrite a sample's meta.json through ``fn(meta)``; its recorded sha256 stay those of the other files."""
    def edit(members):
        out = []
        for name, data in members:
            if name == f"{key}.meta.json":
                meta = json.loads(data)
                fn(meta)
                data = json.dumps(meta).encode()
            out.append((name, data))
        return out
    rewrite_tar(first_shard(root), edit)


def replace_member(root, member, data, rehash=False):
    """Put ``data`` in place of a member; ``rehash``: also record its sha256 (a valid edit, not corruption)."""
    key, name = member.split(".", 1)
    rewrite_tar(first_shard(root), lambda ms: [(n, data if n == member else d) for n, d in ms])
    if rehash:
        edit_meta(root, key, lambda m: m["sha256"].update({name: hashlib.sha256(data).hexdigest()}))


def test_64_flipped_bytes_inside_a_frame_jpeg_are_caught(dataset):
    shard = first_shard(dataset)
    with open(shard, "rb") as f:
        tar = bytearray(f.read())
    start = tar.index(b"\xff\xda")  # the JPEG's scan data: it still decodes, to other pixels
    tar[start + 200:start + 264] = bytes(b ^ 0x5A for b in tar[start + 200:start + 264])
    with open(shard, "wb") as f:
        f.write(bytes(tar))
    violations = validate(dataset).violations
    assert [v for v in violations if "sha256" in v] == [
        "k0: frame.0.jpg does not match the sha256 meta.json records (corrupted)"]


def test_meta_of_the_wrong_types_is_listed_not_raised(dataset):
    edit_meta(dataset, "k0", lambda m: m.update(subjects=["a woman", "a dog"]))
    edit_meta(dataset, "k1", lambda m: m["subjects"][0]["boxes"].update({"0": [1, 2, 3]}))
    edit_meta(dataset, "k2", lambda m: m["frames"][0].update(caption=42))
    report = validate(dataset)
    assert "k0: meta subjects[0], subjects[1] must be objects" in report.violations
    assert "k1: subject 0 box [1, 2, 3] in frame 0 is not 4 numbers" in report.violations
    assert "k2: frame 0 caption is 42, not a string" in report.violations
    assert shards_main(["validate", dataset]) == 1


def test_meta_that_is_a_list_and_an_all_zero_mask_are_violations(dataset):
    rewrite_tar(first_shard(dataset), lambda ms: [(n, b"[1, 2]" if n == "k0.meta.json" else d) for n, d in ms])
    replace_member(dataset, "k1.mask.0.0.png", png(np.zeros((48, 64), np.uint8)), rehash=True)
    violations = validate(dataset).violations
    assert "k0: meta.json is a JSON list, not an object" in violations
    assert "k1/mask.0.0.png: mask is all zero" in violations
    assert not [v for v in violations if v.startswith("k1") and "sha256" in v]  # the edit recorded its hash


def test_view_of_a_valid_empty_dataset_writes_an_empty_gallery(tmp_path, capsys):
    from tests.shard_factory import write_dataset

    root = write_dataset(str(tmp_path / "empty"), [])
    assert validate(root).ok
    out = tmp_path / "g.html"
    assert shards_main(["view", root, "--out", str(out)]) == 0
    assert "0 samples" in out.read_text()
