"""geoseg from Python, as a notebook user would write it: data -> train -> predict -> footprints.

Run: python examples/python_api.py [WORK_DIR] [--tiny]
(--tiny: small scenes and a 1-epoch tiny model, as the test suite runs it.)
"""

from __future__ import annotations

import sys
from pathlib import Path

from geoseg import config, infer, synthetic, train, vectorize


def main(work: Path, tiny: bool = False) -> None:
    # 1. Georeferenced scenes with buildings (your own GeoTIFFs + labels go here instead).
    demo = synthetic.make_demo_data(
        work / "data", tiles=4, size=256 if tiny else 1024, seed=0, overwrite=True
    )

    # 2. Train a UNet: the same typed config as `geoseg train --config` and pipeline files.
    cfg = config.parse(
        {
            "data": {
                "images": [str(work / "data" / "images")],
                "labels": str(demo.buildings),
                "label_attribute": "class",
            },
            "model": {"name": "unet", "width": 8 if tiny else 32},
            "train": {
                "patch_size": 64 if tiny else 256,
                "batch_size": 4 if tiny else 8,
                "epochs": 1 if tiny else 20,
            },
        }
    )
    result = train.fit(cfg, work / "run", overwrite=True)
    print("best checkpoint:", result.best, "metrics:", result.metrics)

    # 3. Predict one raster: a mask GeoTIFF on exactly the input's grid.
    mask = infer.predict_raster(
        demo.images[0],
        work / "mask.tif",
        checkpoint=result.best,
        overlap=16 if tiny else 64,
        overwrite=True,
    )

    # 4. Building footprints as polygons in the raster's CRS, written to a GeoPackage.
    footprints = vectorize.polygons(mask, classes=["building"], min_area_m2=4.0)
    out = vectorize.write(footprints, work / "footprints.gpkg", overwrite=True)
    print(f"{len(footprints)} footprints -> {out}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(Path(args[0]) if args else Path("example-run"), tiny="--tiny" in sys.argv)
