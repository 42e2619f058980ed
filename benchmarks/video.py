"""Video source throughput against baselines measured in the same run.

1. decode + sample: ``datagen.readers.video.sample_clip`` (scan pass for cuts, seeks for the candidates, blur and
   near-duplicate checks) in clips/s, against a plain sequential decode of the same frames: every frame decoded
   and converted to RGB up to the last sampled one, as a frame-reading loop does (and, stricter, converting
   only the sampled ones). Also PySceneDetect's own ``detect()`` on each file against our scan pass.
2. model stages (``--stages``; default when a CUDA device is present): frames/s of the captioner, detector,
   segmenter and embedder at real size (Qwen2-VL-2B, Grounding DINO base, SAM ViT-H, DINOv2-base) in bf16.
   Weights are random (built from configs, no hub): the compute is the real one. They are saved and loaded
   back through each stage's ``real`` loading path. ``--tiny`` runs the same code with tiny models (a smoke
   test of the harness on CPU; its numbers mean nothing).

    python benchmarks/video.py [--clips 4] [--seconds 15] [--size 960x540] [--stages] [--tiny] [--frames 32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import av
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datagen import tiny
from datagen.readers import video  # noqa: E402
from datagen.units import Rejected  # noqa: E402
from datagen.samples.video import PAN_CUT, ZOOM, Shot, Thing, write_clip  # noqa: E402


def clip_shots(seconds: float, seed: int) -> list[Shot]:
    """Shots of the sample clips, cycled and stretched to about ``seconds``: a cut every few seconds."""
    rng = np.random.default_rng(seed)
    shots, total = [], 0.0
    while total < seconds:
        base = (PAN_CUT + ZOOM)[len(shots) % 3]
        length = float(rng.uniform(2.0, 6.0))
        tint = tuple(float(v) for v in rng.uniform(0.7, 1.1, 3))
        shots.append(Shot(length, base.view0, base.view1, tint, bool(rng.integers(2)),
                          [Thing(t.shape, t.colour, t.start, t.end, t.radius) for t in base.things]))
        total += length
    return shots


def sequential(path: str, numbers: list[int], convert_all: bool) -> list[np.ndarray]:
    """Plain reading: decode from the start through the last wanted frame, keeping the wanted ones."""
    wanted, out = set(numbers), []
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for n, frame in enumerate(c.decode(stream)):
            if convert_all or n in wanted:
                image = frame.to_ndarray(format="rgb24")
                if n in wanted:
                    out.append(image)
            if n >= max(numbers):
                break
    return out


def timed(fn, repeats: int = 3):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def bench_decode(args) -> None:
    from scenedetect import ContentDetector, detect

    width, height = (int(v) for v in args.size.split("x"))
    tmp = tempfile.mkdtemp(prefix="bench-video-")
    paths = []
    t0 = time.perf_counter()
    for k in range(args.clips):
        paths.append(os.path.join(tmp, f"clip{k}.mp4"))
        write_clip(paths[-1], clip_shots(args.seconds, k), size=(width, height))
    print(f"{args.clips} clips of ~{args.seconds:g}s at {width}x{height}, H.264 GOP 2s, made in "
          f"{time.perf_counter() - t0:.1f}s")
    p = video.SamplingParams()
    keyframes_p = video.SamplingParams(scan="keyframes")
    ours = plain = strict = scan_t = library = keys_t = 0.0
    frames = done = 0
    for path in paths:
        try:
            t, s = timed(lambda: video.sample_clip(path, p))
        except Rejected as e:  # the random shots can make a clip the sampler refuses: that is its job
            print(f"  {os.path.basename(path)}: rejected ({e.reason}: {e.detail.split(': ', 1)[-1]}), not timed")
            continue
        numbers = [n for _, n, _ in s.frames]
        t_plain, images = timed(lambda: sequential(path, numbers, convert_all=True))
        t_strict, _ = timed(lambda: sequential(path, numbers, convert_all=False))
        assert all(np.array_equal(a, b) for a, b in zip(images, (im for _, _, im in s.frames))), "frames differ"

        def scan_only():
            with video.open_video(path) as (c, stream):
                return video.scan(c, stream, p)

        t_scan, sc = timed(scan_only)

        def scan_keyframes():
            with video.open_video(path) as (c, stream):
                return video.scan(c, stream, keyframes_p)

        t_keys, sk = timed(scan_keyframes)
        keys_t += t_keys
        t_lib, scenes = timed(lambda: detect(path, ContentDetector(), backend="pyav"), repeats=1)
        ours, plain, strict, scan_t, library = ours + t, plain + t_plain, strict + t_strict, scan_t + t_scan, library + t_lib
        frames += len(numbers)
        print(f"  {os.path.basename(path)}: {len(sc.cuts)} cuts (PySceneDetect detect(): {max(len(scenes) - 1, 0)}, "
              f"scan keyframes: {len(sk.cuts)}, decoding {sk.decoded} of {sc.decoded} frames), frames {numbers}")
        done += 1
    if not done:
        return
    n = done
    print(f"decode+sample (ours)                 {n / ours:7.2f} clips/s  ({frames} frames, scan pass "
          f"{scan_t / ours:.0%} of the time)")
    print(f"sequential decode, RGB every frame   {n / plain:7.2f} clips/s  → ours {plain / ours:.2f}x")
    print(f"sequential decode, RGB wanted only   {n / strict:7.2f} clips/s  → ours {strict / ours:.2f}x")
    print(f"cut scan: ours {n / scan_t:.2f} clips/s vs PySceneDetect detect() {n / library:.2f} clips/s "
          f"→ {library / scan_t:.2f}x; scan: keyframes {n / keys_t:.2f} clips/s → {scan_t / keys_t:.2f}x the full scan")


# --------------------------------------------------------------------------------------------- model stages


def real_size_models(root: str, dtype: torch.dtype) -> dict[str, str]:
    """Qwen2-VL-2B, Grounding DINO base, SAM ViT-H and DINOv2-base shapes with random weights, saved under
    ``root`` with processors (small tokenizers: token ids, not vocabulary size, drive the compute)."""
    from transformers import (BertConfig, BitImageProcessor, Dinov2Config, Dinov2Model, GroundingDinoConfig,
                              GroundingDinoForObjectDetection, GroundingDinoImageProcessor, GroundingDinoProcessor,
                              Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor, SamConfig, SamImageProcessor, SamModel,
                              SamProcessor,
                              SamVisionConfig, SwinConfig)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = tiny.word_tokenizer()
    ids = tok.convert_tokens_to_ids
    builds = {
        "captioner": (lambda: Qwen2VLForConditionalGeneration(Qwen2VLConfig(
            text_config=dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                             num_attention_heads=12, num_key_value_heads=2, bos_token_id=ids("<|endoftext|>"),
                             eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),
                             rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                              "rope_theta": 1e6}),
            vision_config=dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16),
            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))),
            Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tok,
                             video_processor=Qwen2VLVideoProcessor(), chat_template=tiny.QWEN_CHAT_TEMPLATE)),
        "detector": (lambda: GroundingDinoForObjectDetection(GroundingDinoConfig(
            backbone_config=SwinConfig(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
                                       window_size=12, image_size=384, out_indices=[2, 3, 4]),
            text_config=BertConfig())),
            GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(), tokenizer=tiny.bert_tokenizer())),
        "segmenter": (lambda: SamModel(SamConfig(vision_config=SamVisionConfig(
            hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, global_attn_indexes=[7, 15, 23, 31]))),
            SamProcessor(image_processor=SamImageProcessor())),
        "embedder": (lambda: Dinov2Model(Dinov2Config(image_size=518)), BitImageProcessor(
            size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])),
    }
    paths = {}
    for role, (build, processor) in builds.items():
        with torch.device(device):
            model = build().to(dtype)
        path = os.path.join(root, role)
        model.save_pretrained(path)
        processor.save_pretrained(path)
        paths[role] = path
        del model
    return paths


def tiny_models(root: str) -> dict[str, str]:
    """The tiny models saved the same way (harness smoke test)."""
    paths = {}
    for role, build in (("captioner", tiny.qwen2_vl), ("detector", tiny.grounding_dino), ("segmenter", tiny.sam),
                        ("embedder", tiny.dinov2)):
        model, processor = build()
        paths[role] = os.path.join(root, role)
        model.save_pretrained(paths[role])
        processor.save_pretrained(paths[role])
    return paths


def bench_stages(args) -> None:
    from datagen.labeling.captions import CaptionParams, Captioner
    from datagen.labeling.detection import DetectionParams, Detector
    from datagen.labeling.matching import Embedder, masked_crop
    from datagen.models import ModelSpec
    from datagen.labeling.segmentation import Segmenter

    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if cuda else "float32"
    root = tempfile.mkdtemp(prefix="bench-models-")
    t0 = time.perf_counter()
    paths = tiny_models(root) if args.tiny else real_size_models(root, getattr(torch, dtype))
    print(f"{'tiny' if args.tiny else 'real-size'} models built and saved in {time.perf_counter() - t0:.0f}s; "
          f"device {'cuda: ' + torch.cuda.get_device_name() if cuda else 'cpu'}, {dtype}")

    def spec(role):
        return ModelSpec(role=role, id=role, revision="bench", mode="real", path=paths[role], dtype=dtype)

    rng = np.random.default_rng(0)
    width, height = (int(v) for v in args.size.split("x"))
    path = os.path.join(root, "clip.mp4")
    write_clip(path, clip_shots(args.frames / 4, 0), size=(width, height))
    with av.open(path) as c:
        images = [f.to_ndarray(format="rgb24") for _, f in zip(range(args.frames), c.decode(video=0))]
    phrases = [["person", "red ball", "blue box"]] * len(images)
    boxes = [[[width * 0.1, height * 0.1, width * 0.5, height * 0.9], [width * 0.5, height * 0.5, width * 0.7,
                                                                        height * 0.8]] for _ in images]
    masks = [rng.random((height, width)) > 0.3 for _ in range(4)]
    crops = [masked_crop(im, masks[k % 4], boxes[0][k % 2]) for k, im in enumerate(images)]

    def sync():
        if cuda:
            torch.cuda.synchronize()

    runs = {
        "caption": (lambda: Captioner(spec("captioner"), CaptionParams(batch_size=args.batch, max_new_tokens=48)),
                    lambda m: m(images)),
        "detect": (lambda: Detector(spec("detector"), DetectionParams(batch_size=args.batch)),
                   lambda m: m(images, phrases)),
        "segment": (lambda: Segmenter(spec("segmenter")), lambda m: m(images, boxes)),
        "embed": (lambda: Embedder(spec("embedder")), lambda m: m(crops)),
    }
    for name, (load, call) in runs.items():
        model = load()
        call(model)  # warm-up (kernels, allocator)
        sync()
        t0 = time.perf_counter()
        call(model)
        sync()
        seconds = time.perf_counter() - t0
        peak = f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
        print(f"  {name:8s} {len(images) / seconds:8.2f} frames/s{peak}")
        del model
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--seconds", type=float, default=15.0)
    p.add_argument("--size", default="960x540")
    p.add_argument("--stages", action="store_true", help="time the model stages (default with a CUDA device)")
    p.add_argument("--tiny", action="store_true", help="model stages with tiny models (harness smoke test)")
    p.add_argument("--frames", type=int, default=32, help="frames per model stage")
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    bench_decode(args)
    if args.stages or args.tiny or torch.cuda.is_available():
        bench_stages(args)
    else:
        print("model stages: no CUDA device here, real-size bf16 throughput not measured "
              "(run with a GPU, or --tiny to smoke-test the harness)")


if __name__ == "__main__":
    main()
