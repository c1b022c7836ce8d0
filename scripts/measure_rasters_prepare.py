"""Measure preparing the dataset ``rasters`` on a full-size scene: peak memory, and time against rasterio reading
the same windows alone, beside the time this disk needs to make a file of the cache's size durable.

Writes a HEIGHT x WIDTH four-band uint16 GeoTIFF scene (tests/raster_layout.py; LZW, stripped) and a small second
scene for the validation split under a temporary folder, reads both once so that they are in the page cache, then
runs, ``--runs`` times and interleaved so that the machine's drift from minute to minute falls on all alike, each in a
fresh process:

- ``read``: rasterio reads the windows the preparation reads (one row of 512-pixel tiles, all bands, and the label
  band), under the same GDAL settings, and does nothing else;
- ``prepare``: ``registry.datasets.rasters.prepare`` builds the cache from nothing (by direct I/O where it can);
- ``prepare-page-cache``: the same, its tiles written through the page cache alone (as before direct I/O);
- ``disk``: writes as many bytes as the cache holds to one file under the same folder, through the page cache, in
  8 MiB pieces, and fsyncs it: what making a durable file of that size through the page cache costs on this machine.

After each preparation the same process reads every page of the cache once (``read back``), as a first epoch
right after it would: the page cache that direct I/O does not fill is filled then.

It reports each one's fastest and median run, and the ratios of the fastest: ``prepare / read`` (the target) and
``disk / read``. Peak memory is each process's maximum resident set size (``getrusage``), beside the same process's
size once its imports are done. Everything written is deleted at the end.

    .venv/bin/python scripts/measure_rasters_prepare.py [--size 9500] [--runs 5] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODES = ("read", "prepare", "prepare-page-cache", "disk")

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
sys.path[:0] = [{repo!r}, {tests!r}]
import numpy as np
from raster_layout import read_windows
from registry.datasets import rasters, tile_cache
mode, root, cache, size = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
imported = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
started, read_back = time.perf_counter(), None
if mode == "read":
    read_windows([(root / "images" / f"{{name}}.tif", root / "labels" / f"{{name}}.tif")
                  for name in ("scene-0", "scene-1")], 512)
elif mode.startswith("prepare"):
    if mode == "prepare-page-cache":
        tile_cache.O_DIRECT = 0
    rasters.prepare(root, classes=["background", "building", "woodland", "water", "road"], tile_size=512,
                    split={{"train": "train.txt", "val": "val.txt"}}, cache_dir=cache)
else:
    cache.mkdir()
    piece = os.urandom(8 << 20)
    with open(cache / "durable.bin", "wb", buffering=0) as f:
        for _ in range(size // len(piece) + 1):
            f.write(piece)
        os.fsync(f.fileno())
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if mode.startswith("prepare"):
    started = time.perf_counter()
    for path in cache.rglob("*.npy"):
        int(np.load(path, mmap_mode="r").reshape(-1).view(np.uint8)[::4096].sum())  # every page, once
    read_back = time.perf_counter() - started
print(json.dumps({{"seconds": seconds, "peak_mb": peak, "after_imports_mb": imported, "read_back": read_back}}))
"""


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def run(mode: str, root: Path, cache: Path, cache_bytes: int) -> dict:
    """One mode in a fresh process; ``cache_bytes`` is the size the disk mode writes. Returns the child's figures
    and, after a prepare, the size of the cache it built."""
    shutil.rmtree(cache, ignore_errors=True)
    code = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"))
    done = subprocess.run([sys.executable, "-c", code, mode, str(root), str(cache), str(cache_bytes)], check=True,
                          capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if mode.startswith("prepare"):
        result["cache_bytes"] = folder_bytes(cache)
    shutil.rmtree(cache, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=9500, help="the scene's side in pixels (default 9500)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each mode, interleaved (default 5)")
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
        cache_bytes = run("prepare", work, work / "cache", 0)["cache_bytes"]  # also warms the page cache
        results: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.runs):
            for mode in MODES:
                results[mode].append(run(mode, work, work / "cache", cache_bytes))
        print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
              f"{len(os.sched_getaffinity(0))} CPUs; scene {args.size} x {args.size} x 4 uint16 "
              f"({image_mb:.0f} MB LZW GeoTIFF, written in {written:.0f} s); cache {cache_bytes / 1e6:.0f} MB; "
              f"{args.runs} runs of each")
        fastest = {}
        for mode, runs in results.items():
            seconds = [result["seconds"] for result in runs]
            fastest[mode] = min(seconds)
            peak = max(result["peak_mb"] for result in runs)
            imported = max(result["after_imports_mb"] for result in runs)
            back = [result["read_back"] for result in runs if result["read_back"] is not None]
            print(f"{mode:18s} fastest {min(seconds):6.2f} s, median {statistics.median(seconds):6.2f} s   "
                  f"peak RSS {peak:6.0f} MB (after imports {imported:.0f} MB)"
                  + (f"   read back: median {statistics.median(back):.2f} s" if back else ""))
        print(f"prepare / read = {fastest['prepare'] / fastest['read']:.2f} (fastest runs); prepare-page-cache / read "
              f"= {fastest['prepare-page-cache'] / fastest['read']:.2f}; disk / read = "
              f"{fastest['disk'] / fastest['read']:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
