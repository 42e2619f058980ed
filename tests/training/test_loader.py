"""Training loader: pair choice, augmentation ranges, mask alignment after crop/resize, condition drop, synthetic
refusal, disjoint shards over ranks × workers, mixing weights, and exact resume of the stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from datagen import images, shards
from tests.training.conftest import BACKGROUND, COLOURS, colour_sample, subject_box
from training import augment, plan, streams
from training.config import AugmentParams, DataConfig
from training.loader import DataPosition, SubjectStream, make_loader, open_sources

SMALL = {"buckets": [[64, 96]], "reference_size": 32, "clip_size": 16}
FACTORS = (1, 2)


def data_cfg(paths, **kw) -> DataConfig:
    sources = [{"path": p} if isinstance(p, str) else p for p in paths]
    base = {"sources": sources, "batch_size": 2, "num_workers": 0, "round_samples": 6, "shuffle_buffer": 4,
            "augment": SMALL}
    return DataConfig.model_validate({**base, **kw})


def test_pair_choice_prefers_another_frame_and_falls_back_to_the_target():
    # subject 0 in all frames, 1 only in frame 0, 2 only in frame 2
    raw = shards.encode_sample(colour_sample("p", {0: [0, 1, 2], 1: [0], 2: [2]}, n_frames=3))
    rng = np.random.default_rng(0)
    targets = []
    for _ in range(300):
        p = plan.choose(raw, AugmentParams(), [(64, 96)], rng)
        targets.append(p.target)
        chosen = dict(p.subjects)
        assert 0 in chosen and chosen[0] != p.target  # a paired subject never references its own target frame
        assert (1 in chosen) == (p.target == 0) and (2 in chosen) == (p.target == 2)
        assert chosen.get(1, 0) == 0 and chosen.get(2, 2) == 2  # single-frame subjects: the target itself
    assert set(targets) == {0, 1, 2}
    refs = [dict(plan.choose(raw, AugmentParams(), [(64, 96)], rng).subjects)[0] for _ in range(300)]
    assert set(refs) == {0, 1, 2}


def test_subjects_are_capped_and_samples_without_subjects_skipped(caplog):
    raw = shards.encode_sample(colour_sample("many", {i: [0] for i in range(6)}, n_frames=1, size=(128, 64)))
    p = plan.choose(raw, AugmentParams(max_subjects=4), [(64, 128)], np.random.default_rng(1))
    ids = [i for i, _ in p.subjects]
    assert len(ids) == 4 and len(set(ids)) == 4 and ids == sorted(ids)
    empty = shards.encode_sample(shards.Sample("empty", "image", [shards.Frame(np.zeros((8, 8, 3), np.uint8))]))
    kept = list(plan.plan_samples(iter([empty, raw]), AugmentParams(), [(64, 128)], np.random.default_rng(0)))
    assert [p.key for p in kept] == ["many"] and "empty" in caplog.text and "no frame shows a subject" in caplog.text
    assert plan.choose(empty, AugmentParams(), [(64, 128)], np.random.default_rng(0)) is None


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_condition_drop_rate(rate):
    raw = shards.encode_sample(colour_sample("d", {0: [0, 1]}))
    rng = np.random.default_rng(2)
    drops = [plan.choose(raw, AugmentParams(drop_rate=rate), [(64, 96)], rng).drop for _ in range(4000)]
    # binomial standard deviation at 4000 draws is at most 0.008: 4 of them
    assert abs(np.mean(drops) - rate) < 0.032


SUBJECT = (30, 120, 200)


def _augmented(rng, **ranges):
    """Outputs of ``augment_reference`` on a 60×24 subject that fills its whole image (so every output pixel of the
    mask is the subject's), with only the given augmentations on; (image, mask) arrays."""
    params = AugmentParams(**{"rotation": 0, "crop_min": 1, "pad_max": 0, **ranges})
    image, mask = Image.new("RGB", (60, 24), SUBJECT), Image.new("L", (60, 24), 255)
    canvas, canvas_mask, _ = augment.augment_reference(image, mask, params, rng)
    return np.asarray(canvas), np.asarray(canvas_mask) > 127


def _extent(m: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(m)
    return xs.max() - xs.min() + 1, ys.max() - ys.min() + 1


def test_reference_augmentation_ranges_measured_on_the_outputs():
    rng = np.random.default_rng(3)
    angles, keeps, pads = [], [], []
    for _ in range(100):
        _, m = _augmented(rng, rotation=20)
        ys, xs = np.nonzero(m)
        cov = np.cov(np.stack([xs, ys]))
        # the long axis' direction from the mask's second moments; image y points down, PIL turns anticlockwise
        angles.append(-np.degrees(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])))
        pixels, m = _augmented(rng, crop_min=0.7)
        w, h = _extent(m)
        keeps += [w / 60, h / 24]
        assert m.shape == (max(w, h),) * 2 and m.sum() == w * h  # a crop of the subject, padded to a square
        pixels, m = _augmented(rng, pad_max=0.3)
        assert _extent(m) == (60, 24) and m.shape[0] == m.shape[1]
        pads.append(m.shape[0] / 60 - 1)
        assert (pixels[~m] == 255).all() and (pixels[m] == SUBJECT).all()  # padding is the fill colour, not stretch
    angles, keeps, pads = np.array(angles), np.array(keeps), np.array(pads)
    assert np.abs(angles).max() <= 20.5 and angles.min() < -15 and angles.max() > 15
    assert keeps.min() >= 0.7 - 1 / 24 and keeps.max() <= 1 and keeps.min() < 0.75
    assert pads.min() >= 0 and pads.max() <= 0.3 + 1 / 60 and pads.max() > 0.25


def test_segmented_crop_and_identity_augmentation_keep_the_subject():
    params = AugmentParams(rotation=20, crop_min=0.7, pad_max=0.3)
    image, mask = np.full((40, 30, 3), 200, np.uint8), np.zeros((40, 30), bool)
    mask[5:35, 8:22] = True
    crop, crop_mask = augment.segmented_crop(image, mask, params.margin, params.fill)
    assert crop.size == (14 + 2 * 2, 30 + 2 * 3)  # box grown by 10 % per side (1.4 → 2 px, 3 px), clipped
    off = AugmentParams(rotation=0, crop_min=1, pad_max=0)
    canvas, canvas_mask, _ = augment.augment_reference(crop, crop_mask, off, np.random.default_rng(3))
    assert (np.asarray(canvas_mask) > 127).sum() == mask.sum()  # identity augmentation keeps the whole subject


def _colour_fraction(pixels: np.ndarray, colour) -> np.ndarray:
    return (np.abs(pixels.astype(int) - np.array(colour)).sum(-1) < 100).astype(float)  # bicubic overshoot


def test_reference_mask_stays_on_the_subject_pixels():
    sample = colour_sample("r", {0: [0, 1]})
    params = AugmentParams(rotation=30, crop_min=0.6, pad_max=0.4)
    rng = np.random.default_rng(4)
    for _ in range(20):
        crop, crop_mask = augment.segmented_crop(sample.frames[1].image, sample.subjects[0].masks[1], 0.3, params.fill)
        canvas, canvas_mask, _ = augment.augment_reference(crop, crop_mask, params, rng)
        pixels, m = np.asarray(canvas), np.asarray(canvas_mask) > 127
        inner = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]  # away from edges
        outer = ~(m[1:-1, 1:-1] | m[:-2, 1:-1] | m[2:, 1:-1] | m[1:-1, :-2] | m[1:-1, 2:])
        core = pixels[1:-1, 1:-1]
        assert _colour_fraction(core[inner], COLOURS[0]).mean() > 0.97
        assert _colour_fraction(core[outer], (255, 255, 255)).mean() > 0.97  # background segmented away, not green
        assert _colour_fraction(pixels, BACKGROUND).sum() == 0
        t = augment.reference_inputs(canvas, canvas_mask, AugmentParams(reference_size=64))
        assert t["ref"].shape == (3, 64, 64) and t["ref_mask"].shape == (1, 8, 8) and t["clip"].shape == (3, 224, 224)
        red = ((t["ref"][0] > 191) & (t["ref"][1] < 64)).float()
        red_cells = red.view(8, 8, 8, 8).mean((1, 3))  # fraction of each latent cell that is red
        on = t["ref_mask"][0] > 0
        assert on[red_cells > 0.75].all() and not on[red_cells < 0.25].any()


@pytest.mark.parametrize("bucket, center", [((64, 96), False), ((64, 64), False), ((96, 64), True), ((32, 128), False)])
def test_target_pixels_micro_conditioning_and_routing_masks_align(bucket, center):
    sample = colour_sample("t", {0: [0], 1: [0]}, n_frames=1, size=(120, 80))
    raw = shards.encode_sample(sample)
    params = AugmentParams(buckets=[bucket], center_crop=center, reference_size=32, clip_size=16, rotation=0)
    for seed in range(4):
        p = plan.choose(raw, params, [bucket], np.random.default_rng(seed))
        out = augment.realize(p, params, (1, 2))
        h, w = bucket
        assert out["pixel_values"].shape == (3, h, w)
        H, W, top, left, th, tw = out["time_ids"].tolist()
        scale = max(h / 80, w / 120)
        assert (H, W, th, tw) == (80, 120, h, w) and 0 <= top <= 80 * scale - h and 0 <= left <= 120 * scale - w
        if center:
            assert abs(top - (80 * scale - h) / 2) <= 1 and abs(left - (120 * scale - w) / 2) <= 1
        pixels = out["pixel_values"].permute(1, 2, 0).numpy()
        for k, (i, _) in enumerate(p.subjects):
            x0, y0, x1, y1 = subject_box(i, 0)
            for f in (1, 2):
                grid = out["routing"][f][k].numpy()
                cell = 8 * f
                assert grid.shape == (h // cell, w // cell)
                # the subject's box in bucket pixels, then in grid cells
                bx0, bx1 = x0 * scale - left, x1 * scale - left
                by0, by1 = y0 * scale - top, y1 * scale - top
                ys, xs = np.mgrid[0:grid.shape[0], 0:grid.shape[1]] * cell
                inside = (xs >= bx0) & (xs + cell <= bx1) & (ys >= by0) & (ys + cell <= by1)
                outside = (xs + cell <= bx0) | (xs >= bx1) | (ys + cell <= by0) | (ys >= by1)
                assert grid[inside].all() and not grid[outside].any()
            # image and mask went through the same crop and resize: cells mostly of the subject's colour are on
            colour = _colour_fraction(pixels, COLOURS[i]).reshape(h // 8, 8, w // 8, 8).mean((1, 3))
            on = out["routing"][1][k].numpy() > 0
            assert on[colour > 0.75].all() and not on[colour < 0.25].any()


def test_sdxl_buckets_and_nearest():
    buckets = plan.sdxl_buckets(1024, 64, 4.0)
    assert (1024, 1024) in buckets and (512, 2048) in buckets and (2048, 512) in buckets
    assert all(h % 64 == 0 and w % 64 == 0 and max(h / w, w / h) <= 4 for h, w in buckets)
    assert all(abs(h * w / 1024**2 - 1) < 0.07 for h, w in buckets)
    assert plan.nearest_bucket(1080, 1920, buckets) == (768, 1344)
    assert plan.nearest_bucket(500, 500, buckets) == (1024, 1024)


@pytest.mark.parametrize("size", [(1920, 1080), (1080, 1920), (3840, 2160), (4032, 3024), (6000, 4000),
                                  (2048, 1024), (2340, 1080)])
def test_frames_at_the_default_max_side_cover_their_bucket_without_upscaling(size):
    """The data engine's default ``max_side`` (images.MAX_SIDE) is chosen for this trainer: a 16:9 video frame
    (landscape or portrait), a 4K one, 4:3 and 3:2 photos, 2:1 and a 19.5:9 phone screen, stored with their long
    side at max_side, still cover their 1024²-area bucket: resize-to-cover never scales them up."""
    params = AugmentParams()
    buckets = plan.sdxl_buckets(params.resolution, params.bucket_step, params.max_aspect)
    scale = images.scale_factor(*size, None, images.MAX_SIDE)
    w, h = round(size[0] * scale), round(size[1] * scale)
    assert max(w, h) == images.MAX_SIDE
    bucket = plan.nearest_bucket(h, w, buckets)
    x0, y0, x1, y1 = augment.fit_target(h, w, bucket, np.random.default_rng(0), True)[0]
    assert x1 - x0 >= bucket[1] - 1e-6 and y1 - y0 >= bucket[0] - 1e-6  # the crop spans ≥ bucket pixels


def test_bucket_batches_group_by_bucket_and_pool_leftovers():
    def p(bucket, n):
        return plan.Plan({"__key__": n}, {}, 0, [], bucket, False, 0)

    items = [p((1, 1), 0), p((2, 1), 1), p((1, 1), 2), p((1, 2), 3), p((2, 1), 4), p((3, 1), 5), p((1, 2), 6)]
    batches = list(plan.bucket_batches(iter(items), 2))
    assert [[x.key for x in b] for b in batches] == [[0, 2], [1, 4], [3, 6]]  # leftover 5 alone is dropped
    batches = list(plan.bucket_batches(iter(items[:6] + [p((4, 1), 7)]), 2))
    assert [[x.key for x in b] for b in batches] == [[0, 2], [1, 4], [3, 5]]  # 3, 5, 7 left: 7 dropped
    assert {x.bucket for x in batches[-1]} == {(1, 2)}  # pooled at the first plan's bucket


def test_collated_batch_shapes_and_padding(colour_dataset):
    cfg = data_cfg([colour_dataset(2, 3)], augment={**SMALL, "max_subjects": 3})
    batch = next(iter(make_loader(cfg, FACTORS, 0, DataPosition(1))))
    assert batch["pixel_values"].shape == (2, 3, 64, 96) and batch["time_ids"].shape == (2, 6)
    assert batch["clip_pixel_values"].shape == (2, 3, 3, 16, 16)
    assert batch["ref_pixel_values"].shape == (2, 3, 3, 32, 32) and batch["ref_masks"].shape == (2, 3, 1, 4, 4)
    assert {f: tuple(m.shape) for f, m in batch["routing_masks"].items()} == {1: (2, 3, 8, 12), 2: (2, 3, 4, 6)}
    valid = batch["subject_valid"]
    assert valid[:, 2].sum() == 0 and valid[:, 0].all()  # at most 2 subjects here
    assert batch["clip_pixel_values"][~valid].sum() == 0 and batch["routing_masks"][1][~valid].sum() == 0
    assert len(batch["captions"]) == 2 and batch["drop_subjects"].dtype == torch.bool
    assert batch["pixel_values"].dtype == batch["ref_pixel_values"].dtype == torch.uint8
    model_inputs = augment.normalize(batch)
    assert model_inputs["pixel_values"].min() >= -1 and model_inputs["pixel_values"].max() <= 1
    white = augment.normalize({**batch, "clip_pixel_values": torch.full((1, 3, 1, 1), 255, dtype=torch.uint8)})
    assert torch.allclose(white["clip_pixel_values"].flatten(), ((1 - augment._CLIP_MEAN) / augment._CLIP_STD).flatten())


def test_synthetic_datasets_are_refused_unless_allowed(colour_dataset, tmp_path):
    root = colour_dataset(1, 2, synthetic=True)
    with pytest.raises(streams.SyntheticDataError, match="synthetic_models: true.*--allow-synthetic"):
        open_sources(data_cfg([root]))
    assert open_sources(data_cfg([root], allow_synthetic=True))[0].sizes == (2,)
    with pytest.raises(shards.FormatError, match="no manifest.json"):
        streams.open_source(str(tmp_path / "nowhere"), None, 1.0, True)


def _first_round_keys(root, monkeypatch, rank):
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = data_cfg([root], num_workers=2)
    keys = {}
    for n, batch in enumerate(make_loader(cfg, FACTORS, 0, DataPosition(2, 2))):
        role, r, _ = batch["position"]
        assert r == 0
        keys.setdefault(role, set()).update(batch["keys"])
        if n == 5:  # round 0 of each worker: 6 samples, 3 batches
            return keys


def test_two_ranks_by_two_workers_read_disjoint_shards(colour_dataset, monkeypatch):
    root = colour_dataset(8, 3)  # 8 shards of 3: each (rank, worker) gets 2 shards = 6 samples per epoch
    seen = [keys for rank in (0, 1) for keys in _first_round_keys(root, monkeypatch, rank).values()]
    assert len(seen) == 4 and all(len(k) == 6 for k in seen)
    assert len(set().union(*seen)) == 24  # disjoint and together the whole dataset
    # too few shards for the split: a clear error instead of a worker that never yields
    src = open_sources(data_cfg([colour_dataset(3, 2, name="small")]))[0]
    with pytest.raises(ValueError, match="cannot be split over 2 ranks × 2 workers.*resampled"):
        list(zip(range(5), streams.shard_schedule(src, 0, False, 1, 2)))


def test_resampled_schedules_differ_by_rank_and_repeat_by_seed(colour_dataset, monkeypatch):
    src = open_sources(data_cfg([colour_dataset(3, 2)]))[0]
    monkeypatch.setenv("WORLD_SIZE", "2")
    draws = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        draws[rank] = [list(zip(range(30), streams.shard_schedule(src, 7, True, 0, 2))) for _ in range(2)]
    assert draws[0][0] == draws[0][1] and draws[0][0] != draws[1][0]  # deterministic, rank-specific
    assert {k for _, k in draws[0][0]} == {0, 1, 2}


def test_mixing_weights_are_sample_proportions(colour_dataset):
    a, b = colour_dataset(2, 10, name="a"), colour_dataset(2, 10, name="b")
    cfg = data_cfg([{"path": a, "weight": 3.0}, {"path": b, "weight": 1.0}], round_samples=40)
    sources = open_sources(cfg)
    names = [raw["__source__"] for r in range(10) for raw in streams.round_samples(sources, 0, False, 40, 0, 1, r)]
    assert len(names) == 400 and abs(names.count(sources[0].name) / 400 - 0.75) < 0.07


def test_index_and_tar_disagreeing_is_an_error(colour_dataset):
    root = colour_dataset(1, 3)
    rows = shards.read_table(root, shards.INDEX_FILE).to_pylist()
    shards.write_index(root, rows + [{**rows[0], "key": "ghost"}])
    src = open_sources(data_cfg([root], max_broken_fraction=1.0))[0]
    with pytest.raises(streams.BrokenShardsError, match="index lists 4 samples, tar holds 3"):
        list(streams.read_shard(src, 0))  # its only shard: nothing left to read


def mid_sample_cut(fileobj) -> int:
    """The byte inside the data of a tar's second sample's last file: a copy cut there holds the first sample
    whole and the second not."""
    import tarfile

    with tarfile.open(fileobj=fileobj) as tar:
        members = tar.getmembers()
    first_key = members[0].name.split(".", 1)[0]
    second_key = next(m.name.split(".", 1)[0] for m in members if m.name.split(".", 1)[0] != first_key)
    second = [m for m in members if m.name.split(".", 1)[0] == second_key][-1]
    return second.offset_data + second.size // 2


def truncate_shard(root: str, k: int) -> str:
    """Cut shard k of a dataset mid-sample (a copy interrupted mid-file)."""
    path = streams.open_source(root, None, 1.0, True).urls[k]
    with open(path, "rb") as f:
        cut = mid_sample_cut(f)
    with open(path, "r+b") as f:
        f.truncate(cut)
    return path


def test_a_truncated_shard_is_skipped_with_a_warning_and_counted(colour_dataset, caplog):
    root = colour_dataset(4, 3)
    broken = truncate_shard(root, 2)
    cfg = data_cfg([root], max_broken_fraction=0.25)
    sources = open_sources(cfg)
    raws = [raw for r in range(6) for raw in streams.round_samples(sources, 0, False, 6, 0, 1, r)]
    assert len(raws) == 36  # the stream went on: every round is full
    keys = {raw["__key__"] for raw in raws}
    assert sum(k.startswith("ds-2-") for k in keys) == 1 and len(keys) == 10  # the sample before the break
    assert sources[0].broken.keys() == {2}
    warned = [r.getMessage() for r in caplog.records if "broken after" in r.getMessage()]
    assert warned and all(broken in w and "broken shards of" in w and "1 of 4" in w for w in warned)
    # the trainer's stream: batches keep coming past the broken shard
    stream = SubjectStream(open_sources(cfg), cfg, FACTORS, 0, DataPosition(1))
    assert len(list(zip(range(12), iter(stream)))) == 12


def test_broken_shards_past_the_configured_fraction_stop_the_stream_naming_them(colour_dataset):
    root = colour_dataset(4, 3)
    broken = truncate_shard(root, 2)
    sources = open_sources(data_cfg([root], max_broken_fraction=0.2))  # 1 of 4 is more than 20 %
    with pytest.raises(streams.BrokenShardsError, match="1 of 4 shards broken") as e:
        [raw for r in range(6) for raw in streams.round_samples(sources, 0, False, 6, 0, 1, r)]
    assert broken in str(e.value) and "ReadError" in str(e.value)


@pytest.mark.parametrize("workers, stop", [(0, 3), (2, 5)])
def test_resumed_stream_continues_exactly(colour_dataset, workers, stop):
    cfg = data_cfg([colour_dataset(4, 5)], num_workers=workers, round_samples=5)

    def run(position, n):
        out = []
        for batch in make_loader(cfg, FACTORS, 0, position):
            position.consumed(batch["position"])
            out.append((batch["keys"], batch["pixel_values"], batch["ref_pixel_values"], batch["drop_subjects"]))
            if len(out) == n:
                return out

    straight = run(DataPosition(max(workers, 1)), 11)
    first = DataPosition(max(workers, 1))
    resumed = run(first, stop)
    state = first.state_dict()
    resumed += run(DataPosition.from_state(state, max(workers, 1), 1), 11 - stop)
    for a, b in zip(straight, resumed):
        assert a[0] == b[0] and all(torch.equal(x, y) for x, y in zip(a[1:], b[1:]))
    with pytest.raises(ValueError, match="same data.num_workers"):
        DataPosition.from_state(state, 3, 1)


def test_skipped_batches_are_not_decoded(colour_dataset, monkeypatch):
    cfg = data_cfg([colour_dataset(2, 6)], round_samples=12)
    stream = SubjectStream(open_sources(cfg), cfg, FACTORS, 0, DataPosition(1))
    calls = []
    monkeypatch.setattr("training.loader.realize", lambda p, *a: calls.append(p.key) or augment.realize(p, *a))
    batches = list(stream.round_batches(0, 1, 0, skip=4))
    assert len(batches) == 2 and len(calls) == 4 and [b["position"][2] for b in batches] == [4, 5]


@pytest.mark.parametrize("size,bucket", [((640, 480), (896, 1152)), ((640, 427), (832, 1280)),
                                         ((480, 640), (1152, 896))])
def test_a_coco_sized_router_image_is_upscaled_to_its_1024_area_bucket(size, bucket):
    """README "Training at 1024²": a 640×480 router image goes to the SDXL bucket nearest its aspect (area ≈ 1024²),
    resized up to cover it and centre/random-cropped; SDXL's micro-conditioning records the original size, and the
    routing targets are the masks through the same transform."""
    w, h = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    boxes = [(w // 8, h // 4, w // 8 + w // 4, h - h // 8), (w // 2 + w // 10, h // 5, w - w // 8, h - h // 10)]
    subjects = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        img[y0:y1, x0:x1] = COLOURS[i]
        m = np.zeros((h, w), bool)
        m[y0:y1, x0:x1] = True
        subjects.append(shards.Subject(i, "person", {0: m}))
    raw = shards.encode_sample(shards.Sample("coco", "router", [shards.Frame(img, "two people")], subjects))
    params = AugmentParams(center_crop=True, rotation=0, reference_size=64, clip_size=32)
    buckets = plan.sdxl_buckets(params.resolution, params.bucket_step, params.max_aspect)
    p = plan.choose(raw, params, buckets, np.random.default_rng(0))
    assert p.bucket == bucket and abs(bucket[0] * bucket[1] / 1024**2 - 1) < 0.07
    out = augment.realize(p, params, (1,))
    bh, bw = bucket
    assert out["pixel_values"].shape == (3, bh, bw)
    assert out["time_ids"].tolist()[:2] == [h, w] and out["time_ids"].tolist()[4:] == [bh, bw]
    pixels = out["pixel_values"].permute(1, 2, 0).numpy()
    for k in range(2):
        colour = _colour_fraction(pixels, COLOURS[k]).reshape(bh // 8, 8, bw // 8, 8).mean((1, 3))
        on = out["routing"][1][k].numpy() > 0
        assert on.sum() > 100 and on[colour > 0.75].all() and not on[colour < 0.25].any()
