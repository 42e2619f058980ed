"""Mesh files for the ``objaverse`` source, made here: textured and vertex-coloured primitives in every format the
source reads (GLB, glTF + .bin + .png, OBJ + MTL + texture, PLY), each with a ``<stem>.json`` of metadata (name,
tags, category) for captions, plus two inputs that must end in quarantine: a corrupt GLB and a faceless PLY."""

from __future__ import annotations

import json
import os

import numpy as np
import trimesh
from PIL import Image

from datagen.samples.photos import backdrop


def uv_box(texture: Image.Image, extents=(1.0, 1.0, 1.0)) -> trimesh.Trimesh:
    """A box whose six faces each show the whole texture (24 vertices, so every face has its own UVs)."""
    half = np.asarray(extents, dtype=float) / 2
    vertices, faces, uv = [], [], []
    for axis in range(3):
        for sign in (-1.0, 1.0):
            u_axis, v_axis = [a for a in range(3) if a != axis]
            corners = []
            for du, dv in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
                p = np.zeros(3)
                p[axis], p[u_axis], p[v_axis] = sign * half[axis], du * half[u_axis], dv * half[v_axis]
                corners.append(p)
            base = len(vertices)
            vertices += corners
            uv += [(0, 0), (1, 0), (1, 1), (0, 1)]
            tri = [(0, 1, 2), (0, 2, 3)]
            # wind each face outwards (u × v points along +axis for a positive permutation)
            outward = sign * np.sign(np.cross(np.eye(3)[u_axis], np.eye(3)[v_axis])[axis])
            faces += [[base + a, base + (b if outward > 0 else c), base + (c if outward > 0 else b)] for a, b, c in tri]
    mesh = trimesh.Trimesh(np.array(vertices), np.array(faces), process=False)
    mesh.visual = trimesh.visual.TextureVisuals(
        uv=np.array(uv, dtype=float), material=trimesh.visual.material.PBRMaterial(
            baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.8))
    return mesh


def cylindrical_uv(mesh: trimesh.Trimesh) -> np.ndarray:
    v = mesh.vertices
    u = np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi) + 0.5
    h = (v[:, 1] - v[:, 1].min()) / max(np.ptp(v[:, 1]), 1e-9)
    return np.c_[u, h]


def textured(mesh: trimesh.Trimesh, texture: Image.Image, simple: bool = False) -> trimesh.Trimesh:
    """``mesh`` with a texture wrapped around its vertical axis (SimpleMaterial for OBJ/MTL, PBR for glTF)."""
    material = trimesh.visual.material.SimpleMaterial(image=texture) if simple else \
        trimesh.visual.material.PBRMaterial(baseColorTexture=texture, metallicFactor=0.0, roughnessFactor=0.7)
    mesh.visual = trimesh.visual.TextureVisuals(uv=cylindrical_uv(mesh), material=material)
    return mesh


def banded(mesh: trimesh.Trimesh, colors: list[tuple[int, int, int]], bands: int = 6) -> trimesh.Trimesh:
    """``mesh`` with per-vertex colours in horizontal bands."""
    y = mesh.vertices[:, 1]
    k = np.clip(((y - y.min()) / max(np.ptp(y), 1e-9) * bands).astype(int), 0, bands - 1)
    rgb = np.asarray(colors, dtype=np.uint8)[k % len(colors)]
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=np.c_[rgb, np.full(len(rgb), 255, np.uint8)])
    return mesh


def stripes(colors: list[tuple[int, int, int]], size: int = 128, n: int = 8) -> Image.Image:
    im = np.zeros((size, size, 3), np.uint8)
    for i in range(n):
        im[:, i * size // n:(i + 1) * size // n] = colors[i % len(colors)]
    return Image.fromarray(im)


def vase() -> trimesh.Trimesh:
    profile = np.array([[0.0, 0.0], [0.35, 0.0], [0.45, 0.3], [0.3, 0.75], [0.18, 0.9], [0.25, 1.0], [0.0, 1.0]])
    mesh = trimesh.creation.revolve(profile, sections=48)
    # revolve spins about z; stand it up along y (glTF's up)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(-np.pi / 2, [1, 0, 0]))
    return mesh


def _write_meta(out: str, stem: str, meta: dict) -> None:
    with open(os.path.join(out, f"{stem}.json"), "w") as f:
        json.dump(meta, f, indent=1)


def make(root: str) -> dict:
    out = os.path.join(root, "objaverse")
    if os.path.exists(os.path.join(out, "points_only.ply")):
        return {"folder": out}
    os.makedirs(out, exist_ok=True)
    uv_box(backdrop(256, 256, seed=3)).export(os.path.join(out, "photo_crate.glb"))
    _write_meta(out, "photo_crate", {"name": "Photo Crate", "tags": ["box", "wood"], "categories": ["furniture-home"],
                                     "license": "cc0"})
    ball = banded(trimesh.creation.icosphere(subdivisions=3), [(220, 40, 40), (240, 240, 240)])
    ball.export(os.path.join(out, "striped_ball.glb"))
    _write_meta(out, "striped_ball", {"name": "Striped_Ball_01", "tags": ["toy", "ball"], "categories": ["sports"],
                                      "license": "cc0"})
    vase_dir = os.path.join(out, "teal_vase")  # trimesh names the .bin buffers and texture generically
    os.makedirs(vase_dir, exist_ok=True)
    files = textured(vase(), stripes([(20, 140, 140), (240, 200, 60)])).export(file_type="gltf")
    for name, data in files.items():
        with open(os.path.join(vase_dir, "teal_vase.gltf" if name.endswith(".gltf") else name), "wb") as f:
            f.write(data)
    _write_meta(vase_dir, "teal_vase", {"name": "Teal Vase", "tags": ["pottery", "ceramic"], "license": "cc0"})
    torus = textured(trimesh.creation.torus(0.6, 0.25, major_sections=48, minor_sections=24),
                     stripes([(230, 120, 30), (60, 40, 30)]), simple=True)
    ring_dir = os.path.join(out, "orange_ring")  # trimesh writes material.mtl + material_0.png beside the .obj
    os.makedirs(ring_dir, exist_ok=True)
    torus.export(os.path.join(ring_dir, "orange_ring.obj"))
    _write_meta(ring_dir, "orange_ring", {"name": "orange ring", "tags": ["donut", "torus"], "license": "by"})
    capsule = banded(trimesh.creation.capsule(height=1.0, radius=0.35), [(250, 220, 40), (40, 90, 200)], bands=4)
    capsule.export(os.path.join(out, "yellow_capsule.ply"))
    _write_meta(out, "yellow_capsule", {"name": "yellow capsule", "tags": ["pill"], "license": "by"})
    with open(os.path.join(out, "corrupt.glb"), "wb") as f:
        f.write(b"glTF\x02\x00\x00\x00" + bytes(range(256)) * 4)  # a GLB header, then junk
    trimesh.PointCloud(np.random.default_rng(0).uniform(-1, 1, (200, 3))).export(os.path.join(out, "points_only.ply"))
    return {"folder": out}
