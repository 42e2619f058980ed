"""Source ``coco`` through the CLI on local Ray, on the project's sample inputs: router samples with masks equal
to the annotation polygons, every other image quarantined with its reason, and a rerun that writes nothing."""

import numpy as np
import pytest

from datagen import shards
from datagen.readers import coco
from datagen.samples import coco as coco_inputs
from datagen.shards.validate import validate
from pipelines.cli import main as cli_main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    inputs = coco_inputs.make(str(root / "inputs"))
    cfg = root / "cfg.yaml"
    cfg.write_text(f"out: {root / 'ds'}\nmodels: tiny\nray: {{num_cpus: 2}}\nwriter: {{units_per_shard: 2}}\n"
                   f"sources:\n  coco:\n    annotations: {inputs['annotations']}\n    images: {inputs['images']}\n")
    assert cli_main(["coco", "--config", str(cfg)]) == 0
    return str(root / "ds"), inputs, str(cfg)


def test_router_samples_have_exact_masks(run):
    out, inputs, _ = run
    assert validate(out).ok
    units = {u.ref["file_name"]: u for u in coco.list_units(inputs["annotations"], inputs["images"],
                                                            coco.CocoParams())}
    samples = {s.provenance["file_name"]: s for s in shards.iter_samples(out)}
    # CASES of datagen/samples/coco.py: images 0–2 hold 2, 3 and 4 people
    assert sorted(samples) == ["000000.jpg", "000001.jpg", "000002.jpg"]
    for name, s in samples.items():
        anns = units[name].ref["annotations"]
        assert s.source == "router" and len(s.subjects) == len(anns) == int(name[5]) + 2
        h, w = s.frames[0].height, s.frames[0].width
        for sub in s.subjects:
            [ann] = [a for a in anns if a["id"] == sub.fields["annotation_id"]]
            assert np.array_equal(sub.masks[0], coco.segmentation_mask(ann["segmentation"], h, w))
        assert s.frames[0].caption == f"a photo of {('two', 'three', 'four')[int(name[5])]} people"


def test_every_other_image_is_quarantined_with_its_reason(run):
    out, _, _ = run
    q = {r["unit_id"].rsplit(":", 1)[1]: (r["kind"], r["stage"], r["reason"])
         for r in shards.read_table(out, shards.QUARANTINE_FILE).to_pylist()}
    assert q == {
        "4": ("filtered", "load", "too_few_subjects"),  # one person
        "5": ("filtered", "load", "too_few_subjects"),  # five thin people, all fail the box aspect rule
        "6": ("filtered", "load", "crowd"),
        "7": ("failed", "load", "corrupt_image"),
    }
    counts = shards.read_manifest(out)["sources"]["coco"]["counts"]
    assert counts["dropped"] == {"coco/box_aspect": 5}
    assert counts["units_kept"] == 3 and counts["samples"] == 3


def test_rerun_writes_nothing(run, capsys):
    out, _, cfg = run
    before = shards.list_shards(out)
    assert cli_main(["coco", "--config", cfg]) == 0
    assert "7 units listed, 7 already done, 0 to process" in capsys.readouterr().out
    assert shards.list_shards(out) == before


@pytest.mark.slow
def test_hostile_inputs_are_quarantined_by_name_and_the_dataset_validates(tmp_path):
    import json
    import shutil

    from tests.bombs import png_bomb

    made = coco_inputs.make(str(tmp_path / "made"))
    images = tmp_path / "in[1]::x" / "images"  # brackets and a URL-chain marker in the inputs' path
    shutil.copytree(made["images"], images)
    doc = json.loads(open(made["annotations"]).read())
    first = doc["images"][0]
    people = [a for a in doc["annotations"] if a["image_id"] == first["id"]]
    (images / "bomb.png").write_bytes(png_bomb())  # declared 768x576 in the file, 16500² in its header
    doc["images"] += [{**first, "id": 90, "file_name": "bomb.png"}, {**first, "id": 91}, dict(first)]
    doc["annotations"] += [{**a, "id": 9000 + 10 * i + k, "image_id": i}
                           for i in (90, 91) for k, a in enumerate(people)] + [{"id": 9999, "bbox": [0, 0, 1, 1]}]
    annotations = tmp_path / "in[1]::x" / "instances.json"
    annotations.write_text(json.dumps(doc))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"out: {tmp_path / 'ds'}\nmodels: tiny\nray: {{num_cpus: 2}}\nwriter: {{units_per_shard: 2}}\n"
                   f"sources:\n  coco:\n    annotations: '{annotations}'\n    images: '{images}'\n")
    assert cli_main(["coco", "--config", str(cfg)]) == 0
    out = str(tmp_path / "ds")
    assert validate(out).ok
    q = {r["unit_id"].rsplit(":", 1)[1]: (r["kind"], r["stage"], r["reason"])
         for r in shards.read_table(out, shards.QUARANTINE_FILE).to_pylist()}
    assert {k: q[k] for k in ("90", "91", "annotations[" + str(len(doc["annotations"]) - 1) + "]")} == {
        "90": ("filtered", "load", "too_many_pixels"),
        "91": ("filtered", "list", "duplicate_file_name"),
        "annotations[" + str(len(doc["annotations"]) - 1) + "]": ("failed", "list", "bad_annotation"),
    }
    assert sorted(s.provenance["file_name"] for s in shards.iter_samples(out)) == [
        "000000.jpg", "000001.jpg", "000002.jpg"]  # each once; image 1 listed twice is one unit


def test_run_ends_with_the_data_quality_report(run):
    out, _, _ = run
    page = open(f"{out}/report.html", encoding="utf-8").read()  # written (and its path printed) by the CLI
    assert f"{out}: 3 samples" in page and "<h2>Funnel</h2><div" in page
