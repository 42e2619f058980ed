"""``python -m anystory.generate --size tiny``: images, a routing grid and a segmentation mask per subject."""

import numpy as np
import PIL.Image
import pytest
import torch

from anystory import generate
from anystory.pipeline import AnyStoryPipeline
from anystory.visualize import labelled_routing_grid
from tests.anystory.conftest import perturb_adapters


def _subject_files(tmp_path, i: int) -> str:
    rng = np.random.default_rng(i)
    image, mask = tmp_path / f"s{i}.png", tmp_path / f"s{i}_mask.png"
    PIL.Image.fromarray(rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)).save(image)
    m = np.zeros((60, 40), np.uint8)
    m[10:50, 5 + i: 35] = 255
    PIL.Image.fromarray(m).save(mask)
    return f"{image}:{mask}" if i == 0 else str(image)  # the second subject without a mask: the whole image


def test_tiny_smoke_run_writes_images_grids_and_masks(tmp_path, capsys):
    torch.manual_seed(0)
    adapters = tmp_path / "adapters"
    pipe = AnyStoryPipeline.build("tiny")
    perturb_adapters(pipe.model, seed=3)  # stands in for a trained tiny run
    pipe.model.save_adapters(adapters)
    out = tmp_path / "out"
    args = ["--size", "tiny", "--adapters", str(adapters), "--prompt", "two friends", "--seed", "1",
            "--steps", "3", "--subject", _subject_files(tmp_path, 0), "--subject", _subject_files(tmp_path, 1),
            "--out", str(out), "--grid-steps", "2"]
    assert generate.main(args) == 0
    image = np.asarray(PIL.Image.open(out / "image_0.png"))
    assert image.shape == (64, 64, 3)
    masks = [np.asarray(PIL.Image.open(out / f"mask_subject{i}.png")) for i in range(2)]
    for m in masks:
        assert m.shape == (64, 64) and set(np.unique(m)) <= {0, 255}
    assert not (masks[0].astype(bool) & masks[1].astype(bool)).any()  # argmax: masks never overlap
    # one row of panels per grid (the subject alone), one column per shown step (first and last of 3), labelled
    fake = [[torch.zeros(1, 2, 8, 8)] * 11] * 3
    for i in range(2):
        expected = labelled_routing_grid(fake, [0, 2], [f"subject {i}"]).shape
        assert np.asarray(PIL.Image.open(out / f"routing_subject{i}.png")).shape == expected
    assert (out / "overlay.png").is_file()
    assert str(out / "image_0.png") in capsys.readouterr().out
    # the same seed gives the same image; another seed another one
    generate.main(args[:-4] + ["--out", str(tmp_path / "again"), "--grid-steps", "2"])
    assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "again" / "image_0.png")), image)


def test_bad_subject_and_missing_weights_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file"):
        generate.main(["--size", "tiny", "--prompt", "x", "--subject", str(tmp_path / "none.png"),
                       "--out", str(tmp_path)])
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    with pytest.raises(SystemExit, match="--pretrained"):
        generate.main(["--prompt", "x", "--subject", str(tmp_path / "a.png"), "--out", str(tmp_path)])


def test_shown_steps_include_first_and_last():
    assert generate.shown_steps(25, 5) == [0, 6, 12, 18, 24]
    assert generate.shown_steps(2, 5) == [0, 1]


def test_adapters_missing_a_part_exit_2_naming_it(tmp_path, capsys):
    torch.manual_seed(0)
    AnyStoryPipeline.build("tiny").model.save_adapters(tmp_path / "ad", parts=("router",))  # stage-2 step-N
    code = generate.main(["--size", "tiny", "--adapters", str(tmp_path / "ad"), "--prompt", "x",
                          "--subject", _subject_files(tmp_path, 1), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "subject_encoder part" in err[0] and not (tmp_path / "out").exists()
