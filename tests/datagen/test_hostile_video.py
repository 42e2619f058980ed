"""Issue 24 (hostile inputs, round 2), video: a stream whose frames grow past ``max_pixels`` mid-way (its header
gives only the first size) is refused at the first such frame, before it is converted."""

import av
import numpy as np
import pytest

from datagen.readers import video
from datagen.units import Rejected


def segment(path, width, height, seconds, fps=8):
    rng = np.random.default_rng(width)
    with av.open(str(path), "w", format="mpegts") as out:
        stream = out.add_stream("mpeg2video", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(int(seconds * fps)):
            image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())


def growing_clip(tmp_path):
    """A transport stream of 96x64 frames, then 480x320 ones (two segments, as a concatenated stream)."""
    segment(tmp_path / "a.ts", 96, 64, 3)
    segment(tmp_path / "b.ts", 480, 320, 3)
    clip = tmp_path / "grows.ts"
    clip.write_bytes((tmp_path / "a.ts").read_bytes() + (tmp_path / "b.ts").read_bytes())
    return str(clip)


@pytest.mark.parametrize("scan", ["full", "keyframes"])
def test_frames_growing_past_max_pixels_mid_stream_are_refused(tmp_path, monkeypatch, scan):
    clip = growing_clip(tmp_path)
    with video.open_video(clip) as (_, stream):
        assert (stream.codec_context.width, stream.codec_context.height) == (96, 64)  # all the header says
    converted = []
    real = av.VideoFrame.to_ndarray
    monkeypatch.setattr(av.VideoFrame, "to_ndarray", lambda f, *a, **k: converted.append(f.width) or real(f, *a, **k))
    p = video.SamplingParams(max_pixels=96 * 64 * 4, scan=scan, min_sharpness=0)
    with pytest.raises(Rejected, match="too_many_pixels.*480x320"):
        video.sample_clip(clip, p)
    assert 480 not in converted  # refused before conversion
    try:  # under the default cap the big frames are read (noise frames are all cuts: no usable shot is fine)
        video.sample_clip(clip, video.SamplingParams(scan=scan, min_sharpness=0))
    except Rejected as e:
        assert e.reason != "too_many_pixels"
    assert 480 in converted
