"""Render the 7 views of one mesh file: exact masks, cameras, composited RGB, behind one backend interface.

Backends (``RenderParams.backend``):
- ``fast`` (default, ``datagen.render.fast``): pyrender on headless EGL, CPU (Mesa llvmpipe) or GPU;
- ``blender`` (``datagen.render.blender``): Cycles through BlenderProc's API on the ``bpy`` wheel, photoreal.

A backend is a class with ``name``, ``version()``, ``render(path, mesh, views, suns, p) -> (premultiplied RGB,
alpha)`` and ``close()``. ``render_object`` does the rest the same way for both: load + check + normalise
(``meshes``), the rig (``rig``), composite on the background, masks = alpha ≥ 0.5.

By default every object renders in a child process owned by the calling worker (``isolate``): the only way to
stop a renderer hung in C code (a Python signal never reaches it) or to survive one that segfaults. The child
stays up between objects, so the cost is one pickle of the views per object; it is killed and restarted after a
timeout or a crash, and the tail of its output goes into the failure's detail.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Literal

import numpy as np
from pydantic import Field

from datagen.params import Params
from datagen.render import meshes, rig
from datagen.render.meshes import MeshParams
from datagen.render.rig import CameraParams, LightParams, View
from datagen.units import BadInput, Rejected

BACKEND_MODULES = {"fast": "pyrender", "blender": "bpy"}
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLENDER_PYTHON = os.path.join(REPO_ROOT, ".venv-blender", "bin", "python")  # made by `make setup-blender`


class FastParams(Params):
    supersample: int = Field(1, ge=1, le=4)  # anti-aliasing: draw at s× and box-filter (see datagen.render.fast)
    max_metallic: float = Field(0.0, ge=0, le=1)  # see datagen.render.fast


class BlenderParams(Params):
    samples: int = Field(32, ge=1)  # Cycles samples per pixel (BlenderProc's default is 1024)
    # Interpreter with bpy + blenderproc. bpy pins numpy<2 (this project's environment is on numpy 2), so it lives
    # in its own venv (`make setup-blender`). None: this interpreter when it has bpy, else BLENDER_PYTHON.
    python: str | None = None
    denoise: bool = True  # OpenImageDenoise, on the CPU
    max_bounces: int = Field(4, ge=0)


class RenderParams(Params):
    backend: Literal["fast", "blender"] = "fast"
    camera: CameraParams = CameraParams()
    lights: LightParams = LightParams()
    background: tuple[int, int, int] = (255, 255, 255)  # RGB the views are composited on
    mask_threshold: float = Field(0.5, gt=0, lt=1)  # a pixel is the object's when its coverage reaches this
    mesh: MeshParams = MeshParams()
    fast: FastParams = FastParams()
    blender: BlenderParams = BlenderParams()
    threads: int = Field(1, ge=1)  # per worker: llvmpipe's LP_NUM_THREADS, Cycles' threads
    timeout_s: float = Field(300.0, gt=0)  # per object (load + 7 views); over it the child is killed
    isolate: bool = True  # render in a child process (timeouts, crashes); False = in this process


@dataclass
class Rendered:
    views: list[View]
    rgb: np.ndarray  # V×H×W×3 uint8, composited on the background
    alpha: np.ndarray  # V×H×W uint8 coverage (255 = fully the object's)
    masks: np.ndarray  # V×H×W bool, coverage ≥ mask_threshold
    info: dict[str, Any] = field(default_factory=dict)  # mesh counts, renderer version, seconds


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a renderer child: this source tree importable from any interpreter (see BLENDER_PYTHON)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([REPO_ROOT, os.environ.get("PYTHONPATH", "")]), **extra}


def interpreter(p: RenderParams) -> str:
    """The Python that runs ``p.backend`` (see ``BlenderParams.python``)."""
    if p.backend == "fast" or (p.blender.python is None and importlib.util.find_spec("bpy") is not None):
        return sys.executable
    return p.blender.python or BLENDER_PYTHON


def check_backend(p: RenderParams) -> None:
    """Fail at start-up, not per object, when the backend's package is missing."""
    python = interpreter(p)
    module = BACKEND_MODULES[p.backend]
    if python == sys.executable:
        if importlib.util.find_spec(module) is None:
            fix = "pip install -e '.[render]'" if p.backend == "fast" else "make setup-blender"
            raise RuntimeError(f"render backend {p.backend!r} needs `{module}` in {python}: {fix} "
                               "(see README, Objaverse renders)")
        return
    if not p.isolate:
        raise RuntimeError(f"render backend {p.backend!r} runs in {python}: it needs isolate: true")
    if not os.access(python, os.X_OK):
        raise RuntimeError(f"render backend {p.backend!r} needs a Python with bpy + blenderproc at {python}: "
                           "run `make setup-blender` or set params.render.blender.python (see README)")
    # the child's own imports: bpy, BlenderProc past its start-up check, and this package on that numpy
    probe = subprocess.run([python, "-c", "from datagen.render.blender import _import_blenderproc as f; f()"],
                           capture_output=True, text=True, timeout=300, env=child_env())
    if probe.returncode != 0:
        raise RuntimeError(f"{python} cannot run the blender backend (run `make setup-blender`): "
                           f"{probe.stderr.strip()[-1000:]}")


def make_backend(name: str):
    if name == "fast":
        from datagen.render.fast import FastRenderer

        return FastRenderer()
    from datagen.render.blender import BlenderRenderer

    return BlenderRenderer()


def composite(premultiplied: np.ndarray, alpha: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    bg = np.asarray(background, dtype=np.float32) / 255.0
    out = premultiplied + (1.0 - alpha[..., None]) * bg
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def render_object(path: str, p: RenderParams, seed: int, backend) -> Rendered:
    """Load, check and normalise the mesh at ``path``, then render its 7 views with ``backend`` (this process)."""
    t0 = time.perf_counter()
    mesh = meshes.load(path, p.mesh.model_copy(update={"reject_lost_textures": p.mesh.reject_lost_textures
                                                       and p.backend == "fast"}))
    rng = np.random.default_rng(seed)
    views = rig.seven_views(p.camera, mesh.radius, rng)
    suns = rig.suns(p.lights, rng)
    t1 = time.perf_counter()
    premultiplied, alpha = backend.render(path, mesh, views, suns, p)
    rgb = composite(premultiplied, alpha, p.background)
    info = {**mesh.info(), "renderer": backend.version(), "load_s": t1 - t0, "render_s": time.perf_counter() - t1}
    return Rendered(views, rgb, np.round(alpha * 255).astype(np.uint8), alpha >= p.mask_threshold, info)


# ------------------------------------------------------------------------------------ child render process


class RenderProcess:
    """A child Python process that renders objects for this worker, one at a time (``datagen.render.worker``)."""

    START_TIMEOUT_S = 300.0  # importing bpy and opening a GL context, before the first object's own budget
    TAIL_CHARS = 3000

    def __init__(self, backend: str, threads: int, python: str = sys.executable):
        self.backend, self.threads, self.python = backend, threads, python
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"render-{backend}-", suffix=".log", delete=False).name

    def _tail(self) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log) - self.TAIL_CHARS))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _start(self) -> None:
        parent, child = socket.socketpair()
        env = child_env(LP_NUM_THREADS=str(self.threads), OMP_NUM_THREADS=str(self.threads))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [self.python, "-m", "datagen.render.worker", str(child.fileno()), self.backend],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        child.close()
        self.conn = Connection(parent.detach())
        if not self.conn.poll(self.START_TIMEOUT_S):
            self.close()
            raise RuntimeError(f"{self.backend} renderer did not start in {self.START_TIMEOUT_S:g}s: {self._tail()}")
        try:
            self.conn.recv()
        except EOFError:
            code = self.proc.wait()
            self.close()
            raise RuntimeError(f"{self.backend} renderer exited with {code} at start-up: {self._tail()}") from None

    def render(self, path: str, p: RenderParams, seed: int) -> Rendered:
        if self.proc is None or self.proc.poll() is not None:
            self.close()
            self._start()
        os.truncate(self.log, 0)  # the child appends; keep only this object's output
        self.conn.send((path, p.model_dump(mode="json"), seed))
        if not self.conn.poll(p.timeout_s):
            self.close()
            raise BadInput("render_timeout", f"{path}: no result after {p.timeout_s:g}s, renderer killed")
        try:
            status, payload = self.conn.recv()
        except (EOFError, ConnectionError):
            code = self.proc.wait()
            tail = self._tail()
            self.close()
            raise BadInput("renderer_crashed", f"{path}: renderer exited with {code}; output: {tail}") from None
        if status == "ok":
            return payload
        kind, reason, detail = payload
        raise (Rejected if kind == "rejected" else BadInput)(reason, detail)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            self.proc = None


_PROCESSES: dict[tuple[str, int, str], RenderProcess] = {}
_BACKENDS: dict[str, Any] = {}


def render(path: str, p: RenderParams, seed: int) -> Rendered:
    """Render one object as ``p`` says: in this worker's child process (``isolate``), or here."""
    if p.isolate:
        key = (p.backend, p.threads, interpreter(p))
        if key not in _PROCESSES:
            _PROCESSES[key] = RenderProcess(*key)
        return _PROCESSES[key].render(path, p, seed)
    if p.backend not in _BACKENDS:
        os.environ.setdefault("LP_NUM_THREADS", str(p.threads))  # read when the GL context is made
        _BACKENDS[p.backend] = make_backend(p.backend)
    return render_object(path, p, seed, _BACKENDS[p.backend])


@atexit.register
def _close_all() -> None:
    for proc in _PROCESSES.values():
        proc.close()
        if os.path.exists(proc.log):
            os.remove(proc.log)
    _PROCESSES.clear()
