"""Writes folders of image and mask files for the dataset ``tiles``, for the tests and for measuring its preparation.

A tile is the ``synthetic`` dataset's scene (three bands, or four with its near-infrared-like band), cut to the
tile's height and width, written as PNG or JPEG (Pillow; uint8, three bands) or TIFF (tifffile; uint8 or uint16, any
band count), beside a mask that holds its classes 0..4 as indices (a one-band PNG or TIFF), as other values
(``values``), or as colours (an RGB PNG, ``colours``: class -> one colour or several, drawn in stripes).

Command line, e.g. 500 pairs of 256-pixel PNGs to measure preparing them:

    python tests/tile_layout.py /tmp/tiles --count 500 --size 256
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry.datasets.synthetic import generate_tile

# DeepGlobe's land cover colours, for five classes: the synthetic classes background, building, woodland, water, road
DEEPGLOBE_COLOURS = {0: [(255, 255, 0)], 1: [(255, 0, 255)], 2: [(0, 255, 0), (0, 200, 0)], 3: [(0, 0, 255)],
                     4: [(255, 255, 255)]}


@dataclass
class TileSpec:
    """What to write: a tile ``id`` of ``height`` x ``width`` pixels."""

    id: str
    height: int = 64
    width: int = 64
    bands: int = 3
    dtype: str = "uint8"
    seed: int = 0
    split: str = ""  # the folder that fills the patterns' {split}
    values: dict[int, int] = field(default_factory=dict)  # class -> mask value written for it (index masks)
    colours: dict[int, list[tuple[int, int, int]]] | None = None  # class -> colours (colour masks)


@dataclass
class WrittenTile:
    id: str
    image_path: Path
    mask_path: Path
    image: np.ndarray  # [H, W, bands] as generated (a JPEG's pixels differ: read the file back)
    mask: np.ndarray  # [H, W] values, or [H, W, 3] colours, as written
    classes: np.ndarray  # [H, W] the synthetic classes 0..4


def tile_pixels(spec: TileSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(image [H, W, bands], classes [H, W])`` of the tile."""
    side = max(spec.height, spec.width)
    image, classes = generate_tile(spec.seed, 0, side, nir=spec.bands >= 4, dtype=spec.dtype)
    image = image[:spec.height, :spec.width]
    if spec.bands > image.shape[-1]:  # more bands: copies of the first, made different
        extra = [np.roll(image[..., 0], b, axis=1) for b in range(spec.bands - image.shape[-1])]
        image = np.concatenate([image, np.stack(extra, -1)], -1)
    return np.ascontiguousarray(image[..., :spec.bands]), classes[:spec.height, :spec.width]


def mask_pixels(spec: TileSpec, classes: np.ndarray) -> np.ndarray:
    """The mask's pixels: values ``[H, W]`` (uint8), or colours ``[H, W, 3]`` with a class's colours in stripes."""
    if spec.colours is None:
        lookup = np.arange(256, dtype=np.uint8)
        for cls, value in spec.values.items():
            lookup[cls] = value
        return lookup[classes]
    mask = np.zeros((*classes.shape, 3), np.uint8)
    stripe = (np.arange(classes.shape[1])[None, :] // 4 + np.zeros_like(classes, int))
    for cls, colours in spec.colours.items():
        for k, colour in enumerate(colours):
            mask[(classes == cls) & (stripe % len(colours) == k)] = colour
    return mask


def write_file(path: Path, pixels: np.ndarray) -> None:
    """``pixels`` ``[H, W]`` or ``[H, W, C]`` as the file's suffix says: PNG or JPEG by Pillow, TIFF by tifffile."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".tif", ".tiff"):
        tifffile.imwrite(path, pixels, photometric="rgb" if pixels.ndim == 3 and pixels.shape[-1] == 3 else
                         "minisblack", planarconfig="contig")
    else:
        Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[-1] == 1 else pixels).save(
            path, **({"quality": 95} if path.suffix.lower() in (".jpg", ".jpeg") else {}))


def write_tile(root: Path, spec: TileSpec, images: str = "images/{id}.png", masks: str = "masks/{id}.png"
               ) -> WrittenTile:
    """The tile's image and mask files under ``root``, at the paths the patterns name."""
    image, classes = tile_pixels(spec)
    mask = mask_pixels(spec, classes)
    image_path = root / images.format(id=spec.id, split=spec.split)
    mask_path = root / masks.format(id=spec.id, split=spec.split)
    write_file(image_path, image)
    write_file(mask_path, mask)
    return WrittenTile(spec.id, image_path, mask_path, image, mask, classes)


def write_tile_layout(root: Path, specs: list[TileSpec], **patterns) -> dict[str, WrittenTile]:
    """Every tile of ``specs`` under ``root`` (see :func:`write_tile`), by id."""
    return {spec.id: write_tile(root, spec, **patterns) for spec in specs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--colours", action="store_true", help="colour masks (DeepGlobe's colours)")
    args = parser.parse_args()
    for index in range(args.count):
        write_tile(args.root, TileSpec(f"{index:05d}", args.size, args.size, seed=index,
                                       colours=DEEPGLOBE_COLOURS if args.colours else None))


if __name__ == "__main__":
    main()
