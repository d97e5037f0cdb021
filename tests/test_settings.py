"""One settings schema: the CLI, the YAML and the Python API resolve every setting the same way.

The tests walk the schema's fields (not a hand list), so a default copied by hand anywhere, or a
new field one of the three ways forgets, fails here.
"""

from __future__ import annotations

import inspect
import types
import typing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import rasterio
import yaml
from typer.testing import CliRunner

from geoseg import config, infer, pipeline, train
from geoseg.cli._settings import Flag, field_of
from geoseg.cli.infer import INFER_FLAGS
from geoseg.cli.main import app
from geoseg.cli.train import TRAIN_FLAGS
from geoseg.cli.vectorize import VECTORIZE_FLAGS
from geoseg.config import (
    DataConfig,
    InferConfig,
    ModelConfig,
    PipelineConfig,
    TrainConfig,
    VectorizeConfig,
)
from geoseg.errors import ConfigError

runner = CliRunner()


def _fields(model: type) -> list[str]:
    return list(model.model_fields)


# ------------------------------------------------------------------------------ inference


@pytest.fixture
def captured_predict(monkeypatch) -> list[dict[str, Any]]:
    """Calls of infer.predict, with their arguments, instead of predicting."""
    calls: list[dict[str, Any]] = []

    def fake_predict(checkpoint, inputs, out, **kwargs):
        calls.append(kwargs)
        return []

    monkeypatch.setattr(infer, "predict", fake_predict)
    return calls


def test_every_infer_default_is_the_schemas_in_cli_yaml_pipeline_and_api(
    tmp_path: Path, captured_predict
) -> None:
    result = runner.invoke(app, ["infer", "x.ckpt", "in.tif", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    from_cli = captured_predict[-1]["settings"]

    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    from_yaml = config.load(empty).infer

    pipeline._infer(config.load(empty), tmp_path, Path("x.ckpt"), [Path("in.tif")])
    from_pipeline = captured_predict[-1]["settings"]

    from_api = infer.settings_from()
    schema = InferConfig()
    for name in _fields(InferConfig):
        expected = getattr(schema, name)
        for how, settings in (
            ("geoseg infer", from_cli),
            ("YAML", from_yaml),
            ("geoseg run", from_pipeline),
            ("predict_raster", from_api),
        ):
            assert getattr(settings, name) == expected, f"{how}: infer.{name}"


@pytest.mark.parametrize("patch", [16, 32, 64, 128, 256, 512, 1024])
def test_one_overlap_rule_for_every_patch_size(patch: int) -> None:
    # min(64, patch / 4): a fixed 64 would be invalid at 64 px and 4x the work at 128 px.
    assert InferConfig().resolved_overlap(patch) == min(64, patch // 4)
    assert InferConfig(overlap=10).resolved_overlap(patch) == 10


def test_cli_pipeline_and_api_predict_the_same_bytes(
    tmp_path: Path, make_geotiff, captured_predict, monkeypatch
) -> None:
    """The resolved settings (overlap from the patch size, batch size, precision) agree too."""
    from test_infer import make_checkpoint

    monkeypatch.undo()  # the real predict this time
    ckpt = make_checkpoint(tmp_path / "m.ckpt", patch_size=32)
    src = make_geotiff("in.tif", size=(50, 70), seed=3)
    api = infer.predict_raster(src, tmp_path / "api.tif", checkpoint=ckpt)
    result = runner.invoke(
        app, ["infer", str(ckpt), str(src), "--out", str(tmp_path / "cli.tif"), "--quiet"]
    )
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "run"
    (from_pipeline,) = pipeline._infer(config.parse({}), run_dir, ckpt, [src])
    outputs = [api, tmp_path / "cli.tif", from_pipeline]
    with rasterio.open(outputs[0]) as first:
        tags, data = first.tags(), first.read()
    assert tags["overlap"] == "8"  # min(64, 32 / 4)
    for path in outputs[1:]:
        with rasterio.open(path) as other:
            assert other.tags()["overlap"] == tags["overlap"]
            assert other.tags()["precision"] == tags["precision"]
            np.testing.assert_array_equal(other.read(), data)


def test_keywords_and_settings_object_are_the_same_call(tmp_path: Path) -> None:
    base = InferConfig(tta="flip", overlap=12)
    merged = infer.settings_from(base, overlap=4, cog=False)
    assert (merged.tta, merged.overlap, merged.cog) == ("flip", 4, False)
    assert base.overlap == 12  # the caller's object is not changed
    with pytest.raises(ConfigError, match="unknown key 'overlpa'.*overlap"):
        infer.settings_from(overlpa=3)
    with pytest.raises(ConfigError, match="overlap"):
        infer.settings_from(overlap=-1)


# ------------------------------------------------------------------------------- training


@pytest.fixture
def captured_fit(monkeypatch) -> list[PipelineConfig]:
    configs: list[PipelineConfig] = []

    def fake_fit(cfg, run_dir, **kwargs):
        configs.append(cfg)
        return train.TrainResult(
            best=Path("b"), last=Path("l"), metrics={}, epochs_run=0, run_dir=Path(run_dir)
        )

    monkeypatch.setattr(train, "fit", fake_fit)
    return configs


def test_every_train_default_is_the_schemas_in_cli_yaml_and_api(
    tmp_path: Path, captured_fit
) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(), labels.mkdir()
    args = ["train", str(images), "--labels", str(labels), "--out", str(tmp_path / "run")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from_cli = captured_fit[-1]

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"data": {"images": str(images), "labels": str(labels)}}))
    from_yaml = config.load(path)
    from_api = PipelineConfig(data=DataConfig(images=[str(images)], labels=str(labels)))

    for section, model in (("data", DataConfig), ("model", ModelConfig), ("train", TrainConfig)):
        schema = model()
        for name in _fields(model):
            if (section, name) in (("data", "images"), ("data", "labels")):
                continue
            expected = getattr(schema, name)
            for how, cfg in (("geoseg train", from_cli), ("YAML", from_yaml), ("API", from_api)):
                assert getattr(getattr(cfg, section), name) == expected, f"{how}: {section}.{name}"


# --------------------------------------------------------------- every option, its own key


def _other_value(flag: Flag) -> tuple[str, Any]:
    """A valid non-default value for the flag's field: (command-line text, parsed value)."""
    field = field_of(flag.key)
    default = field.get_default(call_default_factory=True)
    kind = field.annotation
    union = typing.get_origin(kind) in (typing.Union, types.UnionType)  # not list[float]'s args
    args = [a for a in typing.get_args(kind) if a is not type(None)] if union else [kind]
    base = args[0] if len(args) == 1 else kind
    if typing.get_origin(base) is Literal:
        choice = next(c for c in typing.get_args(base) if c != default)
        return choice, choice
    if typing.get_origin(base) is list:
        (item,) = typing.get_args(base)
        values = {int: [2, 1], float: [1.0, 5.0], str: ["a", "b"]}[item]
        return ",".join(map(str, values)), values
    if base is bool:
        return "", not default
    if base is int:
        return "3", 3
    if base is float:
        return "0.25", 0.25
    return "something", "something"


def _invoke(command: list[str], flag: Flag, text: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        name = flag.spelling.removeprefix("--")
        return [*command, f"--{name}" if value else f"--no-{name}"]
    return [*command, flag.spelling, text]


@pytest.mark.parametrize("flag", TRAIN_FLAGS, ids=lambda f: f.key)
def test_each_train_option_sets_its_key(flag: Flag, tmp_path: Path, captured_fit) -> None:
    text, value = _other_value(flag)
    base = ["train", str(tmp_path), "--labels", str(tmp_path), "--out", str(tmp_path / "r")]
    result = runner.invoke(app, _invoke(base, flag, text, value))
    assert result.exit_code == 0, result.output
    section, name = flag.key.split(".")
    got = getattr(getattr(captured_fit[-1], section), name)
    assert got == value


@pytest.mark.parametrize("flag", INFER_FLAGS, ids=lambda f: f.key)
def test_each_infer_option_sets_its_key(flag: Flag, tmp_path: Path, captured_predict) -> None:
    text, value = _other_value(flag)
    args = _invoke(["infer", "x.ckpt", "in.tif", "-o", "o"], flag, text, value)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert getattr(captured_predict[-1]["settings"], flag.key.split(".")[1]) == value


def test_every_infer_setting_is_an_option() -> None:
    assert {f.key for f in INFER_FLAGS} == {f"infer.{n}" for n in _fields(InferConfig)} - {
        "infer.inputs"
    }


# ------------------------------------------------------------------------------ footprints


@pytest.fixture
def captured_vectorize(monkeypatch) -> list[dict[str, Any]]:
    """Calls of vectorize.vectorize, with their keyword arguments, instead of polygonising."""
    import pyogrio

    from geoseg import vectorize

    calls: list[dict[str, Any]] = []

    def fake_vectorize(mask, out, **kwargs):
        calls.append(kwargs)
        return Path(out)

    monkeypatch.setattr(vectorize, "vectorize", fake_vectorize)
    monkeypatch.setattr(pyogrio, "read_info", lambda *a, **k: {"features": 0})
    return calls


def test_every_vectorize_default_is_the_schemas_in_the_library() -> None:
    from geoseg import vectorize

    schema = VectorizeConfig()
    polygons = inspect.signature(vectorize.polygons).parameters
    for name in ("min_area_m2", "simplify_m", "regularize"):
        assert polygons[name].default == getattr(schema, name), f"polygons: {name}"
    for func in (vectorize.vectorize, vectorize.write):
        assert inspect.signature(func).parameters["layer"].default == schema.layer


def test_every_vectorize_default_is_the_schemas_in_the_cli(
    tmp_path: Path, captured_vectorize
) -> None:
    result = runner.invoke(app, ["vectorize", "m.tif", "--out", str(tmp_path / "f.gpkg")])
    assert result.exit_code == 0, result.output
    cli = captured_vectorize[-1]
    schema = VectorizeConfig()
    assert cli["classes"] is None and schema.classes == []  # every class but the background
    for name in ("min_area_m2", "simplify_m", "regularize", "layer"):
        assert cli[name] == getattr(schema, name), f"geoseg vectorize: vectorize.{name}"


@pytest.mark.parametrize("flag", VECTORIZE_FLAGS, ids=lambda f: f.key)
def test_each_vectorize_option_sets_its_key(flag: Flag, tmp_path: Path, captured_vectorize) -> None:
    text, value = _other_value(flag)
    args = _invoke(["vectorize", "m.tif", "-o", str(tmp_path / "f.gpkg")], flag, text, value)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert captured_vectorize[-1][flag.key.split(".")[1]] == value


def test_vectorize_classes_repeat(tmp_path: Path, captured_vectorize) -> None:
    args = ["vectorize", "m.tif", "-o", str(tmp_path / "f.gpkg"), "--class", "1", "--class", "2"]
    assert runner.invoke(app, args).exit_code == 0
    assert captured_vectorize[-1]["classes"] == ["1", "2"]


def test_old_spelling_is_a_hidden_alias(tmp_path: Path, captured_fit) -> None:
    base = ["train", str(tmp_path), "--labels", str(tmp_path), "--out", str(tmp_path / "r")]
    assert runner.invoke(app, [*base, "--classes", "3"]).exit_code == 0
    assert captured_fit[-1].model.classes == 3
    helped = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    assert "--num-classes" in helped and "--classes " not in helped


# ---------------------------------------------------------------- validated before any work


def test_overlap_that_cannot_fit_the_patch_fails_when_the_file_is_read(tmp_path: Path) -> None:
    assert config.parse({"train": {"patch_size": 64}}).infer.resolved_overlap(64) == 16
    with pytest.raises(ConfigError, match=r"infer.overlap=64 must be smaller .* patch size 64"):
        config.parse({"train": {"patch_size": 64}, "infer": {"overlap": 64}})


def test_bad_pipeline_settings_exit_2_before_training(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"out": str(tmp_path / "run"), "infer": {"patch_size": 100}}))
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "patch_size=100 is not divisible by 16" in lines[0], lines
    assert not (tmp_path / "run").exists()  # nothing was started


def test_bad_option_value_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["infer", "x.ckpt", "in.tif", "-o", "o", "--overlap", "-3"])
    assert result.exit_code == 2
