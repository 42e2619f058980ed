"""Source ``urls``: a URL list (img2dataset / LAION style) → router samples of 2–N people with SAM masks.

    sources:
      urls:
        url_list: s3://bucket/laion-part-00000.parquet   # .parquet / .csv / .tsv / .jsonl with url (+ caption)
        # or, instead of url_list, what img2dataset already downloaded (webdataset tars, parquet with images or
        # files folders), read rather than fetched again; same sample keys as the URLs in a list:
        # img2dataset: s3://bucket/laion-img2dataset-out
        download: {timeout_s: 10, retries: 2, threads: 64, min_side: 1024, short_side: 1024}
        persons: {phrases: [person], filters: {max_subjects: 4}}
        captions: keep                               # or "captioner": Qwen2-VL re-captions the kept images
        resources:
          download: {num_cpus: 1, batch_size: 256, concurrency: 4}
          detect: {num_gpus: 1, batch_size: 16}

Download runs as an actor pool (each actor a thread pool over its batch), the models as actor pools; the
decisions (filters, the 2–N rule) as tasks. Actors default to 0.25 CPU each so the pools plus one task fit a
2-core machine.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from pydantic import model_validator

from datagen.labeling import chain as labeling
from datagen.readers import img2dataset, urls
from datagen.labeling.captions import CaptionParams
from datagen.readers.download import DownloadParams
from datagen.models import ModelSpec, describe
from datagen.params import ExistingPath, Params
from datagen.units import Unit
from pipelines.sources import frame_bytes
from pipelines.stages import ActorStage, Resources, Stage, TaskStage

MODEL = Resources(num_cpus=0.25, batch_size=4)


class UrlsResources(Params):
    download: Resources = Resources(num_cpus=0.25, batch_size=64)
    select: Resources = Resources(num_cpus=0.5)
    detect: Resources = MODEL
    segment: Resources = MODEL
    caption: Resources = MODEL


class Config(Params):
    url_list: ExistingPath | None = None  # the URL list
    img2dataset: ExistingPath | None = None  # or an img2dataset output folder (its output_format detected)
    url_col: str = "url"
    caption_col: str | None = "caption"  # None: no caption column (captions from the captioner or the phrases)
    keep_columns: list[str] = []  # more columns copied into provenance (e.g. LAION's LICENSE, similarity)
    # Subject-Diffusion B.1's LAION rule: short side ≥ 1024 (it writes "> 1024"; 1024 itself, the trainer's side,
    # is kept). Lists at LAION scale can afford it; README "Minimum image side" gives each source's reason.
    download: DownloadParams = DownloadParams(min_side=1024)
    persons: urls.PersonParams = urls.PersonParams()
    captions: Literal["keep", "captioner"] = "keep"
    caption: CaptionParams = CaptionParams()
    resources: UrlsResources = UrlsResources()

    @model_validator(mode="after")
    def _one_input(self):
        if (self.url_list is None) == (self.img2dataset is None):
            raise ValueError("give exactly one of url_list and img2dataset")
        if self.img2dataset and (self.url_col, self.caption_col) != ("url", "caption"):
            raise ValueError("url_col and caption_col apply to url_list (img2dataset stores url and caption)")
        return self


class UrlsSource:
    name = "urls"
    kind = "router"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        if cfg.img2dataset:
            return img2dataset.list_units(cfg.img2dataset, tuple(cfg.keep_columns))
        return urls.list_units(cfg.url_list, cfg.url_col, cfg.caption_col, tuple(cfg.keep_columns))

    def roles(self, cfg: Config) -> list[str]:
        return ["detector", "segmenter"] + (["captioner"] if cfg.captions == "captioner" else [])

    def unit_bytes(self, cfg: Config) -> int:
        d = cfg.download  # one image, one mask per person
        return frame_bytes(d.max_side, d.max_pixels, cfg.persons.filters.max_subjects)

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        p, r = cfg.persons, cfg.resources
        stages = [
            ActorStage(urls.DOWNLOAD, partial(urls.Download, cfg.download, p.phrases), r.download),
            ActorStage("detect", partial(labeling.DetectSubjects, models["detector"], p.detection), r.detect),
            TaskStage("select_boxes", partial(urls.select_boxes, rules=p), r.select),
            ActorStage("segment", partial(labeling.SegmentSubjects, models["segmenter"], p.segmentation), r.segment),
            TaskStage("persons", partial(urls.persons, rules=p, models=_models(cfg, models)), r.select),
        ]
        if cfg.captions == "captioner":  # after the filters: only kept images are captioned
            stages.append(ActorStage("caption", partial(labeling.CaptionFrames, models["captioner"], cfg.caption),
                                     r.caption))
        return stages


def _models(cfg: Config, models: dict[str, ModelSpec]) -> dict:
    described = describe(models)
    if cfg.captions == "keep":
        described["captioner"] = "alt_text"
    return described


SOURCE = UrlsSource()
