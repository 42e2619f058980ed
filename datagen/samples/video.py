"""Short H.264 clips for the video source, made here from a real photo (no downloads).

A clip is a list of shots joined by hard cuts. In each shot a virtual camera pans and zooms over the photo
(the person in it moves across the frame) while coloured "subjects" (a ball, a box, ...) move over it; shots
differ by framing, mirroring and tint, so cuts are real content changes. Next to the clips: a near-static
clip (its frames are near-duplicates), a phone's portrait clip stored sideways with a display rotation, a
truncated file, a zero-length file and an audio-only file, so a sample run shows every way a clip ends in
quarantine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import av
import numpy as np
from PIL import Image, ImageDraw

from datagen.samples.photos import PHOTO

FPS = 24
SIZE = (768, 576)


@dataclass
class Thing:
    """A moving subject: ``shape`` ellipse|box|triangle, centre and radius as fractions of the frame."""

    shape: str
    colour: tuple[int, int, int]
    start: tuple[float, float]
    end: tuple[float, float]
    radius: float = 0.12


@dataclass
class Shot:
    seconds: float
    view0: tuple[float, float, float]  # camera centre x, y (fractions of the photo) and zoom (1 = whole width)
    view1: tuple[float, float, float]
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    mirror: bool = False
    things: list[Thing] = field(default_factory=list)


# Two shots with a hard cut at 3 s: the person with a red ball and a blue box, then a mirrored, tinted close-up
# with a green triangle.
PAN_CUT = [
    Shot(3.0, (0.45, 0.45, 1.0), (0.55, 0.5, 0.8), things=[
        Thing("ellipse", (220, 40, 40), (0.15, 0.75), (0.45, 0.7)),
        Thing("box", (40, 70, 220), (0.85, 0.3), (0.65, 0.35), 0.1),
    ]),
    Shot(2.5, (0.5, 0.35, 0.6), (0.45, 0.4, 0.5), tint=(0.7, 1.05, 0.8), mirror=True, things=[
        Thing("triangle", (40, 190, 60), (0.2, 0.3), (0.35, 0.55), 0.14),
    ]),
]
# One shot zooming in on the face while a yellow ball crosses.
ZOOM = [
    Shot(4.0, (0.5, 0.5, 1.0), (0.5, 0.35, 0.55), things=[
        Thing("ellipse", (235, 200, 30), (0.9, 0.8), (0.1, 0.65), 0.1),
    ]),
]
# A camera that does not move: every frame is a near-duplicate of the others.
STILL = [Shot(3.0, (0.5, 0.5, 0.9), (0.5, 0.5, 0.9))]

CLIPS = {"pan_cut.mp4": PAN_CUT, "zoom.mp4": ZOOM, "still.mp4": STILL}
# A phone's portrait clip: stored 640×360 with a display matrix that turns it upright (-90°: clockwise).
PHONE = ("phone_portrait.mp4", ZOOM, (640, 360), -90)


def _lerp(a, b, u):
    return tuple(x + (y - x) * u for x, y in zip(a, b))


def render(photo: Image.Image, shot: Shot, u: float, size: tuple[int, int] = SIZE) -> np.ndarray:
    """Frame at progress ``u`` ∈ [0, 1] through the shot."""
    w, h = size
    pw, ph = photo.size
    cx, cy, zoom = _lerp(shot.view0, shot.view1, u)
    vw = pw * zoom
    vh = vw * h / w
    x0 = min(max(cx * pw - vw / 2, 0), pw - vw) if vw <= pw else (pw - vw) / 2
    y0 = min(max(cy * ph - vh / 2, 0), ph - vh) if vh <= ph else (ph - vh) / 2
    im = photo.transform(size, Image.EXTENT, (x0, y0, x0 + vw, y0 + vh), Image.BILINEAR)
    if shot.mirror:
        im = im.transpose(Image.FLIP_LEFT_RIGHT)
    draw = ImageDraw.Draw(im)
    for t in shot.things:
        x, y = _lerp(t.start, t.end, u)
        r = t.radius * h
        x, y = x * w, y * h
        outline = tuple(c // 3 for c in t.colour)
        if t.shape == "ellipse":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=t.colour, outline=outline, width=3)
            draw.ellipse((x - r / 2, y - r / 2, x - r / 6, y - r / 6), fill=tuple(min(255, c + 60) for c in t.colour))
        elif t.shape == "box":
            draw.rectangle((x - r, y - 0.8 * r, x + r, y + 0.8 * r), fill=t.colour, outline=outline, width=3)
            draw.line((x - r, y, x + r, y), fill=outline, width=3)
        else:
            draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=t.colour, outline=outline, width=3)
    frame = np.asarray(im, dtype=np.float32) * np.asarray(shot.tint, dtype=np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_clip(path: str, shots: list[Shot], fps: int = FPS, size: tuple[int, int] = SIZE, gop: int = 48,
               rotation: int = 0) -> None:
    """Encode the shots as H.264 (yuv420p) .mp4, a keyframe at least every ``gop`` frames. ``rotation``: a
    display matrix rotating the stored frames by that many degrees counter-clockwise, as phones write portrait
    clips (stored landscape, shown upright with rotation -90)."""
    with Image.open(PHOTO) as im:
        photo = im.convert("RGB")
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast", "g": str(gop), "threads": "1"}
        if rotation:
            stream.set_display_rotation(rotation)
        for shot in shots:
            n = int(round(shot.seconds * fps))
            for i in range(n):
                frame = av.VideoFrame.from_ndarray(render(photo, shot, i / max(n - 1, 1), size), format="rgb24")
                out.mux(stream.encode(frame))
        out.mux(stream.encode())


def write_audio_only(path: str, seconds: float = 1.0, rate: int = 16000) -> None:
    """An .mp4 holding one AAC audio stream and no video."""
    with av.open(path, "w") as out:
        stream = out.add_stream("aac", rate=rate)
        stream.layout = "mono"
        t = np.arange(int(seconds * rate)) / rate
        tone = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            frame = av.AudioFrame.from_ndarray(tone[None, start:start + 1024], format="flt", layout="mono")
            frame.sample_rate = rate
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


def write_broken(root: str) -> dict[str, str]:
    """A truncated clip (no moov atom), a zero-length file and an audio-only file."""
    paths = {k: os.path.join(root, k) for k in ("truncated.mp4", "empty.mp4", "audio_only.mp4")}
    source = os.path.join(root, ".whole.mp4")
    write_clip(source, [Shot(1.0, (0.5, 0.5, 1.0), (0.5, 0.5, 0.9))])
    with open(source, "rb") as f:
        data = f.read()
    os.remove(source)
    with open(paths["truncated.mp4"], "wb") as f:
        f.write(data[: len(data) // 2])
    open(paths["empty.mp4"], "wb").close()
    write_audio_only(paths["audio_only.mp4"])
    return paths


def make(root: str) -> dict:
    out = os.path.join(root, "video")
    done = os.path.join(out, ".complete")
    if not os.path.exists(done):
        os.makedirs(out, exist_ok=True)
        for name, shots in CLIPS.items():
            write_clip(os.path.join(out, name), shots)
        name, shots, size, rotation = PHONE
        write_clip(os.path.join(out, name), shots, size=size, rotation=rotation)
        write_broken(out)
        open(done, "w").close()
    return {"clips": out}
