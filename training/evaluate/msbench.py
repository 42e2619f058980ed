"""MS-Bench (MS-Diffusion §4) read as its authors publish it: ``msbench/<category>/<subject>.<jpg|png>`` (categories
living, object, scene, upwearing, midwearing, downwearing, wholewearing) and the prompt module
``msdiffusion/dataset/prompts/msbench.py``, which defines ``data_class_dict`` (subject → class word),
``two_subject_combinations`` / ``three_subject_combinations`` (category tuples such as ``living_object_scene``),
``subject_combination_prompts`` (combination → templates with ``{0}``, ``{1}``, ``{2}``) and
``subject_combination_boxes`` (the preset layout MS-Diffusion is given; recorded here, AnyStory takes no boxes).

A combination type expands to every choice of distinct subjects: the subjects of a category repeated k times are
its k-subsets, different categories combine as a product (the authors' 1148 combinations and, with each type's
templates, 4488 samples). The class word is each subject's phrase; the combination of subjects is the cluster of
the intervals.

The prompt module is Python: it is read with ``ast`` (literals, and names of earlier literals), never executed.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import numpy as np
from PIL import Image

from training.evaluate.sets import IMAGE_SUFFIXES, EvalSample, EvalSubject, SpecError, fill

PROMPTS = Path("msdiffusion/dataset/prompts/msbench.py")
NEEDED = ("data_class_dict", "two_subject_combinations", "three_subject_combinations",
          "subject_combination_prompts", "subject_combination_boxes")


def find(root: Path) -> tuple[Path, Path] | None:
    """(images folder, prompt module) for a clone of the repository, its ``msbench/`` folder, or a folder holding
    the category folders beside a copy of ``msbench.py``; None when ``root`` is none of these."""
    for images, module in ((root / "msbench", root / PROMPTS), (root, root.parent / PROMPTS),
                           (root, root / "msbench.py")):
        if images.is_dir() and module.is_file():
            return images, module
    return None


def read_module(path: Path) -> dict:
    """The module's top-level literal assignments (a name may refer to an earlier one), without running it."""
    found: dict = {}
    try:
        tree = ast.parse(path.read_text(), str(path))
    except SyntaxError as e:
        raise SpecError(f"{path}: not Python ({e.msg}, line {e.lineno})") from None

    def value(node: ast.AST):
        if isinstance(node, ast.Name) and node.id in found:
            return found[node.id]
        if isinstance(node, ast.Dict):
            return {value(k): value(v) for k, v in zip(node.keys, node.values)}
        if isinstance(node, (ast.List, ast.Tuple)):
            return [value(e) for e in node.elts]
        return ast.literal_eval(node)

    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            try:
                found[stmt.targets[0].id] = value(stmt.value)
            except (ValueError, TypeError, SyntaxError) as e:
                raise SpecError(f"{path}:{stmt.lineno}: {stmt.targets[0].id} is not a literal ({e})") from None
    missing = [n for n in NEEDED if n not in found]
    if missing:
        raise SpecError(f"{path}: defines no {', '.join(missing)} (not MS-Bench's prompt module)")
    return found


def read_subject(path: Path, phrase: str) -> EvalSubject:
    """A transparent PNG's alpha is its mask, the image on white as the model is shown subjects."""
    try:
        with Image.open(path) as im:
            rgba = np.asarray(im.convert("RGBA"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SpecError(f"{path} is not a readable image: {e}") from None
    alpha = rgba[..., 3] > 127
    if alpha.all() or not alpha.any():
        image = rgba[..., :3].copy()
        return EvalSubject(phrase, image, None, [(image, None)])
    image = np.where(alpha[..., None], rgba[..., :3], 255).astype(np.uint8)
    return EvalSubject(phrase, image, alpha, [(image, alpha)])


def combinations(kind: str, by_category: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """Every choice of distinct subjects for a combination type, in the type's category order."""
    categories = kind.split("_")
    missing = [c for c in dict.fromkeys(categories) if not by_category.get(c)]
    if missing:
        raise SpecError(f"combination {kind}: no subjects in {', '.join(missing)}/")
    groups = [list(itertools.combinations(by_category[c], categories.count(c))) for c in dict.fromkeys(categories)]
    out = []
    for chosen in itertools.product(*groups):
        pools = {c: list(names) for c, names in zip(dict.fromkeys(categories), chosen)}
        out.append(tuple(pools[c].pop(0) for c in categories))
    return out


def load(images: Path, module: Path, seeds: list[int]) -> list[EvalSample]:
    spec = read_module(module)
    classes = spec["data_class_dict"]
    by_category: dict[str, list[str]] = {}
    files: dict[str, Path] = {}
    for folder in sorted(p for p in images.iterdir() if p.is_dir()):
        for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            if path.stem not in classes:
                raise SpecError(f"{path}: subject {path.stem!r} not in data_class_dict of {module}")
            by_category.setdefault(folder.name, []).append(path.stem)
            files[path.stem] = path
    subjects: dict[str, EvalSubject] = {}
    samples = []
    for kind in [*spec["two_subject_combinations"], *spec["three_subject_combinations"]]:
        templates = spec["subject_combination_prompts"].get(kind)
        if not templates:
            raise SpecError(f"{module}: no prompts for combination {kind}")
        for names in combinations(kind, by_category):
            subs = [subjects.setdefault(n, read_subject(files[n], classes[n])) for n in names]
            cluster = "+".join(names)
            meta = {"combination": kind, "boxes": spec["subject_combination_boxes"].get(kind)}
            for p, template in enumerate(templates):
                prompt = fill(template, [s.phrase for s in subs], None, f"{module} {kind}")
                samples += [EvalSample(f"msbench-{kind}-{cluster}-{p}-s{s}", "msbench", prompt, s, subs,
                                       meta=meta, cluster=cluster) for s in seeds]
    return samples
