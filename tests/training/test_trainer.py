"""The two training stages on tiny models: CLI runs of the shipped tiny configs, what stage 2 may change, what a
checkpoint holds, exact resume, and overfitting one batch (diffusion loss, routing loss)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from anystory import AnyStoryPipeline
from tests.shard_factory import write_dataset
from tests.training.conftest import colour_sample
from training import checkpoints, train as cli
from training.augment import normalize
from training.config import load_config
from training.loader import DataPosition, make_loader
from training.trainer import build, step_losses, train

CONFIGS = Path(__file__).parents[2] / "configs" / "train"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Two shards of 64×64 two-frame samples with two known subjects each."""
    root = tmp_path_factory.mktemp("data") / "ds"
    groups = [[colour_sample(f"tr-{g}-{k}", {0: [0, 1], 1: [0, 1]}, size=(64, 64)) for k in range(4)]
              for g in range(2)]
    return write_dataset(str(root), groups)


def overrides(dataset, out, **extra) -> list[str]:
    return [f"data.sources=[{{path: {dataset}}}]", f"train.output_dir={out}", "train.tracker=null",
            *(f"{k}={v}" for k, v in extra.items())]


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def test_stage1_then_stage2_cli_runs_train_only_their_parts(dataset, tmp_path):
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    assert cli.main(["--config", str(CONFIGS / "stage1_tiny.yaml"), *overrides(dataset, s1),
                     "train.tracker=tensorboard"]) == 0
    assert list((s1 / "logs").rglob("events.out.tfevents*"))
    stage2 = overrides(dataset, s2, **{"model.stage1_adapters": s1 / "adapters", "train.max_steps": 2})
    cfg = load_config(CONFIGS / "stage2_tiny.yaml", stage2)
    before, _ = build(cfg, torch.device("cpu"))  # what stage 2 starts from: tiny base + stage-1 adapters
    result = train(cfg)
    after = result.model.state_dict()
    changed = {k for k, v in before.state_dict().items() if not torch.equal(v, after[k])}
    assert changed and all(k.startswith("router.") for k in changed)  # everything else bitwise equal
    # checkpoints: adapters only, per stage; the resume state holds no model weights at all
    unet_keys = {k for k in after if k.startswith(("unet.", "clip."))}
    prefixes = ("subject_qformer.", "attention.", "reference_net.", "router.")
    for run, files in ((s1, {"subject_encoder", "reference_net"}), (s2, {"router"})):
        for ckpt in (run / "checkpoints").glob("step-*"):
            saved = {p.stem for p in (ckpt / "adapters").glob("*.safetensors")}
            assert saved == files
            for f in (ckpt / "adapters").glob("*.safetensors"):
                keys = set(_tensors(f))
                assert keys and all(k.startswith(prefixes) for k in keys) and not keys & unet_keys
            assert {p.name for p in (ckpt / "state").iterdir()} == {
                "optimizer.bin", "random_states_0.pkl", *(f"custom_checkpoint_{i}.pkl" for i in range(3))}
    router = sum(p.numel() for p in result.model.router.parameters())
    state = torch.load(s2 / "checkpoints" / "step-2" / "state" / "optimizer.bin", weights_only=False)
    assert sum(s["exp_avg"].numel() for s in state["state"].values()) == router  # optimizer: the router only
    assert (s1 / "checkpoints" / "latest").read_text() == "step-4" and checkpoints.steps(s1) == [2, 4]
    assert {p.stem for p in (s2 / "adapters").glob("*.safetensors")} == {"subject_encoder", "reference_net", "router"}
    pipe = AnyStoryPipeline.build("tiny", adapters=str(s2 / "adapters"))  # the exported folder is the pipeline's
    trained = result.model.state_dict()
    assert all(torch.equal(v, trained[f"router.{k}"]) for k, v in pipe.router.state_dict().items())
    assert all(torch.equal(v, trained[f"subject_qformer.{k}"]) for k, v in pipe.subject_qformer.state_dict().items())


def test_resume_gives_the_straight_run(dataset, tmp_path):
    common = {"train.max_steps": 4, "train.checkpoint_every": 2, "train.grad_accum": 2, "data.round_samples": 3}
    straight = train(load_config(CONFIGS / "stage1_tiny.yaml", overrides(dataset, tmp_path / "a", **common)))
    first = train(load_config(CONFIGS / "stage1_tiny.yaml",
                              overrides(dataset, tmp_path / "b", **{**common, "train.max_steps": 2})))
    resumed = train(load_config(CONFIGS / "stage1_tiny.yaml", overrides(dataset, tmp_path / "b", **common)),
                    resume="latest")
    losses = first.losses + resumed.losses
    assert len(losses) == 4
    for a, b in zip(straight.losses, losses):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)
    for name in ("subject_encoder", "reference_net"):
        a, b = (_tensors(tmp_path / r / "adapters" / f"{name}.safetensors") for r in "ab")
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with open(tmp_path / "b" / "checkpoints" / "step-4" / "state" / "custom_checkpoint_2.pkl", "rb") as f:
        assert torch.load(f, weights_only=False)["ranks"][0]["batches"] == 8  # 4 steps × 2 accumulated batches


def _fixed_batch(cfg, model):
    batch = next(iter(make_loader(cfg.data, model.routing_factors, 0, DataPosition(1))))
    batch.pop("position")
    return normalize(batch)


def _overfit(stage, dataset, tmp_path, lr, steps, term, extra=()):
    cfg = load_config(CONFIGS / f"stage{stage}_tiny.yaml",
                      overrides(dataset, tmp_path, **{"data.augment.drop_rate": 0}) + list(extra))
    model, frozen = build(cfg, torch.device("cpu"))
    opt = torch.optim.AdamW(model.freeze_for_stage(stage), lr=lr)
    batch = _fixed_batch(cfg, model)
    model.train()
    history, outs = [], []
    for _ in range(steps):
        torch.manual_seed(0)  # the same noise, timestep and Gumbel sample every step: one fixed example
        terms, out = step_losses(model, frozen, batch, stage, 0.1)
        terms[term].backward()
        opt.step()
        opt.zero_grad()
        history.append(terms[term].item())
        outs.append(out)
    return history, outs, batch


def test_stage1_overfits_one_batch(dataset, tmp_path):
    history, _, _ = _overfit(1, dataset, tmp_path, 3e-3, 40, "diffusion")
    assert history[-1] < 0.5 * history[0]


def test_router_learns_known_masks(dataset, tmp_path):
    s1 = tmp_path / "s1"
    train(load_config(CONFIGS / "stage1_tiny.yaml", overrides(dataset, s1, **{"train.max_steps": 1})))
    history, outs, batch = _overfit(2, dataset, tmp_path / "s2", 3e-3, 30, "routing",
                                    [f"model.stage1_adapters={s1 / 'adapters'}"])
    assert history[-1] < 0.5 * history[0]
    # the maps learn to segment the subjects: the argmax over N+1 agrees with the known masks on more cells, and on
    # more than "all background" would
    gt = batch["routing_masks"][1]
    truth = torch.cat([gt, 1 - gt.sum(1, keepdim=True).clamp(max=1)], 1).argmax(1)  # index N: background

    def agreement(out):
        finest = max(out.routing_maps, key=lambda m: m.shape[-1])
        return (finest.argmax(1) == truth).float().mean().item()

    background = (gt.sum(1) == 0).float().mean().item()
    assert agreement(outs[-1]) > max(agreement(outs[0]) + 0.1, background + 0.05)
