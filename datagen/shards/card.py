"""Dataset cards: the ``README.md`` with the Hugging Face Hub's YAML front matter, for a shard dataset (written
by the pipelines at the end of each run) and for its ``export-hf`` parquet export.

Built from ``manifest.json`` (the run's stats report: samples and units by source and reason, models) and a
listing of the files, never a scan of the samples, so a card costs the same at 100 samples and at 10 M.
The YAML is made by ``huggingface_hub.DatasetCardData`` and ``datasets``' own writers of ``configs`` and
``dataset_info`` (those ``push_to_hub`` uses), so the Hub reads it as it reads its own.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable

import datasets
import fsspec
from datasets.info import DatasetInfosDict
from datasets.utils.metadata import MetadataConfigs
from huggingface_hub import DatasetCard, DatasetCardData

from datagen import shards
from datagen.readers.deepfashion2 import LICENSE as DEEPFASHION2_LICENSE

CARD_FILE = "README.md"
# the Hub's size_categories buckets (datasets/utils/resources/size_categories.json), by powers of ten
SIZE_BUCKETS = ["n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B",
                "1B<n<10B", "10B<n<100B", "100B<n<1T"]
# Sketchfab licence slugs (Objaverse annotations, the objaverse source's `licenses` filter) → Hub licence ids
HUB_LICENSES = {"cc0": "cc0-1.0", "by": "cc-by-4.0", "by-sa": "cc-by-sa-4.0", "by-nc": "cc-by-nc-4.0",
                "by-nc-sa": "cc-by-nc-sa-4.0", "by-nd": "cc-by-nd-4.0", "by-nc-nd": "cc-by-nc-nd-4.0"}
KIND_TAGS = {"video": ["video-frames"], "objaverse": ["multi-view", "3d-renders"], "image": ["image-pairs"],
             "router": ["multi-person", "instance-masks"]}


def size_category(n: int) -> str:
    return SIZE_BUCKETS[min(len(SIZE_BUCKETS) - 1, int(math.log10(n)) - 2)] if n >= 1000 else SIZE_BUCKETS[0]


def hub_license(value: str) -> str:
    """A provenance licence as a Hub licence id: Sketchfab slugs mapped, Hub ids kept, other texts ``other``."""
    slug = value.strip().lower()
    if slug in HUB_LICENSES:
        return HUB_LICENSES[slug]
    if slug in HUB_LICENSES.values() or slug == "unknown":
        return slug
    return "other"


def declared_licenses(manifest: dict[str, Any]) -> dict[str, list[str]]:
    """Per pipeline source, the licences its inputs are known to carry without reading a sample: the objaverse
    source's licence filter (every object passed it), DeepFashion2's terms; ``unknown`` for the rest (URLs, clips
    and COCO images carry theirs per sample: ``export-hf`` counts them from each sample's provenance)."""
    out = {}
    for name, section in manifest.get("sources", {}).items():
        query = (section.get("config") or {}).get("objaverse") or {}
        if name == "objaverse" and query.get("licenses"):
            out[name] = list(query["licenses"])
        elif name == "deepfashion2":
            out[name] = [DEEPFASHION2_LICENSE]
        else:
            out[name] = ["unknown"]
    return out


def _license_field(licenses: Iterable[str]) -> str | list[str]:
    ids = sorted({hub_license(v) for v in licenses}) or ["unknown"]
    return ids[0] if len(ids) == 1 else ids


def _card_data(manifest: dict[str, Any], samples: int, licenses: Iterable[str], pretty_name: str,
               extra_tags: list[str]) -> DatasetCardData:
    kinds = sorted({s.get("kind") for s in manifest.get("sources", {}).values() if s.get("kind")})
    tags = ["anystory", "subject-driven-generation", "personalization", *extra_tags,
            *[t for k in kinds for t in KIND_TAGS.get(k, [])]]
    if manifest.get("synthetic_models"):
        tags.append("synthetic-labels")
    return DatasetCardData(
        pretty_name=pretty_name, license=_license_field(licenses), task_categories=["text-to-image"],
        tags=tags, size_categories=[size_category(samples)], annotations_creators=["machine-generated"],
    )


def _add_configs(data: DatasetCardData, configs: dict[str, dict[str, Any]],
                 infos: dict[str, datasets.DatasetInfo]) -> None:
    MetadataConfigs(configs).to_dataset_card_data(data)
    DatasetInfosDict(infos).to_dataset_card_data(data)


def folder_bytes(url: str) -> int:
    """Bytes of the parquet files directly in a folder (one listing)."""
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.isdir(path):
        return 0
    return sum(i["size"] for i in fs.ls(path, detail=True) if i["name"].endswith(".parquet")
               and not i["name"].rsplit("/", 1)[-1].startswith("."))


def _info(features: datasets.Features, rows: int, num_bytes: int) -> datasets.DatasetInfo:
    splits = datasets.SplitDict()
    splits.add(datasets.SplitInfo("train", num_bytes=num_bytes, num_examples=rows))
    return datasets.DatasetInfo(features=features, splits=splits, download_size=num_bytes,
                                dataset_size=num_bytes)


def _sources_table(manifest: dict[str, Any], samples: dict[str, int], licenses: dict[str, Any]) -> str:
    lines = ["| pipeline source | kind | samples | units kept | filtered | failed | licences |",
             "|---|---|---|---|---|---|---|"]
    sections = manifest.get("sources", {})
    for name in sorted(set(sections) | set(samples)):
        sec = sections.get(name, {})
        c = sec.get("counts", {})
        lic = licenses.get(name)
        lic_text = ", ".join(f"{k}: {v}" for k, v in lic.items()) if isinstance(lic, dict) else ", ".join(lic or [])
        lines.append(f"| {name} | {sec.get('kind', '?')} | {samples.get(name, 0)} | {c.get('units_kept', 0)} | "
                     f"{c.get('units_filtered', 0)} | {c.get('units_failed', 0)} | {lic_text} |")
    return "\n".join(lines)


def _models_text(manifest: dict[str, Any]) -> str:
    rows = []
    for name, models in sorted(manifest.get("models", {}).items()):
        rows.append(f"- {name}: " + (", ".join(f"{role} = {m.get('id')}@{m.get('revision')} ({m.get('backend')})"
                                               for role, m in sorted(models.items())) or "none"))
    return "\n".join(rows) or "- none recorded"


def _card(data: DatasetCardData, body: str) -> DatasetCard:
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def dataset_card(dataset: str, manifest: dict[str, Any], pretty_name: str | None = None) -> DatasetCard:
    """The card of a shard dataset: its ``default`` config is the index (plain parquet columns the Hub's viewer
    and ``load_dataset`` read); the samples are in the WebDataset shards (or in an ``export-hf`` export)."""
    name = pretty_name or dataset.rstrip("/").rsplit("/", 1)[-1]
    per_source = {n: s.get("counts", {}).get("samples", 0) for n, s in manifest.get("sources", {}).items()}
    total = manifest.get("counts", {}).get("samples", sum(per_source.values()))
    declared = declared_licenses(manifest)
    data = _card_data(manifest, total, [v for vs in declared.values() for v in vs], name, ["webdataset"])
    index_features = datasets.Features.from_arrow_schema(shards.INDEX_SCHEMA)
    _add_configs(data, {"default": {"data_files": [{"split": "train", "path": f"{shards.INDEX_FILE}/*.parquet"}]}},
                 {"default": _info(index_features, total, folder_bytes(shards.join(dataset, shards.INDEX_FILE)))})
    synthetic = ("\n**Labels from tiny random models** (`synthetic_models: true`): for tests and smoke runs, "
                 "not for training.\n" if manifest.get("synthetic_models") else "")
    body = f"""# {name}

Paired subject data for AnyStory-style personalisation (SDXL), made by the anystory-data engine: {total} samples
(groups of frames of the same subjects, with captions, per-subject instance masks and boxes).
{synthetic}
{_sources_table(manifest, per_source, declared)}

Licences are those the inputs are known to carry without reading a sample (the objaverse source's licence
filter, DeepFashion2's terms); every sample's own licence is in its `meta.json` under `provenance.license`.

## Files

- `shards/<source>-<NNNNNN>.tar`: WebDataset tars, one sample = `frame.<j>.jpg`, `mask.<j>.<i>.png`, `meta.json`
  (shard format v{manifest.get('format_version', shards.FORMAT_VERSION)});
- `index.parquet/`: one row per sample (the `default` config above: what the Hub's viewer shows);
- `quarantine.parquet/`: inputs that gave no sample, with the stage and reason; `manifest.json`: how it was made.

The `datasets` library cannot read these tars (its webdataset builder needs the same files in every sample);
`python -m datagen.shards export-hf <dataset> <out>` writes parquet files it loads, images decoded.

## Models

{_models_text(manifest)}

Code version {manifest.get('code_version', '?')}, config hash {manifest.get('config_hash', '?')}, made
{manifest.get('start_time', '?')} – {manifest.get('end_time', '?')}.
"""
    return _card(data, body)


def export_card(manifest: dict[str, Any], files: list[Any], pretty_name: str, data_dir: str,
                features: datasets.Features) -> DatasetCard:
    """The card of an ``export-hf`` export: numbers and licences from its files' footers (``ExportedFile``),
    a config per pipeline source beside ``default``."""
    def source_of(f: Any) -> str:
        return shards.SHARD_NAME.match(f.name.removesuffix(".parquet") + ".tar")["source"]

    by_source: dict[str, list[Any]] = {}
    for f in files:
        by_source.setdefault(source_of(f), []).append(f)
    total = sum(f.rows for f in files)
    licenses: Counter = Counter()
    per_source_licenses = {}
    for src, fs_ in by_source.items():
        c: Counter = sum((Counter(f.licenses) for f in fs_), Counter())
        per_source_licenses[src] = dict(sorted(c.items()))
        licenses.update(c)
    data = _card_data(manifest, total, licenses, pretty_name, ["parquet"])
    configs = {"default": {"data_files": [{"split": "train", "path": f"{data_dir}/*.parquet"}]}}
    infos = {"default": _info(features, total, sum(f.bytes for f in files))}
    for src, fs_ in sorted(by_source.items()):
        configs[src] = {"data_files": [{"split": "train", "path": f"{data_dir}/{src}-*.parquet"}]}
        infos[src] = _info(features, sum(f.rows for f in fs_), sum(f.bytes for f in fs_))
    _add_configs(data, configs, infos)
    samples = {src: sum(f.rows for f in fs_) for src, fs_ in by_source.items()}
    body = f"""# {pretty_name}

Paired subject data for AnyStory-style personalisation (SDXL), made by the anystory-data engine and exported
for the `datasets` library: {total} samples in {len(files)} parquet files under `{data_dir}/`, one config per
pipeline source beside `default`.

{_sources_table(manifest, samples, per_source_licenses)}

Licences are counted from each sample's provenance (`meta` → `provenance.license`); `unknown` where the input
did not say.

## Columns

- the index columns: `key`, `shard`, `source` (kind), `n_frames`, `n_subjects`, `width`, `height`, `caption`,
  `subject_area_min`, `subject_area_max`, `score_det`, `score_match`;
- `frames`: the sample's frames (images, JPEG as in the shards);
- `masks`: `{{frame, subject, mask}}` for each subject in each frame it appears in (8-bit PNG, 255 inside);
- `meta`: the sample's `meta.json` as a JSON string (captions, boxes, cameras, provenance, models).

```python
from datasets import load_dataset
ds = load_dataset("parquet", data_files="{data_dir}/*.parquet", split="train")   # or the Hub repo id
ds[0]["frames"][0]   # PIL image
```

## Models

{_models_text(manifest)}

Code version {manifest.get('code_version', '?')}, config hash {manifest.get('config_hash', '?')}.
"""
    return _card(data, body)


def write_card(folder: str, card: DatasetCard) -> None:
    with shards.atomic_open(shards.join(folder, CARD_FILE), "w") as f:
        f.write(str(card))


def read_card(folder: str) -> DatasetCard:
    fs, path = fsspec.core.url_to_fs(shards.join(folder, CARD_FILE))
    with fs.open(path, "r") as f:
        return DatasetCard(f.read())
