"""The labeling chain of MS-Diffusion §A over samples whose frames show the same subjects (video frames):
caption → phrases → boxes → box filters → masks → mask filter → embeddings → matching → subjects.

Each step is a function (CPU) or a callable class loading its model once (``pipelines`` runs them as Ray tasks
and actor pools) over ``Item``s carrying one ``Sample`` whose frames are set. Between steps ``item.scratch``
holds ``phrases`` (per frame), ``instances`` (per frame, ``filters.Instance`` lists) and ``embeddings`` (per
frame, n×D). Every dropped instance is counted as ``<step>/<reason>``; a sample left with nothing to label is
``Rejected`` with the reason, so tiny or weak models end in the filter report, not in an empty shard.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import numpy as np

from datagen.labeling import entities
from datagen.labeling import filters
from datagen.labeling import matching
from datagen.labeling import pairs as pair_measures
from datagen.labeling.captions import CaptionParams, Captioner
from datagen.labeling.detection import DetectionParams, Detector
from datagen.labeling.entities import EntityParams
from datagen.labeling.filters import FilterParams, Instance
from datagen.labeling.matching import Embedder, MatchParams
from datagen.labeling.pairs import PairRules
from datagen.models import ModelSpec
from datagen.params import Params
from datagen.labeling.segmentation import SegmentationParams, Segmenter
from datagen.shards import Sample, Subject
from datagen.units import Item, Rejected


class LabelingParams(Params):
    caption: CaptionParams = CaptionParams()
    entities: EntityParams = EntityParams()
    # "clip": every frame is prompted with the phrases of all the sample's captions (one subject described
    # differently in two captions is still found in both frames); "frame": each frame with its own caption's
    phrases_per: Literal["frame", "clip"] = "clip"
    detection: DetectionParams = DetectionParams()
    segmentation: SegmentationParams = SegmentationParams()
    matching: MatchParams = MatchParams()
    # web and phone video: 360p (640×360) is the lowest common resolution worth a 1024² target
    filters: FilterParams = FilterParams(min_image_side=360)
    pairs: PairRules = PairRules()


def _sample(item: Item) -> Sample:
    return item.samples[0]


def _count(item: Item, step: str, drops: Counter) -> None:
    for reason, n in drops.items():
        item.drop(step, reason, n)


def _require_instances(item: Item, step: str) -> None:
    if not any(item.scratch["instances"]):
        dropped = {k: v for k, v in item.drops.items() if not k.startswith("decode/")}
        raise Rejected("no_subjects", f"after {step}; dropped {dropped}")


class CaptionFrames:
    """Qwen2-VL captions every frame of the items' samples; their ``models.captioner`` says which model wrote them."""

    def __init__(self, spec: ModelSpec, params: CaptionParams):
        self.captioner = Captioner(spec, params)
        self.described = spec.describe()

    def __call__(self, items: list[Item]) -> list[Item]:
        samples = [s for it in items for s in it.samples]  # every sample: an image-pair unit may yield several
        frames = [fr for s in samples for fr in s.frames]
        for fr, caption in zip(frames, self.captioner([fr.image for fr in frames])):
            fr.caption = caption
        for s in samples:
            s.models["captioner"] = self.described
        return items


def find_phrases(item: Item, p: EntityParams, per: str = "clip") -> Item:
    """Subject phrases per frame; B.1 rule (7)'s groups and body parts are counted as ``entities/<reason>``."""
    per_frame = []
    for fr in _sample(item).frames:
        found, dropped = entities.extract(fr.caption, p)
        per_frame.append(found)
        _count(item, "entities", dropped)
    if per == "clip":
        union = list(dict.fromkeys(ph for phs in per_frame for ph in phs))[: p.max_phrases]
        per_frame = [union] * len(per_frame)
    if not any(per_frame):
        captions = " | ".join(fr.caption for fr in _sample(item).frames)
        raise Rejected("no_phrases", f"no subject phrase in the captions: {captions}"[:1000])
    item.scratch["phrases"] = per_frame
    return item


class DetectSubjects:
    def __init__(self, spec: ModelSpec, params: DetectionParams):
        self.detector = Detector(spec, params)

    def __call__(self, items: list[Item]) -> list[Item]:
        images = [fr.image for it in items for fr in _sample(it).frames]
        phrases = [ph for it in items for ph in it.scratch["phrases"]]
        found = iter(self.detector(images, phrases))
        for it in items:
            it.scratch["instances"] = [next(found) for _ in _sample(it).frames]
        return items


MIN_FRAMES = 2  # a video sample is 2–5 frames of one shot


def _drop_frames(item: Item, step: str, drop: set[int]) -> None:
    """Remove frames (and their per-frame scratch) from the item's sample; fewer than MIN_FRAMES left rejects it."""
    sample = _sample(item)
    keep = [j for j in range(len(sample.frames)) if j not in drop]
    if len(keep) < MIN_FRAMES:
        raise Rejected("too_few_frames", f"{len(keep)} of {len(sample.frames)} frames left after {step}; "
                                         f"dropped {dict(item.drops)}")
    sample.frames = [sample.frames[j] for j in keep]
    for name, per_frame in item.scratch.items():  # phrases, instances, ignore: lists over the frames
        item.scratch[name] = [per_frame[j] for j in keep]


def _filter_frames(item: Item, step: str, keep, p: FilterParams) -> Item:
    """Apply ``keep(instances, frame) -> (survivors, drops)`` to every frame, counting drops under ``step``.

    A frame where a rule dropped a real instance (``filters.UNLABELED``) is dropped (``<step>/frame_unlabeled``)
    or, with ``p.unlabeled = ignore``, keeps the instances' boxes as its ignore region (scratch ``ignore``)."""
    kept, unlabeled = [], set()
    ignore = item.scratch.setdefault("ignore", [[] for _ in _sample(item).frames])
    for j, (fr, instances) in enumerate(zip(_sample(item).frames, item.scratch["instances"])):
        survivors, drops = keep(instances, fr)
        _count(item, step, drops)
        kept.append(survivors)
        left = filters.unlabeled(instances)
        if left:
            unlabeled.add(j)
            ignore[j] += [filters.ignore_box(x.box, fr.width, fr.height) for x in left]
    item.scratch["instances"] = kept
    if unlabeled and p.unlabeled == "drop_frame":
        item.drop(step, "frame_unlabeled", len(unlabeled))
        _drop_frames(item, step, unlabeled)
    _require_instances(item, step)
    return item


def filter_boxes(item: Item, p: FilterParams) -> Item:
    """B.1 rules (1)–(5), per frame, before segmentation (SAM runs only on boxes that can survive)."""
    return _filter_frames(item, "filter_boxes", lambda xs, fr: filters.filter_boxes(xs, fr.width, fr.height, p), p)


class SegmentSubjects:
    def __init__(self, spec: ModelSpec, params: SegmentationParams):
        self.segmenter = Segmenter(spec, params)

    def __call__(self, items: list[Item]) -> list[Item]:
        per_frame = [inst for it in items for inst in it.scratch["instances"]]
        images = [fr.image for it in items for fr in _sample(it).frames]
        masks = self.segmenter(images, [[x.box for x in inst] for inst in per_frame])
        for inst, ms in zip(per_frame, masks):
            for x, m in zip(inst, ms):
                x.mask = m
        return items


def filter_masks(item: Item, p: FilterParams) -> Item:
    """B.1 rule (6): a mask covering less than ``min_mask_box_ratio`` of its box is dropped."""
    return _filter_frames(item, "filter_masks", lambda xs, fr: filters.by_mask_box_ratio(xs, p), p)


class EmbedSubjects:
    def __init__(self, spec: ModelSpec, params: MatchParams):
        self.embedder = Embedder(spec, params)

    def __call__(self, items: list[Item]) -> list[Item]:
        crops, counts = [], []
        for it in items:
            for fr, inst in zip(_sample(it).frames, it.scratch["instances"]):
                crops += [matching.masked_crop(fr.image, x.mask, x.box) for x in inst]
                counts.append(len(inst))
        emb = self.embedder(crops)
        splits = iter(np.split(emb, np.cumsum(counts)[:-1]) if counts else [])
        for it in items:
            it.scratch["embeddings"] = [next(splits) for _ in _sample(it).frames]
        return items


class MeasurePairs:
    """Pair measures for samples whose subjects are matched by annotation (DeepFashion2's shop/consumer styles):
    identity from the matcher's embedder on the masked crops, then ``rules``. A sample whose pairs all fail is
    dropped (``pairs/<reason>`` counts its pairs, ``pairs/sample_<reason>`` the sample); a unit left without
    samples is rejected with that reason."""

    def __init__(self, spec: ModelSpec, params: MatchParams, rules: PairRules):
        self.embedder = Embedder(spec, params)
        self.rules = rules

    def __call__(self, items: list[Item]) -> list[Item]:
        crops, slots = [], []
        for it in items:
            for sample in it.samples:
                for k, s in enumerate(sample.subjects):
                    for j in sorted(s.masks):
                        crops.append(matching.masked_crop(sample.frames[j].image, s.masks[j], s.box(j)))
                        slots.append((id(sample), k, j))
        row = {slot: n for n, slot in enumerate(slots)}
        emb = self.embedder(crops)
        for it in items:
            kept, reason = [], ""
            for sample in it.samples:
                def identity(k: int, a: int, b: int, key: int = id(sample)) -> float:
                    return float(emb[row[key, k, a]] @ emb[row[key, k, b]])

                try:
                    pair_measures.keep_pairs(sample, pair_measures.measure(sample, identity), self.rules,
                                             lambda r, n, it=it: it.drop("pairs", r, n))
                    kept.append(sample)
                except Rejected as e:
                    it.drop("pairs", f"sample_{e.reason}")
                    reason = e.reason
            if it.samples and not kept:
                raise Rejected(reason, f"every sample lost its pairs; dropped {dict(it.drops)}")
            it.samples = kept
        return items


def _phrase(members: list[Instance]) -> str:
    """The track's most frequent phrase, ties to the best-scored detection."""
    counts = Counter(x.phrase for x in members)
    return max(members, key=lambda x: (counts[x.phrase], x.score)).phrase


def _ranked_tracks(item: Item, p: MatchParams) -> list[tuple[matching.Track, dict[int, Instance]]]:
    """The tracks with their instances per frame, matched ones first, then the larger ones."""
    instances = item.scratch["instances"]
    keys = [[matching.phrase_key(x.phrase, p.phrases_agree) for x in frame] for frame in instances]
    tracks = matching.match(item.scratch["embeddings"], p.min_similarity, keys, p.phrases_agree)
    groups = [(t, {j: instances[j][i] for j, i in sorted(t.members.items())}) for t in tracks]
    return sorted(groups, key=lambda g: (-len(g[1]), -np.mean([x.box_area for x in g[1].values()])))


def match_subjects(item: Item, p: MatchParams, fp: FilterParams, models: dict | None = None,
                   rules: PairRules | None = None) -> Item:
    """Hungarian matching across frames → the sample's subjects (at most ``fp.max_subjects``) and their pairs.

    A subject seen in one frame only keeps its own crop as reference (``fields.reference = target_crop``); a clip
    where no subject is seen in two frames is rejected (``no_match``) unless ``p.self_references``.
    Over the cap, matched subjects go first (they are the real cross-frame pairs), then the larger ones; the ones
    left out stay visible, so their frames are dropped (``match/frame_unlabeled``, then matched again) or, with
    ``fp.unlabeled = ignore``, their boxes join the frames' ignore regions.
    Every matched subject's frame pairs are measured (``pairs.measure``: identity from the embeddings already
    computed for matching); with ``rules``, pairs failing them are dropped (``pairs/<reason>``).
    """
    sample = _sample(item)
    groups = _ranked_tracks(item, p)
    if len(groups) > fp.max_subjects:
        item.drop("match", "too_many_subjects", len(groups) - fp.max_subjects)
    while len(groups) > fp.max_subjects:  # the subjects over the cap stay visible in their frames, without a slot
        over = groups[fp.max_subjects:]
        if fp.unlabeled == "ignore":
            ignore = item.scratch.setdefault("ignore", [[] for _ in sample.frames])
            for _, members in over:
                for j, x in members.items():
                    ignore[j].append(filters.ignore_box(x.box, sample.frames[j].width, sample.frames[j].height))
            groups = groups[: fp.max_subjects]
        else:  # their frames go, and the rest is matched again (each pass drops a frame: it ends)
            frames = {j for _, members in over for j in members}
            item.drop("match", "frame_unlabeled", len(frames))
            _drop_frames(item, "match", frames)
            groups = _ranked_tracks(item, p)
    tracks = [t for t, _ in groups]
    if tracks and not any(t.matched for t in tracks) and not p.self_references:
        raise Rejected("no_match", f"none of {len(tracks)} subjects is matched across {len(sample.frames)} frames")
    if not groups:
        raise Rejected("no_subjects", "nothing left to match")
    subjects = []
    for k, (track, members) in enumerate(groups):
        subjects.append(Subject(
            id=k, phrase=_phrase(list(members.values())),
            masks={j: x.mask for j, x in members.items()},
            boxes={j: [round(v, 2) for v in x.box] for j, x in members.items()},
            det_score=round(max(x.score for x in members.values()), 4),
            match_score=round(float(np.mean(track.scores)), 4) if track.matched else None,
            fields={} if track.matched else {"reference": "target_crop"},
        ))
    matched = [s.match_score for s in subjects if s.match_score is not None]
    sample.subjects = subjects
    for fr, boxes in zip(sample.frames, item.scratch.get("ignore", [])):
        if boxes:  # p.unlabeled = ignore: instances without a subject, left out of the routing loss
            fr.fields["ignore"] = boxes
    sample.models = dict(models or {})
    # how many subjects matched is in the subjects themselves (match_score not null): not a score of its own
    sample.scores = {"det": min(s.det_score for s in subjects), "match": float(np.mean(matched)) if matched else 0.0}
    embeddings = item.scratch["embeddings"]

    def identity(k: int, a: int, b: int) -> float:
        members = groups[k][0].members
        return float(embeddings[a][members[a]] @ embeddings[b][members[b]])

    sample.pairs = pair_measures.measure(sample, identity)
    if rules is not None:
        pair_measures.keep_pairs(sample, sample.pairs, rules, lambda reason, n: item.drop("pairs", reason, n))
    item.scratch.clear()  # nothing downstream needs it: keep it out of the writer's transfer
    return item
