"""Load a mesh file (GLB, glTF, OBJ, PLY) with trimesh, check it, and normalise it to the unit cube.

Normalisation (as objaverse-xl does): the axis-aligned box of every mesh vertex in world space is scaled so that
its longest side is 1 and centred at the origin, so the object's centre is the origin in every frame's camera.
Both backends use this one transform, so their cameras and masks agree.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass

import numpy as np
import trimesh
from pydantic import Field

from datagen.params import Params
from datagen.units import BadInput, Rejected

FORMATS = (".glb", ".gltf", ".obj", ".ply")


class MeshParams(Params):
    max_faces: int = Field(1_000_000, ge=1)  # more faces than this → filtered (too_many_faces)
    reject_lost_textures: bool = True  # trimesh dropped a glTF texture (trimesh #2304, #2125) → filtered


@dataclass
class Mesh:
    scene: trimesh.Scene  # triangle meshes only, normalised to the unit cube at the origin
    normalization: np.ndarray  # 4×4 taking the file's world frame to the normalised one
    radius: float  # farthest vertex from the origin after normalisation (≤ √3/2)
    faces: int
    vertices: int
    textured: int  # primitives drawn with a base colour texture
    vertex_colored: int  # primitives with per-vertex (or per-face) colours

    def info(self) -> dict:
        return {"faces": self.faces, "vertices": self.vertices, "textured_primitives": self.textured,
                "vertex_colored_primitives": self.vertex_colored, "scale": float(self.normalization[0, 0]),
                "normalization": self.normalization.tolist()}  # file coordinates → the cameras' world


def gltf_document(path: str) -> dict | None:
    """The JSON of a .gltf/.glb file (None for other formats); a broken container is BadInput."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".gltf":
            with open(path, "rb") as f:
                return json.load(f)
        if ext == ".glb":
            with open(path, "rb") as f:
                magic, _, _, length, kind = struct.unpack("<4sIIII", f.read(20))
                if magic != b"glTF" or kind != 0x4E4F534A:  # "JSON"
                    raise ValueError("not a binary glTF (bad magic or first chunk)")
                return json.loads(f.read(length))
    except (OSError, ValueError, struct.error) as e:
        raise BadInput("load_failed", f"{path}: {e}") from None
    return None


def textured_primitives(doc: dict) -> int:
    """Primitives whose glTF material has a base colour (or spec-gloss diffuse) texture."""
    textured = set()
    for i, m in enumerate(doc.get("materials", [])):
        pbr = m.get("pbrMetallicRoughness", {})
        sg = m.get("extensions", {}).get("KHR_materials_pbrSpecularGlossiness", {})
        if "baseColorTexture" in pbr or "diffuseTexture" in sg:
            textured.add(i)
    return sum(p.get("material") in textured for mesh in doc.get("meshes", []) for p in mesh.get("primitives", []))


def _has_texture(geom: trimesh.Trimesh) -> bool:
    visual = geom.visual
    if visual.kind != "texture" or visual.uv is None:
        return False
    mat = visual.material
    image = getattr(mat, "baseColorTexture", None) if isinstance(mat, trimesh.visual.material.PBRMaterial) \
        else getattr(mat, "image", None)
    return image is not None


def load(path: str, p: MeshParams) -> Mesh:
    """Load, filter and normalise one object. Raises BadInput (unreadable) or Rejected (no_geometry, ...)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise BadInput("unsupported_format", f"{path}: {ext or 'no extension'} is not one of {FORMATS}")
    doc = gltf_document(path)
    try:
        scene = trimesh.load(path, force="scene")
    except Exception as e:  # noqa: BLE001 — trimesh raises anything from struct.error to KeyError on bad files
        raise BadInput("load_failed", f"{path}: {type(e).__name__}: {e}") from None
    # Points and lines have no surface to render: drop them, and the nodes that instance them.
    meshes = {n: g for n, g in scene.geometry.items() if isinstance(g, trimesh.Trimesh) and len(g.faces)}
    for name in set(scene.geometry) - set(meshes):
        scene.delete_geometry(name)
    nodes = [n for n in scene.graph.nodes_geometry if scene.graph[n][1] in meshes]
    if not nodes:
        raise Rejected("no_geometry", f"{path}: no triangles (geometry: {len(meshes)} meshes with faces)")
    faces = sum(len(meshes[scene.graph[n][1]].faces) for n in nodes)
    vertices = sum(len(meshes[scene.graph[n][1]].vertices) for n in nodes)
    if faces > p.max_faces:
        raise Rejected("too_many_faces", f"{path}: {faces} faces > {p.max_faces}")
    textured = sum(_has_texture(g) for g in meshes.values())
    if doc is not None and p.reject_lost_textures:
        expected = textured_primitives(doc)
        if textured < expected:
            raise Rejected("texture_lost", f"{path}: trimesh loaded {textured} of {expected} textured primitives")

    world = [trimesh.transform_points(meshes[g].vertices, T) for T, g in (scene.graph[n] for n in nodes)]
    points = np.concatenate(world)
    lo, hi = points.min(axis=0), points.max(axis=0)
    extent = float((hi - lo).max())
    if not np.isfinite(extent) or extent <= 0:
        raise Rejected("no_geometry", f"{path}: degenerate bounds {lo.tolist()} – {hi.tolist()}")
    normalization = np.diag([1.0 / extent] * 3 + [1.0])
    normalization[:3, 3] = -(lo + hi) / 2.0 / extent
    scene.apply_transform(normalization)
    radius = float(np.linalg.norm(trimesh.transform_points(points, normalization), axis=1).max())
    vertex_colored = sum(g.visual.kind in ("vertex", "face") for g in meshes.values())
    return Mesh(scene, normalization, radius, faces, vertices, textured, vertex_colored)
