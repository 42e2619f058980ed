"""The 7-view renderer (fast backend) on meshes made here: exact masks, cameras, distinct views, determinism,
texture and vertex colours, load checks, and the child process's timeout and crash handling."""

import importlib.util
import json
import os
import signal
import sys
import threading

import numpy as np
import pytest
import trimesh
from matplotlib.path import Path
from PIL import Image
from scipy.spatial import ConvexHull

from datagen import render
from datagen.render import FastParams, RenderParams, RenderProcess, meshes, rig
from datagen.samples.objaverse import banded, stripes, uv_box
from datagen.units import BadInput, Rejected

pytest.importorskip("pyrender")

RES = 96
RED, GREEN = (200, 40, 40), (40, 170, 60)


def params(**kw):
    return RenderParams(**{"isolate": False, "camera": {"resolution": RES}, **kw})


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("meshes")
    out = {}
    # a 1 × 0.6 × 0.8 box: not a cube, so normalisation and every view's silhouette are non-trivial
    out["box"] = str(d / "red_box.glb")
    uv_box(Image.new("RGB", (16, 16), RED), extents=(1.0, 0.6, 0.8)).export(out["box"])
    out["ball"] = str(d / "green_ball.glb")
    banded(trimesh.creation.icosphere(subdivisions=2), [GREEN]).export(out["ball"])
    out["ball_ply"] = str(d / "green_ball.ply")
    banded(trimesh.creation.icosphere(subdivisions=2), [GREEN]).export(out["ball_ply"])
    out["striped"] = str(d / "striped.glb")
    uv_box(stripes([RED, GREEN])).export(out["striped"])
    out["corrupt"] = str(d / "corrupt.glb")
    with open(out["corrupt"], "wb") as f:
        f.write(b"glTF\x02\x00\x00\x00 not a chunk")
    out["points"] = str(d / "points.ply")
    trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(out["points"])
    return out


@pytest.fixture(scope="module")
def box_views(files):
    return render.render(files["box"], params(), seed=0)


def box_corners(path):
    return meshes.load(path, meshes.MeshParams()).scene.to_mesh().vertices


def distance_to_polygon(points, polygon):
    """Distance of each point to the closed polygon's boundary."""
    a, b = polygon, np.roll(polygon, -1, axis=0)
    ab = b - a
    t = np.clip(((points[:, None] - a) * ab).sum(-1) / (ab * ab).sum(-1), 0, 1)
    return np.linalg.norm(points[:, None] - (a + t[..., None] * ab), axis=-1).min(axis=1)


def test_mask_is_exactly_the_projected_silhouette(files, box_views):
    """Independent of the renderer: the convex hull of the box's projected corners, tested at pixel centres."""
    corners = box_corners(files["box"])
    centres = np.stack(np.meshgrid(np.arange(RES) + 0.5, np.arange(RES) + 0.5), -1).reshape(-1, 2)
    for view, mask in zip(box_views.views, box_views.masks):
        uv = rig.project(view, corners)
        polygon = uv[ConvexHull(uv).vertices]
        expected = Path(polygon).contains_points(centres).reshape(RES, RES)
        wrong = mask ^ expected
        # rasterisers differ from the exact silhouette only at pixels whose centre lies on its edge
        near_edge = (distance_to_polygon(centres, polygon) < 0.75).reshape(RES, RES)
        assert not (wrong & ~near_edge).any()
        assert wrong.sum() <= 0.01 * expected.sum()


def test_mask_equals_alpha_and_background_is_exact(box_views):
    """Without supersampling coverage is 0 or 1: mask == alpha, and the background is the configured colour."""
    assert set(np.unique(box_views.alpha)) == {0, 255}
    assert np.array_equal(box_views.masks, box_views.alpha == 255)
    assert (box_views.rgb[~box_views.masks] == 255).all()
    assert (box_views.rgb[box_views.masks] < 250).any(axis=-1).mean() > 0.95  # the object is not white


def test_supersampled_mask_is_half_coverage(files):
    r = render.render(files["box"], params(fast={"supersample": 2}, background=(0, 0, 0)), seed=0)
    assert np.array_equal(r.masks, r.alpha >= 128)
    assert ((r.alpha > 0) & (r.alpha < 255)).any()  # anti-aliased edges
    base = render.render(files["box"], params(), seed=0)
    iou = (r.masks & base.masks).sum(axis=(1, 2)) / (r.masks | base.masks).sum(axis=(1, 2))
    assert iou.min() > 0.95


def test_cameras_project_the_centre_to_the_principal_point(files, box_views):
    mesh = meshes.load(files["box"], meshes.MeshParams())
    lo, hi = mesh.scene.bounds
    np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-9)  # normalised: the object's centre is the origin
    np.testing.assert_allclose(hi - lo, [1.0, 0.6, 0.8], atol=1e-9)
    for view in box_views.views:
        K, pose = np.array(view.K), np.array(view.pose)
        np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-9)  # a rotation
        uvw = K @ np.linalg.inv(pose)[:3] @ np.array([0, 0, 0, 1.0])
        np.testing.assert_allclose(uvw[:2] / uvw[2], [RES / 2, RES / 2], atol=1e-9)
        # the camera sits at its stated angles and distance (degrees)
        np.testing.assert_allclose(pose[:3, 3], view.distance * rig.direction(view.azimuth, view.elevation), atol=1e-9)
        f = json.loads(json.dumps(view.fields()))
        assert f["convention"] == "opencv_c2w" and np.array(f["K"]).shape == (3, 3)


def test_seven_distinct_views_in_the_zero123_layout(box_views):
    angles = [(v.azimuth, v.elevation) for v in box_views.views]
    assert angles == [(0, 0), (30, 20), (90, -10), (150, 20), (210, -10), (270, 20), (330, -10)]
    centres = np.array([v.pose[:3, 3] for v in box_views.views])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1)[np.triu_indices(7, 1)]
    assert gaps.min() > 0.5 * box_views.views[0].distance
    images = box_views.rgb.astype(int)
    diffs = [np.abs(images[i] - images[j]).mean() for i in range(7) for j in range(i + 1, 7)]
    assert min(diffs) > 2.0


def test_fit_distance_keeps_the_object_inside_the_frame(box_views):
    for mask in box_views.masks:
        ys, xs = np.nonzero(mask)
        assert xs.min() > 0 and ys.min() > 0 and xs.max() < RES - 1 and ys.max() < RES - 1


def test_deterministic_given_the_seed(files):
    p = params(camera={"resolution": RES, "azimuth_jitter": 10, "elevation_jitter": 5})
    a, b = render.render(files["striped"], p, seed=7), render.render(files["striped"], p, seed=7)
    assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.masks, b.masks)
    assert [v.pose.tolist() for v in a.views] == [v.pose.tolist() for v in b.views]
    c = render.render(files["striped"], p, seed=8)
    assert [v.azimuth for v in a.views] != [v.azimuth for v in c.views]
    assert not np.array_equal(a.rgb, c.rgb)


def _mean_colour(r):
    return np.concatenate([r.rgb[j][r.masks[j]] for j in range(7)]).mean(axis=0)


def test_texture_and_vertex_colours_show(files):
    flat = {"lights": {"suns": 0, "ambient": 1.0}}  # unlit: the frame shows the base colour itself
    # base colour textures are sRGB
    np.testing.assert_allclose(_mean_colour(render.render(files["box"], params(**flat), 0)), RED, atol=6)
    # glTF's COLOR_0 is linear: it shows as its sRGB encoding
    linear = 255 * (np.array(GREEN) / 255) ** (1 / 2.2)
    np.testing.assert_allclose(_mean_colour(render.render(files["ball"], params(**flat), 0)), linear, atol=6)
    # PLY colours are sRGB (as Blender reads them)
    np.testing.assert_allclose(_mean_colour(render.render(files["ball_ply"], params(**flat), 0)), GREEN, atol=6)
    # lit by the default rig: still the material's hue, at a comparable brightness
    lit = _mean_colour(render.render(files["box"], params(), 0))
    assert np.dot(lit, RED) / np.linalg.norm(lit) / np.linalg.norm(RED) > 0.98
    assert 0.6 < lit.sum() / sum(RED) < 1.4
    # a texture with two colours shows both
    r = render.render(files["striped"], params(**flat), 0)
    pixels = r.rgb[0][r.masks[0]].astype(int)
    for colour in (RED, GREEN):
        assert (np.abs(pixels - colour).max(axis=1) < 8).mean() > 0.3


def test_load_checks(files, tmp_path):
    with pytest.raises(BadInput) as e:
        meshes.load(files["corrupt"], meshes.MeshParams())
    assert e.value.reason == "load_failed"
    with pytest.raises(Rejected) as e:
        meshes.load(files["points"], meshes.MeshParams())
    assert e.value.reason == "no_geometry"
    with pytest.raises(Rejected) as e:
        meshes.load(files["ball"], meshes.MeshParams(max_faces=100))
    assert e.value.reason == "too_many_faces" and "320 faces > 100" in e.value.detail
    with pytest.raises(BadInput) as e:
        meshes.load(str(tmp_path / "x.stl"), meshes.MeshParams())
    assert e.value.reason == "unsupported_format"


def test_a_texture_trimesh_drops_is_caught(tmp_path):
    """An undecodable embedded image: trimesh loads the mesh untextured, silently; we reject it as texture_lost."""
    files = uv_box(Image.new("RGB", (8, 8), RED)).export(file_type="gltf")
    doc = json.loads(files["model.gltf"])
    view = doc["bufferViews"][doc["images"][0]["bufferView"]]
    uri = doc["buffers"][view["buffer"]]["uri"]
    for name, data in files.items():
        if name == uri:
            start = view.get("byteOffset", 0)
            data = data[:start] + bytes(view["byteLength"]) + data[start + view["byteLength"]:]
        (tmp_path / name).write_bytes(data)
    with pytest.raises(Rejected) as e:
        meshes.load(str(tmp_path / "model.gltf"), meshes.MeshParams())
    assert e.value.reason == "texture_lost"
    assert meshes.load(str(tmp_path / "model.gltf"), meshes.MeshParams(reject_lost_textures=False)).textured == 0


def test_child_process_matches_in_process_and_survives_timeouts_and_crashes(files):
    p = params(isolate=True)
    proc = RenderProcess("fast", threads=1)
    try:
        isolated = proc.render(files["box"], p, 0)
        here = render.render(files["box"], params(), 0)
        assert np.array_equal(isolated.rgb, here.rgb) and np.array_equal(isolated.masks, here.masks)
        with pytest.raises(Rejected) as e:  # filters travel back with their reason
            proc.render(files["points"], p, 0)
        assert e.value.reason == "no_geometry"

        first = proc.proc.pid
        with pytest.raises(BadInput) as e:
            proc.render(files["box"], p.model_copy(update={"timeout_s": 1e-3}), 0)
        assert e.value.reason == "render_timeout" and proc.proc is None  # killed
        assert np.array_equal(proc.render(files["box"], p, 0).masks, here.masks)  # a fresh child
        assert proc.proc.pid != first

        # a renderer that dies mid-object (as a segfault in C would): the object fails, the next one renders
        slow = p.model_copy(update={"camera": rig.CameraParams(resolution=512), "fast": FastParams(supersample=4)})
        victim = proc.proc.pid
        killer = threading.Timer(0.3, os.kill, (victim, signal.SIGSEGV))
        killer.start()
        with pytest.raises(BadInput) as e:
            proc.render(files["ball"], slow, 0)
        killer.join()
        assert e.value.reason == "renderer_crashed" and f"exited with {-signal.SIGSEGV}" in e.value.detail
        assert np.array_equal(proc.render(files["box"], p, 0).masks, here.masks)
    finally:
        proc.close()


def test_blender_backend_without_its_interpreter_fails_at_start_up_naming_the_fix(tmp_path):
    missing = render.RenderParams(backend="blender", blender={"python": str(tmp_path / "no-python")})
    with pytest.raises(RuntimeError, match="make setup-blender"):
        render.check_backend(missing)
    with pytest.raises(RuntimeError, match="isolate: true"):  # another interpreter is only reachable in a child
        render.check_backend(missing.model_copy(update={"isolate": False}))
    no_bpy = missing.model_copy(update={"blender": missing.blender.model_copy(update={"python": sys.executable})})
    if importlib.util.find_spec("bpy") is None:  # this interpreter, named explicitly, has no bpy
        with pytest.raises(RuntimeError, match="needs `bpy`.*make setup-blender"):
            render.check_backend(no_bpy)
