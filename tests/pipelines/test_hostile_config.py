"""Issue 24 (hostile inputs, round 2), configs: every number's range and finiteness checked up front, YAML alias
bombs and syntax errors refused, each as one line naming the key (exit 2) before any work."""

import pytest

from pipelines import runner
from pipelines.cli import main as cli_main


def coco_config(tmp_path, params):
    (tmp_path / "instances.json").write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": '
                                             '"person"}]}')
    path = tmp_path / "config.yaml"
    path.write_text(f"out: {tmp_path / 'ds'}\nmodels: tiny\nsources:\n  coco:\n    annotations: "
                    f"{tmp_path / 'instances.json'}\n    images: {tmp_path}\n    params: {params}\n")
    return str(path)


@pytest.mark.parametrize("params,key", [
    ("{max_side: -100}", "sources.coco.params.max_side: Value error, must be 0 or more, got -100"),
    ("{filters: {area_min: .nan}}", "sources.coco.params.filters.area_min: Input should be a finite number"),
    ("{filters: {aspect_max: .inf}}", "sources.coco.params.filters.aspect_max: Input should be a finite number"),
    ("{max_annotations: -1}", "sources.coco.params.max_annotations: Value error"),
])
def test_numbers_out_of_range_or_not_finite_stop_the_run_naming_the_key(tmp_path, monkeypatch, capsys, params, key):
    monkeypatch.setattr(runner, "init_ray", lambda cfg: pytest.fail("the run started work"))
    assert cli_main(["coco", "--config", coco_config(tmp_path, params)]) == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not (tmp_path / "ds").exists()


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path, capsys):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in range(1, 9):  # 9^9 ≈ 387 M strings once expanded, from under 1 KB
        lines.append(f"{chr(97 + k)}: &{chr(97 + k)} [" + ",".join([f"*{chr(96 + k)}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nout: x\n")
    assert path.stat().st_size < 1024
    assert cli_main(["coco", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "is not valid YAML: aliases (*name) are not allowed in a config" in err and "line 2" in err


def test_a_yaml_syntax_error_is_one_line_naming_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("out: x\nsources:\n  coco: {annotations: [unclosed\n")
    assert cli_main(["coco", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"config {path} is not valid YAML" in err and "Traceback" not in err


def test_the_training_config_refuses_aliases_and_non_finite_numbers(tmp_path):
    import yaml
    from pydantic import ValidationError

    from training.config import load_config

    path = tmp_path / "train.yaml"
    path.write_text("stage: 1\ndata: {sources: [{path: x}]}\ntrain: &t {output_dir: o}\nother: *t\n")
    with pytest.raises(yaml.YAMLError, match="aliases"):
        load_config(path)
    path.write_text("stage: 1\ndata: {sources: [{path: x, weight: .nan}]}\ntrain: {output_dir: o}\n")
    with pytest.raises(ValidationError, match="finite"):
        load_config(path)
