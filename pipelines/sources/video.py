"""Source ``video``: clips → 2–5 frames of one shot with matched subjects (MS-Diffusion's recipe, AnyStory's
video pairs). Decoding and filters run as Ray tasks, the four models as actor pools sized by config.

    sources:
      video:
        inputs: [data/clips, s3://bucket/clips.parquet]   # folders, list files, single clips
        sampling: {max_frames: 5, content_threshold: 27}
        labeling: {detection: {box_threshold: 0.1}, filters: {min_image_side: 360}}
        resources:
          caption: {num_gpus: 1, batch_size: 16, concurrency: 2}

Model actors default to 0.25 CPU each so the four pools plus one task fit a 2-core machine; on a GPU
cluster give each model stage ``num_gpus`` (and more ``num_cpus`` for its preprocessing).
"""

from __future__ import annotations

from functools import partial

from datagen.labeling import chain as labeling
from datagen.readers import video
from datagen.labeling.chain import LabelingParams
from datagen.readers.video import VIDEO_EXTENSIONS, SamplingParams
from datagen.models import ModelSpec, describe
from datagen.params import ExistingPath, Params
from datagen.units import Unit
from pipelines.sources import frame_bytes
from pipelines.stages import ActorStage, Resources, Stage, TaskStage

MODEL = Resources(num_cpus=0.25, batch_size=4)


class VideoResources(Params):
    decode: Resources = Resources(num_cpus=1)
    filters: Resources = Resources(num_cpus=0.5)  # entities, box/mask filters, matching
    caption: Resources = MODEL
    detect: Resources = MODEL
    segment: Resources = MODEL
    embed: Resources = MODEL


class Config(Params):
    inputs: list[ExistingPath]  # folders, .txt/.csv/.parquet lists of paths or URLs, single clips (local or fsspec)
    column: str = "path"  # column of .csv/.parquet lists
    extensions: list[str] = list(VIDEO_EXTENSIONS)  # files taken from folders
    sampling: SamplingParams = SamplingParams()
    labeling: LabelingParams = LabelingParams()
    resources: VideoResources = VideoResources()


class VideoSource:
    name = "video"
    kind = "video"
    Config = Config

    def units(self, cfg: Config) -> list[Unit]:
        return video.list_units(video.list_videos(cfg.inputs, cfg.column, tuple(e.lower() for e in cfg.extensions)))

    def roles(self, cfg: Config) -> list[str]:
        return ["captioner", "detector", "segmenter", "embedder"]

    def unit_bytes(self, cfg: Config) -> int:
        s = cfg.sampling  # one sample: up to max_frames frames, each with a mask per subject (≤ max_subjects)
        return s.max_frames * frame_bytes(s.max_side, s.max_pixels, cfg.labeling.filters.max_subjects)

    def stages(self, cfg: Config, models: dict[str, ModelSpec]) -> list[Stage]:
        lp, r = cfg.labeling, cfg.resources
        return [
            TaskStage("decode", partial(video.load_sample, p=cfg.sampling, fp=lp.filters), r.decode),
            ActorStage("caption", partial(labeling.CaptionFrames, models["captioner"], lp.caption), r.caption),
            TaskStage("entities", partial(labeling.find_phrases, p=lp.entities, per=lp.phrases_per), r.filters),
            ActorStage("detect", partial(labeling.DetectSubjects, models["detector"], lp.detection), r.detect),
            TaskStage("filter_boxes", partial(labeling.filter_boxes, p=lp.filters), r.filters),
            ActorStage("segment", partial(labeling.SegmentSubjects, models["segmenter"], lp.segmentation), r.segment),
            TaskStage("filter_masks", partial(labeling.filter_masks, p=lp.filters), r.filters),
            ActorStage("embed", partial(labeling.EmbedSubjects, models["embedder"], lp.matching), r.embed),
            TaskStage("match", partial(labeling.match_subjects, p=lp.matching, fp=lp.filters, models=describe(models),
                                        rules=lp.pairs),
                      r.filters),
        ]


SOURCE = VideoSource()
