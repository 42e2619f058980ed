"""Video clips → 2–5 frames of one shot (MS-Diffusion §A: 2–5 frames per clip; AnyStory's video pairs).

Inputs (``list_videos``): folders (local or fsspec URLs; every video file below them, sorted), list files
(``.txt`` one path/URL a line, ``.csv``/``.parquet`` a column; relative entries are relative to the list) and
single paths/URLs. One unit per clip.

Sampling (``sample_clip``) makes two passes over the file with PyAV:
Frames come out upright: the stream's display-matrix rotation (phone clips) is applied to each (``upright``), and
with their long side at most ``max_side`` (downscaled while converting to RGB; provenance keeps ``original_size``).

1. scan: one sequential decode that skips non-reference frames and converts only ``scan_fps`` small thumbnails
   a second, fed to PySceneDetect's detector, gives the cut times. Finding cuts needs the whole clip; nothing
   else is decoded in full;
2. sample: in the longest shot, ``candidates`` evenly spaced times clear of its cuts are decoded by seeking;
   blurry candidates (variance of the Laplacian) and near-duplicates of chosen ones (perceptual hash) are
   skipped, and at most ``max_frames`` spread over the shot are kept. Frames of one shot share their subjects:
   frames across a cut usually do not.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Literal

import av
import cv2
import fsspec
import imagehash
import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from datagen import files, images
from datagen.labeling import filters
from datagen.labeling.filters import FilterParams
from datagen.params import Params
from datagen.shards import Frame, Sample, stable_key
from datagen.units import BadInput, Item, Rejected, Unit

STAGE = "decode"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mpg", ".mpeg", ".ts")
LIST_EXTENSIONS = (".txt", ".csv", ".parquet")


class SamplingParams(Params):
    min_frames: int = Field(2, ge=1)
    max_frames: int = Field(5, ge=1)
    candidates: int = Field(10, ge=1)  # times tried in the chosen shot (each one seek + decode)
    min_shot_s: float = 1.0  # shorter shots are not sampled
    shot_margin_s: float = 0.2  # candidates keep this far from the shot's cuts (transitions, encoder smear)
    scan: Literal["full", "keyframes"] = "full"  # how cuts are looked for (see ``scan``)
    keyframe_threshold: float = 27.0  # scan "keyframes": ContentDetector score of consecutive keyframes above
    #                                   which the interval between them is decoded to look for a cut
    detector: Literal["content", "adaptive"] = "content"  # PySceneDetect ContentDetector / AdaptiveDetector
    content_threshold: float = 27.0
    adaptive_threshold: float = 3.0
    scan_fps: float = Field(8.0, gt=0)  # thumbnails per second the cut detector sees
    scan_width: int = 128
    min_sharpness: float = 100.0  # variance of the Laplacian (grey, long side ≤ 512 px) below → blurry
    max_hash_distance: int = 6  # perceptual-hash Hamming distance (of 64 bits) at or below → near-duplicate
    max_side: int | None = images.MAX_SIDE  # a longer frame side is downscaled while decoding (area, by FFmpeg)
    max_pixels: int = images.MAX_PIXELS  # a stream declaring larger frames is refused before decoding

    @model_validator(mode="after")
    def _frames_range(self):
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames {self.min_frames} > max_frames {self.max_frames}")
        return self


# ------------------------------------------------------------------------------------------------ inputs


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocols or "local" in protocols


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return path if _is_local(fs) else fs.unstrip_protocol(path)


def _read_list(url: str, column: str) -> list[str]:
    fs, path = files.url_to_fs(url)
    with fs.open(path, "rb") as f:
        if path.lower().endswith(".txt"):
            entries = [ln.strip() for ln in f.read().decode("utf-8").splitlines()]
            entries = [e for e in entries if e and not e.startswith("#")]
        elif path.lower().endswith(".csv"):
            import pyarrow.csv

            entries = pyarrow.csv.read_csv(f).column(column).to_pylist()
        else:
            import pyarrow.parquet

            entries = pyarrow.parquet.read_table(f, columns=[column]).column(column).to_pylist()
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    return [e if "://" in e or os.path.isabs(e) else f"{base}/{e}" for e in map(str, entries)]


def list_videos(inputs: list[str], column: str = "path", extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[str]:
    """Every clip the inputs name, in a deterministic order, each once. A missing input raises here."""
    out: list[str] = []
    for entry in inputs:
        fs, path = files.url_to_fs(entry)
        if path.lower().endswith(LIST_EXTENSIONS):
            out += _read_list(entry, column)
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if p.lower().endswith(extensions)
                     and not p.rsplit("/", 1)[-1].startswith(".")]
            out += sorted(_url(fs, p) for p in found)
        elif fs.exists(path):
            out.append(entry)
        else:
            raise FileNotFoundError(f"video input does not exist: {entry}")
    return list(dict.fromkeys(out))


def list_units(urls: list[str]) -> list[Unit]:
    return [Unit(f"video:{u}", {"url": u}) for u in urls]


# ----------------------------------------------------------------------------------------------- decoding


@contextlib.contextmanager
def open_video(url: str) -> Iterator[tuple[av.container.InputContainer, av.video.stream.VideoStream]]:
    """The container and its first video stream; broken inputs raise BadInput with the reason."""
    fs, path = files.url_to_fs(url)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise BadInput("missing_file", url) from None
    if not size:
        raise BadInput("empty_file", f"{url}: 0 bytes")
    with contextlib.ExitStack() as stack:
        source = path if _is_local(fs) else stack.enter_context(fs.open(path, "rb"))
        try:
            container = stack.enter_context(av.open(source))
        except av.error.FFmpegError as e:
            raise BadInput("corrupt_video", f"{url}: {e}") from None
        if not container.streams.video:
            kinds = [s.type for s in container.streams] or ["none"]
            raise BadInput("no_video_stream", f"{url}: streams {kinds}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream


def _fps(stream) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else 25.0


def _cut_detector(p: SamplingParams):
    from scenedetect import AdaptiveDetector, ContentDetector

    # min_scene_len 0: report every cut; shots too short to sample are skipped later
    if p.detector == "adaptive":
        return AdaptiveDetector(adaptive_threshold=p.adaptive_threshold, min_scene_len=0)
    return ContentDetector(threshold=p.content_threshold, min_scene_len=0)


def _thumbnail(frame, width: int) -> np.ndarray:
    height = max(2, round(width * frame.height / frame.width / 2) * 2)
    return frame.to_ndarray(format="bgr24", width=width, height=height)


@dataclass
class Scan:
    cuts: list[float]  # stream times (s) of the first thumbnail after each cut
    keyframes: list[float]  # stream times of the keyframes seen
    start: float | None  # time of the first frame
    end: float | None  # time of the last frame
    fps: float
    decoded: int  # frames the scan decoded


def _detect(frames, detector, p: SamplingParams, fps: float, stop: float = np.inf) -> Scan:
    """Feed ``scan_fps`` thumbnails a second of ``frames`` (and the first one at or after ``stop``) to a
    PySceneDetect detector; ``start``/``end`` are the first and last frame times (None when none decoded)."""
    from scenedetect import FrameTimecode

    out = Scan([], [], None, None, fps, 0)
    due = -np.inf
    for frame in frames:
        out.decoded += 1
        if frame.time is None:
            continue
        t = out.end = frame.time
        out.start = t if out.start is None else out.start
        if frame.key_frame:
            out.keyframes.append(t)
        if t >= due or t >= stop:
            check_frame(frame, p.max_pixels)
            due = t + 1 / p.scan_fps
            out.cuts += [c.seconds for c in detector.process_frame(FrameTimecode(t, fps), _thumbnail(frame, p.scan_width))]
        if t >= stop:
            break
    if out.end is not None:
        out.cuts += [c.seconds for c in detector.post_process(FrameTimecode(out.end, fps))]
    return out


def scan(container, stream, p: SamplingParams, url: str = "") -> Scan:
    """Pass 1: the cut times.

    ``scan: full`` (default) decodes the clip once, skipping the B-frames nothing refers to, and feeds
    thumbnails to the detector: every shot boundary is looked at. ``scan: keyframes`` decodes the keyframes
    first; only intervals between consecutive keyframes that differ by ``keyframe_threshold`` (camera motion
    or a cut), plus the tail after the last keyframe, are decoded for the detector. It saves decoding on calm
    footage (talking heads, product shots) and can miss a cut whose two sides look alike at the keyframes
    (a cut away and back inside one interval).
    """
    from scenedetect import ContentDetector, FrameTimecode

    fps = _fps(stream)
    stream.codec_context.skip_frame = "NONREF"  # B-frames nothing refers to are not needed to find cuts
    try:
        if p.scan == "full":
            result = _detect(container.decode(stream), _cut_detector(p), p, fps)
        else:
            keys, end = _keyframe_thumbnails(container, stream, p)
            result = Scan([], [t for t, _ in keys], keys[0][0] if keys else None, end, fps, len(keys))
            coarse = ContentDetector(threshold=p.keyframe_threshold, min_scene_len=0)
            intervals = [(keys[k - 1][0], t) for k, (t, thumb) in enumerate(keys)
                         if coarse.process_frame(FrameTimecode(t, fps), thumb) and k > 0]
            intervals += [(keys[-1][0], np.inf)] if keys else []  # the coarse pass never saw the tail
            for a, b in intervals:
                container.seek(int(round(a / stream.time_base)), stream=stream, backward=True)
                part = _detect(container.decode(stream), _cut_detector(p), p, fps, stop=b)
                result.cuts += part.cuts
                result.decoded += part.decoded
                result.end = max(t for t in (result.end, part.end) if t is not None) if part.end is not None \
                    else result.end
    except av.error.FFmpegError as e:
        raise BadInput("corrupt_video", f"{url}: decoding failed: {e}") from None
    finally:
        stream.codec_context.skip_frame = "DEFAULT"
    if result.start is None:
        raise BadInput("no_frames", f"{url}: the video stream decodes to no frame")
    result.cuts = sorted(set(result.cuts))
    return result


def _keyframe_thumbnails(container, stream, p: SamplingParams) -> tuple[list[tuple[float, np.ndarray]], float]:
    """Thumbnails of the keyframes (the only packets decoded) and the time of the last packet."""
    stream.codec_context.skip_frame = "NONKEY"
    keys, end = [], None
    try:
        for packet in container.demux(stream):
            if packet.pts is not None:
                t = float(packet.pts * stream.time_base)
                end = t if end is None else max(end, t)
            for f in (f for f in packet.decode() if f.time is not None):
                check_frame(f, p.max_pixels)
                keys.append((f.time, _thumbnail(f, p.scan_width)))
    finally:
        stream.codec_context.skip_frame = "NONREF"
    return keys, end


def shots(s: Scan, scan_fps: float) -> list[tuple[float, float]]:
    """[first, last] stream times of each shot. A cut lies between the thumbnail before it and the one at it,
    so a shot is known to end one thumbnail interval before the next cut."""
    starts = [s.start, *s.cuts]
    ends = [c - 1 / scan_fps for c in s.cuts] + [s.end]
    return [(a, b) for a, b in zip(starts, ends) if b > a]


def check_frame(frame: av.VideoFrame, max_pixels: int) -> None:
    """Refuse a frame larger than ``max_pixels`` before converting it: the stream header gives only the first
    size, and a stream may grow mid-way (a new sequence header), so each frame is checked."""
    images.check_pixels(frame.width, frame.height, max_pixels, f"frame at {frame.time}s")


def frames_at(container, stream, times: list[float], max_side: int | None = None,
              keyframes: list[float] | None = None, max_pixels: int = images.MAX_PIXELS
              ) -> tuple[list[tuple[float, np.ndarray]], tuple[int, int]]:
    """Pass 2: the frame shown at each (ascending) time, upright and with its long side at most ``max_side``
    (swscale's area filter while converting to RGB: no full-size RGB copy), and the (width, height) shown before
    that downscale. The decoder seeks to the keyframe before a time, unless it already stands between that keyframe
    and the time: then decoding on is cheaper than seeking back."""
    out = []
    shown = (0, 0)
    half = 0.5 / _fps(stream)
    frames, position = None, None
    for t in times:
        key = max((k for k in keyframes or () if k <= t + half), default=None)
        if frames is None or key is None or position is None or not key <= position < t - half:
            container.seek(int(t / stream.time_base), stream=stream, backward=True)
            frames = container.decode(stream)
        for frame in frames:
            if frame.time is None:
                continue
            position = frame.time
            if frame.time >= t - half:
                check_frame(frame, max_pixels)
                w, h = frame.width, frame.height
                shown = (h, w) if frame.rotation % 180 else (w, h)
                scale = images.scale_factor(w, h, None, max_side)
                size = {"width": round(w * scale), "height": round(h * scale), "interpolation": "AREA"} \
                    if scale < 1 else {}
                out.append((frame.time, upright(frame, frame.to_ndarray(format="rgb24", **size))))
                break
    return out, shown


def upright(frame: av.VideoFrame, image: np.ndarray) -> np.ndarray:
    """The frame as it is meant to be shown. Phones store portrait clips sideways with a display matrix (stream
    side data) that players apply; PyAV decodes the stored pixels and only reports the matrix's rotation
    (``frame.rotation``: degrees counter-clockwise, from the DISPLAYMATRIX side data FFmpeg attaches to every
    decoded frame), so it is applied here. Mirroring matrices (rare) are not handled."""
    rotation = frame.rotation
    if rotation % 90:
        raise BadInput("unsupported_rotation", f"display matrix rotates by {rotation} degrees, not a multiple of 90")
    k = (rotation // 90) % 4
    return np.ascontiguousarray(np.rot90(image, k)) if k else image


# ----------------------------------------------------------------------------------------------- sampling


def sharpness(image: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image at ≤ 512 px (resolution-independent blur measure)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    scale = 512 / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


def select(candidates: list[tuple[float, np.ndarray]], p: SamplingParams) -> tuple[list[int], Counter]:
    """Indices of the frames kept (time order) and the candidates skipped by reason."""
    drops: Counter = Counter()
    chosen: list[int] = []
    hashes: list[imagehash.ImageHash] = []
    for k, (_, image) in enumerate(candidates):
        if sharpness(image) < p.min_sharpness:
            drops["frame_blurry"] += 1
            continue
        h = imagehash.phash(Image.fromarray(image))
        if any(h - other <= p.max_hash_distance for other in hashes):
            drops["frame_near_duplicate"] += 1
            continue
        chosen.append(k)
        hashes.append(h)
    if len(chosen) > p.max_frames:  # spread the kept frames over the shot
        chosen = [chosen[i] for i in np.linspace(0, len(chosen) - 1, p.max_frames).round().astype(int)]
    return chosen, drops


@dataclass
class Sampled:
    frames: list[tuple[float, int, np.ndarray]]  # (seconds from the clip start, frame number, RGB)
    shot: tuple[float, float]  # seconds from the clip start
    cuts: list[float]
    duration: float
    fps: float
    original_size: tuple[int, int]  # (width, height) as shown, before the ``max_side`` downscale
    drops: Counter = field(default_factory=Counter)


def sample_clip(url: str, p: SamplingParams, fp: FilterParams | None = None) -> Sampled:
    """2–5 sharp, distinct frames of the clip's longest shot; Rejected when the clip has none to give."""
    with open_video(url) as (container, stream):
        images.check_pixels(stream.codec_context.width, stream.codec_context.height, p.max_pixels, url)
        if fp is not None:
            filters.check_image_size(stream.codec_context.width, stream.codec_context.height, fp)
        s = scan(container, stream, p, url)
        usable = [(a, b) for a, b in shots(s, p.scan_fps) if b - a >= p.min_shot_s]
        if not usable:
            raise Rejected("no_usable_shot", f"{url}: {len(s.cuts)} cuts, no shot of {p.min_shot_s}s or longer")
        a, b = max(usable, key=lambda ab: ab[1] - ab[0])
        lo, hi = a + p.shot_margin_s, b - p.shot_margin_s
        times = list(np.linspace(lo, hi, p.candidates)) if hi > lo else [(a + b) / 2]
        candidates, shown = frames_at(container, stream, times, p.max_side, s.keyframes, p.max_pixels)
    chosen, drops = select(candidates, p)
    if len(chosen) < p.min_frames:
        detail = ", ".join(f"{r} {n}" for r, n in sorted(drops.items())) or "none skipped"
        raise Rejected("too_few_frames", f"{url}: {len(chosen)} of {len(candidates)} candidates usable ({detail})")
    frames = [(t - s.start, int(round((t - s.start) * s.fps)), im) for t, im in (candidates[k] for k in chosen)]
    return Sampled(frames, (a - s.start, b - s.start), [c - s.start for c in s.cuts], s.end - s.start, s.fps, shown,
                   drops)


def load_sample(item: Item, p: SamplingParams, fp: FilterParams) -> Item:
    """Decode stage: the unit's clip → a video Sample with its frames (captions and subjects come later)."""
    url = item.unit.ref["url"]
    s = sample_clip(url, p, fp)
    for reason, n in s.drops.items():
        item.drop(STAGE, reason, n)
    item.samples = [Sample(
        key=stable_key("vid", url, *(n for _, n, _ in s.frames)),
        source="video",
        frames=[Frame(image, "", {"time_s": round(t, 3), "frame": n}) for t, n, image in s.frames],
        provenance={"url": url, "duration_s": round(s.duration, 3), "fps": round(s.fps, 3),
                    "shot_s": [round(v, 3) for v in s.shot], "cuts_s": [round(c, 3) for c in s.cuts],
                    "original_size": list(s.original_size)},
    )]
    return item
