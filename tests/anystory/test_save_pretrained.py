"""``AnyStoryPipeline.save_pretrained`` / ``from_pretrained``: diffusers' folder layout, base weights referenced."""

import json

import numpy as np
import pytest
import torch

from anystory import builders
from anystory.pipeline import AnyStoryPipeline
from tests.anystory.conftest import perturb_adapters


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny SDXL folder in the hub layout (unet/, vae/, text encoders, tokenizers, scheduler/) plus an image
    encoder: what ``pretrained=`` / ``clip_pretrained=`` point at."""
    base = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    builders.build_unet("tiny").save_pretrained(base / "unet")
    builders.build_vae("tiny").save_pretrained(base / "vae")
    te, te2, tok, tok2 = builders.build_text_encoders_and_tokenizers("tiny")
    for name, part in {"text_encoder": te, "text_encoder_2": te2, "tokenizer": tok, "tokenizer_2": tok2}.items():
        part.save_pretrained(base / name)
    builders.build_scheduler().save_pretrained(base / "scheduler")
    builders.build_clip_vision("tiny").save_pretrained(base / "image_encoder")
    return base


def _generate(pipe):
    return pipe("a photo", subjects=[np.full((32, 24, 3), 200, np.uint8)], num_inference_steps=2, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_round_trip_saves_adapters_and_references_the_base(tiny_base, tmp_path):
    pipe = AnyStoryPipeline.build("tiny", pretrained=str(tiny_base), clip_pretrained=str(tiny_base / "image_encoder"),
                                  sampler="edm")
    perturb_adapters(pipe.model, seed=5)
    pipe.save_pretrained(tmp_path / "saved")
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["_class_name"] == "AnyStoryPipeline" and index["base"]["pretrained"] == str(tiny_base)
    files = {p.relative_to(tmp_path / "saved").as_posix() for p in (tmp_path / "saved").rglob("*") if p.is_file()}
    assert files == {"model_index.json", "scheduler/scheduler_config.json", "adapters/anystory.json",
                     "adapters/subject_encoder.safetensors", "adapters/reference_net.safetensors",
                     "adapters/router.safetensors"}  # no base weights
    loaded = AnyStoryPipeline.from_pretrained(tmp_path / "saved")
    for name in ("unet", "reference_net", "router", "subject_qformer", "vae", "text_encoder_2", "image_encoder"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(loaded, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    def settings(scheduler):  # diffusers' bookkeeping keys ("_use_default_values", …) are not settings
        return {k: v for k, v in scheduler.config.items() if not k.startswith("_")}

    assert type(loaded.scheduler) is type(pipe.scheduler) and settings(loaded.scheduler) == settings(pipe.scheduler)
    assert np.array_equal(_generate(loaded), _generate(pipe))


def test_base_loads_straight_in_the_asked_dtype(tiny_base):
    pipe = AnyStoryPipeline.build("tiny", pretrained=str(tiny_base), clip_pretrained=str(tiny_base / "image_encoder"),
                                  dtype=torch.bfloat16, device="cpu")
    for part in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.image_encoder, pipe.reference_net):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    reference = builders.build_unet("tiny", pretrained=str(tiny_base))
    torch.testing.assert_close(pipe.unet.conv_in.weight, reference.conv_in.weight.to(torch.bfloat16), rtol=0, atol=0)


def test_save_needs_a_known_base_and_load_refuses_other_folders(tmp_path):
    torch.manual_seed(0)
    pipe = AnyStoryPipeline.build("tiny")
    del pipe.base
    with pytest.raises(ValueError, match="references the base"):
        pipe.save_pretrained(tmp_path / "x")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    with pytest.raises(ValueError, match="not a AnyStoryPipeline"):
        AnyStoryPipeline.from_pretrained(tmp_path / "other")
