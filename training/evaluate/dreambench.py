"""DreamBench folders: the official layout as Google's DreamBooth repository publishes it, and a plain one.

Official (``dataset/`` of github.com/google/dreambooth): ``<subject>/*.jpg`` beside ``prompts_and_classes.txt``,
which holds a ``Classes`` block of ``subject_name,class`` lines, then ``Object Prompts`` and ``Live Subject
Prompts`` blocks of Python lines ``'a {0} {1} in the jungle'.format(unique_token, class_token),``. DreamBooth
prompts each live subject (its 9 cats and dogs) with the live list and the 21 objects with the object list, 25
prompts each; ``{0}`` is the fine-tuned rare token (``sks``) and ``{1}`` the class word. An encoder method has no
token to learn, so ``unique_token`` defaults to "" (the prompt reads "a dog in the jungle"); the class word is the
phrase that locates the subject.

Plain: ``<subject>/*.jpg`` plus ``prompts.txt`` (one prompt per line, ``{}`` = the subject's phrase) and optional
``classes.txt`` (``subject,phrase`` lines).

Either way the first image of a subject conditions and all of them score (DreamBooth compares with every real
image of the subject), and the subject's folder is its cluster for the intervals.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from training.evaluate.sets import IMAGE_SUFFIXES, EvalSample, EvalSubject, SpecError, fill, read_image

OFFICIAL = "prompts_and_classes.txt"
LIVE_CLASSES = {"cat", "dog"}  # DreamBooth's live subjects: its cats and dogs
_PROMPT = re.compile(r"""^\s*((['"]).*\2)\s*\.format\(\s*unique_token\s*,\s*class_token\s*\)\s*,?\s*$""")
_BLOCKS = {"object prompts": "object", "live subject prompts": "live"}


def parse_official(text: str, where: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``prompts_and_classes.txt`` → (subject → class word, {"object": templates, "live": templates})."""
    classes: dict[str, str] = {}
    prompts: dict[str, list[str]] = {"object": [], "live": []}
    block = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.lower() in ("classes", "prompts") or stripped.lower() in _BLOCKS:
            block = _BLOCKS.get(stripped.lower(), stripped.lower())
        elif not stripped or stripped.startswith(("prompt_list", "]")) or stripped == "subject_name,class":
            continue
        elif block == "classes" and "," in stripped:
            name, word = stripped.split(",", 1)
            classes[name.strip()] = word.strip()
        elif block in prompts and (m := _PROMPT.match(line)):
            prompts[block].append(ast.literal_eval(m.group(1)))
        else:
            raise SpecError(f"{where}:{number}: not a line of the published format: {stripped!r}")
    missing = [k for k, v in {"Classes": classes, **prompts}.items() if not v]
    if missing:
        raise SpecError(f"{where}: no {', '.join(missing)} block (the published file has Classes, Object Prompts "
                        "and Live Subject Prompts)")
    return classes, prompts


def _prompt(template: str, unique_token: str, class_word: str) -> str:
    return " ".join(template.format(unique_token, class_word).split())  # "" token: no double space


def _subjects(root: Path) -> list[tuple[str, list]]:
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            out.append((folder.name, [read_image(p) for p in images]))
    return out


def official_root(root: Path) -> Path | None:
    """The folder holding ``prompts_and_classes.txt``: ``root`` or its ``dataset/`` (a clone of the repo)."""
    return next((r for r in (root, root / "dataset") if (r / OFFICIAL).is_file()), None)


def load_official(root: Path, seeds: list[int], unique_token: str = "") -> list[EvalSample]:
    classes, prompts = parse_official((root / OFFICIAL).read_text(), str(root / OFFICIAL))
    samples = []
    for name, arrays in _subjects(root):
        if name not in classes:
            raise SpecError(f"{root / name}: subject not in the Classes block of {OFFICIAL}")
        word = classes[name]
        subject = EvalSubject(word, arrays[0], None, [(a, None) for a in arrays])
        kind = "live" if word in LIVE_CLASSES else "object"
        for p, template in enumerate(prompts[kind]):
            text = _prompt(template, unique_token, word)
            samples += [EvalSample(f"{name}-{p:02d}-s{s}", root.name, text, s, [subject], cluster=name,
                                   meta={"prompt_list": kind}) for s in seeds]
    return samples


def load_plain(root: Path, seeds: list[int]) -> list[EvalSample]:
    prompts_file = root / "prompts.txt"
    if not prompts_file.is_file():
        raise SpecError(f"{root}: a DreamBench folder needs {OFFICIAL} (the official layout) or prompts.txt (one "
                        "prompt per line, {} = the subject)")
    prompts = [p.strip() for p in prompts_file.read_text().splitlines() if p.strip()]
    classes = {}
    if (root / "classes.txt").is_file():
        for line in (root / "classes.txt").read_text().splitlines():
            if "," in line:
                name, phrase = line.split(",", 1)
                classes[name.strip()] = phrase.strip()
    samples = []
    for name, arrays in _subjects(root):
        phrase = classes.get(name, name.rstrip("0123456789").replace("_", " ").strip())
        subject = EvalSubject(phrase, arrays[0], None, [(a, None) for a in arrays])
        for p, prompt in enumerate(prompts):
            text = fill(prompt, [phrase], None, str(prompts_file))
            samples += [EvalSample(f"{name}-{p}-s{s}", root.name, text, s, [subject], cluster=name) for s in seeds]
    return samples


def load(root: Path, seeds: list[int], unique_token: str = "") -> list[EvalSample]:
    official = official_root(root)
    return load_official(official, seeds, unique_token) if official else load_plain(root, seeds)
