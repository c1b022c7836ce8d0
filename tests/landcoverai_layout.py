"""Writes stand-ins for LandCover.ai in its real layouts, for the tests and for measuring ``bench prepare``.

The orthophotos are mosaics of the ``synthetic`` dataset's scenes, written as compressed GeoTIFF-like TIFFs (LZW,
Deflate or JPEG; stripped or tiled), with one-band masks and split files listing every full 512-pixel tile. The cut
tiles are written the way the dataset's own ``split.py`` writes them (JPEG quality 95, 3-channel PNG masks).

Command line, e.g. one full-size orthophoto to measure the preparation's time and memory:

    python tests/landcoverai_layout.py /tmp/lcai --sizes 9500x9500
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry.datasets.landcoverai import SPLITS, tile_grid
from registry.datasets.synthetic import generate_tile

MOSAIC_TILE = 256
# Ways real orthophotos are stored; the fixtures cycle through them.
IMAGE_FORMATS = (
    {"compression": "lzw", "rowsperstrip": 64},
    {"compression": "zlib", "tile": (256, 256)},
    {"compression": "jpeg", "tile": (256, 256)},
    {"compression": None, "rowsperstrip": 128},
)
MASK_FORMATS = ({"compression": "lzw", "rowsperstrip": 64}, {"compression": "zlib", "tile": (256, 256)})


@dataclass
class Orthophoto:
    name: str
    image: np.ndarray  # as decoded from the written file (JPEG-compressed TIFFs are lossy)
    mask: np.ndarray


def mosaic(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An orthophoto-sized scene: synthetic tiles side by side, cropped to the size."""
    rows, cols = -(-height // MOSAIC_TILE), -(-width // MOSAIC_TILE)
    image = np.empty((rows * MOSAIC_TILE, cols * MOSAIC_TILE, 3), np.uint8)
    mask = np.empty((rows * MOSAIC_TILE, cols * MOSAIC_TILE), np.uint8)
    for r in range(rows):
        for c in range(cols):
            tile, tile_mask = generate_tile(seed, r * cols + c, MOSAIC_TILE)
            image[r * MOSAIC_TILE:(r + 1) * MOSAIC_TILE, c * MOSAIC_TILE:(c + 1) * MOSAIC_TILE] = tile
            mask[r * MOSAIC_TILE:(r + 1) * MOSAIC_TILE, c * MOSAIC_TILE:(c + 1) * MOSAIC_TILE] = tile_mask
    return image[:height, :width].copy(), mask[:height, :width].copy()


def write_archive(root: Path, sizes: list[tuple[int, int]], seed: int = 0,
                  fractions: tuple[float, float] = (0.6, 0.2)) -> list[Orthophoto]:
    """The archive's layout in ``root``: ``images/``, ``masks/``, split files. Every full tile is listed in one split
    (shuffled; ``fractions`` of them in train and val, the rest in test). Returns the orthophotos as written."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    orthophotos, ids = [], []
    for i, (height, width) in enumerate(sizes):
        name = f"M-33-{20 + i}-D-c-4-2"
        image, mask = mosaic(height, width, seed + i)
        tifffile.imwrite(root / "images" / f"{name}.tif", image, photometric="rgb", **IMAGE_FORMATS[i % 4])
        tifffile.imwrite(root / "masks" / f"{name}.tif", mask, photometric="minisblack", **MASK_FORMATS[i % 2])
        orthophotos.append(Orthophoto(name, tifffile.imread(root / "images" / f"{name}.tif"), mask))
        ids += [tile_id for tile_id, _, _ in tile_grid(name, height, width)]
    order = np.random.default_rng(seed).permutation(len(ids))
    cuts = [round(fractions[0] * len(ids)), round((fractions[0] + fractions[1]) * len(ids))]
    for split, part in zip(SPLITS, np.split(order, cuts)):
        (root / f"{split}.txt").write_text("".join(f"{ids[j]}\n" for j in sorted(part)), encoding="utf-8")
    return orthophotos


def write_tiles(root: Path, archive: Path, orthophotos: list[Orthophoto]) -> None:
    """The tiles layout in ``root``: what split.py writes into ``output/``, with the archive's split files."""
    output = root / "output"
    output.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        (root / f"{split}.txt").write_bytes((archive / f"{split}.txt").read_bytes())
    for ortho in orthophotos:
        for tile_id, y, x in tile_grid(ortho.name, *ortho.mask.shape):
            image = ortho.image[y:y + 512, x:x + 512]
            mask = ortho.mask[y:y + 512, x:x + 512]
            Image.fromarray(image).save(output / f"{tile_id}.jpg", quality=95)
            Image.fromarray(np.repeat(mask[..., None], 3, axis=2)).save(output / f"{tile_id}_m.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--sizes", nargs="+", default=["9500x9500"], help="HEIGHTxWIDTH of each orthophoto")
    parser.add_argument("--tiles", type=Path, help="also write split.py's tiles layout into this folder")
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in args.sizes]
    orthophotos = write_archive(args.root, sizes)
    if args.tiles:
        write_tiles(args.tiles, args.root, orthophotos)


if __name__ == "__main__":
    main()
