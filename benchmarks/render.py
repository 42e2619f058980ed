"""Objaverse renderer throughput, with its baselines measured in the same run.

1. fast backend, one worker: views/s of ``datagen.render.render`` (load, normalise, 7 views, composite, masks;
   the child render process of each worker, one llvmpipe thread) on the sample meshes.
2. Ray scaling: the same objects spread over 1 and then 2 Ray actors (each with its own child renderer, like the
   pipeline's render tasks); the ratio of the 2-worker throughput to the 1-worker one (target ≥ 1.6× on 2 cores).
3. blender backend (Cycles, the default sample count, OpenImageDenoise) seconds/view, when its interpreter is
   there (``make setup-blender``); its ratio to the fast backend's seconds/view in this run.

Every worker renders one object first (start-up: GL context, bpy import) before the clock starts.

    python benchmarks/render.py [--objects 32] [--resolution 512] [--blender-objects 2] [--no-blender]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from datagen.readers.objaverse import mesh_files  # noqa: E402
from datagen.render import RenderParams, check_backend, render  # noqa: E402
from datagen.render.rig import N_VIEWS  # noqa: E402
from datagen.samples import objaverse as sample_meshes  # noqa: E402
from datagen.units import BadInput, Rejected  # noqa: E402


def good_meshes(root: str) -> list[str]:
    """The sample meshes that render (the sample set also holds a corrupt and a faceless file)."""
    folder = sample_meshes.make(root)["folder"]
    out = []
    for path in mesh_files(folder):
        try:
            render(path, RenderParams(camera={"resolution": 32}), seed=0)
            out.append(path)
        except (BadInput, Rejected):
            pass
    return out


def render_all(paths: list[str], p: RenderParams) -> float:
    """Seconds to render ``paths`` here (one worker)."""
    t0 = time.perf_counter()
    for k, path in enumerate(paths):
        render(path, p, seed=k)
    return time.perf_counter() - t0


def ray_views_per_s(paths: list[str], p: RenderParams, workers: int) -> float:
    import ray

    @ray.remote(num_cpus=1)
    class Renderer:
        def run(self, chunk: list[str]) -> float:
            return render_all(chunk, p)

    actors = [Renderer.remote() for _ in range(workers)]
    ray.get([a.run.remote(paths[:1]) for a in actors])  # warm-up: child process + GL context
    chunks = [paths[w::workers] for w in range(workers)]
    t0 = time.perf_counter()
    ray.get([a.run.remote(c) for a, c in zip(actors, chunks)])
    seconds = time.perf_counter() - t0
    for a in actors:
        ray.kill(a)
    return len(paths) * N_VIEWS / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=32, help="objects per measurement (the sample meshes, cycled)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--blender-objects", type=int, default=2)
    ap.add_argument("--no-blender", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bench-render-")
    meshes = good_meshes(tmp)
    paths = [meshes[k % len(meshes)] for k in range(args.objects)]
    fast = RenderParams(camera={"resolution": args.resolution})
    print(f"{len(meshes)} sample meshes, {args.objects} objects × {N_VIEWS} views at {args.resolution}², "
          f"{os.cpu_count()} CPUs")

    render_all(paths[:1], fast)  # warm-up
    seconds = render_all(paths, fast)
    fast_s_per_view = seconds / (len(paths) * N_VIEWS)
    print(f"fast, one worker (this process):  {1 / fast_s_per_view:7.1f} views/s  ({fast_s_per_view * 1e3:.0f} ms/view)")

    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray, as the pipelines start it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}})
    one = ray_views_per_s(paths, fast, 1)
    two = ray_views_per_s(paths, fast, 2)
    ray.shutdown()
    print(f"fast, Ray 1 worker:               {one:7.1f} views/s")
    print(f"fast, Ray 2 workers:              {two:7.1f} views/s")
    print(f"Ray scaling 1 → 2 workers:        {two / one:7.2f}×  (target ≥ 1.6×)")

    if args.no_blender:
        return
    cycles = RenderParams(backend="blender", camera={"resolution": args.resolution}, threads=os.cpu_count())
    try:
        check_backend(cycles)
    except RuntimeError as e:
        print(f"blender: skipped ({str(e).splitlines()[0]})")
        return
    bpaths = paths[: args.blender_objects]
    render_all(bpaths[:1], cycles)  # warm-up: bpy import, Cycles kernels
    seconds = render_all(bpaths, cycles)
    s_per_view = seconds / (len(bpaths) * N_VIEWS)
    print(f"blender (Cycles {cycles.blender.samples} spp, denoise {cycles.blender.denoise}, "
          f"{cycles.threads} threads): {s_per_view:.2f} s/view = {s_per_view / fast_s_per_view:.0f}× the fast "
          "backend's time per view")


if __name__ == "__main__":
    main()
