"""Measure preparing the dataset ``rasters`` on a full-size scene: peak memory, and time against rasterio reading
the same windows alone.

Writes a HEIGHT x WIDTH four-band uint16 GeoTIFF scene (tests/raster_layout.py; LZW, stripped) and a small second
scene for the validation split under a temporary folder, then, each in a fresh process, twice (the second run with
the files in the page cache is the one reported):

- ``read``: rasterio reads the windows the preparation reads (one row of 512-pixel tiles, all bands, and the label
  band), under the same GDAL settings, and does nothing else;
- ``prepare``: ``registry.datasets.rasters.prepare`` builds the cache from nothing.

Peak memory is each process's maximum resident set size (``getrusage``), beside the same process's size once its
imports are done. Everything written is deleted at the end.

    .venv/bin/python scripts/measure_rasters_prepare.py [--size 9500] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
from raster_layout import read_windows
from registry.datasets import rasters
mode, root, cache = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started = time.perf_counter()
if mode == "read":
    read_windows([(root / "images" / f"{{name}}.tif", root / "labels" / f"{{name}}.tif")
                  for name in ("scene-0", "scene-1")], 512)
else:
    rasters.prepare(root, classes=["background", "building", "woodland", "water", "road"], tile_size=512,
                    split={{"train": "train.txt", "val": "val.txt"}}, cache_dir=cache)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"seconds": seconds, "peak_mb": peak, "after_imports_mb": imported}}))
"""


def run(mode: str, root: Path, cache: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    code = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"))
    done = subprocess.run([sys.executable, "-c", code, mode, str(root), str(cache)], check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=9500, help="the scene's side in pixels (default 9500)")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"), help="where the scene and cache go")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from raster_layout import SceneSpec, write_scene

    work = Path(tempfile.mkdtemp(prefix="rasters-measure-", dir=args.tmp))
    try:
        started = time.perf_counter()
        write_scene(work, SceneSpec("scene-0", args.size, args.size, 4, "uint16"), keep=False)
        write_scene(work, SceneSpec("scene-1", 512, 512, 4, "uint16", seed=3), keep=False)
        (work / "train.txt").write_text("scene-0\n")
        (work / "val.txt").write_text("scene-1\n")
        written = time.perf_counter() - started
        image_mb = (work / "images" / "scene-0.tif").stat().st_size / 1e6
        results = {}
        for attempt in range(2):
            for mode in ("read", "prepare"):
                results[mode] = run(mode, work, work / "cache")
        print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
              f"{len(__import__('os').sched_getaffinity(0))} CPUs; scene {args.size} x {args.size} x 4 uint16 "
              f"({image_mb:.0f} MB LZW GeoTIFF, written in {written:.0f} s)")
        for mode, result in results.items():
            print(f"{mode:8s} {result['seconds']:6.2f} s   peak RSS {result['peak_mb']:6.0f} MB "
                  f"(after imports {result['after_imports_mb']:.0f} MB)")
        print(f"prepare / read = {results['prepare']['seconds'] / results['read']['seconds']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
