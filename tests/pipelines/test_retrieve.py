"""`python -m pipelines retrieve`: the same subject in other units is paired, look-alikes, the same clip and other
phrases are not; the output is a dataset of the shard format that validates, resumes and the trainer opens."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from datagen import retrieval, shards
from datagen.shards.validate import validate
from pipelines.cli import main as cli_main
from tests.retrieval_set import recurring_dataset, unit_sample
from tests.shard_factory import write_dataset
from training.config import AugmentParams
from training.plan import plan_samples, sdxl_buckets
from training.streams import open_source, read_shard

# A tiny random DINOv2 squeezes cosines together: on this set the same subject scores ≥ 0.997 across units,
# the look-alike ≤ 0.91 (measured); the real embedder's default is RetrieveParams.min_identity.
TINY_MIN_IDENTITY = 0.98


def pairs_of(out):
    found = set()
    for s in shards.iter_samples(out):
        r = s.provenance["retrieval"]
        found.add(tuple(sorted((r["a"]["key"], r["b"]["key"]))))
    return found


def test_retrieve_pairs_a_subject_across_units_only(tmp_path, ray_local, capsys):
    dataset = recurring_dataset(str(tmp_path / "ds"))
    out = str(tmp_path / "xctx")
    cfg = tmp_path / "retrieve.yaml"
    cfg.write_text(f"params: {{min_identity: {TINY_MIN_IDENTITY}}}\n")
    args = ["retrieve", "--dataset", dataset, "--out", out, "--config", str(cfg), "--models", "tiny"]
    assert cli_main(args) == 0
    # a–b and a2–b: the dog in other clips; not a–a2 (one clip), not c (a look-alike), not d (a "car")
    assert pairs_of(out) == {("vid-a", "vid-b"), ("vid-a2", "vid-b")}
    assert validate(out).ok
    sample = next(s for s in shards.iter_samples(out) if s.provenance["retrieval"]["b"]["key"] in ("vid-b", "vid-a"))
    dog = sample.subjects[0]
    assert sorted(dog.masks) == [0, 1] and dog.phrase.endswith("dog") and dog.match_score >= TINY_MIN_IDENTITY
    # vid-b's ball stays labelled in its frame (its own crop as reference), not left as unlabelled pixels
    ball = [s for s in sample.subjects if s.phrase == "ball"]
    assert len(ball) == 1 and len(ball[0].masks) == 1 and ball[0].fields["reference"] == "target_crop"
    # the frames are the stored ones: frame b is vid-b's frame pixel for pixel (up to JPEG)
    b = sample.provenance["retrieval"]["b"]
    stored = next(s for s in shards.iter_samples(dataset) if s.key == b["key"]).frames[b["frame"]].image
    assert np.abs(sample.frames[1].image.astype(int) - stored).mean() < 4
    manifest = shards.read_manifest(out)
    assert manifest["synthetic_models"] is True and manifest["retrieval"]["pairs"] == 2
    # the trainer reads it as another source, and its planner makes a reference/target plan of each sample
    src = open_source(out, "retrieval", 1.0, allow_synthetic=True)
    assert src.sizes == (2,)
    aug = AugmentParams()
    plans = list(plan_samples(read_shard(src, 0), aug, sdxl_buckets(aug.resolution, aug.bucket_step,
                                                                        aug.max_aspect), np.random.default_rng(0)))
    assert len(plans) == 2
    # a rerun embeds nothing and writes nothing twice
    capsys.readouterr()
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "(0 embedded now" in printed and "2 skipped (done before)" in printed
    assert len(shards.read_table(out, shards.INDEX_FILE)) == 2
    # a new shard with the dog in clip e: only its subject is embedded and queried, the old pairs stay
    extra = write_dataset(str(tmp_path / "extra"), [[unit_sample("vid-e", "clips/e.mp4", [(1, "dog")], 6)]])
    shutil.copy(os.path.join(extra, shards.SHARDS_DIR, "test-000000.tar"),
                os.path.join(dataset, shards.SHARDS_DIR, "test-000002.tar"))
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "(1 embedded now" in printed and "3 new from 1 subjects queried" in printed
    assert shards.read_manifest(out)["retrieval"]["queried"] == 1
    assert pairs_of(out) == {("vid-a", "vid-b"), ("vid-a2", "vid-b"),
                             ("vid-a", "vid-e"), ("vid-a2", "vid-e"), ("vid-b", "vid-e")}  # b's third pair
    assert len(shards.read_table(out, shards.INDEX_FILE)) == 5


def test_retrieve_refuses_a_folder_without_shards(tmp_path, capsys):
    assert cli_main(["retrieve", "--dataset", str(tmp_path), "--out", str(tmp_path / "o"), "--models", "tiny"]) == 2
    assert "no shards" in capsys.readouterr().err


def _clusters(n, d, centres, seed=0):
    """Unit vectors around ``centres`` random directions (subjects seen several times), as embeddings are."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d))
    x = c[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ann_index_recall_against_exact_search():
    x = _clusters(20_000, 64, 500)
    q = x[:500]
    exact = retrieval.SubjectIndex(64, len(x), retrieval.AnnParams(exact_below=10**9))
    exact.add(x)
    _, truth = exact.search(q, 10, x)
    ann = retrieval.SubjectIndex(64, len(x), retrieval.AnnParams(exact_below=0, nprobe=8))
    assert not ann.exact and ann.needs_training
    ann.train(x[:5000])
    ann.add(x)
    sims, ids = ann.search(q, 10, x)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    assert recall >= 0.95
    # re-ranked on the exact vectors: the similarities are the true cosines, best first
    np.testing.assert_allclose(sims, np.einsum("qd,qkd->qk", q, x[ids]), atol=1e-5)
    assert (np.diff(sims, axis=1) <= 1e-6).all()


def _embeddings_file(path, x, first=0):
    """Subjects ``first``… with vectors ``x``, a unit group per two subjects, all of them dogs."""
    pq.write_table(retrieval.EMBEDDING_SCHEMA.empty_table().from_pylist([
        {"key": f"k{first + i}", "shard": "s-000000.tar", "subject": 0, "phrase": "dog", "group": f"g{(first + i) // 2}",
         "frame": 0, "members": "{}", "vector": v} for i, v in enumerate(x)], schema=retrieval.EMBEDDING_SCHEMA), path)
    return path


def test_a_rerun_after_new_shards_queries_only_their_subjects_and_keeps_the_old_pairs(tmp_path):
    x = _clusters(1600, 32, 200)
    old = _embeddings_file(str(tmp_path / "old.parquet"), x[:1200])
    new = _embeddings_file(str(tmp_path / "new.parquet"), x[1200:], first=1200)
    p = retrieval.RetrieveParams(k=10, min_identity=0.7, max_pairs_per_subject=2)
    before, queried = retrieval.find_pairs([old], str(tmp_path / "v.npy"), p)
    assert queried == 1200 and before.num_rows > 100
    after, queried = retrieval.find_pairs([old, new], str(tmp_path / "v.npy"), p, paired=1, previous=before)
    assert queried == 400  # only the new shard's subjects query the index
    assert after.slice(0, before.num_rows).equals(before)  # the old pairs, as they were
    added = after.slice(before.num_rows)
    assert added.num_rows > 20 and all(max(a, b) >= 1200 for a, b in zip(added["a_row"].to_pylist(),
                                                                        added["b_row"].to_pylist()))
    rows = after["a_row"].to_pylist() + after["b_row"].to_pylist()
    assert max(rows.count(r) for r in set(rows)) <= 2  # the quota counts the old pairs
    for a, b, sim in zip(added["a_row"].to_pylist(), added["b_row"].to_pylist(), added["similarity"].to_pylist()):
        assert a // 2 != b // 2 and sim >= 0.7 and sim == pytest.approx(float(x[a] @ x[b]), abs=1e-5)


def test_find_pairs_ann_agrees_with_exact(tmp_path):
    """Embeddings files → pairs, through the IVF index and through exact search: the same pairs."""
    n, d = 3000, 32
    x = _clusters(n, d, 300)
    path = _embeddings_file(str(tmp_path / "e.parquet"), x)
    p = dict(k=10, min_identity=0.7, max_pairs_per_subject=2)
    exact, _ = retrieval.find_pairs([path], str(tmp_path / "v1.npy"), retrieval.RetrieveParams(**p))
    ann, _ = retrieval.find_pairs([path], str(tmp_path / "v2.npy"), retrieval.RetrieveParams(
        **p, ann=retrieval.AnnParams(exact_below=0, nprobe=16)))
    assert exact.num_rows > 100
    same = len(set(exact["pair"].to_pylist()) & set(ann["pair"].to_pylist()))
    assert same / exact.num_rows >= 0.95


@pytest.mark.parametrize("case, keep", [
    ("other unit, same phrase, similar", True),
    ("same clip", False),
    ("other phrase", False),
    ("not similar enough", False),
])
def test_verified_pairs_rules(case, keep):
    groups = np.array([0, 1 if case != "same clip" else 0])
    keys = np.array(["dog", "car" if case == "other phrase" else "dog"], dtype=object)
    sim = 0.5 if case == "not similar enough" else 0.9
    got = retrieval.verified_pairs(np.array([[1.0, sim]]), np.array([[0, 1]]), groups, keys,
                                   retrieval.RetrieveParams(min_identity=0.8))
    assert got == ([(sim, 0, 1)] if keep else [])


def test_select_pairs_caps_each_subject():
    cands = [(0.99, 0, 1), (0.98, 0, 2), (0.97, 0, 3), (0.96, 1, 2), (0.99, 0, 1)]
    assert retrieval.select_pairs(cands, 2) == [(0.99, 0, 1), (0.98, 0, 2), (0.96, 1, 2)]


def test_unit_group_names_clip_pair_group_object():
    assert retrieval.unit_group("k", {"url": "a.mp4"}) == retrieval.unit_group("k2", {"url": "a.mp4"})
    assert retrieval.unit_group("k", {"dataset": "DeepFashion2/train", "pair_id": 7, "shop": 1}) != \
        retrieval.unit_group("k", {"dataset": "DeepFashion2/train", "pair_id": 8, "shop": 1})
    assert retrieval.unit_group("k", {"uid": "u1", "sha1": "s"}) == retrieval.unit_group("j", {"uid": "u2", "sha1": "s"})
    assert json.dumps(retrieval.unit_group("k", {})) == '"key:k"'
