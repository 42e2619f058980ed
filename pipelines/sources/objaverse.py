"""Source ``objaverse``: 7-view renders of 3D objects (Objaverse uids, or local GLB/glTF/OBJ/PLY files).

    sources:
      objaverse:
        folder: data/inputs/objaverse        # or files: [...], or objaverse: {lvis_categories: [mug], limit: 100}
        params: {render: {backend: fast, camera: {resolution: 512}}, min_mask_area: 0.005}
        resources: {render: {num_cpus: 1}}   # one render task per CPU; its child process draws with 1 thread
        captioner: none                       # none: metadata captions; registry: Qwen2-VL (registry.captioner)

Stages: ``render`` (Ray tasks: fetch, load, check, render in a child process, filter, build the sample with a
metadata caption), then with ``captioner: registry`` ``caption`` (an actor pool captioning one view per object).
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Literal

from pydantic import model_validator

from datagen.readers import objaverse as objects  # `objaverse` is also a config key below
from datagen.filecache import FileCache
from datagen.models import ModelSpec
from datagen.params import ExistingPath, Params
from datagen.render import check_backend
from datagen.render.rig import N_VIEWS
from datagen.units import Unit
from pipelines.sources import frame_bytes
from pipelines.stages import ActorStage, Resources, Stage, TaskStage

log = logging.getLogger(__name__)


class ObjaverseResources(Params):
    render: Resources = Resources(num_cpus=1)
    caption: Resources = Resources(num_cpus=1, batch_size=8)


class Config(Params):
    objaverse: objects.ObjaverseQuery | None = None  # objects of the objaverse package
    folder: ExistingPath | None = None  # every .glb/.gltf/.obj/.ply under it
    files: list[ExistingPath] | None = None
    params: objects.ObjaverseParams = objects.ObjaverseParams()
    captioner: Literal["none", "registry"] = "none"
    resources: ObjaverseResources = ObjaverseResources()

    @model_validator(mode="after")
    def _one_input(self) -> "Config":
        given = [k for k in ("objaverse", "folder", "files") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of objaverse, folder, files (got {given or 'none'})")
        return self


class ObjaverseSource:
    name = "objaverse"
    kind = objects.KIND
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        if cfg.objaverse is not None:
            units, dropped = objects.list_objaverse_units(cfg.objaverse)
        else:
            paths = objects.mesh_files(cfg.folder) if cfg.folder is not None else list(cfg.files)
            units, dropped = objects.list_file_units(paths, FileCache())
        if dropped:
            log.info("objaverse: %d objects selected, left out before rendering: %s", len(units),
                     ", ".join(f"{r} {n}" for r, n in sorted(dropped.items())))
        return units

    def roles(self, cfg: Config) -> list[str]:
        return ["captioner"] if cfg.captioner == "registry" else []

    def unit_bytes(self, cfg: Config) -> int:
        side = cfg.params.render.camera.resolution  # 7 square renders, one object mask each
        return N_VIEWS * frame_bytes(side, side * side, 1)

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        check_backend(cfg.params.render)
        stages: list[Stage] = [TaskStage(objects.STAGE, partial(objects.render_unit, p=cfg.params), cfg.resources.render)]
        if cfg.captioner == "registry":
            factory = partial(objects.ObjectCaptioner, models["captioner"], cfg.params.captions)
            stages.append(ActorStage("caption", factory, cfg.resources.caption))
        return stages


SOURCE = ObjaverseSource()
