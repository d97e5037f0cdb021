"""The typed config: defaults, validation up front, overrides, relative paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from geoseg import config
from geoseg.errors import ConfigError, InputNotFoundError


def test_defaults_are_valid() -> None:
    cfg = config.parse({})
    assert cfg.train.patch_size == 256 and cfg.model.num_classes == 2
    assert cfg.model.resolved_class_names == ["background", "building"]


def test_unknown_key_names_the_valid_keys() -> None:
    with pytest.raises(ConfigError) as err:
        config.parse({"train": {"epoch": 3}}, source="p.yaml")
    msg = str(err.value)
    assert "p.yaml" in msg and "train.epoch" in msg and "epochs" in msg and "\n" not in msg


def test_unknown_section_names_the_sections() -> None:
    with pytest.raises(
        ConfigError, match="valid keys here: data, evaluate, infer, model, out, train, vectorize"
    ):
        config.parse({"trian": {}})


def test_bad_value_says_what_was_found() -> None:
    with pytest.raises(ConfigError, match=r"train.optimizer.*'adamx'"):
        config.parse({"train": {"optimizer": "adamx"}})
    with pytest.raises(ConfigError, match="sum to 1"):
        config.parse({"data": {"split": {"ratios": [0.5, 0.1, 0.1]}}})
    with pytest.raises(ConfigError, match="one name per class"):
        config.parse({"model": {"classes": 3, "class_names": ["a", "b"]}})


def test_load_resolves_paths_against_the_file_and_applies_overrides(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump({"out": "run", "data": {"images": "imgs"}, "train": {"epochs": 5}})
    )
    cfg = config.load(path, ["train.epochs=2", "model.class_names=[background, building]"])
    assert cfg.train.epochs == 2
    assert cfg.data.images == [str(tmp_path / "imgs")]
    assert cfg.out == str(tmp_path / "run")
    assert cfg.model.num_classes == 2


def test_round_trip_through_dump(tmp_path: Path) -> None:
    cfg = config.parse({"train": {"epochs": 7}, "data": {"mask_mapping": {255: 1}}})
    config.dump(cfg, tmp_path / "c.yaml")
    again = config.load(tmp_path / "c.yaml")
    assert again.train.epochs == 7 and again.data.mask_mapping == {255: 1}


def test_load_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="nope.yaml"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        config.load(bad)
    with pytest.raises(ConfigError, match="key=value"):
        config.apply_overrides({}, ["train.epochs"])


def test_readme_reference_lists_every_key_as_the_schema_does() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert config.reference_markdown() in readme, (
        "README's pipeline file reference is stale: paste geoseg.config.reference_markdown()"
    )


def test_precision_written_as_a_number_reads_as_its_text(tmp_path: Path) -> None:
    # `precision: 32` in YAML and `--set train.precision=32` arrive as the number 32.
    path = tmp_path / "p.yaml"
    path.write_text("train:\n  precision: 32\ninfer:\n  precision: 32\n")
    cfg = config.load(path, ["train.precision=16"])
    assert cfg.train.precision == "16" and cfg.infer.precision == "32"
    with pytest.raises(ConfigError, match="train.precision"):
        config.load(path, ["train.precision=64"])
