"""Video inputs and frame sampling on clips made here (H.264 .mp4 from a real photo, hard cuts)."""

import os

import av
import fsspec
import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.parquet as pq
import pytest
from PIL import Image

from datagen import shards
from datagen.readers import video
from datagen.labeling.filters import FilterParams
from datagen.samples.video import PAN_CUT, STILL, ZOOM, Shot, Thing, write_broken, write_clip
from datagen.units import BadInput, Item, Rejected, Unit
from datagen.readers.video import SamplingParams

SIZE = (320, 240)
FP = FilterParams(min_image_side=200)
# short then long: the sampler must pick the second shot
SHORT_LONG = [Shot(1.2, (0.3, 0.3, 0.7), (0.35, 0.3, 0.6), tint=(1.1, 0.7, 0.7)),
              Shot(2.5, (0.5, 0.5, 1.0), (0.5, 0.4, 0.7), things=[Thing("box", (30, 60, 200), (0.2, 0.5), (0.8, 0.5))])]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for name, shots in (("pan_cut.mp4", PAN_CUT), ("zoom.mp4", ZOOM), ("still.mp4", STILL),
                        ("short_long.mp4", SHORT_LONG)):
        write_clip(str(root / name), shots, size=SIZE)
    return {**{p.name: str(p) for p in root.iterdir()}, **write_broken(str(root)), "root": str(root)}


def all_frames(path):
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_frames_come_from_distinct_times_within_one_shot_and_differ(clips):
    s = video.sample_clip(clips["pan_cut.mp4"], SamplingParams(), FP)
    assert s.cuts == [pytest.approx(3.0, abs=1 / 8)]  # the hard cut, to within one thumbnail interval
    times = [t for t, _, _ in s.frames]
    assert 2 <= len(times) <= 5 and times == sorted(set(times))
    assert times[0] >= 0.2 - 1e-6 and times[-1] < 3.0 - 0.2  # clear of the cut by the margin
    assert s.shot[0] == 0 and s.shot[1] < 3.0
    hashes = [imagehash.phash(Image.fromarray(im)) for _, _, im in s.frames]
    assert min(a - b for i, a in enumerate(hashes) for b in hashes[i + 1:]) > SamplingParams().max_hash_distance
    # seeking gave exactly the frame a full sequential decode has at that frame number
    frames = all_frames(clips["pan_cut.mp4"])
    for t, n, image in s.frames:
        assert n == round(t * 24)
        assert np.array_equal(image, frames[n])


def test_the_longest_shot_is_sampled(clips):
    s = video.sample_clip(clips["short_long.mp4"], SamplingParams(), FP)
    assert s.cuts == [pytest.approx(1.2, abs=1 / 8)]
    assert all(t > 1.2 for t, _, _ in s.frames) and s.shot[0] == pytest.approx(1.2, abs=1 / 8)
    adaptive = video.sample_clip(clips["short_long.mp4"], SamplingParams(detector="adaptive"), FP)
    assert adaptive.cuts == [pytest.approx(1.2, abs=1 / 8)]


def test_no_cut_in_a_single_shot_and_frames_spread_over_it(clips):
    s = video.sample_clip(clips["zoom.mp4"], SamplingParams(max_frames=3), FP)
    assert s.cuts == [] and len(s.frames) == 3
    times = [t for t, _, _ in s.frames]
    assert times[0] < 0.5 and times[-1] > 3.0 and 1.0 < times[1] < 3.0  # spread over the 4 s shot


def test_near_duplicates_and_blurry_frames_are_skipped(clips):
    with pytest.raises(Rejected) as e:
        video.sample_clip(clips["still.mp4"], SamplingParams(), FP)
    assert e.value.reason == "too_few_frames" and "frame_near_duplicate 9" in e.value.detail
    with pytest.raises(Rejected) as e:
        video.sample_clip(clips["zoom.mp4"], SamplingParams(min_sharpness=1e9), FP)
    assert "frame_blurry 10" in e.value.detail
    image = all_frames(clips["zoom.mp4"])[0]
    blurred = np.asarray(Image.fromarray(image).resize((80, 60)).resize(SIZE))
    assert video.sharpness(blurred) < video.sharpness(image) / 3


def test_short_shots_and_small_frames_are_rejected(clips):
    with pytest.raises(Rejected) as e:
        video.sample_clip(clips["pan_cut.mp4"], SamplingParams(min_shot_s=4.0), FP)
    assert e.value.reason == "no_usable_shot"
    with pytest.raises(Rejected) as e:
        video.sample_clip(clips["pan_cut.mp4"], SamplingParams(), FilterParams(min_image_side=241))
    assert e.value.reason == "image_too_small"


@pytest.mark.parametrize("name,reason", [("truncated.mp4", "corrupt_video"), ("empty.mp4", "empty_file"),
                                         ("audio_only.mp4", "no_video_stream"), ("missing.mp4", "missing_file")])
def test_broken_inputs_raise_bad_input_with_the_reason(clips, name, reason):
    path = clips.get(name, os.path.join(clips["root"], name))
    with pytest.raises(BadInput) as e:
        video.sample_clip(path, SamplingParams(), FP)
    assert e.value.reason == reason and path in e.value.detail


def test_max_side_downscales_while_decoding(clips):
    s = video.sample_clip(clips["zoom.mp4"], SamplingParams(max_side=160, max_frames=2), FilterParams(min_image_side=0))
    assert all(im.shape == (120, 160, 3) for _, _, im in s.frames)


def test_load_sample_builds_a_video_sample_with_a_deterministic_key(clips):
    url = clips["pan_cut.mp4"]
    item = video.load_sample(Item(Unit(f"video:{url}", {"url": url})), SamplingParams(), FP)
    (sample,) = item.samples
    again = video.load_sample(Item(Unit(f"video:{url}", {"url": url})), SamplingParams(), FP).samples[0]
    assert sample.key == again.key and sample.key.startswith("vid-") and "." not in sample.key
    numbers = [fr.fields["frame"] for fr in sample.frames]
    assert sample.key.endswith("-" + "-".join(map(str, numbers)))
    assert sample.source == "video" and all("time_s" in fr.fields for fr in sample.frames)
    assert sample.provenance["url"] == url and sample.provenance["cuts_s"] == [pytest.approx(3.0, abs=1 / 8)]
    assert item.drops == {f"decode/{k}": v for k, v in video.sample_clip(url, SamplingParams(), FP).drops.items()}


def test_list_videos_from_folders_lists_and_urls(clips, tmp_path):
    root = clips["root"]
    listed = video.list_videos([root])
    names = [os.path.basename(p) for p in listed]
    assert names == sorted(names) and "pan_cut.mp4" in names and not any(n.startswith(".") for n in names)
    (tmp_path / "clips.txt").write_text(f"# comment\n{clips['zoom.mp4']}\nrel/a.mp4\n\n")
    pyarrow.csv.write_csv(pa.table({"path": [clips["still.mp4"], "b.mp4"]}), str(tmp_path / "clips.csv"))
    pq.write_table(pa.table({"url": ["s3://bucket/c.mp4"]}), str(tmp_path / "clips.parquet"))
    got = video.list_videos([str(tmp_path / "clips.txt"), str(tmp_path / "clips.csv"), clips["zoom.mp4"]])
    assert got == [clips["zoom.mp4"], f"{tmp_path}/rel/a.mp4", clips["still.mp4"], f"{tmp_path}/b.mp4"]
    assert video.list_videos([str(tmp_path / "clips.parquet")], column="url") == ["s3://bucket/c.mp4"]
    with pytest.raises(FileNotFoundError):
        video.list_videos([str(tmp_path / "nowhere")])
    units = video.list_units(listed)
    assert [u.id for u in units] == [f"video:{p}" for p in listed] and units[0].ref == {"url": listed[0]}


def test_fsspec_urls_are_read_through_a_file_object(clips):
    fs = fsspec.filesystem("memory")
    with open(clips["zoom.mp4"], "rb") as f:
        fs.pipe("/videos/zoom.mp4", f.read())
    fs.pipe("/videos/notes.txt", b"not a video")
    (url,) = video.list_videos(["memory://videos"])
    assert url.startswith("memory://") and url.endswith("/videos/zoom.mp4")
    s = video.sample_clip(url, SamplingParams(max_frames=2), FP)
    local = video.sample_clip(clips["zoom.mp4"], SamplingParams(max_frames=2), FP)
    assert [n for _, n, _ in s.frames] == [n for _, n, _ in local.frames]


@pytest.mark.parametrize("name", ["pan_cut.mp4", "short_long.mp4", "zoom.mp4", "still.mp4"])
def test_keyframe_scan_finds_the_cuts_of_the_full_scan(clips, name):
    def scan(mode):
        with video.open_video(clips[name]) as (c, stream):
            return video.scan(c, stream, SamplingParams(scan=mode))

    full, keys = scan("full"), scan("keyframes")
    assert keys.cuts == pytest.approx(full.cuts, abs=1 / 8)
    assert keys.start == full.start and keys.end == pytest.approx(full.end, abs=1 / 24)
    assert keys.keyframes == full.keyframes and len(keys.keyframes) >= 2
    if name == "still.mp4":  # calm footage: only the tail after the last keyframe is decoded
        assert keys.decoded < full.decoded / 1.5, (keys.decoded, full.decoded)


def test_keyframe_scan_samples_the_same_frames(clips):
    full = video.sample_clip(clips["pan_cut.mp4"], SamplingParams(), FP)
    keys = video.sample_clip(clips["pan_cut.mp4"], SamplingParams(scan="keyframes"), FP)
    assert [n for _, n, _ in keys.frames] == [n for _, n, _ in full.frames]
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(keys.frames, full.frames))


@pytest.mark.parametrize("rotation,corner", [(-90, (0, -1)), (90, (-1, 0)), (180, (-1, -1))])
def test_display_matrix_rotation_is_applied_to_every_frame(tmp_path, rotation, corner):
    """A phone clip: frames stored 320×240 with a red block at the stored top-left, and a display matrix. The
    sampled frames come out as shown: portrait for ±90, and the block at the corner the rotation takes it to."""
    path = str(tmp_path / "phone.mp4")
    marked = [Shot(2.5, (0.5, 0.5, 1.0), (0.5, 0.4, 0.7), things=[Thing("box", (230, 20, 20), (0.12, 0.15),
                                                                             (0.13, 0.16), 0.15)])]
    write_clip(path, marked, size=SIZE, rotation=rotation)
    s = video.sample_clip(path, SamplingParams(max_frames=3, min_sharpness=0), FP)
    shape = (320, 240, 3) if rotation % 180 else (240, 320, 3)
    assert len(s.frames) >= 2 and all(im.shape == shape for _, _, im in s.frames)
    for _, _, im in s.frames:
        h, w = im.shape[:2]
        for cy, cx in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
            y = slice(h // 32, h // 8) if cy == 0 else slice(h - h // 8, h - h // 32)
            x = slice(w // 32, w // 8) if cx == 0 else slice(w - w // 8, w - w // 32)
            r, g, b = im[y, x].reshape(-1, 3).mean(0)
            assert bool(r > g + 100 and r > b + 100) == ((cy, cx) == corner), (rotation, (cy, cx), (r, g, b))


def test_odd_local_names_are_read_as_names(clips, tmp_path):
    odd = tmp_path / "clips[1]"
    odd.mkdir()
    os.link(clips["pan_cut.mp4"], odd / "a::b.mp4")  # fsspec read "::" as a chained URL: missing_file
    [listed] = video.list_videos([str(odd)])
    assert listed == str(odd / "a::b.mp4")
    assert video.list_videos([listed]) == [listed]
    s = video.sample_clip(listed, SamplingParams(max_frames=2), FP)
    assert len(s.frames) == 2


def test_frames_above_max_pixels_are_refused_before_decoding(clips):
    with pytest.raises(Rejected) as e:
        video.sample_clip(clips["pan_cut.mp4"], SamplingParams(max_pixels=320 * 240 - 1), FP)
    assert e.value.reason == "too_many_pixels" and "320x240" in e.value.detail


@pytest.mark.parametrize("rotation,shape", [(0, (864, 1536, 3)), (-90, (1536, 864, 3))])
def test_a_1080p_clip_is_stored_at_the_default_max_side(tmp_path, rotation, shape):
    """A 1920×1080 clip (and a phone's portrait one: stored 1920×1080, display matrix -90°) comes out with its
    long side at the default max_side (images.MAX_SIDE: README "Frame size"), downscaled while decoding; the
    sample's meta.json sizes are the stored ones, provenance keeps the size shown. Later stages (detection,
    segmentation) run on these frames, so their boxes and masks are at this size (check_sample holds them to it)."""
    path = str(tmp_path / "hd.mp4")
    # 8 frames at 8 fps: encoding 1080p is most of this test's time
    write_clip(path, [Shot(1.0, (0.5, 0.5, 1.0), (0.5, 0.4, 0.7))], fps=8, size=(1920, 1080), rotation=rotation)
    item = video.load_sample(Item(Unit(f"video:{path}", {"url": path})),
                             SamplingParams(max_frames=2, candidates=3, min_sharpness=0, min_shot_s=0.5), FP)
    [s] = item.samples
    assert len(s.frames) == 2 and all(fr.image.shape == shape for fr in s.frames)
    meta = shards.sample_meta(s)
    assert [(f["width"], f["height"]) for f in meta["frames"]] == [(shape[1], shape[0])] * 2
    assert meta["provenance"]["original_size"] == ([1920, 1080] if rotation == 0 else [1080, 1920])
    # the picture of a full decode of that frame brought to that size (area filter: ~1 level off, not ~25)
    n = s.frames[0].fields["frame"]
    with av.open(path) as c:
        frame = next(f for k, f in enumerate(c.decode(video=0)) if k == n)
        full = np.ascontiguousarray(np.rot90(frame.to_ndarray(format="rgb24"), rotation // 90 % 4))
    small = np.asarray(Image.fromarray(full).resize((shape[1], shape[0]), Image.BOX), dtype=int)
    assert np.abs(s.frames[0].image - small).mean() < 3


def test_the_decode_downscale_averages_rather_than_picks_pixels(tmp_path):
    """1-pixel black/white stripes at 1920×1080 brought to 1536: an area filter averages each stored pixel over
    1.25 source columns (grey levels, std ~57); picking pixels would alias them into full-contrast bands (~127)."""
    path = str(tmp_path / "stripes.mp4")
    image = np.zeros((1080, 1920, 3), np.uint8)
    image[:, ::2] = 255
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast", "threads": "1"}
        for _ in range(2):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode())
    with video.open_video(path) as (container, stream):
        [(_, frame)], shown = video.frames_at(container, stream, [0.0], 1536)
    assert frame.shape == (864, 1536, 3) and shown == (1920, 1080)
    assert frame.std() < 80
