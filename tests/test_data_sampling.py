"""data.sampling: torchgeo samplers confined to a split; determinism, resume, DDP ranks."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import shapely
import torch
from data_helpers import mosaic

from geoseg.config import DataConfig, SplitConfig
from geoseg.data import build_training_data


def _td(tmp_path: Path, name: str, img: Path, msk: Path, **kw):
    split = kw.pop("split", {"block_size": 64})
    cfg = DataConfig(images=[str(img)], labels=str(msk), split=SplitConfig(**split))
    kw.setdefault("patches_per_epoch", 24)
    return build_training_data(
        cfg, patch_size=32, batch_size=4, run_dir=tmp_path / name, num_classes=2, **kw
    )


def test_epochs_are_reproducible_and_leave_the_callers_rng_alone(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    a, b = _td(tmp_path, "a", img, msk), _td(tmp_path, "b", img, msk, workers=1)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = [x["bounds"] for x in a.train]
    assert torch.equal(torch.get_rng_state(), state)  # torchgeo's tile choice ran in a fork
    second = [x["bounds"] for x in a.train]
    assert not all(torch.equal(x, y) for x, y in zip(first, second, strict=True))
    with_workers = [x for x in b.train]
    for x, y in zip(first, with_workers, strict=True):
        assert torch.equal(x, y["bounds"])
    a.train.set_epoch(0)
    again = next(iter(a.train))
    assert torch.equal(again["bounds"], first[0])


def test_resume_mid_epoch_continues_with_the_same_batches(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    whole = _td(tmp_path, "w", img, msk)
    whole.train.set_epoch(3)
    reference = list(whole.train)
    first = _td(tmp_path, "f", img, msk)
    first.train.set_epoch(3)
    it = iter(first.train)
    next(it), next(it)
    state = first.train.state_dict()
    assert state == {"epoch": 3, "batch": 2}
    resumed = _td(tmp_path, "r", img, msk)
    resumed.train.load_state_dict(state)
    rest = list(resumed.train)
    assert len(rest) == len(reference) - 2
    for x, y in zip(reference[2:], rest, strict=True):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["mask"], y["mask"])
    assert resumed.train.state_dict() == {"epoch": 4, "batch": 0}


def test_ddp_ranks_deal_out_one_draw(tmp_path: Path) -> None:
    """Each epoch's patches are drawn once; rank r takes batches r, r + 2, ... of that draw."""
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64)
    one = [x["bounds"] for x in _td(tmp_path, "one", img, msk).train]
    ranks = [_td(tmp_path, f"r{r}", img, msk, rank=r, world_size=2) for r in range(2)]
    assert len(one) == 6 and len(ranks[0].train) == len(ranks[1].train) == 3
    for r, td in enumerate(ranks):
        got = [x["bounds"] for x in td.train]
        assert all(torch.equal(a, b) for a, b in zip(got, one[r::2], strict=True))


def test_training_patches_hold_labels_and_avoid_nodata(tmp_path: Path) -> None:
    img, msk = mosaic(tmp_path / "d", grid=(2, 2), size=64, nodata_cols=40)
    td = _td(tmp_path, "n", img, msk, patches_per_epoch=64)
    for batch in td.train:
        labelled = (batch["mask"] != 255).flatten(1).any(1)
        assert labelled.all()


def test_validation_grid_covers_its_files_without_overhang(tmp_path: Path) -> None:
    """GridGeoSampler starts bottom-left and overhangs the top/right: shifted back inside."""
    img, msk = mosaic(tmp_path / "d", grid=(2, 3), size=80)
    split = {"method": "files", "ratios": (0.5, 0.25, 0.25)}
    td = _td(tmp_path, "v", img, msk, split=split)
    regions = gpd.read_file(td.split_path).set_index("split").geometry
    for loader, name in ((td.val, "val"), (td.test, "test")):
        boxes = [shapely.box(*b) for x in loader for b in x["bounds"].tolist()]
        area = regions[name]
        assert all(area.buffer(1e-6).contains(b) for b in boxes)  # no window hangs over
        assert shapely.union_all(boxes).area == area.area  # the whole file is covered
        assert len(boxes) == len({b.wkt for b in boxes})  # no window twice
    files = gpd.read_file(td.split_path).set_index("split")["files"]
    assert sorted(str(p) for p in td.test_images) == sorted(files["test"].split(";"))
    n_val = len(files["val"].split(";"))
    assert len(td.val) == -(-9 * n_val // 4)  # 80-px files: 3x3 windows of 32 px, batches of 4
