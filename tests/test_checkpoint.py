"""Checkpoints: round trip, atomic writes, safe loading (no code from the file runs), prefixes."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from geoseg import checkpoint, models
from geoseg.checkpoint import ModelCard
from geoseg.errors import CheckpointError, InputNotFoundError


def make_card(**changes: object) -> ModelCard:
    fields: dict[str, object] = dict(
        architecture="unet",
        model_args={"width": 4},
        in_channels=4,
        band_names=["red", "green", "blue", "nir"],
        band_indexes=[1, 2, 3, 4],
        mean=[90.5, 100.0, 80.25, 120.0],
        std=[30.0, 31.0, 29.5, 40.0],
        class_names=["background", "building"],
        class_ids=[0, 1],
        ignore_index=255,
        patch_size=64,
        res=0.5,
        crs_wkt='PROJCS["WGS 84 / UTM zone 31N"]',
        epoch=3,
        metrics={"miou": 0.71, "per_class": {"building": {"iou": 0.6}}},
    )
    fields.update(changes)
    return ModelCard(**fields)  # type: ignore[arg-type]


def test_cards_of_older_versions_still_read() -> None:
    # Earlier cards carried a `nodata` key that was never filled; it is ignored on read.
    old = {**make_card().model_dump(mode="json"), "nodata": None}
    card = ModelCard.model_validate(old)
    assert card == make_card(created=card.created) and "nodata" not in card.model_dump()


def tiny_model(in_channels: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("unet", in_channels=in_channels, num_classes=2, width=4)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    optimizer.zero_grad()
    model(torch.randn(2, 4, 32, 32)).logsumexp(1).mean().backward()
    optimizer.step()


def test_round_trip_keeps_weights_card_and_resume_state(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    scaler = torch.amp.GradScaler("cpu")
    train_step(model, optimizer)
    scheduler.step()
    card = make_card()
    rng = checkpoint.rng_state()
    expected_draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])

    path = tmp_path / "run" / "best.ckpt"
    checkpoint.save(
        path,
        model=model,
        card=card,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        epoch=3,
        extra={"rng": rng, "best_score": np.float64(0.7), "history": np.arange(3)},
    )

    raw = torch.load(path, weights_only=True)  # plain torch can read it safely
    assert raw["format"] == "geoseg-checkpoint" and raw["version"] == 1
    assert raw["card"]["class_names"] == ["background", "building"]

    ckpt = checkpoint.load(path)
    assert ckpt.card == card
    assert ckpt.epoch == 3
    assert ckpt.extra["best_score"] == 0.7
    assert torch.equal(ckpt.extra["history"], torch.arange(3))
    assert ckpt.state_dict.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(ckpt.state_dict[key], value), key

    # the resume state restores: optimizer moments, scheduler step, RNG streams
    model2 = tiny_model()
    model2.load_state_dict(ckpt.state_dict)
    optimizer2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    optimizer2.load_state_dict(ckpt.optimizer)
    scheduler2 = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer2, T_max=10)
    scheduler2.load_state_dict(ckpt.scheduler)
    assert scheduler2.last_epoch == 1
    torch.amp.GradScaler("cpu").load_state_dict(ckpt.scaler)
    checkpoint.restore_rng_state(ckpt.extra["rng"])
    assert torch.equal(torch.rand(3), expected_draws[0])
    np.testing.assert_array_equal(np.random.rand(3), expected_draws[1])
    assert [random.random() for _ in range(3)] == expected_draws[2]


def test_load_model_rebuilds_in_eval_mode(tmp_path: Path) -> None:
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_step(model, optimizer)  # moves BatchNorm running stats away from their defaults
    path = tmp_path / "m.ckpt"
    # encoder_weights only initialised training: the file need not exist where the model is used
    card = make_card(
        architecture="unet-resnet18", model_args={"encoder_weights": "/gone/resnet18.pth"}
    )
    smp_model = models.build("unet-resnet18", in_channels=4, num_classes=2)
    checkpoint.save(path, model=smp_model, card=card)
    loaded, loaded_card = checkpoint.load_model(path, device="auto")
    assert not loaded.training and loaded_card.num_classes == 2

    checkpoint.save(path, model=model, card=make_card())
    loaded, loaded_card = checkpoint.load_model(path)
    assert not loaded.training
    x = torch.randn(1, 4, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_failed_save_keeps_the_older_file_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch
) -> None:
    path = tmp_path / "last.ckpt"
    model = tiny_model()
    checkpoint.save(path, model=model, card=make_card(), epoch=1)
    before = path.read_bytes()

    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):  # write some bytes, then fail like a full disk
        f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, model=model, card=make_card(), epoch=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert path.read_bytes() == before
    assert checkpoint.load(path).epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]

    # a failure before the first save leaves nothing at all
    fresh = tmp_path / "fresh" / "best.ckpt"
    with pytest.raises(TypeError, match="cannot be stored safely"):
        checkpoint.save(fresh, model=model, card=make_card(), extra={"bad": object()})
    assert not fresh.exists()


class Evil:
    """Unpickling this runs ``os.system``: a checkpoint-shaped trap."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    payload = {
        "format": "geoseg-checkpoint",
        "version": 1,
        "card": {},
        "state_dict": {},
        "x": Evil(marker),
    }
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match=r"evil.ckpt: cannot be loaded safely") as err:
        checkpoint.load(path)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        checkpoint.load_model(path)
    assert not marker.exists()


def test_plain_state_dict_is_not_a_geoseg_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save(tiny_model().state_dict(), path)
    with pytest.raises(
        CheckpointError, match=r"weights.pth: not a geoseg checkpoint \(found a bare state dict"
    ):
        checkpoint.load(path)
    torch.save({"format": "lightning"}, path)
    with pytest.raises(CheckpointError, match="not a geoseg checkpoint"):
        checkpoint.load(path)


def test_missing_truncated_newer_and_bad_card(tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match="nope.ckpt: checkpoint not found") as err:
        checkpoint.load(tmp_path / "nope.ckpt")
    assert isinstance(err.value, CheckpointError)

    good = tmp_path / "good.ckpt"
    checkpoint.save(good, model=tiny_model(), card=make_card())
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated.ckpt: not a readable checkpoint") as err:
        checkpoint.load(truncated)
    assert "\n" not in str(err.value)

    data = torch.load(good, weights_only=True)
    newer = tmp_path / "newer.ckpt"
    torch.save({**data, "version": 2}, newer)
    with pytest.raises(CheckpointError, match="newer.ckpt: .*version 2 is newer"):
        checkpoint.load(newer)

    bad = tmp_path / "badcard.ckpt"
    torch.save({**data, "card": {**data["card"], "mean": [0.0]}}, bad)
    with pytest.raises(CheckpointError, match="badcard.ckpt: invalid model card"):
        checkpoint.load(bad)


def test_wrapper_prefixes_are_stripped(tmp_path: Path) -> None:
    """Keys from DDP (``module.``) or torch.compile (``_orig_mod.``) models load as plain keys."""
    model = tiny_model()
    # a checkpoint whose keys carry the prefixes (as an older or foreign writer may leave them)
    path = tmp_path / "ddp.ckpt"
    prefixed = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {
            "format": "geoseg-checkpoint",
            "version": 1,
            "card": make_card().model_dump(mode="json"),
            "state_dict": prefixed,
            "epoch": 0,
        },
        path,
    )
    loaded, _ = checkpoint.load_model(path)
    assert loaded.state_dict().keys() == model.state_dict().keys()

    # saving a compiled (wrapped) model writes plain keys
    compiled = torch.compile(model)
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    checkpoint.save(path, model=compiled, card=make_card())
    raw = torch.load(path, weights_only=True)
    assert set(raw["state_dict"]) == set(model.state_dict())


def test_model_card_validates_and_is_json() -> None:
    card = make_card()
    assert ModelCard.model_validate_json(card.model_dump_json()) == card
    assert card.created.endswith("+00:00") and card.geoseg_version
    with pytest.raises(ValidationError, match="std has 3 entries but in_channels=4"):
        make_card(std=[1.0, 1.0, 1.0])
    with pytest.raises(ValidationError, match="class_names"):
        make_card(class_ids=[0])
    with pytest.raises(ValidationError, match="not JSON-able"):
        make_card(model_args={"width": np.int64(4)})
