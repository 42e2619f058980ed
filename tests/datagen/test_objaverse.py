"""Objaverse units: annotation filters and downloads through the ``objaverse`` package (faked here: no network),
local files deduplicated by content, metadata captions and phrases."""

import json

import numpy as np
import objaverse as objaverse_pkg
import pytest

from datagen.labeling import captions as captioning
from datagen.readers import objaverse
from datagen.models import ModelSpec
from datagen.readers.objaverse import CaptionParams, ObjaverseQuery, ObjectCaptioner
from datagen.shards import Frame, Sample, Subject
from datagen.units import BadInput, Item, Unit


def ann(uid, license="by", faces=1000, animations=0, tags=(), categories=(), name=None):
    return {"uid": uid, "name": name or f"object {uid}", "license": license, "faceCount": faces,
            "animationCount": animations, "tags": [{"name": t, "slug": t} for t in tags],
            "categories": [{"name": c.title(), "slug": c} for c in categories],
            "viewerUrl": f"https://sketchfab.com/3d-models/{uid}"}


ANNOTATIONS = {
    "a1": ann("a1", tags=["chair"], categories=["furniture-home"], name="Wooden_Chair_01"),
    "b2": ann("b2", license="by-nd"),
    "c3": ann("c3", faces=900_000),
    "d4": ann("d4", animations=2),
    "e5": ann("e5", license="cc0", tags=["mug"]),
    "f6": ann("f6", license="by-nc", categories=["food-drink"]),
}


@pytest.fixture
def fake_objaverse(monkeypatch, tmp_path):
    downloads = []

    def load_objects(uids, download_processes=1):
        downloads.append((list(uids), download_processes))
        return {u: str(tmp_path / f"{u}.glb") for u in uids if u != "missing"}

    monkeypatch.setattr(objaverse_pkg, "load_uids", lambda: sorted(ANNOTATIONS) + ["zz"])
    monkeypatch.setattr(objaverse_pkg, "load_annotations", lambda uids=None: {u: ANNOTATIONS[u] for u in uids
                                                                              if u in ANNOTATIONS})
    monkeypatch.setattr(objaverse_pkg, "load_lvis_annotations", lambda: {"mug": ["e5", "a1"], "chair": ["a1"]})
    monkeypatch.setattr(objaverse_pkg, "load_objects", load_objects)
    return downloads


def test_annotation_filters_count_each_reason(fake_objaverse):
    units, dropped = objaverse.list_objaverse_units(ObjaverseQuery())
    assert [u.id for u in units] == ["objaverse:a1", "objaverse:e5", "objaverse:f6"]
    assert dropped == {"license": 1, "too_many_faces": 1, "animated": 1, "no_annotation": 1}
    a1 = units[0].ref
    assert a1["path"] is None  # downloaded by the render stage, in the worker
    assert a1["meta"]["tags"] == ["chair"] and a1["meta"]["license"] == "by"
    assert fake_objaverse == []

    units, dropped = objaverse.list_objaverse_units(ObjaverseQuery(tags=["MUG"], licenses=None))
    assert [u.ref["uid"] for u in units] == ["e5"] and dropped == {"tags": 5, "no_annotation": 1}
    units, _ = objaverse.list_objaverse_units(ObjaverseQuery(categories=["Food-Drink", "nothing"]))
    assert [u.ref["uid"] for u in units] == ["f6"]
    units, _ = objaverse.list_objaverse_units(ObjaverseQuery(animated=True, licenses=None))
    assert [u.ref["uid"] for u in units] == ["d4"]
    units, _ = objaverse.list_objaverse_units(ObjaverseQuery(max_faces=None, limit=2, licenses=["by"]))
    assert [u.ref["uid"] for u in units] == ["a1", "c3"]


def test_lvis_categories_and_prefetch(fake_objaverse):
    units, _ = objaverse.list_objaverse_units(ObjaverseQuery(lvis_categories=["mug"], prefetch=True,
                                                             download_processes=3))
    assert [u.ref["uid"] for u in units] == ["a1", "e5"]
    assert units[1].ref["meta"]["categories"][0] == "mug"  # the LVIS category leads
    assert fake_objaverse == [(["a1", "e5"], 3)]
    assert units[0].ref["path"].endswith("a1.glb")


def test_fetch_downloads_one_object_in_the_worker(fake_objaverse):
    with objaverse.fetch({"uid": "e5", "path": None}) as path:
        assert path.endswith("e5.glb")
    assert fake_objaverse == [(["e5"], 1)]
    with objaverse.fetch({"uid": "e5", "path": "/here.glb"}) as path:
        assert path == "/here.glb"
    with pytest.raises(BadInput) as e, objaverse.fetch({"uid": "missing", "path": None}):
        pass
    assert e.value.reason == "download_failed"


def test_local_files_are_units_by_content(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.glb").write_bytes(b"one")
    (tmp_path / "sub" / "b.PLY").write_bytes(b"two")
    (tmp_path / "sub" / "copy.obj").write_bytes(b"one")  # same bytes as a.glb
    (tmp_path / "notes.txt").write_text("not a mesh")
    (tmp_path / "sub" / "b.json").write_text(json.dumps({"name": "Blue Bottle", "tags": ["glass"]}))
    paths = objaverse.mesh_files(str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["a.glb", "b.PLY", "copy.obj"]
    units, dropped = objaverse.list_file_units(paths)
    assert dropped == {"duplicate_file": 1}
    assert [u.id for u in units] == ["file:" + objaverse.file_sha1(paths[0]), "file:" + objaverse.file_sha1(paths[1])]
    assert objaverse.sample_key(units[0].ref) == "obj-" + objaverse.file_sha1(paths[0])
    assert units[0].ref["meta"]["name"] == "a"
    assert units[1].ref["meta"] == {"name": "Blue Bottle", "tags": ["glass"], "categories": []}


@pytest.mark.parametrize("sidecar, says", [("[1, 2]", "not list"), ('{"name": "x", "tags": "glass"}', "tags"),
                                           ('{"name": ', "line 1"), ('{"name": 7}', "name")])
def test_an_unusable_sidecar_quarantines_its_file_by_name_and_the_rest_is_listed(tmp_path, sidecar, says):
    (tmp_path / "a.glb").write_bytes(b"one")
    (tmp_path / "b.glb").write_bytes(b"two")
    (tmp_path / "b.json").write_text(sidecar)
    units, _ = objaverse.list_file_units(objaverse.mesh_files(str(tmp_path)))
    assert [u.ref.get("meta", {}).get("name") for u in units] == ["a", None]
    outcome = Item(units[1]).outcome
    assert units[1].id == "file:" + objaverse.file_sha1(str(tmp_path / "b.glb"))
    assert (outcome.kind, outcome.stage, outcome.reason) == ("failed", "list", "bad_sidecar")
    assert str(tmp_path / "b.json") in outcome.detail and says in outcome.detail


def test_metadata_captions_and_phrases():
    p = CaptionParams(max_tags=2)
    assert objaverse.clean_name("SM_Wooden_Chair_01 (3D model)") == "wooden chair"
    assert objaverse.clean_name("LowPoly RedCar #3") == "low poly red car"
    caption, phrase = objaverse.metadata_caption(
        {"name": "Wooden_Chair_01", "tags": ["chair", "oak", "antique", "dining"], "categories": ["Furniture"]}, p)
    assert caption == "a wooden chair, oak, antique" and phrase == "chair"
    caption, phrase = objaverse.metadata_caption({"name": "", "tags": [], "categories": ["Electronics Gadgets"]}, p)
    assert caption == "an electronics gadgets" and phrase == "gadgets"
    assert objaverse.metadata_caption({"name": "", "tags": [], "categories": []}, p) == ("an object", "object")
    assert objaverse.head_noun("a red ceramic mug with a handle on a white table") == "mug"


def _item(meta):
    frames = [Frame(np.full((56, 56, 3), 30 * j, np.uint8), "a crate") for j in range(7)]
    masks = {j: np.ones((56, 56), bool) for j in range(7)}
    sample = Sample("obj-x", "objaverse", frames, [Subject(0, "crate", masks=masks)], models={"captioner": "metadata"})
    return Item(Unit("file:x", {"meta": meta}), samples=[sample])


def test_registry_captioner_captions_one_view_for_every_frame():
    spec = ModelSpec(role="captioner", id="Qwen/Qwen2-VL-2B-Instruct", revision="main", mode="tiny")
    captioner = ObjectCaptioner(spec, CaptionParams(view=3, model=captioning.CaptionParams(max_new_tokens=6)))
    [tiny] = captioner([_item({"categories": []})])  # the tiny random Qwen2-VL runs end to end
    assert tiny.samples[0].models["captioner"] == {"id": spec.id, "revision": "tiny", "backend": "transformers"}
    assert len({f.caption for f in tiny.samples[0].frames}) == 1

    seen = []
    captioner.model = lambda images: seen.append(images) or ["A red ceramic mug with a handle.", ""]
    mug, empty = captioner([_item({"categories": []}), _item({"categories": ["Kitchen Tools"]})])
    assert len(seen[0]) == 2 and (seen[0][0] == 90).all()  # view 3 of each object
    assert [f.caption for f in mug.samples[0].frames] == ["A red ceramic mug with a handle."] * 7
    assert mug.samples[0].subjects[0].phrase == "mug"
    assert empty.samples[0].frames[0].caption == "a crate" and empty.drops == {"caption/empty_caption": 1}


def test_file_hashes_are_kept_between_runs_until_a_file_changes(tmp_path, monkeypatch):
    from datagen.filecache import FileCache

    paths = []
    for name, data in (("a.glb", b"mesh a"), ("b.ply", b"mesh b")):
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    hashed = []
    real = objaverse.file_sha1
    monkeypatch.setattr(objaverse, "file_sha1", lambda p: hashed.append(p) or real(p))
    cache = FileCache(str(tmp_path / "cache" / "files.sqlite"))
    first = [u.id for u in objaverse.list_file_units(paths, cache)[0]]
    again = [u.id for u in objaverse.list_file_units(paths, FileCache(str(tmp_path / "cache" / "files.sqlite")))[0]]
    assert first == again and len(hashed) == 2  # the second listing (a new run) hashed nothing
    (tmp_path / "b.ply").write_bytes(b"mesh b, edited")  # another size (and mtime): hashed again
    changed = [u.id for u in objaverse.list_file_units(paths, cache)[0]]
    assert len(hashed) == 3 and changed[0] == first[0] and changed[1] == "file:" + real(paths[1]) != first[1]


def test_meshes_in_a_bucket_are_listed_hashed_and_copied_with_their_side_files(s3_bucket, tmp_path):
    """A folder of meshes in an object store lists the same units as on disk; a glTF's buffers and an OBJ's
    material and texture come along with its local copy, so the renderer loads it textured."""
    import fsspec

    from datagen.render.meshes import MeshParams, load
    from datagen.samples.objaverse import make

    folder = make(str(tmp_path))["folder"]
    remote = f"{s3_bucket}/meshes"
    fsspec.filesystem("s3").put(f"{folder}/", remote, recursive=True)
    local_units = objaverse.list_file_units(objaverse.mesh_files(folder))[0]
    remote_units = objaverse.list_file_units(objaverse.mesh_files(remote))[0]
    assert [u.id for u in remote_units] == [u.id for u in local_units] and len(remote_units) == 7
    assert [u.ref["meta"] for u in remote_units] == [u.ref["meta"] for u in local_units]
    by_name = {u.ref["path"].rsplit("/", 1)[-1]: u for u in remote_units}
    assert by_name["teal_vase.gltf"].ref["path"] == f"{remote}/teal_vase/teal_vase.gltf"
    for name in ("teal_vase.gltf", "orange_ring.obj"):
        original = load(next(u.ref["path"] for u in local_units if u.ref["path"].endswith(name)), MeshParams())
        with objaverse.fetch(by_name[name].ref) as path:
            copied = load(path, MeshParams())
        assert (copied.faces, copied.textured) == (original.faces, original.textured) and original.textured
