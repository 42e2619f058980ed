"""AnyStoryPipeline end to end on tiny components (offline, CPU), and the routing-map helpers."""

import copy
import inspect

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from diffusers.models.attention_processor import AttnProcessor2_0

from anystory.model import MissingAdapterPart, SubjectBatch
from anystory.pipeline import AnyStoryPipeline, segment_subject
from anystory.reference_net import reference_latents
from anystory.router import downsample_masks
from anystory.visualize import routing_grid, routing_overlay, segment_from_routing_maps
from tests.anystory.conftest import perturb_adapters

STEPS = 2


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    return AnyStoryPipeline.build("tiny")


def _subject(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    mask = np.zeros((48, 40), np.uint8)
    mask[8:40, 10 + seed : 30] = 255
    return image, mask


def _run(pipe, subjects, **kw):
    images, masks = zip(*subjects) if subjects else ((), ())
    return pipe("a photo", subjects=None if subjects is None else list(images),
                subject_masks=None if subjects is None else list(masks), num_inference_steps=STEPS,
                output_type="np", generator=torch.Generator().manual_seed(0), **kw)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_generates_images_and_routing_maps_for_n_subjects(pipe, n):
    out = _run(pipe, [_subject(i) for i in range(n)])
    assert out.images.shape == (1, 64, 64, 3) and np.isfinite(out.images).all()
    assert len(out.routing_maps) == STEPS and all(len(step) == 11 for step in out.routing_maps)
    for m in out.routing_maps[-1]:
        assert m.shape[:2] == (1, n + 1) and m.shape[-1] in (4, 8)
        torch.testing.assert_close(m.float().sum(1), torch.ones(1, *m.shape[-2:]), atol=2e-3, rtol=0)

    grid = routing_grid(out.routing_maps, cell=8, rows=4, gap=2)  # 11 layers: 3 columns of 4 per panel
    assert grid.shape == (n * (4 * 8 + 2) - 2, STEPS * (3 * 8 + 2) - 2, 3) and grid.dtype == np.uint8
    assert routing_grid(out.routing_maps[-1], cell=8, rows=4, background=True).shape[0] == (n + 1) * (32 + 4) - 4
    masks = segment_from_routing_maps(out.routing_maps, (64, 64), layers=range(9, 11))
    assert masks.shape == (1, n, 64, 64) and masks.dtype == bool and masks.sum(1).max() <= 1
    overlay = routing_overlay((out.images[0] * 255).astype(np.uint8), out.routing_maps[-1])
    assert overlay.shape == (64, 64, 3) and overlay.dtype == np.uint8


def test_no_subjects_bypasses_the_adapters_by_default(pipe):
    base_unet = copy.deepcopy(pipe.unet)
    base_unet.set_attn_processor(AttnProcessor2_0())  # SDXL's own processors, no AnyStory code involved
    plain = StableDiffusionXLPipeline(pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.tokenizer,
                                      pipe.tokenizer_2, base_unet, pipe.scheduler, add_watermarker=False)
    want = plain("a photo", num_inference_steps=STEPS, guidance_scale=7.5, output_type="np",  # AnyStory's default
                 generator=torch.Generator().manual_seed(0)).images
    bypass = _run(pipe, None)
    assert bypass.routing_maps == [] and np.abs(bypass.images - want).max() < 1e-5
    background_only = _run(pipe, [])
    assert np.abs(background_only.images - want).max() > 1e-4  # Eq. 5's background term
    assert all((m[:, 0] == 1).all() for m in background_only.routing_maps[0])
    assert np.abs(_run(pipe, [], eta=0.0).images - want).max() < 1e-5


def test_eta_zero_and_gamma_off_reproduce_plain_sdxl_with_subjects(pipe):
    subjects = [_subject(0), _subject(1)]
    want = _run(pipe, None).images  # the bypass, equal to plain SDXL (test above)
    assert np.abs(_run(pipe, subjects, eta=0.0, gamma=float("-inf")).images - want).max() < 1e-5
    assert np.abs(_run(pipe, subjects).images - want).max() > 1e-4


def test_pipeline_loads_trained_adapters(tmp_path):
    torch.manual_seed(0)
    trained = AnyStoryPipeline.build("tiny")
    perturb_adapters(trained.model, seed=1)
    trained.model.save_adapters(tmp_path)
    subjects = [_subject(0), _subject(1)]
    torch.manual_seed(0)
    fresh = AnyStoryPipeline.build("tiny")
    torch.manual_seed(0)
    loaded = AnyStoryPipeline.build("tiny", adapters=str(tmp_path))
    want = _run(trained, subjects).images
    assert np.abs(_run(fresh, subjects).images - want).max() > 1e-4
    assert np.array_equal(_run(loaded, subjects).images, want)


def test_segment_subject_cuts_crops_and_pads_to_a_square():
    image = np.zeros((40, 20, 3), np.uint8)
    image[...] = (10, 20, 30)
    mask = np.zeros((40, 20), bool)
    mask[10:30, 5:15] = True
    square, keep = segment_subject(image, mask, margin=0.0)
    arr = np.asarray(square)
    assert arr.shape == (20, 20, 3) and keep.shape == (20, 20) and keep.sum() == 200
    assert (arr[keep.astype(bool)] == (10, 20, 30)).all() and (arr[~keep.astype(bool)] == 255).all()
    with pytest.raises(ValueError, match="empty"):
        segment_subject(image, np.zeros((40, 20), bool))


def test_routing_grid_draws_each_layer_map_in_its_cell():
    maps = [torch.zeros(1, 2, 2, 2) for _ in range(3)]
    maps[2][0, 0] = 1  # layer 3: subject everywhere
    grid = routing_grid([maps], cell=2, rows=2, gap=0)
    assert grid.shape == (4, 4, 3)
    yellow, blue = [253, 231, 37], [68, 1, 84]
    assert (grid[0:2, 2:4] == yellow).all()  # layer 3 = second column, first row
    assert (grid[0:2, 0:2] == blue).all() and (grid[2:4, 0:2] == blue).all()


def test_segmentation_masks_from_hand_made_maps():
    left = torch.zeros(1, 3, 2, 2)
    left[0, 0, :, 0], left[0, 1, 0, 1], left[0, 2, 1, 1] = 1, 1, 1  # subject 0 left, 1 top-right, bg bottom-right
    masks = segment_from_routing_maps([[left]], (4, 4))
    assert masks[0, 0, :, :2].all() and not masks[0, 0, :, 2:].any()
    assert masks[0, 1, 0, 3] and not masks[0, 1, 3, 3] and not masks[0].any(0)[3, 3]


def _sdxl_sigmas() -> torch.Tensor:
    """σ(t) = √((1 − ᾱ_t) / ᾱ_t) of SDXL's training schedule (scaled-linear β from 0.00085 to 0.012, 1000 steps)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    return ((1 - alphas) / alphas).sqrt()


def _karras(n: int, hi: float, lo: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho  # Karras et al. 2022, Eq. 5


@pytest.mark.parametrize("sampler", ["edm", "edm-heun", "edm-euler"])
def test_edm_samplers_run_on_edm_noise_levels_over_the_whole_range(sampler):
    from anystory.builders import build_scheduler

    scheduler = build_scheduler(sampler=sampler)
    scheduler.set_timesteps(25)
    levels = scheduler.sigmas.double().unique_consecutive()  # Heun repeats each inner level for its second stage
    sdxl = _sdxl_sigmas()
    assert levels[-1] == 0 and len(levels) == 26
    torch.testing.assert_close(levels[:-1], _karras(25, sdxl[-1].item(), sdxl[0].item()), rtol=1e-4, atol=1e-5)
    calls = {"edm": 25, "edm-heun": 49, "edm-euler": 25}[sampler]
    assert len(scheduler.timesteps) == calls and scheduler.order == (2 if sampler == "edm-heun" else 1)
    if sampler == "edm":
        assert (scheduler.config.solver_order, scheduler.config.algorithm_type) == (2, "dpmsolver++")


def test_edm_default_sampler_follows_diffusers_edm_second_order_scheduler():
    """On an exact denoiser (Gaussian data, D(x; σ) = x s² / (s² + σ²)) the "edm" sampler, stepping SDXL's VP
    latents with ε outputs, follows diffusers' EDMDPMSolverMultistepScheduler (EDM's own parameterisation, x = x₀ + σn)
    on the same levels; the first-order samplers do not."""
    from diffusers import EDMDPMSolverMultistepScheduler

    from anystory.builders import build_scheduler

    sdxl, s2 = _sdxl_sigmas(), 0.5 ** 2
    ref = EDMDPMSolverMultistepScheduler(sigma_min=sdxl[0].item(), sigma_max=sdxl[-1].item(), solver_order=2,
                                         algorithm_type="dpmsolver++", final_sigmas_type="zero")
    ref.set_timesteps(12)
    x = ref.sigmas[0].double() * torch.randn(4, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def denoise(x, sigma):
        return x * s2 / (s2 + sigma ** 2)

    ve = x.clone()
    for i, t in enumerate(ref.timesteps):
        sigma, sd = ref.sigmas[i].double(), ref.config.sigma_data
        c_skip, c_out = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5
        ve = ref.step((denoise(ve, sigma) - c_skip * ve) / c_out, t, ve).prev_sample  # F with D = c_skip x + c_out F

    def vp_run(sampler):
        scheduler = build_scheduler(sampler=sampler)
        scheduler.set_timesteps(12)
        vp = x / (1 + scheduler.sigmas[0].double() ** 2) ** 0.5  # the same start in VP scaling
        for i, t in enumerate(scheduler.timesteps):
            sigma = scheduler.sigmas[scheduler.step_index or 0].double()
            alpha = 1 / (1 + sigma ** 2) ** 0.5
            inp = scheduler.scale_model_input(vp, t) if sampler != "edm" else vp
            eps = (inp / alpha - denoise(inp / alpha, sigma)) / sigma  # ε of the VE sample x = inp / α
            vp = scheduler.step(eps, t, vp).prev_sample
        return vp

    torch.testing.assert_close(vp_run("edm"), ve, rtol=1e-5, atol=1e-6)
    assert (vp_run("edm-euler") - ve).abs().max() > 1e-3


def test_paper_sampling_is_the_default_and_others_are_selectable():
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler

    from anystory.builders import build_scheduler

    with pytest.raises(ValueError, match="one of"):
        build_scheduler(sampler="ddim")
    params = inspect.signature(AnyStoryPipeline.__call__).parameters
    assert (params["num_inference_steps"].default, params["guidance_scale"].default) == (25, 7.5)
    torch.manual_seed(0)
    default = AnyStoryPipeline.build("tiny")
    assert isinstance(default.scheduler, DPMSolverMultistepScheduler) and default.scheduler.config.use_karras_sigmas
    torch.manual_seed(0)
    euler = AnyStoryPipeline.build("tiny", sampler="euler")
    assert type(euler.scheduler) is EulerDiscreteScheduler and not euler.scheduler.config.use_karras_sigmas
    for pipe in (default, euler):
        out = _run(pipe, [_subject(0), _subject(1)])
        assert np.isfinite(out.images).all() and len(out.routing_maps) == STEPS

def test_unconditional_half_comes_first_with_the_background_embedding(pipe):
    """CFG: diffusers puts the unconditional (here zeroed negative prompt) half first and takes
    ``uncond + s · (cond − uncond)``; the subject conditions must line up, the background embedding E_{N+1} in the
    first half, the subjects' embeddings in the second, the same reference features in both."""
    seen = []

    def record(module, args, kwargs):
        state = kwargs["cross_attention_kwargs"]["anystory"]
        seen.append((kwargs["encoder_hidden_states"].clone(), state.conditions))

    hook = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        _run(pipe, [_subject(0), _subject(1)], guidance_scale=7.5)
    finally:
        hook.remove()
    assert seen
    for text, cond in seen:
        assert text.shape[0] == 2 and (text[0] == 0).all() and (text[1] != 0).any()
        e = cond.embeddings  # (2, N+1, m, C)
        assert torch.equal(e[0], e[0, -1:].expand_as(e[0]))  # every slot of the unconditional half: background
        assert torch.equal(e[1, -1], e[0, -1])
        assert all((e[1, i] - e[1, -1]).abs().max() > 1e-4 for i in range(2))  # the subjects, not the background
        g = next(r for r in cond.reference if r is not None)
        assert torch.equal(g[0], g[1])


def test_subjects_are_encoded_once_per_generation(pipe):
    calls = {name: 0 for name in ("image_encoder", "subject_qformer", "reference_net", "unet")}
    calls["routing_qformer"] = 0
    modules = {**{name: getattr(pipe, name) for name in calls if name != "routing_qformer"},
               "routing_qformer": pipe.router.routing_qformer}

    def counter(name):
        def hook(module, args):
            calls[name] += 1
        return hook

    hooks = [m.register_forward_pre_hook(counter(name)) for name, m in modules.items()]
    try:
        _run(pipe, [_subject(0), _subject(1)], num_images_per_prompt=2)
    finally:
        for h in hooks:
            h.remove()
    evaluations = len(pipe.scheduler.timesteps)
    assert evaluations >= STEPS and calls.pop("unet") == evaluations
    assert calls == {"image_encoder": 1, "subject_qformer": 1, "reference_net": 1, "routing_qformer": 1}


def test_subject_masks_segment_the_subjects_before_encoding(pipe):
    """The pipeline's encoding of (image, mask) is the model's encoding of the subject cut out by hand (§3.2): the
    mask's box grown by 10 % per side, the rest white, padded to a square."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (100, 100, 3), dtype=np.uint8)
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 30:62] = 255  # 40 × 32: grown by 4 and 3 px per side to 48 × 38, padded to 48 × 48 (5 px left)
    square = np.full((48, 48, 3), 255, np.uint8)
    square[4:44, 8:40] = image[20:60, 30:62]
    square_mask = np.zeros((48, 48), np.float32)
    square_mask[4:44, 8:40] = 1
    size = pipe.reference_net.config.reference_size
    latent = size // pipe.vae_scale_factor
    pixels = torch.from_numpy(np.array(PIL.Image.fromarray(square).resize((size, size), PIL.Image.Resampling.BICUBIC)))
    batch = SubjectBatch(
        clip_pixel_values=pipe.feature_extractor(images=[PIL.Image.fromarray(square)],
                                                 return_tensors="pt").pixel_values[None],
        reference_latents=reference_latents(pipe.vae, pixels.permute(2, 0, 1)[None].float() / 127.5 - 1)[None],
        reference_masks=downsample_masks(torch.from_numpy(square_mask), (latent, latent))[None, None, None],
        valid=torch.ones(1, 1, dtype=torch.bool))
    with torch.no_grad():
        want = pipe.model.encode_subjects(batch)
    got = pipe.encode_subjects([image], [mask])
    torch.testing.assert_close(got.embeddings, want.embeddings, rtol=0, atol=1e-6)
    torch.testing.assert_close(got.routing, want.routing, rtol=0, atol=1e-6)
    assert [g is None for g in got.reference] == [w is None for w in want.reference]
    for g, w in zip(got.reference, want.reference):  # a contiguous copy of the pixels: other conv kernels, 1e-4
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3)
    whole = pipe.encode_subjects([image], [None])  # the whole image as the subject: another encoding
    assert (whole.embeddings - want.embeddings).abs().max() > 1e-4


def test_adapters_missing_a_part_are_refused_naming_it(tmp_path):
    torch.manual_seed(0)
    AnyStoryPipeline.build("tiny").model.save_adapters(tmp_path, parts=("router",))  # a stage-2 checkpoint's
    with pytest.raises(MissingAdapterPart, match="subject_encoder part .no subject_encoder.safetensors"):
        AnyStoryPipeline.build("tiny", adapters=str(tmp_path))
