"""MS-Bench read as MS-Diffusion publishes it: ``msbench/<category>/<subject>`` images and the prompt module
``msdiffusion/dataset/prompts/msbench.py`` (parsed, never run). At the published category sizes the expansion
gives the paper's 1148 combinations and 4488 prompts; transparent PNGs give their subject masks."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.evaluate import msbench
from training.evaluate.sets import SpecError, load

# The published folder's subjects per category (MS-Diffusion's msbench/, 40 images).
PUBLISHED = {"living": 10, "object": 10, "scene": 4, "upwearing": 5, "midwearing": 6, "downwearing": 3,
             "wholewearing": 2}
TWO = ["living_living", "living_object", "object_object", "living_upwearing", "living_midwearing",
       "living_wholewearing", "midwearing_downwearing", "living_scene", "object_scene"]
THREE = ["living_living_living", "object_object_object", "living_object_scene", "upwearing_midwearing_downwearing"]


def prompt_module(names: dict[str, str]) -> str:
    """A prompt module with the published structure and counts: six templates per type, one for those with a
    scene; a list referred to by name, as the published module does. Template wording is this test's own."""
    six = lambda k: [", ".join("{%d}" % i for i in range(k)) + f" in place {p}" for p in range(6)]
    scene = lambda k: [" and ".join("{%d}" % i for i in range(k - 1)) + " before {%d}" % (k - 1)]
    prompts = {kind: ("scene_%d" if "scene" in kind else "six_%d") % len(kind.split("_")) for kind in TWO + THREE}
    boxes = {kind: [[0.0, 0.25, 0.5, 0.75]] * len(kind.split("_")) for kind in TWO + THREE}
    return "\n".join([
        f"data_class_dict = {names!r}",
        f"two_subject_combinations = {TWO!r}",
        f"three_subject_combinations = {THREE!r}",
        f"subject_combination_boxes = {boxes!r}",
        f"six_2 = {six(2)!r}", f"six_3 = {six(3)!r}", f"scene_2 = {scene(2)!r}", f"scene_3 = {scene(3)!r}",
        "subject_combination_prompts = {" + ", ".join(f"{k!r}: {v}" for k, v in prompts.items()) + "}",
    ]) + "\n"


def clone(tmp_path: Path, sizes: dict[str, int], side: int = 24) -> Path:
    """A clone of MS-Diffusion in miniature: msbench/<category>/<subject>.jpg (one transparent .png) and the
    prompt module where the repository keeps it."""
    root = tmp_path / "MS-Diffusion"
    names, rng = {}, np.random.default_rng(0)
    for category, n in sizes.items():
        (root / "msbench" / category).mkdir(parents=True)
        for k in range(n):
            name = f"{category}{k}"
            names[name] = f"{category} thing"
            pixels = rng.integers(0, 255, (side, side, 3), dtype=np.uint8)
            if category == "wholewearing" and k == 0:
                alpha = np.zeros((side, side), np.uint8)
                alpha[4:20, 6:18] = 255
                Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(root / "msbench" / category / f"{name}.png")
            else:
                Image.fromarray(pixels).save(root / "msbench" / category / f"{name}.jpg")
    module = root / msbench.PROMPTS
    module.parent.mkdir(parents=True)
    module.write_text(prompt_module(names))
    return root


def test_the_published_folder_expands_to_the_papers_1148_combinations_and_4488_prompts(tmp_path):
    root = clone(tmp_path, PUBLISHED, side=8)
    samples = load(str(root), None, None, [0], 64)  # the clone's root; its msbench/ folder works alike
    assert len(samples) == 4488 and len({s.cluster for s in samples}) == 1148
    assert len(load(str(root / "msbench"), None, None, [0, 1], 64)) == 2 * 4488
    kinds = {s.meta["combination"] for s in samples}
    assert kinds == set(TWO + THREE)
    triples = [s for s in samples if s.meta["combination"] == "living_living_living"]
    assert len({s.cluster for s in triples}) == 120  # 3-subsets of 10, no subject twice, no reordering
    assert all(len(set(s.cluster.split("+"))) == 3 for s in triples)


def test_prompts_phrases_masks_and_ids(tmp_path):
    root = clone(tmp_path, {"living": 2, "object": 1, "scene": 1, "upwearing": 1, "midwearing": 1,
                            "downwearing": 1, "wholewearing": 1})
    by = {s.id: s for s in load(str(root), None, None, [0], 64)}
    s = by["msbench-living_object_scene-living0+object0+scene0-0-s0"]
    assert s.prompt == "living thing and object thing before scene thing" and s.cluster == "living0+object0+scene0"
    assert [x.phrase for x in s.subjects] == ["living thing", "object thing", "scene thing"]
    assert s.meta["boxes"] == [[0.0, 0.25, 0.5, 0.75]] * 3
    dress = by["msbench-living_wholewearing-living1+wholewearing0-5-s0"].subjects[1]
    assert dress.mask.sum() == 16 * 12 and dress.image[0, 0].tolist() == [255, 255, 255]  # alpha → mask, on white
    assert by["msbench-living_living-living0+living1-0-s0"].subjects[0].mask is None  # a JPEG: the whole image


def test_the_prompt_module_is_read_not_run(tmp_path):
    root = clone(tmp_path, {"living": 2})
    module = root / msbench.PROMPTS
    module.write_text(module.read_text() + "import os\nos.system('touch ran')\nextra = open('x').read()\n")
    with pytest.raises(SpecError, match=r"msbench.py:\d+: extra is not a literal"):
        load(str(root), None, None, [0], 64)
    assert not Path("ran").exists()
    module.write_text("data_class_dict = {}\n")
    with pytest.raises(SpecError, match="defines no two_subject_combinations"):
        load(str(root), None, None, [0], 64)


def test_a_subject_missing_from_the_class_words_or_a_category_without_subjects_is_named(tmp_path):
    root = clone(tmp_path, {"living": 2, "object": 2})
    with pytest.raises(SpecError, match="combination living_upwearing: no subjects in upwearing/"):
        load(str(root), None, None, [0], 64)
    Image.new("RGB", (8, 8)).save(root / "msbench" / "living" / "stranger.jpg")
    with pytest.raises(SpecError, match="subject 'stranger' not in data_class_dict"):
        load(str(root), None, None, [0], 64)
