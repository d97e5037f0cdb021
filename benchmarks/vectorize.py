"""Benchmark: ``geoseg vectorize`` against bare ``rasterio.features.shapes``, and ``evaluate``.

Generates an 8192 x 8192 building mask (~20,000 buildings, some rotated, some L-shaped, many on
the 2048-pixel block seams), then runs, each in its own subprocess so peak RSS is its own:

1. the floor: read the whole mask and list ``rasterio.features.shapes(mask, mask=mask == 1,
   transform=...)`` (no conversion, no merging, nothing written);
2. ``geoseg vectorize MASK --out F.gpkg`` end to end (blocks, seam merging, attributes, the
   GeoPackage with its spatial index);
3. ``geoseg vectorize INSTANCES --out F.gpkg``: the same buildings as an instance-aware model
   predicts them (background/interior/edge/contact, tagged), so touching buildings are separated
   (seeds, watershed, raster-wide labels over the blocks);
4. ``geoseg evaluate`` of ~20,000 proposals (the footprints, jittered) against ~20,000 truth
   polygons (the footprints).

Prints seconds and peak RSS of each and ``geoseg_vs_shapes`` = floor seconds / geoseg seconds
(the rate of geoseg as a fraction of the bare rate; the target is >= 0.7) and
``vectorize_instances_vs_semantic`` = instance seconds / semantic seconds (the target is <= 2).

Usage: .venv/bin/python benchmarks/vectorize.py [--size 8192] [--buildings 20000] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RUNNER = r"""
import json, resource, sys, time
t0 = time.perf_counter()
kind, args = sys.argv[1], sys.argv[2:]
if kind == "shapes":
    import rasterio
    from rasterio.features import shapes
    t0, c0 = time.perf_counter(), time.process_time()
    with rasterio.open(args[0]) as src:
        arr = src.read(1)
        n = sum(1 for _ in shapes(arr, mask=arr == 1, transform=src.transform))
else:
    # Libraries loaded first (as in any long-lived session): the figure is the work itself.
    import geopandas, pyogrio, shapely, skimage.segmentation, scipy.ndimage
    import geoseg.evaluate, geoseg.instances, geoseg.vectorize
    from geoseg.cli.main import app
    t0, c0 = time.perf_counter(), time.process_time()
    app([kind, *args], standalone_mode=False)
    n = None
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": rss_mb, "count": n}))
"""


def make_mask(
    path: Path, size: int, buildings: int, seed: int = 0, instances_path: Path | None = None
) -> None:
    """A uint8 building mask (0 background, 1 building) with class tags, tiled and compressed.

    With ``instances_path``, also the same buildings as an instance mask (background, interior,
    edge, contact; tagged ``geoseg_target=instances``) derived from their ids.
    """
    import rasterio
    import shapely
    from rasterio.features import rasterize
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(buildings)))
    cell = size / side
    ij = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:buildings]
    centre = (ij + 0.5) * cell + rng.uniform(-cell / 6, cell / 6, size=(len(ij), 2))
    w = rng.uniform(0.25, 0.6, len(ij)) * cell
    h = rng.uniform(0.25, 0.6, len(ij)) * cell
    boxes = shapely.box(
        centre[:, 0] - w / 2, centre[:, 1] - h / 2, centre[:, 0] + w / 2, centre[:, 1] + h / 2
    )
    # a third L-shaped (a box cut away at one corner), a third rotated by up to 40 degrees
    third = len(boxes) // 3
    cut = shapely.box(
        centre[:third, 0],
        centre[:third, 1],
        centre[:third, 0] + w[:third],
        centre[:third, 1] + h[:third],
    )
    boxes[:third] = shapely.difference(boxes[:third], cut)
    rot = slice(third, 2 * third)
    angle = rng.uniform(-40, 40, third)
    from shapely import affinity

    boxes[rot] = [affinity.rotate(g, a) for g, a in zip(boxes[rot], angle, strict=True)]
    mask = rasterize(((g, 1) for g in boxes), out_shape=(size, size), fill=0, dtype="uint8")
    if instances_path is not None:  # the same buildings as an instance-aware model predicts them
        ids = rasterize(
            zip(boxes, range(1, len(boxes) + 1), strict=True),
            out_shape=(size, size),
            fill=0,
            dtype="int32",
        )
        ids_path = instances_path.with_name("ids.tif")
        with rasterio.open(
            ids_path, "w", driver="GTiff", width=size, height=size, count=1, dtype="int32",
            crs="EPSG:32631", transform=from_origin(500000, 5000000, 0.5, 0.5), tiled=True,
            blockxsize=512, blockysize=512, compress="deflate",
        ) as dst:  # fmt: skip
            dst.write(ids, 1)
        del ids
        from geoseg import instances

        # edge 1 m = 2 px, contact 2.5 m = 5 px (the defaults)
        instances.write_targets(ids_path, instances_path)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=size,
        height=size,
        count=1,
        dtype="uint8",
        crs="EPSG:32631",
        transform=from_origin(500000, 5000000, 0.5, 0.5),
        nodata=255,
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
    ) as dst:
        dst.write(mask, 1)
        dst.update_tags(class_names=json.dumps(["background", "building"]))


def jitter(footprints: Path, out: Path, seed: int = 1) -> int:
    """Proposals: the footprints shifted by up to 2 m, random confidence, shuffled order."""
    import geopandas as gpd
    import shapely

    gdf = gpd.read_file(footprints, layer="footprints")
    rng = np.random.default_rng(seed)
    shift = rng.uniform(-2, 2, size=(len(gdf), 2))
    xy, idx = shapely.get_coordinates(gdf.geometry.values.to_numpy(), return_index=True)
    geoms = shapely.set_coordinates(gdf.geometry.values.to_numpy().copy(), xy + shift[idx])
    props = gpd.GeoDataFrame({"confidence": rng.random(len(gdf))}, geometry=geoms, crs=gdf.crs)
    props.iloc[rng.permutation(len(props))].to_file(out)
    return len(props)


def run(kind: str, *args: str) -> dict:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, kind, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["wall_seconds"] = time.perf_counter() - t0  # including interpreter start and imports
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--buildings", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is kept")
    a = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        mask = tmp / "mask.tif"
        inst_mask = tmp / "instances.tif"
        t0 = time.perf_counter()
        make_mask(mask, a.size, a.buildings, instances_path=inst_mask)
        print(
            f"mask {a.size}x{a.size}, {a.buildings} buildings generated in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        floor, ours, inst = [], [], []
        every = ["--min-area", "0"]  # every region, as bare shapes gives them
        for _ in range(a.repeat):  # interleaved, so all see the same machine load
            floor.append(run("shapes", str(mask)))
            ours.append(
                run(
                    "vectorize",
                    str(mask),
                    "--out",
                    str(tmp / "fp.gpkg"),
                    "--overwrite",
                    "-q",
                    *every,
                )
            )
            inst.append(
                run(
                    "vectorize",
                    str(inst_mask),
                    "--out",
                    str(tmp / "fp_inst.gpkg"),
                    "--overwrite",
                    "--quiet",
                    *every,
                )  # fmt: skip
            )
        floor_best = min(floor, key=lambda r: r["seconds"])
        ours_best = min(ours, key=lambda r: r["seconds"])
        inst_best = min(inst, key=lambda r: r["seconds"])
        import pyogrio

        n = pyogrio.read_info(tmp / "fp.gpkg", layer="footprints")["features"]
        n_inst = pyogrio.read_info(tmp / "fp_inst.gpkg", layer="footprints")["features"]
        n_props = jitter(tmp / "fp.gpkg", tmp / "proposals.gpkg")
        ev = run(
            "evaluate",
            str(tmp / "proposals.gpkg"),
            str(tmp / "fp.gpkg"),
            "--json",
            str(tmp / "report.json"),
            "--quiet",
        )
        report = json.loads((tmp / "report.json").read_text())
    ratio = floor_best["seconds"] / ours_best["seconds"]
    # CPU seconds are less disturbed than wall seconds when other work shares the cores.
    cpu_ratio = min(r["cpu_seconds"] for r in floor) / min(r["cpu_seconds"] for r in ours)
    print(
        f"bare rasterio.features.shapes (whole mask): {floor_best['seconds']:.2f} s, "
        f"{floor_best['count']} polygons, peak RSS {floor_best['peak_rss_mb']:.0f} MB"
    )
    print(
        f"geoseg vectorize (2048-px blocks, merge, attributes, GeoPackage): "
        f"{ours_best['seconds']:.2f} s, {n} polygons, peak RSS {ours_best['peak_rss_mb']:.0f} MB"
    )
    print(f"geoseg_vs_shapes (rate, >= 0.7 wanted): {ratio:.2f} wall, {cpu_ratio:.2f} CPU time")
    inst_ratio = inst_best["seconds"] / ours_best["seconds"]
    inst_cpu = min(r["cpu_seconds"] for r in inst) / min(r["cpu_seconds"] for r in ours)
    print(
        f"geoseg vectorize of the same buildings as an instance mask (separated): "
        f"{inst_best['seconds']:.2f} s, {n_inst} polygons, peak RSS "
        f"{inst_best['peak_rss_mb']:.0f} MB"
    )
    print(
        f"vectorize_instances_vs_semantic (time, <= 2.0 wanted): {inst_ratio:.2f} wall, "
        f"{inst_cpu:.2f} CPU time"
    )
    print(
        f"geoseg evaluate {n_props} vs {n} polygons: {ev['seconds']:.2f} s "
        f"(F1 {report['f1']:.3f}), peak RSS {ev['peak_rss_mb']:.0f} MB"
    )
    figures = {
        "size": a.size,
        "buildings": a.buildings,
        "polygons": n,
        "shapes_seconds": floor_best["seconds"],
        "shapes_peak_rss_mb": floor_best["peak_rss_mb"],
        "geoseg_seconds": ours_best["seconds"],
        "geoseg_peak_rss_mb": ours_best["peak_rss_mb"],
        "geoseg_vs_shapes": ratio,
        "geoseg_vs_shapes_cpu": cpu_ratio,
        "instances_seconds": inst_best["seconds"],
        "instances_polygons": n_inst,
        "instances_peak_rss_mb": inst_best["peak_rss_mb"],
        "vectorize_instances_vs_semantic": inst_ratio,
        "vectorize_instances_vs_semantic_cpu": inst_cpu,
        "evaluate_seconds_20k": ev["seconds"],
        "evaluate_peak_rss_mb": ev["peak_rss_mb"],
        "evaluate_f1": report["f1"],
        "runs": {"shapes": floor, "geoseg": ours, "instances": inst},
    }
    if a.json:
        a.json.write_text(json.dumps(figures, indent=2))
        print(f"figures written to {a.json}")


if __name__ == "__main__":
    main()
