"""The training path as the trainer runs it: the real loader on shards written here, ``trainer.build`` and the
trainer's step (``step_losses``), checked against what AnyStory §3.4 says.

- slots: a subject's reference in slot k, its routing mask k and its reference frame correspond (told apart by
  colour: subject i in frame j has its own colour);
- the loss: diffusion + λ·Eq. 4 with λ once and 1/N over the sample's valid subjects; stage 1 has no routing term;
- conditioning: the condition drop reaches the model on the samples the loader drew it for, and only there; the
  ReferenceNet runs at timestep 0; CLIP features are the penultimate layer's;
- stages: stage 2 starts from every stage-1 part; adapters missing a part are refused, naming it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datagen import shards
from tests.shard_factory import write_dataset
from training import train as train_cli
from training.augment import normalize
from training.config import load_config
from training.loader import DataPosition, make_loader
from training.trainer import STAGE_PARTS, build, prepare_for_stage, step_losses

CONFIGS = Path(__file__).parents[2] / "configs" / "train"
SIDE = 64
BACKGROUND = (0, 0, 0)
LEVELS = (255, 175, 95)  # frame j's brightness


def colour(i: int, j: int) -> tuple[int, int, int]:
    """Subject i (its hue: red, green, blue) in frame j (its brightness)."""
    c = [0, 0, 0]
    c[i] = LEVELS[j]
    return tuple(c)


PALETTE = {(i, j): colour(i, j) for i in range(3) for j in range(3)}


def box(i: int, j: int) -> tuple[int, int, int, int]:
    """Subject i's square in frame j, (y0, x0, y1, x1): side by side, moving a little per frame."""
    y0, x0 = 8 + 3 * j, 4 + 20 * i + 2 * j
    return y0, x0, y0 + 18, x0 + 16


def id_sample(key: str, frames_of: dict[int, list[int]], caption: str = "things") -> shards.Sample:
    frames, masks = [], {i: {} for i in frames_of}
    for j in range(3):
        img = np.zeros((SIDE, SIDE, 3), np.uint8)
        img[:] = BACKGROUND
        for i, js in frames_of.items():
            if j in js:
                y0, x0, y1, x1 = box(i, j)
                img[y0:y1, x0:x1] = colour(i, j)
                m = np.zeros((SIDE, SIDE), bool)
                m[y0:y1, x0:x1] = True
                masks[i][j] = m
        frames.append(shards.Frame(img, caption))
    subjects = [shards.Subject(i, f"thing {i}", masks[i]) for i in frames_of]
    return shards.Sample(key, "video", frames, subjects, {"uid": key}, {"captioner": "test"})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Subjects 0 and 1 in every frame, subject 2 in frame 1 only (its reference is the target); every third
    sample holds subject 0 alone, so samples have 3, 2 or 1 valid subjects out of N_max = 4 slots."""
    kinds = [{0: [0, 1, 2], 1: [0, 1, 2], 2: [1]}, {0: [0, 1, 2], 1: [0, 2]}, {0: [0, 1, 2]}]
    samples = [id_sample(f"id-{k}", kinds[k % 3]) for k in range(12)]
    return write_dataset(str(tmp_path_factory.mktemp("ids") / "ds"), [samples[:6], samples[6:]])


def config(stage: int, dataset: str, out, **extra):
    items = {"data.sources": f"[{{path: {dataset}}}]", "train.output_dir": out, "train.tracker": "null",
             "data.batch_size": 4, "data.round_samples": 12, "data.shuffle_buffer": 12, **extra}
    return load_config(f"{CONFIGS}/stage{stage}_tiny.yaml", [f"{k}={v}" for k, v in items.items()])


def batches(cfg, factors, n: int) -> list[dict]:
    stream = iter(make_loader(cfg.data, factors, 0, DataPosition(1)))
    out = []
    for _ in range(n):
        b = next(stream)
        b.pop("position")
        out.append(b)
    return out


def nearest_id(pixels: np.ndarray) -> tuple[int, int]:
    """The (subject, frame) whose colour is nearest the median of ``pixels`` (K, 3)."""
    med = np.median(pixels.reshape(-1, 3), 0)
    return min(PALETTE, key=lambda ij: np.abs(np.array(PALETTE[ij]) - med).sum())


@pytest.fixture(scope="module")
def stage1(dataset, tmp_path_factory):
    cfg = config(1, dataset, tmp_path_factory.mktemp("s1"), **{"data.augment.drop_rate": 0})
    model, frozen = build(cfg, torch.device("cpu"))
    prepare_for_stage(model, 1, torch.float32)
    return cfg, model, frozen


# -- the loader: slot k ------------------------------------------------------------------------------------------


def test_slot_k_holds_one_subject_reference_mask_and_a_reference_frame_other_than_the_target(dataset, tmp_path):
    cfg = config(1, dataset, tmp_path, **{"data.augment.rotation": 0})
    seen = set()
    for batch in batches(cfg, (1, 2), 6):
        for b in range(len(batch["keys"])):
            target = batch["pixel_values"][b].permute(1, 2, 0).numpy()  # (64, 64, 3)
            lit = target.max(-1) > 60  # subject pixels (the background is black)
            target_frame = {nearest_id(target[lit & (target.argmax(-1) == i)])[1]
                            for i in range(3) if (lit & (target.argmax(-1) == i)).sum() > 20}
            assert len(target_frame) == 1
            (target_frame,) = target_frame
            for k, valid in enumerate(batch["subject_valid"][b].tolist()):
                if not valid:
                    assert batch["routing_masks"][1][b, k].sum() == 0 and batch["clip_pixel_values"][b, k].sum() == 0
                    continue
                # routing mask k: the target's pixels under it are one subject's, in the target frame
                cells = batch["routing_masks"][1][b, k].bool()  # 8×8 grid of the 64² target
                under = target[cells.repeat_interleave(8, 0).repeat_interleave(8, 1).numpy()]
                mask_subject, frame = nearest_id(under)
                assert frame == target_frame
                # the CLIP and ReferenceNet references of slot k: the same subject, from its reference frame
                for key in ("clip_pixel_values", "ref_pixel_values"):
                    ref = batch[key][b, k].permute(1, 2, 0).numpy().reshape(-1, 3)
                    ref_subject, ref_frame = nearest_id(ref[ref.min(-1) < 200])  # not the white fill
                    assert ref_subject == mask_subject, f"slot {k}: {key} shows subject {ref_subject}"
                    alone = mask_subject == 2  # the only subject seen in one frame
                    assert (ref_frame == target_frame) == alone, f"subject {mask_subject}: reference frame"
                seen.add((mask_subject, alone))
    assert {(0, False), (1, False), (2, True)} <= seen


# -- the loss of the trainer's step --------------------------------------------------------------------------------


def _eq4_by_hand(maps, gt: dict, valid: torch.Tensor) -> torch.Tensor:
    """(1/N_valid) Σ_i mean_{h,w} (M_i^l − M_i^gt)² per sample, averaged over layers, then over samples with
    subjects: written out sample by sample."""
    per_sample = []
    for b in range(valid.shape[0]):
        idx = valid[b].nonzero().squeeze(1).tolist()
        if not idx:
            continue
        layers = []
        for m in maps:
            g = next(g for g in gt.values() if g.shape[-2:] == m.shape[-2:])
            layers.append(sum(((m[b, i] - g[b, i]) ** 2).mean() for i in idx) / len(idx))
        per_sample.append(sum(layers) / len(layers))
    return sum(per_sample) / len(per_sample)


def test_stage2_step_loss_is_diffusion_plus_lambda_times_eq4_over_valid_subjects(dataset, stage1, tmp_path):
    _, model1, _ = stage1
    model1.save_adapters(tmp_path / "s1", STAGE_PARTS[1])
    cfg = config(2, dataset, tmp_path / "s2", **{"model.stage1_adapters": tmp_path / "s1"})
    model, frozen = build(cfg, torch.device("cpu"))
    prepare_for_stage(model, 2, torch.float32)
    model.train()
    batch = normalize(batches(cfg, model.routing_factors, 1)[0])
    counts = batch["subject_valid"].sum(1).tolist()
    assert len(set(counts)) > 1 and max(counts) < batch["subject_valid"].shape[1]  # N differs; padded slots
    runs = {}
    for weight in (0.1, 0.0):
        torch.manual_seed(0)  # the same noise, timesteps and Gumbel samples
        with torch.no_grad():
            runs[weight] = step_losses(model, frozen, batch, 2, weight)
    (terms, out), (plain, _) = runs[0.1], runs[0.0]
    by_hand = _eq4_by_hand([m.double() for m in out.routing_maps], batch["routing_masks"], batch["subject_valid"])
    assert by_hand > 1e-3
    torch.testing.assert_close(terms["routing"].double(), 0.1 * by_hand, rtol=1e-5, atol=0)
    torch.testing.assert_close(terms["diffusion"], plain["diffusion"], rtol=0, atol=0)
    torch.testing.assert_close(terms["loss"], terms["diffusion"] + terms["routing"], rtol=0, atol=0)
    torch.testing.assert_close(terms["loss"] - plain["loss"], terms["routing"], rtol=1e-4, atol=1e-7)


def test_stage1_step_loss_is_the_diffusion_loss_alone(stage1, dataset):
    cfg, model, frozen = stage1
    batch = normalize(batches(cfg, model.routing_factors, 1)[0])
    model.train()
    losses = []
    for weight in (0.1, 5.0):
        torch.manual_seed(0)
        terms, out = step_losses(model, frozen, batch, 1, weight)
        assert set(terms) == {"diffusion", "loss"} and torch.equal(terms["loss"], terms["diffusion"])
        losses.append(terms["loss"].item())
    assert losses[0] == losses[1]
    terms["loss"].backward()
    assert all(p.grad is None for p in model.router.parameters())
    model.zero_grad(set_to_none=True)


# -- conditioning flow ---------------------------------------------------------------------------------------------


def test_condition_drop_reaches_the_model_on_the_drawn_samples_only(dataset, stage1, tmp_path):
    _, model, frozen = stage1
    cfg = config(1, dataset, tmp_path, **{"data.augment.drop_rate": 0.5})
    batch = next(b for b in batches(cfg, model.routing_factors, 3) if 0 < b["drop_subjects"].sum() < 4)
    batch = normalize(batch)
    other = dict(batch, clip_pixel_values=batch["clip_pixel_values"].roll(1, 0))  # other subjects' CLIP pixels
    outs = []
    for b in (batch, other):
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(step_losses(model, frozen, b, 1, 0.1)[1].noise_pred)
    changed = (outs[0] - outs[1]).flatten(1).abs().amax(1) > 0
    assert torch.equal(changed, ~batch["drop_subjects"])


def test_reference_net_runs_at_timestep_zero_and_clip_features_are_the_penultimate_layer(stage1):
    cfg, model, frozen = stage1
    batch = normalize(batches(cfg, model.routing_factors, 1)[0])
    seen = {}
    hooks = [model.reference_net.unet.register_forward_pre_hook(
                 lambda m, args, kw: seen.__setitem__("t", args[1] if len(args) > 1 else kw["timestep"]),
                 with_kwargs=True),
             model.subject_qformer.register_forward_pre_hook(lambda m, args: seen.__setitem__("qformer", args[0])),
             model.router.routing_qformer.register_forward_pre_hook(lambda m, args: seen.__setitem__("router",
                                                                                                      args[0]))]
    try:
        torch.manual_seed(0)
        with torch.no_grad():
            step_losses(model, frozen, batch, 1, 0.1)
    finally:
        for h in hooks:
            h.remove()
    valid = batch["subject_valid"]
    assert seen["t"].shape == (int(valid.sum()),) and (seen["t"] == 0).all()
    pixels = batch["clip_pixel_values"][valid]
    with torch.no_grad():
        hidden = model.clip(torch.cat([pixels, torch.zeros_like(pixels[:1])]), output_hidden_states=True).hidden_states
    assert not torch.allclose(hidden[-2], hidden[-1])
    for part in ("qformer", "router"):
        torch.testing.assert_close(seen[part], hidden[-2], rtol=0, atol=0)


# -- stages connect ------------------------------------------------------------------------------------------------


def test_stage2_starts_from_every_stage1_part(dataset, stage1, tmp_path):
    _, trained, _ = stage1
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # stands in for stage-1 training: every stage-1 tensor moves
        for p in trained.stage1_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.01)
    trained.save_adapters(tmp_path / "s1", STAGE_PARTS[1])
    model, _ = build(config(2, dataset, tmp_path / "s2", **{"model.stage1_adapters": tmp_path / "s1"}),
                     torch.device("cpu"))
    states, theirs = model.adapter_state_dicts(), trained.adapter_state_dicts()
    for part in STAGE_PARTS[1]:
        assert states[part].keys() == theirs[part].keys()
        for k, v in theirs[part].items():
            assert torch.equal(states[part][k], v), f"{part}: {k} is not the stage-1 tensor"
    assert any(k.startswith("attention.") and "to_k_ref" in k for k in states["subject_encoder"])
    assert set(model.freeze_for_stage(2)) == set(model.router.parameters())


def test_stage2_refuses_stage1_adapters_missing_a_part(dataset, stage1, tmp_path, capsys):
    _, model, _ = stage1
    model.save_adapters(tmp_path / "s1", ("subject_encoder",))  # no reference_net
    args = ["--config", f"{CONFIGS}/stage2_tiny.yaml", f"data.sources=[{{path: {dataset}}}]",
            f"train.output_dir={tmp_path / 's2'}", "train.tracker=null", f"model.stage1_adapters={tmp_path / 's1'}"]
    assert train_cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference_net part" in err[0] and "reference_net.safetensors" in err[0]
    assert not (tmp_path / "s2" / "checkpoints").exists()


def test_adapters_missing_a_part_are_refused_by_evaluate(dataset, stage1, tmp_path, capsys):
    from training.evaluate.__main__ import main as evaluate

    _, model, _ = stage1
    model.save_adapters(tmp_path / "ad", STAGE_PARTS[1])  # a stage-1 folder: no router
    assert evaluate(["--size", "tiny", "--adapters", str(tmp_path / "ad"), "--shards", dataset, "--limit", "1",
                     "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "router part" in err[0]  # MissingAdapterPart, one line, no traceback


def test_in_training_evaluation_samples_with_the_generate_sampler(dataset, tmp_path):
    from anystory import AnyStoryPipeline
    from training.evaluate.during_training import TrainingEvaluation

    cfg = config(1, dataset, tmp_path, **{"train.eval_every": 1, "train.eval_shards": dataset})
    torch.manual_seed(0)
    generate = AnyStoryPipeline.build("tiny").scheduler  # what anystory.generate samples with by default
    during = TrainingEvaluation(cfg, torch.device("cpu")).scheduler
    assert type(during) is type(generate) and dict(during.config) == dict(generate.config)
    # the paper's: second-order DPM-Solver++ on EDM (Karras) noise levels, not plain Euler
    assert generate.config.algorithm_type == "dpmsolver++" and generate.config.solver_order == 2
    assert generate.config.use_karras_sigmas
