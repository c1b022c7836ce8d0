"""Writes georeferenced image and label rasters for the dataset ``rasters``, for the tests and for measuring its
preparation.

A scene is a mosaic of the ``synthetic`` dataset's 256-pixel scenes (``--tile`` sets their side; three bands, or four
with its near-infrared-like band), in uint8, uint16 or float32, written with rasterio as a GeoTIFF with a CRS and a
transform (LZW, Deflate or none; stripped or tiled), beside a one-band uint8 label raster of the same grid holding its
classes 0..4, optionally with a nodata value written over a block of pixels; the image can have a block without data
too, as a nodata value on every band or as an internal mask. Writing goes strip by strip, so a full-size scene takes
little memory.

Command line, e.g. one 9500 x 9500 four-band uint16 scene to measure the preparation's time and memory:

    python tests/raster_layout.py /tmp/rasters --size 9500x9500 --bands 4 --dtype uint16
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry.datasets import rasters
from registry.datasets.synthetic import generate_tile

MOSAIC_TILE = 256
CRS = "EPSG:2180"  # Poland's CS92, LandCover.ai's
# Ways real rasters are stored; scenes cycle through them.
FORMATS = (
    {"compress": "lzw"},
    {"compress": "deflate", "tiled": True, "blockxsize": 256, "blockysize": 256},
    {},
)
COLOURS = ("red", "green", "blue", "undefined")


@dataclass
class SceneSpec:
    """What to write: a scene of ``height`` x ``width`` pixels."""

    name: str
    height: int
    width: int
    bands: int = 3
    dtype: str = "uint8"
    seed: int = 0
    nodata: int | None = None  # the label raster's nodata value, written over a block of its pixels
    image_nodata: int | None = None  # the image raster's nodata value, on every band where image_hole says
    image_mask: bool = False  # an internal mask that hides image_hole's pixels, whose values stay
    origin: tuple[float, float] = (500000.0, 600000.0)
    pixel: float = 0.25  # metres on the ground
    crs: str = CRS
    label_values: dict[int, int] = field(default_factory=dict)  # class -> raster value written for it
    label_origin: tuple[float, float] | None = None  # a label raster on another grid (for the bad-input tests)
    label_crs: str | None = None
    tile: int = MOSAIC_TILE  # the side of the synthetic scenes in the mosaic: their objects are drawn to that scale


@dataclass
class WrittenScene:
    name: str
    image_path: Path
    label_path: Path
    image: np.ndarray  # [bands, H, W], as written
    label: np.ndarray  # [H, W] raster values, as written
    classes: np.ndarray  # [H, W] the synthetic classes 0..4 under the label values


def pixel_grid(origin: tuple[float, float], pixel: float = 0.25) -> Affine:
    """The transform of a north-up grid of ``pixel``-metre pixels whose top left corner is ``origin``."""
    return Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1])


def mosaic_rows(spec: SceneSpec, row: int) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic row ``row`` (``spec.tile`` pixels high, cut to the scene's width): ``(image [bands, T, W], classes
    [T, W])``."""
    columns = -(-spec.width // spec.tile)
    image = np.empty((spec.bands, spec.tile, columns * spec.tile), spec.dtype)
    classes = np.empty((spec.tile, columns * spec.tile), np.uint8)
    for column in range(columns):
        tile, mask = generate_tile(spec.seed, row * columns + column, spec.tile, nir=spec.bands == 4,
                                   dtype=spec.dtype)
        image[:, :, column * spec.tile:(column + 1) * spec.tile] = np.moveaxis(tile, -1, 0)[:spec.bands]
        classes[:, column * spec.tile:(column + 1) * spec.tile] = mask
    return image[:, :, :spec.width], classes[:, :spec.width]


def nodata_block(spec: SceneSpec) -> tuple[slice, slice]:
    """The pixels a label raster with a nodata value holds it in: a block near the top left."""
    return slice(spec.height // 8, spec.height // 8 + max(1, spec.height // 5)), slice(3, 3 + max(1, spec.width // 4))


def image_hole(spec: SceneSpec, y: int, height: int) -> np.ndarray:
    """``[height, W]`` (bool): which pixels of rows ``y .. y + height`` an image with ``image_nodata`` or
    ``image_mask`` holds no data for: its bottom right sixth (the lower third's right half), as where an orthophoto's
    footprint ends."""
    rows = np.arange(y, y + height) >= spec.height - spec.height // 3
    return rows[:, None] & (np.arange(spec.width) >= spec.width // 2)[None, :]


def without_data(path: Path) -> np.ndarray:
    """``[H, W]`` (bool): the pixels an image written here holds no data for, from what was written rather than from
    GDAL's nodata masks: every band at its nodata value, or hidden by its mask."""
    with rasterio.open(path) as source:
        if source.nodata is not None:
            return (source.read() == source.nodata).all(axis=0)
        return source.read_masks(1) == 0


def write_scene(root: Path, spec: SceneSpec, images: str = "images", labels: str = "labels/{stem}.tif",
                keep: bool = True) -> WrittenScene:
    """The scene's image raster ``{images}/{name}.tif`` and label raster (``labels`` with ``{stem}``) under ``root``;
    with ``keep``, the written pixels are returned too (leave it off for a full-size scene)."""
    image_path = root / images / f"{spec.name}.tif"
    label_path = root / labels.format(stem=spec.name)
    image_path.parent.mkdir(parents=True, exist_ok=True)
    label_path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "GTiff", "height": spec.height, "width": spec.width, "crs": spec.crs,
               "transform": pixel_grid(spec.origin, spec.pixel)}
    label_profile = {**profile, "count": 1, "dtype": "uint8", "nodata": spec.nodata,
                     "crs": spec.label_crs or spec.crs,
                     "transform": pixel_grid(spec.label_origin or spec.origin, spec.pixel)}
    style = FORMATS[spec.seed % len(FORMATS)]
    kept_image, kept_label, kept_classes = [], [], []
    lookup = np.arange(256, dtype=np.uint8)
    for cls, value in spec.label_values.items():
        lookup[cls] = value
    rows, columns = nodata_block(spec)
    with rasterio.open(image_path, "w", count=spec.bands, dtype=spec.dtype, nodata=spec.image_nodata, **profile,
                       **style) as image_file, \
            rasterio.open(label_path, "w", **label_profile, **FORMATS[(spec.seed + 1) % len(FORMATS)]) as label_file:
        image_file.colorinterp = [getattr(rasterio.enums.ColorInterp, c) for c in COLOURS[:spec.bands]]
        for row in range(-(-spec.height // spec.tile)):
            y = row * spec.tile
            height = min(spec.tile, spec.height - y)
            image, classes = mosaic_rows(spec, row)
            image, classes = image[:, :height], classes[:height]
            label = lookup[classes]
            if spec.nodata is not None:
                in_block = (np.arange(y, y + height) >= rows.start) & (np.arange(y, y + height) < rows.stop)
                label[in_block, columns] = spec.nodata
            window = Window(0, y, spec.width, height)
            hole = image_hole(spec, y, height)
            if spec.image_nodata is not None:
                image[:, hole] = spec.image_nodata
            image_file.write(image, window=window)
            if spec.image_mask:
                image_file.write_mask(np.where(hole, 0, 255).astype(np.uint8), window=window)
            label_file.write(label[None], window=window)
            if keep:
                kept_image.append(image)
                kept_label.append(label)
                kept_classes.append(classes)
    if not keep:
        return WrittenScene(spec.name, image_path, label_path, np.empty(0), np.empty(0), np.empty(0))
    return WrittenScene(spec.name, image_path, label_path, np.concatenate(kept_image, axis=1),
                        np.concatenate(kept_label), np.concatenate(kept_classes))


def write_layout(root: Path, specs: list[SceneSpec], **kwargs) -> dict[str, WrittenScene]:
    """Every scene of ``specs`` under ``root`` (see :func:`write_scene`), by name."""
    return {spec.name: write_scene(root, spec, **kwargs) for spec in specs}


def read_windows(pairs: list[tuple[Path, Path]], tile: int) -> None:
    """Read what preparing the dataset ``rasters`` reads of each (image, label) raster pair, a row of ``tile``-pixel
    tiles at a time, all bands, with rasterio under the same GDAL settings, and do nothing else: the yardstick of the
    preparation's speed (scripts/measure_rasters_prepare.py, tests/perf)."""
    with rasters._gdal_settings():
        for image, label in pairs:
            with rasterio.open(image) as src, rasterio.open(label) as lbl:
                for y in rasters.tile_starts(src.height, tile, tile, "pad"):
                    window = Window(0, y, src.width, min(tile, src.height - y))
                    src.read(list(range(1, src.count + 1)), window=window)
                    lbl.read(1, window=window)


def positive(text: str) -> int:
    """A command-line side in pixels; argparse's one-line error for anything else."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is no whole number of pixels from 1")
    return value


def scene_size(text: str) -> tuple[int, int]:
    """``HEIGHTxWIDTH``, each a :func:`positive` side."""
    parts = text.lower().split("x")
    try:
        if len(parts) == 2:
            return positive(parts[0]), positive(parts[1])
    except argparse.ArgumentTypeError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH in pixels from 1 (such as 2000x3000)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--size", nargs="+", type=scene_size, default=[(9500, 9500)],
                        help="HEIGHTxWIDTH of each scene")
    parser.add_argument("--bands", type=int, choices=(3, 4), default=4)
    parser.add_argument("--dtype", choices=("uint8", "uint16", "float32"), default="uint16")
    parser.add_argument("--tile", type=positive, default=MOSAIC_TILE,
                        help=f"side of the synthetic scenes in the mosaic (default {MOSAIC_TILE}); a grid's tile_size "
                             "gives scenes at its training scale")
    parser.add_argument("--image-nodata", type=int, metavar="VALUE",
                        help="the images' nodata value, written over every band of their bottom right sixth")
    args = parser.parse_args()
    for index, (height, width) in enumerate(args.size):
        write_scene(args.root, SceneSpec(f"scene-{index}", height, width, args.bands, args.dtype, seed=index,
                                         tile=args.tile, image_nodata=args.image_nodata), keep=False)


if __name__ == "__main__":
    main()
