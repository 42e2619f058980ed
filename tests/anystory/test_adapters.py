"""Adapter-only checkpoints (safetensors) and the IP-Adapter Plus-SDXL warm start."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from anystory.model import ADAPTER_FILES, AnyStoryModel, MissingAdapterPart
from tests.anystory.conftest import make_model, make_subjects, make_unet_inputs, perturb_adapters


def test_adapters_round_trip_without_base_weights(tmp_path):
    trained, _ = make_model(seed=0)
    perturb_adapters(trained, seed=1)
    trained.save_adapters(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*ADAPTER_FILES.values(), "anystory.json"])

    base_names = {n for n, _ in trained.unet.named_parameters() if ".processor." not in n}
    saved = {part: load_file(tmp_path / f) for part, f in ADAPTER_FILES.items()}
    prefixes = {"subject_encoder": ("subject_qformer.", "attention."), "reference_net": ("reference_net.",),
                "router": ("router.",)}
    for part, state in saved.items():
        assert all(key.startswith(prefixes[part]) for key in state)
        assert not base_names & {key.split(".", 1)[1] for key in state}
    attention_keys = [k for k in saved["subject_encoder"] if k.startswith("attention.")]
    assert all(k.endswith(("to_k_ip.weight", "to_v_ip.weight", "to_k_ref.weight", "to_v_ref.weight"))
               for k in attention_keys)
    n_saved = sum(v.numel() for state in saved.values() for v in state.values())
    n_adapters = sum(p.numel() for m in (trained.subject_qformer, trained.reference_net, trained.router)
                     for p in m.parameters()) + sum(p.numel() for p in trained.attention_parameters())
    assert n_saved == n_adapters
    assert json.loads((tmp_path / "anystory.json").read_text())["layers"] == trained.layer_names

    fresh, _ = make_model(seed=0)  # same base weights, adapters at their init
    inputs, subjects = make_unet_inputs(2), make_subjects([[True, True], [True, False]])
    with torch.no_grad():
        want = trained(**inputs, subjects=subjects)
        before = fresh(**inputs, subjects=subjects)
        assert (before.noise_pred - want.noise_pred).abs().max() > 1e-3
        assert fresh.load_adapters(tmp_path) == list(ADAPTER_FILES)
        got = fresh(**inputs, subjects=subjects)
    assert torch.equal(got.noise_pred, want.noise_pred)
    assert all(torch.equal(a, b) for a, b in zip(got.routing_maps, want.routing_maps))


def test_stage_parts_save_and_load_alone(tmp_path):
    trained, _ = make_model()
    perturb_adapters(trained, seed=1)
    trained.save_adapters(tmp_path, parts=("subject_encoder", "reference_net"))
    assert not (tmp_path / "router.safetensors").exists()
    fresh, _ = make_model()
    router_before = {k: v.clone() for k, v in fresh.router.state_dict().items()}
    with pytest.raises(MissingAdapterPart, match="router part .no router.safetensors"):
        fresh.load_adapters(tmp_path)  # all three by default: inference needs every part
    assert fresh.load_adapters(tmp_path, ("subject_encoder", "reference_net")) == ["subject_encoder", "reference_net"]
    assert all(torch.equal(v, router_before[k]) for k, v in fresh.router.state_dict().items())
    assert torch.equal(fresh.subject_qformer.resampler.latents, trained.subject_qformer.resampler.latents)


def test_load_refuses_adapters_of_another_architecture(tmp_path):
    model, _ = make_model()
    model.save_adapters(tmp_path)
    config = json.loads((tmp_path / "anystory.json").read_text())
    config["router"]["map_dim"] = 99
    (tmp_path / "anystory.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="router config differs"):
        model.load_adapters(tmp_path)
    config["layers"] = config["layers"][:-1]
    (tmp_path / "anystory.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="layers"):
        model.load_adapters(tmp_path)


def _ip_adapter_plus(model: AnyStoryModel) -> dict[str, torch.Tensor]:
    """A random IP-Adapter Plus checkpoint for the tiny model, in IP-Adapter's own key names (flat safetensors)."""
    g = torch.Generator().manual_seed(3)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    clip, hidden, out = 32, 64, 32
    sd = {"image_proj.latents": r(1, 16, hidden), "image_proj.proj_in.weight": r(hidden, clip),
          "image_proj.proj_in.bias": r(hidden), "image_proj.proj_out.weight": r(out, hidden),
          "image_proj.proj_out.bias": r(out), "image_proj.norm_out.weight": r(out), "image_proj.norm_out.bias": r(out)}
    for i in range(4):
        p = f"image_proj.layers.{i}."
        sd.update({p + "0.norm1.weight": r(hidden), p + "0.norm1.bias": r(hidden), p + "0.norm2.weight": r(hidden),
                   p + "0.norm2.bias": r(hidden), p + "0.to_q.weight": r(hidden, hidden),
                   p + "0.to_kv.weight": r(2 * hidden, hidden), p + "0.to_out.weight": r(hidden, hidden),
                   p + "1.0.weight": r(hidden), p + "1.0.bias": r(hidden), p + "1.1.weight": r(4 * hidden, hidden),
                   p + "1.3.weight": r(hidden, 4 * hidden)})
    cross = [p for k, p in model.unet.attn_processors.items() if k.endswith("attn2.processor")]
    for i, proc in enumerate(cross):
        sd[f"ip_adapter.{2 * i + 1}.to_k_ip.weight"] = r(*proc.to_k_ip.weight.shape)
        sd[f"ip_adapter.{2 * i + 1}.to_v_ip.weight"] = r(*proc.to_v_ip.weight.shape)
    return sd


def test_ip_adapter_plus_warm_start_maps_resampler_and_kv(tmp_path):
    model, _ = make_model()
    sd = _ip_adapter_plus(model)
    save_file(sd, tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors")
    model.load_ip_adapter_plus(tmp_path / "ip-adapter-plus_sdxl_vit-h.safetensors")
    res = model.subject_qformer.resampler
    assert torch.equal(res.proj_in.weight, sd["image_proj.proj_in.weight"])
    k, v = sd["image_proj.layers.2.0.to_kv.weight"].chunk(2)
    assert torch.equal(res.layers[2].attn.to_k.weight, k) and torch.equal(res.layers[2].attn.to_v.weight, v)
    assert torch.equal(res.layers[3].ff[1].net[2].weight, sd["image_proj.layers.3.1.3.weight"])
    # 16 IP-Adapter queries fill our 64, repeated, plus a little noise
    assert res.latents.shape == (1, 64, 64)
    torch.testing.assert_close(res.latents[:, 16:32], sd["image_proj.latents"], atol=0.1, rtol=0)
    # processors are numbered in unet.attn_processors order (mid block last), cross-attention ones odd
    mid = model.unet.mid_block.attentions[0].transformer_blocks[1].attn2.processor
    last = 2 * (len(model.layer_names) - 1) + 1
    assert torch.equal(mid.to_k_ip.weight, sd[f"ip_adapter.{last}.to_k_ip.weight"])
    first = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.processor
    assert torch.equal(first.to_v_ip.weight, sd["ip_adapter.1.to_v_ip.weight"])

    torch.save({"image_proj": {k.removeprefix("image_proj."): v for k, v in sd.items() if "image_proj" in k},
                "ip_adapter": {k.removeprefix("ip_adapter."): v for k, v in sd.items() if "ip_adapter" in k}},
               tmp_path / "ip-adapter.bin")
    other, _ = make_model(seed=5)
    other.load_ip_adapter_plus(tmp_path / "ip-adapter.bin")
    assert torch.equal(other.subject_qformer.resampler.proj_out.weight, res.proj_out.weight)


def test_missing_ip_adapter_file_says_how_to_fetch_it(tmp_path):
    model, _ = make_model()
    with pytest.raises(FileNotFoundError, match="hf download h94/IP-Adapter"):
        model.load_ip_adapter_plus(tmp_path / "nope.safetensors")
