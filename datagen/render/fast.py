"""The fast backend: pyrender (OpenGL 3.3) headless on EGL — Mesa's llvmpipe on CPU, the GPU's EGL where one exists.

Rasterised PBR with sun + ambient light, no global illumination. pyrender has no image-based lighting, so a
metallic surface would reflect nothing but the suns and render near black: metallic is capped by
``max_metallic`` (0 by default), which keeps base colours recognisable. Masks come from the depth buffer (any
geometry in the pixel), so transparent materials do not punch holes in them; with ``supersample`` s the views
are drawn at s× resolution and box-filtered, and the mask is "covered by at least half the samples".
"""

from __future__ import annotations

import os

import numpy as np

from datagen.render import RenderParams
from datagen.render.meshes import Mesh
from datagen.render.rig import OPENCV_TO_OPENGL, Sun, View, sun_pose

# EGL unless the caller chose a platform (osmesa also runs headless); must be set before OpenGL is imported.
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")

import pyrender  # noqa: E402
import pyrender.renderer  # noqa: E402
import trimesh  # noqa: E402

# pyrender hard-codes 4× MSAA for its framebuffer, and the blit that reads it back takes one sample per pixel
# (sample 0: at (0.375, 0.875) px on llvmpipe, driver-specific elsewhere), so masks and colours would sit up to
# 0.4 px off the stored K. With 0 samples GL tests coverage at pixel centres: the frames match K exactly, and
# anti-aliasing is ours (``supersample``).
_storage_multisample = pyrender.renderer.glRenderbufferStorageMultisample
pyrender.renderer.glRenderbufferStorageMultisample = \
    lambda target, samples, fmt, width, height: _storage_multisample(target, 0, fmt, width, height)

SRGB_COLOR_FORMATS = (".ply", ".obj")


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def _mesh(geom: trimesh.Trimesh, srgb_colors: bool, max_metallic: float) -> pyrender.Mesh:
    """trimesh → pyrender, keeping the file's alpha mode (pyrender forces BLEND on everything)."""
    visual = geom.visual
    if srgb_colors and visual.kind == "vertex":
        # PLY/OBJ colours are sRGB by custom (Blender's importers read them so); glTF's COLOR_0 is linear
        geom = geom.copy()
        rgba = geom.visual.vertex_colors / 255.0
        rgba[:, :3] = srgb_to_linear(rgba[:, :3])
        geom.visual.vertex_colors = np.round(rgba * 255).astype(np.uint8)
    mesh = pyrender.Mesh.from_trimesh(geom, smooth=visual.kind != "face")
    mode = getattr(getattr(visual, "material", None), "alphaMode", None) if visual.kind == "texture" else None
    for prim in mesh.primitives:
        mat = prim.material
        mat.alphaMode = mode if mode in ("BLEND", "MASK") else "OPAQUE"
        metallic = 1.0 if mat.metallicFactor is None else mat.metallicFactor  # glTF's default is fully metallic
        mat.metallicFactor = min(metallic, max_metallic)
    return mesh


class FastRenderer:
    """Renders the views of one normalised mesh; keeps its OpenGL context between objects."""

    name = "fast"

    def __init__(self):
        self._renderer: pyrender.OffscreenRenderer | None = None

    def version(self) -> str:
        return f"pyrender-{pyrender.__version__}"

    def _context(self, size: int) -> pyrender.OffscreenRenderer:
        if self._renderer is None or self._renderer.viewport_width != size:
            self.close()
            self._renderer = pyrender.OffscreenRenderer(size, size)
        return self._renderer

    def render(self, path: str, mesh: Mesh, views: list[View], suns: list[Sun],
               p: RenderParams) -> tuple[np.ndarray, np.ndarray]:
        """→ premultiplied RGB (V×H×W×3 float32 in [0, 1], display sRGB) and coverage alpha (V×H×W float32)."""
        s, cam = p.fast.supersample, p.camera
        srgb_colors = os.path.splitext(path)[1].lower() in SRGB_COLOR_FORMATS
        scene = pyrender.Scene(bg_color=[0.0, 0.0, 0.0, 0.0], ambient_light=[p.lights.ambient] * 3)
        meshes = {name: _mesh(g, srgb_colors, p.fast.max_metallic) for name, g in mesh.scene.geometry.items()}
        for node in mesh.scene.graph.nodes_geometry:
            pose, name = mesh.scene.graph[node]
            scene.add(meshes[name], pose=pose)
        for sun in suns:
            # pyrender's diffuse term is albedo/π × intensity × n·l: π × intensity lights a facing white surface fully
            scene.add(pyrender.DirectionalLight(intensity=np.pi * sun.intensity), pose=sun_pose(sun))
        renderer = self._context(cam.resolution * s)
        rgb, alpha = [], []
        for view in views:
            K = view.K * s
            camera = pyrender.IntrinsicsCamera(K[0, 0], K[1, 1], K[0, 2], K[1, 2], znear=cam.near, zfar=cam.far)
            node = scene.add(camera, pose=view.pose @ OPENCV_TO_OPENGL)
            color, depth = renderer.render(scene, flags=pyrender.RenderFlags.RGBA)
            scene.remove_node(node)
            a = (depth > 0).astype(np.float32)
            c = color[..., :3].astype(np.float32) / 255.0 * a[..., None]
            if s > 1:
                h = cam.resolution
                a = a.reshape(h, s, h, s).mean(axis=(1, 3))
                c = c.reshape(h, s, h, s, 3).mean(axis=(1, 3))
            rgb.append(c)
            alpha.append(a)
        return np.stack(rgb), np.stack(alpha)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.delete()
            self._renderer = None
