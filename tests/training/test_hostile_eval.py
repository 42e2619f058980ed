"""Issue 24 (hostile inputs, round 2), evaluation: what cannot be evaluated stops before any model is built, as one
line naming it (exit 2): adapters folders holding only pickles, a reference that is not an image, a spec with a YAML
alias bomb or a syntax error."""

import logging

import numpy as np

import pytest

from training.evaluate import __main__ as evaluate
from training.evaluate import sets


@pytest.fixture
def no_models(monkeypatch):
    from anystory import AnyStoryPipeline

    monkeypatch.setattr(AnyStoryPipeline, "build", lambda *a, **k: pytest.fail("a model was built"))


def run(args, caplog):
    with caplog.at_level(logging.ERROR, "training.evaluate"):
        code = evaluate.main(args)
    return code, " ".join(r.getMessage() for r in caplog.records)


def test_adapters_of_pickles_only_are_refused_before_any_model(tmp_path, caplog, no_models):
    folder = tmp_path / "adapters"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    code, said = run(["--adapters", str(folder), "--set", "mini", "--out", str(tmp_path / "o")], caplog)
    assert code == 2
    assert "missing anystory.json, subject_encoder.safetensors" in said and "pytorch_model.bin" in said
    assert not (tmp_path / "o").exists()


def spec_folder(tmp_path, text):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "spec.yaml").write_text(text)
    return folder


def test_a_reference_that_is_not_an_image_is_named(tmp_path, caplog, no_models):
    folder = spec_folder(tmp_path, "subjects:\n  cat: {image: cat.jpg, phrase: a cat}\n"
                                   "cases:\n  - subjects: [cat]\n    prompts: ['{0} on a sofa']\n")
    (folder / "cat.jpg").write_text("<html>404 not found</html>")
    code, said = run(["--size", "tiny", "--set", str(folder), "--out", str(tmp_path / "o")], caplog)
    assert code == 2 and f"{folder / 'cat.jpg'} is not a readable image" in said


@pytest.mark.parametrize("text,says", [
    ("a: &a [x, x, x]\nb: [*a, *a, *a]\ncases: []\n", "aliases (*name) are not allowed"),
    ("cases:\n  - subjects: [cat\n", "bad spec"),
])
def test_a_spec_with_an_alias_bomb_or_a_syntax_error_is_one_line(tmp_path, caplog, no_models, text, says):
    folder = spec_folder(tmp_path, text)
    code, said = run(["--size", "tiny", "--set", str(folder), "--out", str(tmp_path / "o")], caplog)
    assert code == 2 and says in said
    with pytest.raises(sets.SpecError):
        sets.load(str(folder), None, None, [0], 64)


def ten_subject_folder(tmp_path, phrase):
    from PIL import Image

    folder = tmp_path / "ten"
    folder.mkdir()
    lines = ["subjects:"]
    for k in range(10):
        Image.new("RGB", (64, 48), (20 * k, 100, 200 - 20 * k)).save(folder / f"s{k}.png")
        lines.append(f"  s{k}: {{image: s{k}.png, phrase: {phrase.format(k)}}}")
    lines += ["cases:", "  - subjects: [" + ", ".join(f"s{k}" for k in range(10)) + "]",
              "    prompts: ['" + " and ".join("{%d}" % k for k in range(10)) + " on a table']"]
    (folder / "spec.yaml").write_text("\n".join(lines) + "\n")
    return folder


def test_a_subject_phrase_past_the_text_encoders_length_is_refused_before_any_model(tmp_path, caplog, no_models):
    """Item 11: a 10-subject case whose last phrases lie past SDXL's 77 text tokens was generated, then scored with
    those subjects lost. Now refused up front, naming the sample and the phrase (tiny: its byte-level tokenizer)."""
    folder = ten_subject_folder(tmp_path, "a small red ceramic teapot number {} with a long bamboo handle")
    code, said = run(["--size", "tiny", "--set", str(folder), "--out", str(tmp_path / "o")], caplog)
    assert code == 2 and "ten-0-0-s0: subject phrase 'a small red ceramic teapot number 1" in said
    assert "past the 75 that SDXL's text encoders read" in said and not (tmp_path / "o").exists()


def test_phrases_within_the_text_length_pass_the_check():
    from anystory.builders import tiny_tokenizer

    tokenizer = tiny_tokenizer()  # byte-level: a token per non-space character, start and end tokens besides
    subject = sets.EvalSubject("a cat", None, None, [])
    fits = sets.EvalSample("fits", "t", "x" * 71 + " a cat", 0, [subject])  # 1 + 71 + 4 + 1 = 77 tokens
    past = sets.EvalSample("past", "t", "x" * 72 + " a cat", 0, [subject])
    held_out = sets.EvalSample("held", "t", "x" * 200 + "a cat", 0, [subject], target=np.zeros((8, 8, 3)))
    sets.check_phrases_reach_the_model([fits, held_out], tokenizer)  # held-out captions are cut as in training
    with pytest.raises(sets.SpecError, match="past: subject phrase 'a cat' ends at text token 77"):
        sets.check_phrases_reach_the_model([past], tokenizer)
