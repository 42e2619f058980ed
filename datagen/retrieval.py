"""Cross-context pairs by retrieval: the same subject in two different units (clips, photos, objects).

Beyond the papers (AnyStory §3.4 pairs frames of one clip; OpenS2V-Nexus and Phantom-Data pair a subject across
videos): every subject of a finished dataset is embedded (the matcher's masked, square-padded crops and embedder,
averaged over the frames it is in), an approximate nearest-neighbour index is built over the embeddings, and each
subject's neighbours become candidates when they come from another unit (not the same clip, DeepFashion2 pair
group or object: ``unit_group``) and their phrases agree (the matcher's ``phrases_agree``). A candidate is verified
on the exact cosine similarity (``min_identity``) and written as a two-frame sample, one frame from each unit
(``cross_sample``), with provenance naming both.

Shards are read by member offsets recorded while embedding (``tar_samples`` / ``read_view``), so writing a pair
reads two frames, not two shards.
"""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import numpy as np
import pyarrow as pa
from pydantic import Field

from datagen import shards
from datagen.labeling.matching import Agreement, masked_crop, phrase_key, phrases_agree
from datagen.params import Params

EMBEDDING_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("subject", pa.int32()), ("phrase", pa.string()),
    ("group", pa.string()), ("frame", pa.int32()), ("members", pa.string()), ("vector", pa.list_(pa.float32())),
])
PAIR_SCHEMA = pa.schema([
    ("pair", pa.string()), ("similarity", pa.float32()),
    *[(f"{side}_{c}", t) for side in ("a", "b") for c, t in
      (("key", pa.string()), ("shard", pa.string()), ("subject", pa.int32()), ("frame", pa.int32()),
       ("members", pa.string()), ("row", pa.int64()))],  # row: the subject's row over the embedding files, in order
])
# provenance fields naming the unit a sample came from, most specific first: DeepFashion2's pair group, a mesh's
# content hash (one object under two uids is one object), its uid, a clip's or photo's URL, a COCO file
GROUP_FIELDS = ("pair_id", "sha1", "uid", "url", "file_name")


class AnnParams(Params):
    """The nearest-neighbour index (faiss): exact below ``exact_below`` vectors, else IVF with 8-bit scalar
    quantisation (d bytes a vector) whose ``k * rerank`` candidates are re-ranked on the exact vectors."""

    exact_below: int = Field(50_000, ge=0)
    # IVF lists; default √n (1,000 at 1 M): faiss suggests 4–16·√n for large n, fewer lists train faster (k-means
    # cost ∝ lists × training vectors) and each probe scans more vectors; recall is measured in benchmarks/retrieval.py
    nlist: int | None = None
    nprobe: int = Field(32, ge=1)
    train_size: int = Field(50_000, ge=1)  # vectors the quantiser is trained on (~50 a list at 1 M)
    rerank: int = Field(4, ge=1)
    query_batch: int = Field(4096, ge=1)


class RetrieveParams(Params):
    k: int = Field(10, ge=1)  # neighbours looked at per subject
    # exact cosine of the subjects' mean embeddings for a verified pair: stricter than the matcher's 0.6 within a
    # clip, where time and place already make a match likely
    min_identity: float = 0.8
    phrases_agree: Agreement = "wordnet"
    max_pairs_per_subject: int = Field(3, ge=1)  # so one popular subject does not fill the dataset
    ann: AnnParams = AnnParams()


def unit_group(key: str, provenance: dict[str, Any]) -> str:
    """What two samples must not share to make a cross-context pair: their clip, pair group or object."""
    for name in GROUP_FIELDS:
        if provenance.get(name) not in (None, ""):
            return f"{provenance.get('dataset', '')}:{name}:{provenance[name]}"
    return f"key:{key}"


# ------------------------------------------------------------------------------------ reading shards


def tar_samples(url: str) -> Iterator[tuple[str, dict[str, tuple[int, int]], dict[str, bytes]]]:
    """(key, {member: (offset, size)}, {member: bytes}) of each sample of a shard, in order (members adjacent)."""
    with fsspec.open(url, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        key, offsets, raw = None, {}, {}
        for m in tar:
            if not m.isfile():
                continue
            k, name = m.name.split(".", 1)
            if k != key and key is not None:
                yield key, offsets, raw
                offsets, raw = {}, {}
            key = k
            offsets[name] = (m.offset_data, m.size)
            raw[name] = tar.extractfile(m).read()
        if key is not None:
            yield key, offsets, raw


def subject_crops(sample: shards.Sample) -> list[tuple[shards.Subject, list[np.ndarray], int]]:
    """Per subject: its masked crops (one per frame it is in) and its largest frame (the one a pair shows)."""
    out = []
    for s in sample.subjects:
        frames = sorted(s.masks)
        if not frames:
            continue
        crops = [masked_crop(sample.frames[j].image, s.masks[j], s.box(j)) for j in frames]
        out.append((s, crops, max(frames, key=lambda j: int(s.masks[j].sum()))))
    return out


def embed_shard(url: str, shard: str, embed) -> pa.Table:
    """One row per subject of a shard: identity, phrase, unit group, largest frame, member offsets and the
    L2-normalised mean of its crops' embeddings (``embed``: list of crops → n × d normalised rows)."""
    rows: list[dict[str, Any]] = []
    for key, offsets, raw in tar_samples(url):
        sample = shards.decode_sample({"__key__": key, **raw})
        views = subject_crops(sample)
        if not views:
            continue
        emb = embed([c for _, crops, _ in views for c in crops])
        start = 0
        for s, crops, frame in views:
            mean = emb[start:start + len(crops)].sum(0)
            start += len(crops)
            rows.append({
                "key": key, "shard": shard, "subject": s.id, "phrase": s.phrase,
                "group": unit_group(key, sample.provenance), "frame": frame,
                "members": json.dumps({n: offsets[n] for n in _view_members(offsets, frame)}),
                "vector": (mean / max(np.linalg.norm(mean), 1e-12)).astype(np.float32),
            })
    return pa.Table.from_pylist(rows, schema=EMBEDDING_SCHEMA)


def _view_members(offsets: dict[str, Any], frame: int) -> list[str]:
    return ["meta.json", f"frame.{frame}.jpg",
            *sorted(n for n in offsets if n.startswith(f"mask.{frame}."))]


@dataclass
class View:
    """One frame of a stored sample with its subjects' masks (``masks[subject id]``) and the sample's meta."""

    key: str
    meta: dict[str, Any]
    frame: int
    image: np.ndarray
    masks: dict[int, np.ndarray]


def read_view(url: str, key: str, frame: int, members: dict[str, tuple[int, int]]) -> View:
    """The frame and its masks, by ranged reads of the recorded members."""
    data = {}
    with fsspec.open(url, "rb") as f:
        for name, (offset, size) in members.items():
            f.seek(offset)
            data[name] = f.read(size)
    masks = {int(n.split(".")[2]): shards.decode_image(b, "L") > 127 for n, b in data.items() if n.startswith("mask.")}
    return View(key, json.loads(data["meta.json"]), frame, shards.decode_image(data[f"frame.{frame}.jpg"]), masks)


# ------------------------------------------------------------------------------------ the index


class SubjectIndex:
    """Inner product over L2-normalised vectors (cosine). Exact (``IndexFlatIP``, 4·d bytes a vector) below
    ``exact_below`` vectors; above, IVF (√n lists) + 8-bit scalar quantiser (``IndexIVFScalarQuantizer``, d bytes a vector
    plus the lists' ids) trained on ``train_size`` vectors, and ``search`` re-ranks its ``k · rerank`` candidates
    on the exact vectors (faiss itself is the field's library for this; the re-rank only reads the rows it needs)."""

    def __init__(self, d: int, n: int, p: AnnParams):
        import faiss

        self.p = p
        self.exact = n < p.exact_below
        if self.exact:
            self.index = faiss.IndexFlatIP(d)
        else:
            nlist = p.nlist or max(1, int(np.sqrt(n)))
            self.quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFScalarQuantizer(self.quantizer, d, nlist, faiss.ScalarQuantizer.QT_8bit,
                                                       faiss.METRIC_INNER_PRODUCT)
            self.index.nprobe = min(p.nprobe, nlist)

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, vectors: np.ndarray) -> None:
        self.index.train(np.ascontiguousarray(vectors, np.float32))

    def add(self, vectors: np.ndarray) -> None:
        self.index.add(np.ascontiguousarray(vectors, np.float32))

    def search(self, queries: np.ndarray, k: int, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, ids) of the k nearest, best first; ``vectors`` (may be a memmap) holds every row."""
        queries = np.ascontiguousarray(queries, np.float32)
        if self.exact:
            return self.index.search(queries, k)
        _, ids = self.index.search(queries, k * self.p.rerank)
        safe = np.where(ids < 0, 0, ids)
        exact = np.einsum("qd,qkd->qk", queries, np.asarray(vectors[safe.ravel()]).reshape(*safe.shape, -1))
        exact[ids < 0] = -np.inf
        order = np.argsort(-exact, axis=1)[:, :k]
        return np.take_along_axis(exact, order, 1), np.take_along_axis(ids, order, 1)


def verified_pairs(sims: np.ndarray, ids: np.ndarray, groups: np.ndarray, keys: np.ndarray,
                   p: RetrieveParams, offset: int = 0) -> list[tuple[float, int, int]]:
    """(similarity, i, j) with i < j for the query rows ``offset + q`` and their neighbours that pass: another unit
    group, agreeing phrases (``keys``: phrase keys; None agrees with all), similarity ≥ ``min_identity``."""
    out = []
    for q in range(len(ids)):
        i = offset + q
        for s, j in zip(sims[q], ids[q]):
            if j < 0 or j == i or s < p.min_identity or groups[i] == groups[j]:
                continue
            if not phrases_agree(keys[i], keys[j], p.phrases_agree):
                continue
            out.append((float(s), min(i, int(j)), max(i, int(j))))
    return out


def select_pairs(candidates: list[tuple[float, int, int]], max_per_subject: int,
                 used: dict[int, int] | None = None) -> list[tuple[float, int, int]]:
    """Unique pairs, most similar first, each subject in at most ``max_per_subject`` of them (``used``: pairs a
    subject already has)."""
    used = dict(used or {})
    chosen, seen = [], set()
    for s, i, j in sorted(candidates, key=lambda c: (-c[0], c[1], c[2])):
        if (i, j) in seen or used.get(i, 0) >= max_per_subject or used.get(j, 0) >= max_per_subject:
            continue
        seen.add((i, j))
        used[i], used[j] = used.get(i, 0) + 1, used.get(j, 0) + 1
        chosen.append((s, i, j))
    return chosen


def phrase_keys(phrases: list[str], agree: str) -> np.ndarray:
    return np.array([phrase_key(p, agree) for p in phrases], dtype=object)


# ------------------------------------------------------------------------------------ the sample


def pair_key(a_key: str, a_subject: int, b_key: str, b_subject: int) -> str:
    return shards.stable_key("xctx", f"{a_key}:{a_subject}|{b_key}:{b_subject}")


def cross_sample(key: str, a: View, a_subject: int, b: View, b_subject: int, similarity: float,
                 shards_of: tuple[str, str]) -> shards.Sample:
    """Frame 0 from unit a, frame 1 from unit b; subject 0 is the retrieved one (masks in both). The frames' other
    subjects stay labelled (each in its own frame, its own crop as reference), so no labelled kind is left as
    unlabelled pixels."""
    subjects_meta = [{s["id"]: s for s in v.meta["subjects"]} for v in (a, b)]
    first = subjects_meta[0][a_subject]
    subjects = [shards.Subject(0, first["phrase"], {0: a.masks[a_subject], 1: b.masks[b_subject]},
                               det_score=first.get("det_score"), match_score=similarity,
                               fields={"retrieved_from": [a_subject, b_subject]})]
    for j, (view, chosen) in enumerate(((a, a_subject), (b, b_subject))):
        for sid, mask in sorted(view.masks.items()):
            if sid != chosen:
                sm = subjects_meta[j][sid]
                subjects.append(shards.Subject(len(subjects), sm["phrase"], {j: mask}, det_score=sm.get("det_score"),
                                               fields={"reference": "target_crop"}))
    frames = []
    for view in (a, b):
        fm = view.meta["frames"][view.frame]
        fields = {k: v for k, v in fm.items() if k not in ("caption", "width", "height")}
        frames.append(shards.Frame(view.image, fm.get("caption", ""), fields))
    provenance = {"retrieval": {"similarity": similarity, **{
        side: {"key": v.key, "shard": shard, "subject": sid, "frame": v.frame, "source": v.meta.get("source"),
               "provenance": v.meta.get("provenance", {})}
        for side, v, sid, shard in (("a", a, a_subject, shards_of[0]), ("b", b, b_subject, shards_of[1]))}},
        "license": [a.meta.get("provenance", {}).get("license"), b.meta.get("provenance", {}).get("license")]}
    models = {"a": a.meta.get("models", {}), "b": b.meta.get("models", {})}
    return shards.Sample(key, "image", frames, subjects, provenance, models, {"match": similarity})


# ------------------------------------------------------------------------------------ pairs of a dataset


def find_pairs(embeddings: list[str], vectors_path: str, p: RetrieveParams, paired: int = 0,
               previous: pa.Table | None = None) -> tuple[pa.Table, int]:
    """Verified pairs (``PAIR_SCHEMA``) over the subjects of the embedding files (local parquet paths), and how
    many subjects were queried.

    A rerun after new shards pairs only the new work: the first ``paired`` files were paired by an earlier run
    (``previous``, its pairs, kept as they are and counted against each subject's quota), so only the subjects of
    the files after them query the index (which holds every subject: a new one pairs with old ones). An old
    subject is found by a new one's query, never by its own: the nearest-neighbour relation is not symmetric, so
    this can differ from a run from scratch at the margin of the ``k`` neighbours.

    Memory: the vectors go to a float32 file (``vectors_path``, memory-mapped: pages come and go), the index holds
    d bytes a vector (IVF-SQ8) or 4·d (exact), and per subject two int32 codes (unit group, phrase key); the rows
    of the chosen pairs are read back from the files at the end.
    """
    import pyarrow.dataset as pads

    ds = pads.dataset(embeddings, schema=EMBEDDING_SCHEMA, format="parquet")
    meta = ds.to_table(columns=["group", "phrase"])
    n = meta.num_rows
    previous = previous if previous is not None and paired else PAIR_SCHEMA.empty_table()
    new_from = pads.dataset(embeddings[:paired], schema=EMBEDDING_SCHEMA, format="parquet").count_rows() if paired else 0
    if n == new_from:
        return previous, 0
    groups = meta["group"].combine_chunks().dictionary_encode().indices.to_numpy()
    keys = phrase_keys(meta["phrase"].to_pylist(), p.phrases_agree)
    del meta
    d = 0
    vectors = None
    row = 0
    for batch in ds.to_batches(columns=["vector"], batch_size=65_536):
        flat = batch["vector"].values.to_numpy(zero_copy_only=False)
        if vectors is None:
            d = len(flat) // max(batch.num_rows, 1)
            vectors = np.lib.format.open_memmap(vectors_path, "w+", np.float32, (n, d))
        vectors[row:row + batch.num_rows] = flat.reshape(batch.num_rows, d)
        row += batch.num_rows
    vectors.flush()
    index = SubjectIndex(d, n, p.ann)
    if index.needs_training:
        pick = np.sort(np.random.default_rng(0).choice(n, min(n, p.ann.train_size), replace=False))
        index.train(np.asarray(vectors[pick]))
    for start in range(0, n, 65_536):
        index.add(np.asarray(vectors[start:start + 65_536]))
    k = min(p.k + 1, n)  # + itself
    candidates, queried = [], 0
    for start in range(new_from, n, p.ann.query_batch):
        sims, ids = index.search(np.asarray(vectors[start:start + p.ann.query_batch]), k, vectors)
        candidates += verified_pairs(sims, ids, groups, keys, p, offset=start)
        queried += len(ids)
    used: dict[int, int] = {}
    for row in previous["a_row"].to_pylist() + previous["b_row"].to_pylist():
        used[row] = used.get(row, 0) + 1
    chosen = select_pairs(candidates, p.max_pairs_per_subject, used)
    if not chosen:
        return previous, queried
    cols = ["key", "shard", "subject", "frame", "members"]
    rows = {"a": [i for _, i, _ in chosen], "b": [j for _, _, j in chosen]}
    a, b = (ds.take(pa.array(rows[side]), columns=cols) for side in ("a", "b"))
    pair = [pair_key(ak, asub, bk, bsub) for ak, asub, bk, bsub in
            zip(a["key"].to_pylist(), a["subject"].to_pylist(), b["key"].to_pylist(), b["subject"].to_pylist())]
    new = pa.table({"pair": pair, "similarity": pa.array([s for s, _, _ in chosen], pa.float32()),
                    **{f"{side}_{c}": t[c] for side, t in (("a", a), ("b", b)) for c in cols},
                    **{f"{side}_row": pa.array(rows[side], pa.int64()) for side in ("a", "b")}})
    return pa.concat_tables([previous, new.select(PAIR_SCHEMA.names).cast(PAIR_SCHEMA)]), queried
