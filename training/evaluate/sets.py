"""Evaluation sets: what to generate (prompt, seed, subject references) and what to score against.

Three inputs, one ``EvalSample`` list:
- a spec file (YAML, or JSONL with one case per line): subjects as image + optional mask + phrase, prompts with
  ``{0}``, ``{1}``… (or ``{}`` for one subject) placeholders, seeds; a case may instead give MS-Bench-style
  ``templates`` over ``scenes`` (``{scene}`` placeholder);
- a folder in DreamBench's layout: the official one (``prompts_and_classes.txt``) or a plain one
  (``prompts.txt``): ``training.evaluate.dreambench``;
- MS-Bench as MS-Diffusion publishes it (``msbench/<category>/`` and its prompt module):
  ``training.evaluate.msbench``;
- held-out shards of a dataset the engine built: the training planner's target/reference choice (``training.plan``)
  gives reference frames per subject and a target frame; the target caption is the prompt and each subject is
  scored against its crop in the real target frame.

Each sample names its ``cluster``: the subjects it repeats (a DreamBench subject, a spec case's subjects, a shard
sample), which the intervals resample (``training.evaluate.stats``).
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datagen import shards
from datagen.params import load_yaml
from training.config import AugmentParams
from training.plan import choose, sdxl_buckets

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SHIPPED = Path(__file__).parent / "sets"


class SpecError(ValueError):
    """A spec, folder or dataset that cannot be evaluated (raised before any generation)."""


@dataclass
class EvalSubject:
    phrase: str
    image: np.ndarray  # the conditioning reference, HxWx3 uint8
    mask: np.ndarray | None  # its mask (None: the whole image)
    scoring: list[tuple[np.ndarray, np.ndarray | None]]  # (image, mask) the generation is scored against


@dataclass
class EvalSample:
    id: str
    set: str
    prompt: str
    seed: int
    subjects: list[EvalSubject]
    target: np.ndarray | None = None  # held-out shards: the real target frame
    size: tuple[int, int] | None = None  # (height, width) to generate at; None: the command's default
    meta: dict = field(default_factory=dict)
    cluster: str = ""  # the subjects this sample repeats (the bootstrap's unit); "" = the sample's own id

    def __post_init__(self):
        self.cluster = self.cluster or self.id


# --- spec files ---------------------------------------------------------------------------------------------------

class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubjectSpec(_Spec):
    image: str
    mask: str | None = None
    phrase: str
    scoring: list[str] = []  # extra images the subject is scored against (besides its reference)


class CaseSpec(_Spec):
    subjects: list[str | SubjectSpec] = Field(min_length=1)  # names of `subjects` entries, or inline (JSONL)
    prompts: list[str] = []
    templates: list[str] = []  # MS-Bench style: each template over each scene
    scenes: list[str] = []
    seeds: list[int] | None = None  # default: the command's --seeds

    @model_validator(mode="after")
    def _has_prompts(self) -> "CaseSpec":
        if not self.prompts and not (self.templates and self.scenes):
            raise ValueError("a case needs `prompts`, or `templates` and `scenes`")
        return self


class SetSpec(_Spec):
    name: str
    subjects: dict[str, SubjectSpec] = {}
    cases: list[CaseSpec] = Field(min_length=1)


def read_image(path: Path, mode: str = "RGB") -> np.ndarray:
    if not path.is_file():
        raise SpecError(f"missing image {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # UnidentifiedImageError: OSError
        raise SpecError(f"{path} is not a readable image: {e}") from None


def _subject(spec: SubjectSpec, root: Path) -> EvalSubject:
    image = read_image(root / spec.image)
    mask = read_image(root / spec.mask, "L") > 127 if spec.mask else None
    if mask is not None and (mask.shape != image.shape[:2] or not mask.any()):
        raise SpecError(f"mask {spec.mask}: must be a non-empty {image.shape[1]}x{image.shape[0]} mask of {spec.image}")
    extra = [(read_image(root / p), None) for p in spec.scoring]
    return EvalSubject(spec.phrase, image, mask, [(image, mask), *extra])


def fill(template: str, phrases: list[str], scene: str | None, where: str) -> str:
    fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    try:
        text = template.format(*phrases, scene=scene) if "" not in fields else template.format(phrases[0], scene=scene)
    except (IndexError, KeyError, ValueError) as e:
        raise SpecError(f"{where}: prompt {template!r} does not fit {len(phrases)} subject(s): {e!r}") from e
    used = {int(f) for f in fields if f.isdigit()} | ({0} if "" in fields else set())
    if used != set(range(len(phrases))):
        raise SpecError(f"{where}: prompt {template!r} must name each of its {len(phrases)} subject(s) once "
                        f"({{0}}..{{{len(phrases) - 1}}})")
    return text


def from_spec(spec: SetSpec, root: Path, seeds: list[int]) -> list[EvalSample]:
    samples = []
    for c, case in enumerate(spec.cases):
        subs = []
        names = [s if isinstance(s, str) else f"{s.phrase} ({s.image})" for s in case.subjects]
        for s in case.subjects:
            if isinstance(s, str) and s not in spec.subjects:
                raise SpecError(f"case {c}: unknown subject {s!r}; defined: {sorted(spec.subjects)}")
            subs.append(_subject(spec.subjects[s] if isinstance(s, str) else s, root))
        phrases = [s.phrase for s in subs]
        prompts = [fill(p, phrases, None, f"case {c}") for p in case.prompts]
        prompts += [fill(t, phrases, scene, f"case {c}") for t in case.templates for scene in case.scenes]
        for p, prompt in enumerate(prompts):
            for seed in seeds if case.seeds is None else case.seeds:
                samples.append(EvalSample(f"{spec.name}-{c}-{p}-s{seed}", spec.name, prompt, seed, subs,
                                          cluster=" + ".join(names)))
    return samples


def load_spec(path: Path, seeds: list[int]) -> list[EvalSample]:
    name = path.parent.name if path.stem == "spec" else path.stem
    try:
        if path.suffix == ".jsonl":
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            spec = SetSpec(name=name, cases=lines)
        else:
            tree = load_yaml(path.read_text()) or {}  # no aliases: an alias bomb is refused, not expanded
            spec = SetSpec.model_validate({"name": name, **tree} if isinstance(tree, dict) else tree)
    except (ValidationError, json.JSONDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"bad spec {path}: {e}") from e
    return from_spec(spec, path.parent, seeds)


# --- held-out shards ----------------------------------------------------------------------------------------------

def held_out(dataset: str, limit: int | None, resolution: int, max_subjects: int = 4, seed: int = 0,
             seeds: list[int] | tuple[int, ...] = (0,)) -> Iterator[EvalSample]:
    """Pairs of ``dataset`` with at least one subject, each generated with every seed of ``seeds``; pairs as
    training makes them (``training.plan.choose``, no condition drop, ``seed``), at the target frame's aspect
    bucket. ``limit``: that many samples at even spacing over the index (every source and shard in proportion, not
    the first shard's), read from their shards only; a chosen sample without a usable pair is skipped."""
    params = AugmentParams(max_subjects=max_subjects, drop_rate=0.0, resolution=resolution,
                           bucket_step=min(64, resolution))
    buckets = sdxl_buckets(params.resolution, params.bucket_step, params.max_aspect)
    name = Path(dataset.rstrip("/")).name
    chosen, urls = None, shards.shard_urls(dataset)
    if limit is not None:
        chosen = spaced_keys(dataset, limit)
        urls = shards.shard_urls(dataset, sorted(set(chosen.values())))
    n = 0
    for raw in shards.iter_raw(urls):
        if chosen is not None and raw["__key__"] not in chosen:
            continue
        plan = choose(raw, params, buckets, np.random.default_rng([seed, n]))
        n += 1
        if plan is None:
            continue
        sample = shards.decode_sample(raw)
        by_id = {s.id: s for s in sample.subjects}
        target = sample.frames[plan.target]
        subs = [EvalSubject(by_id[i].phrase, sample.frames[ref].image, by_id[i].masks[ref],
                            [(target.image, by_id[i].masks[plan.target])]) for i, ref in plan.subjects]
        meta = {"target_frame": plan.target, "reference_frames": [r for _, r in plan.subjects]}
        for s in seeds:
            yield EvalSample(f"{sample.key}-s{s}", name, target.caption, s, subs, target=target.image,
                             size=plan.bucket, meta=meta, cluster=sample.key)


def spaced_keys(dataset: str, limit: int) -> dict[str, str]:
    """``limit`` keys of the index's samples with subjects, at even spacing in (shard, key) order: key → shard."""
    table = shards.read_table(dataset, shards.INDEX_FILE).select(["key", "shard", "n_subjects"]).to_pylist()
    rows = sorted((r["shard"], r["key"]) for r in table if r["n_subjects"])
    if not rows:
        return {}
    picks = np.unique(np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int))
    return {rows[k][1]: rows[k][0] for k in picks}


def spread(samples: list[EvalSample], limit: int) -> list[EvalSample]:
    """At most ``limit`` samples spread evenly over the subjects (clusters), not the first ones in folder order:
    fewer than one per subject takes subjects at evenly spaced positions; more takes each subject's samples in
    turn (round-robin). The chosen samples keep their order."""
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(samples):
        groups.setdefault(s.cluster, []).append(k)
    clusters = list(groups.values())
    if limit < len(clusters):
        chosen = [clusters[i][0] for i in np.linspace(0, len(clusters) - 1, limit).round().astype(int)]
    else:
        turns = [g[k] for k in range(max(map(len, clusters))) for g in clusters if k < len(g)]
        chosen = turns[:limit]
    return [samples[k] for k in sorted(chosen)]


def check_phrases_reach_the_model(samples: list[EvalSample], tokenizer, limit: int = 77) -> None:
    """SDXL's text encoders read ``limit`` tokens (start and end included) and cut the rest: a subject phrase past
    that is not in the text the model sees, and would be scored as lost after its generation. A written set's
    prompt is refused up front (``SpecError``); held-out captions are left as training saw them (cut alike)."""
    for s in samples:
        if s.target is not None:
            continue
        start = 0
        for sub in s.subjects:
            at = s.prompt.find(sub.phrase, start)
            if at < 0:
                continue
            start = at + len(sub.phrase)
            used = len(tokenizer(s.prompt[:start], verbose=False)["input_ids"])  # with start and end tokens
            if used > limit:
                raise SpecError(f"{s.id}: subject phrase {sub.phrase!r} ends at text token {used - 1}, past the "
                                f"{limit - 2} that SDXL's text encoders read; it would never reach the model: "
                                f"shorten the prompt or the phrases")


def load(set_path: str | None, shards_dir: str | None, limit: int | None, seeds: list[int], resolution: int,
         unique_token: str = "") -> list[EvalSample]:
    """Every sample to evaluate, each prompt with every seed of ``seeds`` (spec cases with their own ``seeds``
    keep them); a bad spec or an empty set raises ``SpecError`` (before any generation)."""
    from training.evaluate import dreambench, msbench  # they build on this module's samples and helpers

    samples: list[EvalSample] = []
    if set_path is not None:
        path = Path(set_path)
        if not path.exists() and (SHIPPED / set_path).exists():
            path = SHIPPED / set_path
        if path.is_dir():
            specs = [p for p in (path / "spec.yaml", path / "spec.jsonl") if p.is_file()]
            if specs:
                samples += load_spec(specs[0], seeds)
            elif bench := msbench.find(path):
                samples += msbench.load(*bench, seeds)
            else:
                samples += dreambench.load(path, seeds, unique_token)
        elif path.is_file():
            samples += load_spec(path, seeds)
        else:
            raise SpecError(f"--set {set_path}: no such file or folder (shipped sets: "
                            f"{sorted(p.name for p in SHIPPED.iterdir() if p.is_dir())})")
        if limit is not None:
            samples = spread(samples, limit)
    if shards_dir is not None:
        if not shards.list_shards(shards_dir):
            raise SpecError(f"--shards {shards_dir}: no shards under {shards.join(shards_dir, shards.SHARDS_DIR)}")
        samples += list(held_out(shards_dir, limit, resolution, seeds=seeds))
    if not samples:
        raise SpecError("the evaluation set is empty: nothing to generate")
    return samples
