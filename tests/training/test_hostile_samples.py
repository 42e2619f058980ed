"""Issue 24 (hostile inputs, round 2), trainer: one bad sample never stops a run. A meta.json that is not JSON, a
mask twice its frame's size, a frame that is not an image and a frame whose bytes differ from the sha256 its
meta.json records (64 flipped bytes still decode) are skipped with a warning naming the sample, and counted."""

from __future__ import annotations

import io
import tarfile

from tests.training.test_loader import FACTORS, data_cfg
from training.loader import DataPosition, SubjectStream, open_sources


def edit_member(root, key, name, fn, rehash):
    """Rewrite one member of the shard holding ``key`` through ``fn(bytes) -> bytes``; ``rehash``: record its new
    sha256 in meta.json too (a sample made wrong by its writer, not corrupted after)."""
    import glob
    import hashlib
    import json

    for path in glob.glob(f"{root}/shards/*.tar"):
        with tarfile.open(path) as tar:
            members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
        if not any(n.startswith(f"{key}.") for n, _ in members):
            continue
        edited = {n: fn(d) for n, d in members if n == f"{key}.{name}"}
        if rehash:
            meta = json.loads(dict(members)[f"{key}.meta.json"])
            meta["sha256"][name] = hashlib.sha256(edited[f"{key}.{name}"]).hexdigest()
            edited[f"{key}.meta.json"] = json.dumps(meta).encode()
        with tarfile.open(path, "w") as tar:
            for n, data in members:
                data = edited.get(n, data)
                info = tarfile.TarInfo(n)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return
    raise AssertionError(f"no shard holds {key}")


def flip(data: bytes) -> bytes:
    start = data.index(b"\xff\xda") + 100  # inside the scan data: the JPEG still decodes
    return data[:start] + bytes(b ^ 0x5A for b in data[start:start + 64]) + data[start + 64:]


def twice_as_large(data: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.resize((im.width * 2, im.height * 2)).save(buf, "PNG")
    return buf.getvalue()


BREAKAGES = {  # key: (file, edit, whether meta.json's sha256 is updated with it)
    "ds-0-0": ("meta.json", lambda data: data[: len(data) // 2], False),
    "ds-0-1": ("mask.0.0.png", twice_as_large, True),
    "ds-1-0": ("frame.1.jpg", lambda data: b"not an image at all", True),
    "ds-1-1": ("frame.0.jpg", flip, False),
}


def test_broken_samples_are_skipped_named_and_counted_and_batches_keep_coming(colour_dataset, caplog):
    root = colour_dataset(2, 3)
    for key, (name, fn, rehash) in BREAKAGES.items():
        edit_member(root, key, name, fn, rehash)
    cfg = data_cfg([root], round_samples=6)
    stream = SubjectStream(open_sources(cfg), cfg, FACTORS, 0, DataPosition(1))
    batches = [b for _, b in zip(range(6), iter(stream))]
    assert len(batches) == 6
    seen = {k for b in batches for k in b["keys"]}
    assert seen == {"ds-0-2", "ds-1-2"}  # only the two whole samples are trained on
    warned = {r.getMessage().split(" ", 1)[0]: r.getMessage() for r in caplog.records
              if "broken sample skipped" in r.getMessage()}
    assert set(warned) == set(BREAKAGES)
    assert "meta.json unusable: JSONDecodeError" in warned["ds-0-0"]
    assert "mask.0.0.png is 192x128, frame 0 is 96x64" in warned["ds-0-1"]
    assert "frame.1.jpg is not an image" in warned["ds-1-0"]
    assert "frame.0.jpg differ from the sha256 in meta.json" in warned["ds-1-1"]
    assert stream.broken_samples[root] >= 4
