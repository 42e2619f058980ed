"""``python -m pipelines objaverse`` on a folder of meshes the project makes (GLB, glTF, OBJ, PLY, a corrupt GLB,
a faceless PLY): a valid dataset, 7 views per object with exact masks and cameras, captions, quarantine reasons."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import trimesh
import yaml

from datagen import shards
from datagen.readers import objaverse
from datagen.render import render
from datagen.samples import objaverse as sample_meshes
from pipelines.cli import main as cli_main
from pipelines.config import load_config

pytest.importorskip("pyrender")

RES = 64


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    import ray

    root = tmp_path_factory.mktemp("objaverse")
    folder = sample_meshes.make(str(root / "inputs"))["folder"]
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(root / "ds"), "ray": {"num_cpus": 2}, "writer": {"units_per_shard": 3},
        "sources": {"objaverse": {"folder": folder, "params": {"render": {"camera": {"resolution": RES}}}}},
    }))
    assert cli_main(["objaverse", "--config", str(config)]) == 0
    ray.shutdown()
    return str(root / "ds"), load_config(str(config)).sources.objaverse, folder


def test_dataset_is_valid(run):
    out, _, _ = run
    done = subprocess.run([sys.executable, "-m", "datagen.shards", "validate", out], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "5 samples" in done.stdout


def test_seven_views_with_exact_masks_cameras_and_captions(run):
    out, cfg, folder = run
    units = {u.ref["sha1"]: u for u in objaverse.list_file_units(objaverse.mesh_files(folder))[0]}
    samples = list(shards.iter_samples(out))
    assert len(samples) == 5 and {s.source for s in samples} == {"objaverse"}
    phrases = set()
    for s in samples:
        assert len(s.frames) == 7 and len(s.subjects) == 1
        unit = units[s.key.removeprefix("obj-")]
        # the same object rendered again here: the shard's masks are these masks, bit for bit
        again = render(unit.ref["path"], cfg.params.render.model_copy(update={"isolate": False}),
                       objaverse.unit_seed(cfg.params.seed, unit.id))
        subject = s.subjects[0]
        phrases.add(subject.phrase)
        centre = np.mean(trimesh.load(unit.ref["path"], force="scene").bounds, axis=0)
        assert subject.id == 0 and sorted(subject.masks) == list(range(7))
        for j, frame in enumerate(s.frames):
            assert np.array_equal(subject.masks[j], again.masks[j])
            assert np.abs(frame.image.astype(int) - again.rgb[j]).mean() < 6  # JPEG q95 of a 64² photo texture
            view = frame.fields["view"]
            assert view["convention"] == "opencv_c2w"
            K, pose = np.array(view["K"]), np.array(view["pose"])
            # the object's centre: its bounding-box centre in the file, through the recorded normalisation
            to_world = np.array(s.provenance["mesh"]["normalization"])
            uvw = K @ np.linalg.inv(pose)[:3] @ to_world @ np.append(centre, 1.0)
            assert np.abs(uvw[:2] / uvw[2] - K[:2, 2]).max() < 2.0
            assert np.allclose(K[:2, 2], RES / 2)
            assert frame.caption == s.frames[0].caption and frame.caption
        assert s.provenance["sha1"] == unit.ref["sha1"] and s.models["captioner"] == "metadata"
        assert s.models["renderer"].startswith("pyrender-")
    assert {"crate", "ball", "vase", "ring", "capsule"} == phrases
    vase = next(s for s in samples if s.subjects[0].phrase == "vase")
    assert vase.frames[0].caption == "a teal vase, pottery, ceramic"
    assert vase.provenance["license"] == "cc0"


def test_corrupt_and_faceless_files_are_quarantined_with_reasons(run):
    out, _, folder = run
    q = {r["unit_id"]: r for r in shards.read_table(out, shards.QUARANTINE_FILE).to_pylist()}
    corrupt = "file:" + objaverse.file_sha1(os.path.join(folder, "corrupt.glb"))
    faceless = "file:" + objaverse.file_sha1(os.path.join(folder, "points_only.ply"))
    assert set(q) == {corrupt, faceless}
    assert (q[corrupt]["kind"], q[corrupt]["stage"], q[corrupt]["reason"]) == ("failed", "render", "load_failed")
    assert (q[faceless]["kind"], q[faceless]["reason"]) == ("filtered", "no_geometry")
    counts = shards.read_manifest(out)["sources"]["objaverse"]["counts"]
    assert counts["failed"] == {"render/load_failed": 1} and counts["filtered"] == {"render/no_geometry": 1}
    index = shards.read_table(out, shards.INDEX_FILE).to_pylist()
    assert all(r["n_frames"] == 7 and r["width"] == RES and r["subject_area_min"] > 0.005 for r in index)
    assert json.loads(json.dumps(shards.read_manifest(out)["sources"]["objaverse"]["synthetic_models"])) is False
