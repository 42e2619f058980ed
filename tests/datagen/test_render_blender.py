"""The blender backend (Cycles via BlenderProc on the ``bpy`` wheel) agrees with the fast one: same silhouettes
under the same cameras, base colour textures and vertex colours visible at their colour ("Standard" view).

Needs the blender interpreter (``make setup-blender``: bpy pins numpy<2, so it has a venv of its own); marked slow
too, so the default run stays without it: ``pytest -m blender``.
"""

import numpy as np
import pytest
import trimesh
from PIL import Image

from datagen.render import RenderParams, RenderProcess, check_backend, interpreter
from datagen.render.fast import srgb_to_linear
from datagen.samples.objaverse import banded, uv_box

pytestmark = [pytest.mark.blender, pytest.mark.slow]

RES = 64
RED, GREEN = (200, 40, 40), (40, 170, 60)
FLAT = {"suns": 0, "ambient": 1.0}  # uniform white light: a diffuse surface shows its base colour


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("meshes")
    out = {"box": str(d / "red_box.glb"), "ball": str(d / "green_ball.glb"), "ball_ply": str(d / "green_ball.ply")}
    uv_box(Image.new("RGB", (16, 16), RED), extents=(1.0, 0.6, 0.8)).export(out["box"])
    banded(trimesh.creation.icosphere(subdivisions=3), [GREEN]).export(out["ball"])
    banded(trimesh.creation.icosphere(subdivisions=3), [GREEN]).export(out["ball_ply"])
    return out


@pytest.fixture(scope="module")
def renderers():
    try:
        check_backend(params("blender"))
    except RuntimeError as e:
        pytest.skip(f"no blender interpreter: {e}")
    procs = {name: RenderProcess(name, threads=2, python=interpreter(params(name))) for name in ("fast", "blender")}
    yield procs
    for p in procs.values():
        p.close()


def params(backend, **kw):
    return RenderParams(**{"backend": backend, "camera": {"resolution": RES}, "blender": {"samples": 8}, **kw})


def test_same_silhouettes_and_cameras_as_the_fast_backend(files, renderers):
    fast = renderers["fast"].render(files["box"], params("fast"), seed=0)
    cycles = renderers["blender"].render(files["box"], params("blender"), seed=0)
    assert [v.pose.tolist() for v in fast.views] == [v.pose.tolist() for v in cycles.views]
    for a, b in zip(fast.masks, cycles.masks):
        assert (a & b).sum() / (a | b).sum() > 0.93  # they differ only along anti-aliased edges
    assert cycles.info["renderer"].startswith("blender-4.")
    assert (cycles.rgb[cycles.alpha == 0] == 255).all()  # composited on the white background


def test_texture_and_vertex_colours_show(files, renderers):
    """Under a uniform white world a surface shows its base colour plus a little neutral (grey) specular."""

    def linear_colour(path):
        r = renderers["blender"].render(path, params("blender", lights=FLAT), seed=0)
        inner = [m & (a == 255) for m, a in zip(r.masks, r.alpha)]
        return srgb_to_linear(np.concatenate([r.rgb[j][inner[j]] for j in range(7)]).mean(axis=0) / 255)

    for path, expected in ((files["box"], srgb_to_linear(np.array(RED) / 255)),  # textures are sRGB
                           (files["ball"], np.array(GREEN) / 255),  # glTF COLOR_0 is linear
                           (files["ball_ply"], srgb_to_linear(np.array(GREEN) / 255))):  # PLY colours are sRGB
        specular = linear_colour(path) - expected
        assert specular.min() > -0.03 and specular.max() < 0.06, (path, specular)
        assert np.ptp(specular) < 0.03, (path, specular)  # grey: the hue is the material's
