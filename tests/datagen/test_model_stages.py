"""The model stages on tiny random models of the real architectures (both backends where two exist), and the
detector's post-processing on fixed outputs."""

import numpy as np
import pytest

from datagen.labeling.captions import CaptionParams, Captioner
from datagen.labeling.detection import DetectionParams, Detector, chunks, prompt, to_instances, token_spans
from datagen.labeling.matching import Embedder
from datagen.models import ModelSpec
from datagen.labeling.segmentation import Segmenter
from datagen.tiny import bert_tokenizer


def spec(role, model_id, backend="transformers"):
    return ModelSpec(role=role, id=model_id, revision="main", mode="tiny", backend=backend)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), rng.integers(0, 255, (90, 200, 3), dtype=np.uint8),
            rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)]


def test_captioner_batches_like_single_images(images):
    captioner = Captioner(spec("captioner", "Qwen/Qwen2-VL-2B-Instruct"), CaptionParams(max_new_tokens=8))
    batched = captioner(images)
    assert len(batched) == 3 and all(isinstance(c, str) and c for c in batched)
    assert [captioner([im])[0] for im in images] == batched  # left padding keeps each row's continuation
    assert captioner([]) == []


def test_prompt_and_token_spans():
    text, chars = prompt(["Red ball", "dog"])
    assert text == "red ball . dog ."
    assert [text[a:b] for a, b in chars] == ["red ball", "dog"]
    offsets = bert_tokenizer()(text, return_offsets_mapping=True)["offset_mapping"]
    # [CLS] red ball . dog . [SEP]
    assert token_spans(offsets, chars) == [[1, 2], [4]]


def test_to_instances_thresholds_phrases_and_pixels():
    probs = np.zeros((5, 8))
    probs[0, [1, 2]] = [0.9, 0.5]  # query 0: "red ball" at 0.9
    probs[1, 4] = 0.6  # query 1: "dog" at 0.6
    probs[2, 3] = 0.8  # query 2: only the "." token fires: a box without a phrase
    probs[3, 1] = 0.35  # query 3: exactly at the box threshold: not a detection (strictly above)
    probs[4, 4] = 0.7
    boxes = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.1, 0.4, 0.4], [0.5, 0.5, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1],
                      [0.9, 0.9, 0.1, 0.1]])
    p = DetectionParams(box_threshold=0.35, text_threshold=0.25, max_detections=3)
    out = to_instances(probs, boxes, [[1, 2], [4]], ["red ball", "dog"], width=200, height=100, p=p)
    assert [(x.phrase, x.fields["query"]) for x in out] == [("red ball", 0), ("dog", 4), ("dog", 1)]
    assert out[0].box == pytest.approx([80, 30, 120, 70]) and out[0].score == pytest.approx(0.9)
    assert out[2].box == pytest.approx([0, 0, 60, 30])  # clipped to the image
    assert len(to_instances(probs, boxes, [[1, 2], [4]], ["red ball", "dog"], 200, 100,
                            DetectionParams(box_threshold=0.35, max_detections=2))) == 2


@pytest.mark.parametrize("backend", ["transformers", "official"])
def test_detector_backends(images, backend):
    if backend == "official":
        pytest.importorskip("groundingdino")
    detector = Detector(spec("detector", "IDEA-Research/grounding-dino-base", backend),
                        DetectionParams(box_threshold=0.0, text_threshold=0.0, max_detections=4, batch_size=2))
    phrases = [["red ball", "dog"], [], ["person"]]
    out = detector(images, phrases)
    assert [len(x) for x in out] == [4, 0, 4]
    for im, found, asked in zip(images, out, phrases):
        h, w = im.shape[:2]
        for x in found:
            assert x.phrase in asked and 0 <= x.score <= 1
            assert 0 <= x.box[0] <= x.box[2] <= w and 0 <= x.box[1] <= x.box[3] <= h


def test_chunks_pack_phrases_in_order_into_prompts_that_fit():
    tokenizer = bert_tokenizer()
    tokens = lambda text: len(tokenizer(text)["input_ids"])
    phrases = [f"a small red ceramic teapot number {k} with a long bamboo handle" for k in range(10)]
    groups = chunks(phrases, tokens, 64)
    assert [ph for g in groups for ph in g] == phrases and len(groups) > 1
    assert all(tokens(prompt(g)[0]) <= 64 for g in groups)
    assert tokens(prompt(groups[0] + groups[1][:1])[0]) > 64  # greedy: a group takes all that fits
    assert chunks(["dog", "cat"], tokens, 64) == [["dog", "cat"]]
    assert chunks(["word " * 80, "dog"], tokens, 64) == [["word " * 80], ["dog"]]  # too long alone: alone


@pytest.mark.parametrize("backend", ["transformers", "official"])
def test_phrases_past_the_text_length_are_detected_in_further_prompts(images, backend):
    """A caption with many entities overflows the model's text length (tiny transformers: 64 tokens): transformers
    failed, the official package (256 tokens) cut the last phrases. Each prompt now fits; boxes come from every
    prompt, merged by score."""
    if backend == "official":
        pytest.importorskip("groundingdino")
    detector = Detector(spec("detector", "IDEA-Research/grounding-dino-base", backend),
                        DetectionParams(box_threshold=0.0, text_threshold=0.0, max_detections=50))
    phrases = [f"a small red ceramic teapot number {k} with a long bamboo handle" for k in range(24)]
    groups = chunks(phrases, detector._tokens, detector.max_text_len)
    [found, few] = detector(images[:2], [phrases, ["dog"]])
    assert len(groups) > 1 and len(found) == 50 and len(few) == 30  # 30 queries a prompt, capped at 50
    assert {x.phrase for x in found} - set(groups[0])  # later prompts' phrases are found
    assert [x.score for x in found] == sorted((x.score for x in found), reverse=True)


@pytest.mark.parametrize("backend", ["transformers", "official"])
def test_segmenter_backends(images, backend):
    if backend == "official":
        pytest.importorskip("segment_anything")
    segmenter = Segmenter(spec("segmenter", "facebook/sam-vit-huge", backend))
    boxes = [[[10, 10, 80, 100], [50, 20, 150, 60]], [], [[0, 0, 100, 100]]]
    out = segmenter(images, boxes)
    assert [len(m) for m in out] == [2, 0, 1]
    for im, masks in zip(images, out):
        assert all(m.shape == im.shape[:2] and m.dtype == bool for m in masks)


@pytest.mark.parametrize("model_id", ["facebook/dinov2-base", "openai/clip-vit-large-patch14"])
def test_embedder_normalised_and_deterministic(images, model_id):
    embedder = Embedder(spec("embedder", model_id))
    crops = [images[0][:50, :40], images[1], images[0][:50, :40]]
    emb = embedder(crops)
    assert emb.shape[0] == 3 and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert emb[0] @ emb[2] == pytest.approx(1.0, abs=1e-5)


def test_tiny_detector_takes_a_lone_square_image():
    """COCO has 640×640 images; alone in a batch the tiny model's smallest feature map must stay above 1×1."""
    square = np.random.default_rng(0).integers(0, 255, (640, 640, 3), dtype=np.uint8)
    [found] = Detector(spec("detector", "IDEA-Research/grounding-dino-base"),
                       DetectionParams(box_threshold=0.0, max_detections=2))([square], [["dog"]])
    assert len(found) == 2
