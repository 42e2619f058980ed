"""Shipped configs build every shape offline (tiny for real, SDXL on meta); missing weights fail clearly."""

import pytest
import torch

from anystory import builders


def test_tiny_configs_keep_sdxl_structure():
    sdxl, tiny = builders.load_config("sdxl", "unet"), builders.load_config("tiny", "unet")
    for key in ("addition_embed_type", "use_linear_projection", "in_channels", "mid_block_type"):
        assert tiny[key] == sdxl[key]
    unet = builders.build_unet("tiny")
    te, te2, tok, tok2 = builders.build_text_encoders_and_tokenizers("tiny")
    # SDXL's micro-conditioning: pooled text (text_encoder_2 projection) + 6 time ids
    assert unet.add_embedding.linear_1.in_features == te2.config.projection_dim + 6 * tiny["addition_time_embed_dim"]
    assert te.config.hidden_size + te2.config.hidden_size == tiny["cross_attention_dim"]
    ids = tok("a photo of a dog", padding="max_length", max_length=tok.model_max_length,
              return_tensors="pt").input_ids
    assert ids.shape == (1, 77) and ids[0, 0] == 512 and int(ids.max()) < te.config.vocab_size
    vae = builders.build_vae("tiny")
    assert 2 ** (len(vae.config.block_out_channels) - 1) == 8  # latents at H/8 like SDXL
    clip = builders.build_clip_vision("tiny")
    assert clip(torch.zeros(1, 3, 224, 224), output_hidden_states=True).hidden_states[-2].shape == (1, 257, 32)


def test_sdxl_sizes_build_on_meta_only_quickly():
    with torch.device("meta"):
        vae, clip = builders.build_vae("sdxl"), builders.build_clip_vision("sdxl")
    assert vae.config.scaling_factor == 0.13025 and clip.config.num_hidden_layers == 32
    assert next(vae.parameters()).is_meta and next(clip.parameters()).is_meta


@pytest.mark.parametrize("build, name", [(builders.build_unet, "SDXL UNet"), (builders.build_vae, "SDXL VAE"),
                                         (builders.build_clip_vision, "CLIP ViT-H/14 image encoder")])
@pytest.mark.parametrize("where", ["/nonexistent/sdxl", "nobody/not-in-the-cache"])
def test_missing_weights_name_the_model_and_how_to_fetch_it(build, name, where):
    with pytest.raises(FileNotFoundError) as e:
        build("sdxl", pretrained=where)
    assert name in str(e.value) and "hf download" in str(e.value) and where in str(e.value)


def test_unknown_size_or_config_is_refused():
    with pytest.raises(ValueError, match="unknown size"):
        builders.load_config("sd15", "unet")
    with pytest.raises(FileNotFoundError, match="shipped"):
        builders.load_config("sdxl", "tokenizer")
