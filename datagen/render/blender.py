"""The blender backend: Cycles path tracing through BlenderProc's API on the ``bpy`` wheel, for photoreal renders.

``blenderproc run`` downloads its own Blender (it fails offline) and BlenderProc 2.8.0 predates upstream's
pip-``bpy`` mode (DLR-RM/BlenderProc PR #1158, ``USE_EXTERNAL_BPY_MODULE``), so this module does in-process what
that mode does: it imports ``blenderproc`` past its "run me via blenderproc run" check, marks its
``SetupUtility`` as done (no pip installs into a Blender that is not there), gives it a temporary directory,
and runs ``bproc.init``'s steps itself (``init`` insists on an ``en_US`` UI language, which the wheel lacks).

Scene: the file imported by BlenderProc's ``load_obj`` (glTF's importer; OBJ/PLY with glTF's axes, y up), put
under one parent holding the same unit-cube normalisation the fast backend uses (so masks and cameras agree),
vertex colours wired into every material (Blender's importers leave them unused), the rig's suns, a uniform grey
world as the ambient light, film transparent, view transform "Standard" (Filmic/AgX wash base colours out).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np

from datagen.render import RenderParams
from datagen.render.meshes import Mesh
from datagen.render.rig import OPENCV_TO_OPENGL, Sun, View, sun_pose

# Our world is glTF's (y up); Blender's is z up: (x, y, z) → (x, −z, y), as Blender's glTF importer converts.
GLTF_TO_BLENDER = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
# A sun of strength 1 W/m² gives a facing white diffuse surface a pixel value of 1/π in Cycles: scale to "full".
SUN_STRENGTH = np.pi


def _import_blenderproc():
    """BlenderProc 2.8.0's modules, importable in a plain Python that has the ``bpy`` wheel."""
    os.environ["OUTSIDE_OF_THE_INTERNAL_BLENDER_PYTHON_ENVIRONMENT_BUT_IN_RUN_SCRIPT"] = "1"
    import blenderproc  # noqa: F401 — only passes its start-up check, imports nothing else
    from blenderproc.python.utility.SetupUtility import SetupUtility

    SetupUtility.main_setup_called = True  # skip pip installs into a Blender install that does not exist


class BlenderRenderer:
    name = "blender"

    def __init__(self):
        import bpy

        _import_blenderproc()
        from blenderproc.python.utility.SetupUtility import SetupUtility

        self.bpy = bpy
        self.tmp = tempfile.mkdtemp(prefix="anystory-bproc-")
        SetupUtility.setup_utility_paths(self.tmp)

    def version(self) -> str:
        return f"blender-{self.bpy.app.version_string.split()[0]}-cycles"

    def _reset(self, p: RenderParams) -> None:
        """``bproc.init`` without its UI-language step: empty scene, camera, Cycles defaults, then our settings."""
        from blenderproc.python.renderer import RendererUtility
        from blenderproc.python.utility.Initializer import _Initializer, clean_up

        bpy = self.bpy
        clean_up(clean_up_camera=True)
        bpy.context.scene.render.engine = "CYCLES"
        RendererUtility.set_render_devices(use_only_cpu=True)
        _Initializer.set_default_parameters()
        RendererUtility.set_max_amount_of_samples(p.blender.samples)
        RendererUtility.set_noise_threshold(0.0)  # a fixed sample count: seconds per view stay predictable
        RendererUtility.set_light_bounces(diffuse_bounces=p.blender.max_bounces, glossy_bounces=p.blender.max_bounces,
                                          max_bounces=p.blender.max_bounces, transmission_bounces=p.blender.max_bounces,
                                          transparent_max_bounces=8)
        RendererUtility.set_cpu_threads(p.threads)
        RendererUtility.set_output_format(file_format="PNG", color_depth=8, enable_transparency=True,
                                          view_transform="Standard")
        scene = bpy.context.scene
        scene.view_settings.look = "None"
        scene.view_settings.exposure = 0.0
        scene.view_settings.gamma = 1.0
        scene.display_settings.display_device = "sRGB"
        scene.cycles.use_denoising = p.blender.denoise
        if p.blender.denoise:
            scene.cycles.denoiser = "OPENIMAGEDENOISE"  # in the render itself: keeps the alpha channel
        RendererUtility.set_world_background([p.lights.ambient] * 3, strength=1.0)

    def _load(self, path: str, mesh: Mesh) -> None:
        from blenderproc.python.loader.ObjectLoader import load_obj

        bpy = self.bpy
        ext = os.path.splitext(path)[1].lower()
        axes = {"forward_axis": "NEGATIVE_Z", "up_axis": "Y"} if ext in (".obj", ".ply") else {}
        load_obj(path, **axes)
        for obj in list(bpy.context.scene.objects):  # cameras and lights the file brought along
            if obj.type in ("LIGHT", "CAMERA") and obj != bpy.context.scene.camera:
                bpy.data.objects.remove(obj, do_unlink=True)
        parent = bpy.data.objects.new("normalization", None)
        bpy.context.scene.collection.objects.link(parent)
        for obj in bpy.context.scene.objects:
            if obj.parent is None and obj not in (parent, bpy.context.scene.camera):
                obj.parent = parent
        from mathutils import Matrix

        parent.matrix_world = Matrix((GLTF_TO_BLENDER @ mesh.normalization @ GLTF_TO_BLENDER.T).tolist())
        for obj in bpy.context.scene.objects:
            if obj.type == "MESH":
                _wire_vertex_colors(bpy, obj)

    def render(self, path: str, mesh: Mesh, views: list[View], suns: list[Sun],
               p: RenderParams) -> tuple[np.ndarray, np.ndarray]:
        from blenderproc.python.camera import CameraUtility
        from blenderproc.python.renderer import RendererUtility
        from blenderproc.python.types.LightUtility import Light
        from mathutils import Matrix

        self._reset(p)
        self._load(path, mesh)
        for sun in suns:
            light = Light(light_type="SUN")
            light.set_energy(SUN_STRENGTH * sun.intensity)
            light.blender_obj.matrix_world = Matrix((GLTF_TO_BLENDER @ sun_pose(sun)).tolist())
        cam = p.camera
        CameraUtility.set_intrinsics_from_K_matrix(views[0].K, cam.resolution, cam.resolution, cam.near, cam.far)
        for view in views:
            CameraUtility.add_camera_pose(GLTF_TO_BLENDER @ view.pose @ OPENCV_TO_OPENGL)
        out = os.path.join(self.tmp, "views")  # one path: BlenderProc registers it once per process
        try:
            data = RendererUtility.render(output_dir=out, load_keys={"colors"}, return_data=True,
                                          keys_with_alpha_channel={"colors"})
        finally:
            shutil.rmtree(out, ignore_errors=True)
        rgba = np.stack(data["colors"]).astype(np.float32) / 255.0
        alpha = rgba[..., 3]
        return rgba[..., :3] * alpha[..., None], alpha  # PNG alpha is straight: premultiply

    def close(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _wire_vertex_colors(bpy, obj) -> None:
    """Multiply the mesh's colour attribute into each material's base colour, as glTF's COLOR_0 means.

    Blender's importers keep the attribute but leave it unused (PLY through BlenderProc excepted).
    """
    attributes = obj.data.color_attributes
    if not len(attributes):
        return
    layer = (attributes.active_color or attributes[0]).name
    if not obj.data.materials:
        obj.data.materials.append(bpy.data.materials.new(f"{obj.name}-vertex-colors"))
    for material in obj.data.materials:
        if material is None:
            continue
        material.use_nodes = True
        nodes, links = material.node_tree.nodes, material.node_tree.links
        names = {a.name for a in attributes}
        if any(n.type == "VERTEX_COLOR" or (n.type == "ATTRIBUTE" and n.attribute_name in names) for n in nodes):
            continue  # already used (BlenderProc's PLY loader wires an Attribute node)
        bsdf = next((n for n in nodes if n.type == "BSDF_PRINCIPLED"), None)
        if bsdf is None:
            continue
        color = nodes.new("ShaderNodeVertexColor")
        color.layer_name = layer
        base = bsdf.inputs["Base Color"]
        mix = nodes.new("ShaderNodeMix")
        mix.data_type, mix.blend_type = "RGBA", "MULTIPLY"
        mix.inputs["Factor"].default_value = 1.0
        # ShaderNodeMix has one socket per data type under each name: take the colour ones
        a, b = (next(s for s in mix.inputs if s.name == n and s.type == "RGBA") for n in ("A", "B"))
        result = next(s for s in mix.outputs if s.name == "Result" and s.type == "RGBA")
        if base.links:
            links.new(base.links[0].from_socket, a)
        else:
            a.default_value = base.default_value
        links.new(color.outputs["Color"], b)
        links.new(result, base)
