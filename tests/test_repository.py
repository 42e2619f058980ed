"""Repository hygiene a user's clone depends on: the shard format document names the version the code writes, no
tracked file outside ``tests/`` points at files that are not in the repository (team notes beside the checkout),
and the README cites the papers by title and arXiv id."""

import re
import subprocess
from pathlib import Path

import pytest

from datagen import shards

ROOT = Path(__file__).resolve().parent.parent
# paths and names of notes that live outside the repository: a clone does not have them
OUTSIDE = re.compile(r"\.\./shared|shared/(?:paper|DESIGN|FACTS|STYLE)|\b(?:DESIGN|FACTS|STYLE)\.md|\bDESIGN §")
PAPERS = {"2501.09503": "AnyStory: Towards Unified Single and Multiple Subject Personalization",
          "2406.07209": "MS-Diffusion: Multi-subject Zero-shot Image Personalization with Layout",
          "2307.11410": "Subject-Diffusion: Open Domain Personalized Text-to-Image"}


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"not a git checkout: {e}")
    return [ROOT / p for p in out.stdout.decode().split("\0") if p]


def test_format_doc_names_the_codes_version():
    doc = (ROOT / "docs" / "format.md").read_text()
    [title] = re.findall(r"^# Shard format v(\d+)$", doc, flags=re.M)
    assert int(title) == shards.FORMAT_VERSION
    assert f"`FORMAT_VERSION = {shards.FORMAT_VERSION}` in `datagen/shards/__init__.py`" in doc
    assert f"`SAMPLE_VERSION = {shards.SAMPLE_VERSION}`" in doc
    assert f"`FORMAT_MINOR = {shards.FORMAT_MINOR}`" in doc
    assert f'"version": {shards.SAMPLE_VERSION},' in doc  # the meta.json example


def test_no_tracked_file_outside_tests_names_files_beyond_the_repository():
    files = [p for p in tracked_files() if p.relative_to(ROOT).parts[0] != "tests" and p.is_file()]
    assert any(p.name == "README.md" for p in files) and any(p.name == "pyproject.toml" for p in files)
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary files
            continue
        found += [f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
                  for m in OUTSIDE.finditer(text)]
    assert not found, "\n".join(found)


def test_readme_cites_the_papers_by_title_and_arxiv_id():
    readme = " ".join((ROOT / "README.md").read_text().split())
    for arxiv, title in PAPERS.items():
        assert f"arXiv:{arxiv}" in readme and title in readme
