"""``python -m datagen.shards export-hf``: parquet files the ``datasets`` library loads (normal and streaming) with
images decoded, from a local or any fsspec dataset; resumable; a bounded row group of samples in memory."""

import json
import os
import tracemalloc
import uuid

import fsspec
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen import shards
from datagen.shards import hf
from datagen.shards.__main__ import main as cli
from tests.shard_factory import make_sample

COCO_SIZE = (640, 480)  # COCO's commonest image size


def coco_like_samples(prefix, n, seed=0):
    """Varied samples at COCO's size: 1-4 frames, 1-3 subjects, one subject missing from a frame, licences
    from provenance (an Objaverse-style slug, a Hub id, none)."""
    out = []
    for i in range(n):
        s = make_sample(f"{prefix}-{i}", n_frames=1 + i % 4, n_subjects=1 + i % 3, size=COCO_SIZE, seed=seed + i)
        if len(s.frames) > 1 and len(s.subjects) > 1:
            s.subjects[1].masks.pop(len(s.frames) - 1)
        s.provenance = {"uid": s.key, **([{"license": "by"}, {"license": "cc0-1.0"}, {}][i % 3])}
        out.append(s)
    return out


def write_sources(root, by_source):
    """A valid dataset with shards of several pipeline sources: ``{source: [[samples of one shard], ...]}``."""
    index = []
    for source, groups in by_source.items():
        numbers = iter(range(10**6))
        for group in groups:
            with shards.ShardWriter(shards.join(root, shards.SHARDS_DIR),
                                    lambda: shards.shard_name(source, next(numbers))) as w:
                index += [shards.index_row(s, w.write(shards.encode_sample(s))) for s in group]
    shards.write_index(root, index)
    shards.write_quarantine(root, [])
    shards.write_manifest(root, {
        "format_version": shards.FORMAT_VERSION, "config": {}, "config_hash": "0", "code_version": "test",
        "models": {}, "synthetic_models": False, "counts": {"samples": len(index)}, "start_time": "",
        "end_time": "", "sources": {s: {"kind": "router" if s == "coco" else "video",
                                        "counts": {"samples": sum(map(len, g))}} for s, g in by_source.items()},
    })
    return root


def two_source_dataset(root):
    return write_sources(root, {"coco": [coco_like_samples("c", 4), coco_like_samples("d", 3, 10)],
                                "video": [coco_like_samples("v", 5, 20)]})


def load(out, cache, **kw):
    import datasets

    return datasets.load_dataset("parquet", data_files=f"{out}/data/*.parquet", split="train",
                                 cache_dir=str(cache), **kw)


def expected_rows(root):
    """What each sample should export to, from the samples as written (not through the exporter's reader)."""
    rows = {}
    for r in shards.read_table(root, shards.INDEX_FILE).to_pylist():
        rows[r["key"]] = r
    return rows


def check_row(row, sample, index_row):
    enc = shards.encode_sample(sample)
    assert {k: row[k] for k in index_row} == index_row
    assert json.loads(row["meta"]) == json.loads(enc["meta.json"])
    assert len(row["frames"]) == len(sample.frames)
    for j, im in enumerate(row["frames"]):
        assert isinstance(im, Image.Image) and im.size == COCO_SIZE
        np.testing.assert_array_equal(np.asarray(im), shards.decode_image(enc[f"frame.{j}.jpg"]))  # bytes as written
    want = {(j, s.id): m for s in sample.subjects for j, m in s.masks.items()}
    got = {(m["frame"], m["subject"]): m["mask"] for m in row["masks"]}
    assert got.keys() == want.keys()
    for k, im in got.items():
        assert isinstance(im, Image.Image) and im.mode == "L"
        np.testing.assert_array_equal(np.asarray(im) > 127, want[k])


@pytest.mark.parametrize("where", ["local", "memory"])
def test_export_loads_in_datasets_with_images_decoded_normal_and_streaming(tmp_path, where):
    root = str(tmp_path / "ds") if where == "local" else f"memory://hf-export-{uuid.uuid4().hex}/ds"
    samples = {s.key: s for s in coco_like_samples("c", 4) + coco_like_samples("d", 3, 10)
               + coco_like_samples("v", 5, 20)}
    two_source_dataset(root)
    out = tmp_path / "export"
    assert cli(["export-hf", root, str(out)]) == 0
    assert sorted(os.listdir(out / "data")) == ["coco-000000.parquet", "coco-000001.parquet", "video-000000.parquet"]
    index = expected_rows(root)

    ds = load(out, tmp_path / "cache")
    assert ds.num_rows == len(samples) == 12
    assert ds.features["frames"].feature.decode and ds.features["masks"].feature["mask"].decode
    for row in ds:
        check_row(row, samples[row["key"]], index[row["key"]])

    streamed = list(load(out, tmp_path / "cache-stream", streaming=True))
    assert sorted(r["key"] for r in streamed) == sorted(samples)
    for row in streamed:
        check_row(row, samples[row["key"]], index[row["key"]])


def file_state(out):
    data = out / "data"
    return {n: (os.stat(data / n).st_ino, os.stat(data / n).st_mtime_ns) for n in sorted(os.listdir(data))
            if not n.startswith(".")}


def test_an_interrupted_export_continues_where_it_stopped(tmp_path, monkeypatch):
    root = two_source_dataset(str(tmp_path / "ds"))
    whole = tmp_path / "whole"
    assert cli(["export-hf", root, str(whole)]) == 0

    real_iter_tar, opened = hf.iter_tar, []

    def killed_in_second_shard(url):
        opened.append(url)
        for n, raw in enumerate(real_iter_tar(url)):
            if len(opened) == 2 and n == 1:
                raise KeyboardInterrupt("killed")  # mid-file: its rows so far are in a temporary file
            yield raw

    monkeypatch.setattr(hf, "iter_tar", killed_in_second_shard)
    out = tmp_path / "export"
    with pytest.raises(KeyboardInterrupt):
        cli(["export-hf", root, str(out)])
    first = file_state(out)
    assert list(first) == ["coco-000000.parquet"]
    assert [n for n in os.listdir(out / "data") if shards.TMP_NAME.search(n)]  # the half-written second file

    monkeypatch.setattr(hf, "iter_tar", real_iter_tar)
    assert cli(["export-hf", root, str(out)]) == 0
    again = file_state(out)
    assert again["coco-000000.parquet"] == first["coco-000000.parquet"]  # finished before the kill: not redone
    assert sorted(os.listdir(out / "data")) == sorted(os.listdir(whole / "data"))  # no temporary left
    for name in again:
        assert pq.read_table(out / "data" / name).equals(pq.read_table(whole / "data" / name))

    before = file_state(out)
    assert cli(["export-hf", root, str(out)]) == 0
    assert file_state(out) == before  # a finished export is not rewritten


def test_a_changed_shard_is_exported_again_and_a_dropped_one_removed(tmp_path):
    root = two_source_dataset(str(tmp_path / "ds"))
    out = tmp_path / "export"
    assert cli(["export-hf", root, str(out)]) == 0
    before = file_state(out)
    # a pipeline run deleted coco-000001 and video-000000 and redid only the first: new content, new size
    os.remove(os.path.join(root, "shards", "video-000000.tar"))
    os.remove(os.path.join(root, "shards", "coco-000001.tar"))
    redone = coco_like_samples("d", 2, 40)
    with shards.ShardWriter(shards.join(root, shards.SHARDS_DIR), lambda: "coco-000001.tar") as w:
        rows = [shards.index_row(s, w.write(shards.encode_sample(s))) for s in redone]
    index = [r for r in shards.read_table(root, shards.INDEX_FILE).to_pylist() if r["shard"] == "coco-000000.tar"]
    shards.write_index(root, index + rows)

    assert cli(["export-hf", root, str(out)]) == 0
    after = file_state(out)
    assert sorted(after) == ["coco-000000.parquet", "coco-000001.parquet"]
    assert after["coco-000000.parquet"] == before["coco-000000.parquet"]
    assert after["coco-000001.parquet"] != before["coco-000001.parquet"]
    assert pq.read_table(out / "data" / "coco-000001.parquet")["key"].to_pylist() == ["d-0", "d-1"]


def test_the_export_holds_one_row_group_of_samples_not_a_shard(tmp_path):
    """Noise frames (JPEG cannot shrink them) make a shard of ~12 MB; with 1 MB row groups the export's Python
    allocations stay far below the shard (a mutant writing the shard's rows at once holds all of it)."""
    rng = np.random.default_rng(0)
    samples = coco_like_samples("n", 16)
    for s in samples:
        for fr in s.frames:
            fr.image = rng.integers(0, 255, fr.image.shape, dtype=np.uint8)
    root = write_sources(str(tmp_path / "ds"), {"coco": [samples]})
    shard_bytes = os.path.getsize(os.path.join(root, "shards", "coco-000000.tar"))
    assert shard_bytes > 10e6
    tracemalloc.start()
    try:
        files = hf.export(root, str(tmp_path / "export"), row_group_bytes=1_000_000, log=lambda _: None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert files["coco-000000.parquet"].rows == 16
    assert peak < shard_bytes / 3, (peak, shard_bytes)
    meta = pq.read_metadata(tmp_path / "export" / "data" / "coco-000000.parquet")
    assert meta.num_row_groups >= 8  # each holds the samples of ~1 MB


def test_expected_failures_exit_2_with_one_line(tmp_path, capsys):
    assert cli(["export-hf", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "nothing" in capsys.readouterr().out.strip().splitlines()[-1]
    root = two_source_dataset(str(tmp_path / "ds"))
    os.remove(os.path.join(root, "shards", "video-000000.tar"))
    assert cli(["export-hf", root, str(tmp_path / "out")]) == 2
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "video-000000.tar" in last and "FormatError" in last
    fs = fsspec.filesystem("file")
    assert not fs.exists(str(tmp_path / "out" / "README.md"))


@pytest.mark.slow
def test_export_killed_with_sigkill_continues_on_rerun(tmp_path):
    """The CLI in a child process, killed -9 once its first file is finished; the rerun keeps that file and ends
    with the files of an export that was never killed."""
    import signal
    import subprocess
    import sys
    import time

    rng = np.random.default_rng(1)
    groups = []
    for k in range(6):  # noise frames: ~10 MB shards, about a second each to export
        samples = coco_like_samples(f"k{k}", 8, 100 * k)
        for s in samples:
            for fr in s.frames:
                fr.image = rng.integers(0, 255, fr.image.shape, dtype=np.uint8)
        groups.append(samples)
    root = write_sources(str(tmp_path / "ds"), {"coco": groups})
    whole = tmp_path / "whole"
    assert cli(["export-hf", root, str(whole)]) == 0

    out = tmp_path / "export"
    cmd = [sys.executable, "-m", "datagen.shards", "export-hf", root, str(out), "--row-group-bytes", "1000000"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (out / "data" / "coco-000000.parquet").exists():
        assert child.poll() is None and time.time() < deadline, "the export ended before it could be killed"
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    first = file_state(out)
    assert 1 <= len(first) < 6, first  # killed midway

    assert subprocess.run(cmd, capture_output=True, timeout=600).returncode == 0
    again = file_state(out)
    assert all(again[n] == first[n] for n in first)  # finished before the kill: kept as they were
    assert sorted(os.listdir(out / "data")) == sorted(os.listdir(whole / "data"))  # no temporary left
    for name in again:
        assert pq.read_table(out / "data" / name).equals(pq.read_table(whole / "data" / name))
