"""The dataset ``landcoverai``: LandCover.ai v1, read from the user's copy and cut exactly as its own ``split.py`` cuts
it.

Two layouts of a copy are accepted (``layout="auto"`` takes the archive's when both are present, being lossless):

- **archive**: ``images/*.tif`` (RGB orthophotos), ``masks/*.tif`` (one band, same names), ``train.txt``,
  ``val.txt``, ``test.txt``. Each orthophoto is cut as ``split.py`` does: for ``y`` in ``range(0, H, 512)``, for ``x``
  in ``range(0, W, 512)``, a running index ``k`` advances at every position, and only full 512 x 512 tiles exist, as
  ``{name}_{k}``; so ids have gaps where the right and bottom edges were skipped.
- **tiles**: the split files and what ``split.py`` wrote, ``{id}.jpg`` and ``{id}_m.png`` (a 3-channel PNG repeating
  the class), in ``output/``, in ``patches/`` (where the reference experiment's code puts them) or in the folder
  itself.

The split files decide which tiles exist and in which order. The first use of a copy at a tile size prepares a cache
(:mod:`registry.datasets.tile_cache`): tiles resized 512 -> ``size``, validated (mask values 0..4, image and mask
sizes), stored as memory-mappable uint8 arrays. Later uses open the cache in milliseconds; a source file that changed
is prepared again.

Two preprocessings, each off by default, give the reference experiment's pipeline (docs/landcoverai.md compares it
with this project's):

- ``resize``: ``"area"`` (default) filters images by area and gives each mask pixel the class of the source pixel under
  its centre (no class is blended, no half-pixel shift); ``"bilinear"`` is albumentations' ``Resize``, the
  reference's: OpenCV bilinear for images, OpenCV nearest for masks (which picks ``floor(i * 512 / size)``, not the
  centre). Each has a cache of its own.
- ``normalization``: ``"train"`` (default) scales images by the training split's own per-channel mean and standard
  deviation; ``"imagenet"`` by ImageNet's, the reference's.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from registry import register_dataset
from registry.datasets.image_files import read_picture, read_tiff, tiff_size
from registry.datasets.tile_cache import (
    CachePlan,
    TileCache,
    TileCacheWriter,
    cache_parent,
    file_fingerprint,
    open_or_prepare,
)
from registry.errors import UserError

CLASS_NAMES = ("background", "building", "woodland", "water", "road")
SPLITS = ("train", "val", "test")
SOURCE_TILE = 512  # the side split.py cuts
LAYOUTS = ("auto", "archive", "tiles")
RESIZES = ("area", "bilinear")
NORMALIZATIONS = ("train", "imagenet")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MIN_SIZE = 32
TILES_PER_UNIT = 256  # tiles layout: tiles per progress record
TILE_FOLDERS = ("output", "patches")  # tiles layout: where the tiles may be, when not in the folder itself
_TILE_ID = re.compile(r"^(?P<name>\S+)_(?P<k>\d+)$")

Tile = tuple[str, int, np.ndarray, np.ndarray]  # split, index in the split, image [512, 512, 3], mask [512, 512]
Progress = Callable[[int, int], None]  # (tiles done, tiles to do)


def tile_grid(name: str, height: int, width: int, tile: int = SOURCE_TILE) -> Iterator[tuple[str, int, int]]:
    """The tiles ``split.py`` cuts from an orthophoto: ``(id, y, x)`` of every full tile, in its order."""
    k = 0
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            if y + tile <= height and x + tile <= width:
                yield f"{name}_{k}", y, x
            k += 1


def read_split_ids(root: Path) -> dict[str, list[str]]:
    """The tile ids of each split, in file order; every mistake named with its file and line."""
    ids: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for split in SPLITS:
        path = root / f"{split}.txt"
        if not path.is_file():
            raise UserError(f"{path}: split file not found (LandCover.ai lists its tiles in "
                            f"{', '.join(s + '.txt' for s in SPLITS)})")
        ids[split] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            tile_id = line.strip()
            if not tile_id:
                continue
            if not _TILE_ID.match(tile_id):
                raise UserError(f"{path} line {number}: {tile_id!r} is not a tile id such as M-33-20-D-c-4-2_0")
            if tile_id in seen:
                raise UserError(f"{path} line {number}: tile {tile_id} is also listed in {seen[tile_id]}")
            seen[tile_id] = path.name
            ids[split].append(tile_id)
        if not ids[split]:
            raise UserError(f"{path}: lists no tile")
    return ids


def _check_mask_values(mask: np.ndarray, path: Path) -> None:
    if mask.max(initial=0) >= len(CLASS_NAMES):
        y, x = np.unravel_index(int(np.argmax(mask >= len(CLASS_NAMES))), mask.shape)
        raise UserError(f"{path}: mask value {mask[y, x]} at row {y}, column {x} is not a LandCover.ai class "
                        f"(0..{len(CLASS_NAMES) - 1})")


def _first_channel(array: np.ndarray) -> np.ndarray:
    """Masks are one band in the TIFFs and three identical channels in split.py's PNGs: take the first."""
    return array[..., 0]


def _rgb(array: np.ndarray, path: Path) -> np.ndarray:
    if array.shape[-1] < 3:
        raise UserError(f"{path}: image has {array.shape[-1]} channel(s); expected RGB")
    return array[..., :3]


@dataclass(frozen=True)
class Orthophoto:
    """A unit of preparation in the archive layout: one orthophoto, its mask, and the tiles the splits want of it."""

    image: Path
    mask: Path
    tiles: tuple[tuple[str, int, int, int], ...]  # split, index in the split, y, x

    @property
    def key(self) -> str:
        return self.image.stem

    @property
    def files(self) -> tuple[Path, ...]:
        return self.image, self.mask

    def read(self) -> Iterator[Tile]:
        image = _rgb(read_tiff(self.image, "orthophoto"), self.image)
        mask = _first_channel(read_tiff(self.mask, "mask"))
        if image.shape[:2] != mask.shape:
            raise UserError(f"{self.image} ({image.shape[0]}x{image.shape[1]}) and {self.mask} "
                            f"({mask.shape[0]}x{mask.shape[1]}): image and mask sizes differ")
        _check_mask_values(mask, self.mask)
        for split, index, y, x in self.tiles:
            yield split, index, image[y:y + SOURCE_TILE, x:x + SOURCE_TILE], mask[y:y + SOURCE_TILE, x:x + SOURCE_TILE]


@dataclass(frozen=True)
class TileFiles:
    """A unit of preparation in the tiles layout: a batch of ``{id}.jpg`` / ``{id}_m.png`` pairs."""

    key: str
    tiles: tuple[tuple[str, int, Path, Path], ...]  # split, index in the split, image, mask

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(path for _, _, image, mask in self.tiles for path in (image, mask))

    def read(self) -> Iterator[Tile]:
        for split, index, image_path, mask_path in self.tiles:
            image = _rgb(read_picture(image_path, "tile"), image_path)
            mask = _first_channel(read_picture(mask_path, "mask tile"))
            if image.shape[:2] != mask.shape:
                raise UserError(f"{image_path} ({image.shape[0]}x{image.shape[1]}) and {mask_path} "
                                f"({mask.shape[0]}x{mask.shape[1]}): image and mask sizes differ")
            if mask.shape != (SOURCE_TILE, SOURCE_TILE):
                raise UserError(f"{image_path}: tile is {mask.shape[0]}x{mask.shape[1]}; LandCover.ai tiles are "
                                f"{SOURCE_TILE}x{SOURCE_TILE}")
            _check_mask_values(mask, mask_path)
            yield split, index, image, mask


def _missing_ids_error(ids: dict[str, list[str]], found: set[str], root: Path, where: str) -> None:
    for split, split_ids in ids.items():
        missing = [tile_id for tile_id in split_ids if tile_id not in found]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise UserError(f"{root / (split + '.txt')}: {len(missing)} tile id(s) have no tile in {where}: {shown}")


def _positions(ids: dict[str, list[str]]) -> dict[str, tuple[str, int]]:
    return {tile_id: (split, index) for split, split_ids in ids.items() for index, tile_id in enumerate(split_ids)}


def archive_units(root: Path, ids: dict[str, list[str]]) -> list[Orthophoto]:
    """The orthophotos the splits need, with their tiles; checks sizes and that every id exists, from headers only."""
    wanted = _positions(ids)
    names = {_TILE_ID.match(tile_id)["name"] for tile_id in wanted}
    units, found = [], set()
    for image in sorted([*(root / "images").glob("*.tif"), *(root / "images").glob("*.tiff")]):
        if image.stem not in names:
            continue
        mask = root / "masks" / image.name
        if not mask.is_file():
            raise UserError(f"{mask}: mask not found for orthophoto {image}")
        size, mask_size = tiff_size(image, "orthophoto"), tiff_size(mask, "mask")
        if size != mask_size:
            raise UserError(f"{image} ({size[0]}x{size[1]}) and {mask} ({mask_size[0]}x{mask_size[1]}): "
                            "image and mask sizes differ")
        tiles = tuple((*wanted[tile_id], y, x) for tile_id, y, x in tile_grid(image.stem, *size) if tile_id in wanted)
        found.update(tile_id for tile_id, _, _ in tile_grid(image.stem, *size))
        units.append(Orthophoto(image, mask, tiles))
    _missing_ids_error(ids, found, root, f"{root / 'images'} (cut into {SOURCE_TILE}-pixel tiles as split.py does)")
    return units


def tile_folder(root: Path) -> Path:
    """Where split.py's tiles are: ``output/`` (where split.py writes them), ``patches/`` (where the reference
    experiment's code writes the same tiles, beside the split files), or the folder itself."""
    return next((root / name for name in TILE_FOLDERS if (root / name).is_dir()), root)


def tiles_units(root: Path, ids: dict[str, list[str]]) -> list[TileFiles]:
    folder = tile_folder(root)
    present = set(os.listdir(folder))
    found = {tile_id for tile_id in _positions(ids) if f"{tile_id}.jpg" in present}
    _missing_ids_error(ids, found, root, str(folder))
    pairs = []
    for split, split_ids in ids.items():
        for index, tile_id in enumerate(split_ids):
            if f"{tile_id}_m.png" not in present:
                raise UserError(f"{folder / (tile_id + '_m.png')}: mask not found for tile "
                                f"{folder / (tile_id + '.jpg')}")
            pairs.append((split, index, folder / f"{tile_id}.jpg", folder / f"{tile_id}_m.png"))
    return [TileFiles(f"tiles-{start // TILES_PER_UNIT}", tuple(pairs[start:start + TILES_PER_UNIT]))
            for start in range(0, len(pairs), TILES_PER_UNIT)]


def detect_layout(root: Path) -> str:
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "archive"
    if any(name.endswith(".jpg") for name in os.listdir(tile_folder(root))):
        return "tiles"
    raise UserError(f"{root}: neither the archive's layout (images/*.tif and masks/*.tif) nor split.py's tiles "
                    "({id}.jpg and {id}_m.png, in output/, patches/ or the folder itself)")


def resize_tile(image: np.ndarray, mask: np.ndarray, size: int, method: str = "area") -> tuple[np.ndarray, np.ndarray]:
    """A source tile at side ``size`` (see the module docstring for ``method``). With ``"area"`` the mask takes the
    source pixel under each output pixel's centre, computed here because OpenCV's fixed-point INTER_NEAREST_EXACT
    misses some centres."""
    if image.shape[0] == size:
        return image, mask
    if method == "bilinear":
        return (cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR),
                cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST))
    source = (np.arange(size) + 0.5) * (mask.shape[0] / size)
    rows = np.floor(source).astype(np.intp)
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), mask[np.ix_(rows, rows)]


def _check_arguments(root, size, layout, resize, normalization) -> Path:
    if root is None:
        raise UserError("dataset 'landcoverai' needs the folder of your LandCover.ai copy: pass --data-root PATH, "
                        "or set root in the grid's [dataset] table")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= SOURCE_TILE:
        raise UserError(f"landcoverai: size must be an integer from {MIN_SIZE} to {SOURCE_TILE}, not {size!r}")
    for name, value, allowed in (("layout", layout, LAYOUTS), ("resize", resize, RESIZES),
                                 ("normalization", normalization, NORMALIZATIONS)):
        if value not in allowed:
            raise UserError(f"landcoverai: {name} must be one of {', '.join(allowed)}, not {value!r}")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: LandCover.ai folder not found")
    return root


def cache_folder(root: Path, layout: str, size: int, resize: str, cache_dir: str | Path | None) -> Path:
    parent = cache_parent(cache_dir)
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:10]
    method = "" if resize == "area" or size == SOURCE_TILE else f"{resize}-"  # the area caches keep their old names
    return parent / f"landcoverai-{layout}-{size}-{method}{digest}"


def prepare(root: str | Path | None = None, size: int = 384, layout: str = "auto",
            cache_dir: str | Path | None = None, progress: Progress | None = None, verify: bool = False,
            resize: str = "area", normalization: str = "train") -> TileCache:
    """Prepare (or resume preparing, or just open) the cache of the copy at ``root`` at tile side ``size``, resized
    by ``resize``; with ``verify``, every file of a complete cache is checked against its SHA-256 (``bench prepare``
    does). ``normalization`` is only checked: it is applied to batches, not stored."""
    root = _check_arguments(root, size, layout, resize, normalization)
    ids = read_split_ids(root)
    layout = detect_layout(root) if layout == "auto" else layout
    units = archive_units(root, ids) if layout == "archive" else tiles_units(root, ids)
    described = {"area": "image area (OpenCV), mask nearest pixel centre",
                 "bilinear": "image bilinear (OpenCV), mask nearest (OpenCV)"}
    plan = CachePlan(ids, size, 3, {"dataset": "landcoverai", "layout": layout,
                                    "resize": "none" if size == SOURCE_TILE else described[resize]})
    folder = cache_folder(root, layout, size, resize, cache_dir)
    fingerprints = {unit.key: file_fingerprint(*unit.files) for unit in units}

    def write(writer: TileCacheWriter, keys: set[str]) -> TileCache:
        todo = [unit for unit in units if unit.key in keys]
        total, done = sum(len(unit.tiles) for unit in todo), 0
        for unit in todo:
            count, pixels = 0, 0
            sums, squares = np.zeros(3, np.int64), np.zeros(3, np.int64)
            for split, index, image, mask in unit.read():
                image, mask = resize_tile(image, mask, size, resize)
                writer.write(split, index, image, mask)
                if split == "train":  # normalisation statistics come from the training split alone
                    flat = image.reshape(-1, 3).astype(np.int64)
                    sums += flat.sum(0)
                    squares += (flat * flat).sum(0)
                    pixels += len(flat)
                count += 1
                if progress is not None:
                    progress(done + count, total)
            writer.unit_done(unit.key, fingerprints[unit.key], count,
                             {"pixels": pixels, "sums": sums.tolist(), "squares": squares.tolist()})
            done += count
        mean, std = _channel_statistics(writer.units[unit.key]["payload"] for unit in units)
        return writer.finish([unit.key for unit in units], {"mean": mean, "std": std, "root": str(root.resolve()),
                                                            "counts": {s: len(v) for s, v in ids.items()}})

    return open_or_prepare(folder, plan, fingerprints, verify, write)


def _channel_statistics(payloads) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of the training images, in 0..1 units, from exact integer sums."""
    pixels, sums, squares = 0, np.zeros(3), np.zeros(3)
    for payload in payloads:
        pixels += payload["pixels"]
        sums += np.array(payload["sums"], dtype=np.float64)
        squares += np.array(payload["squares"], dtype=np.float64)
    mean = sums / pixels
    std = np.sqrt(np.maximum(squares / pixels - mean**2, 0.0))
    return (mean / 255).round(6).tolist(), np.maximum(std / 255, 1e-6).round(6).tolist()


class LandCoverAI:
    """A prepared copy of LandCover.ai: splits as read-only memory maps, normalised with its training statistics or
    (``normalization="imagenet"``) ImageNet's."""

    num_classes = len(CLASS_NAMES)
    class_names = CLASS_NAMES
    in_chans = 3
    splits = SPLITS
    # the orthophotos' pixels: 33 at 25 cm and 8 at 50 cm (Boguszewski et al., LandCover.ai), what `bench predict`
    # checks a scene's pixels against
    pixel_sizes = (0.25, 0.5)

    def __init__(self, cache: TileCache, normalization: str = "train"):
        self.cache = cache
        self.scale = cache.manifest["tile_size"] / SOURCE_TILE  # 384 / 512: what `bench predict` resamples scenes by
        if normalization == "imagenet":
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        else:
            self.mean, self.std = tuple(cache.manifest["mean"]), tuple(cache.manifest["std"])

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.splits:
            raise UserError(f"landcoverai: unknown split {name!r}; splits: {', '.join(self.splits)}")
        return self.cache.split(name)

    def __repr__(self) -> str:
        counts = ", ".join(f"{split}={count}" for split, count in self.cache.manifest["counts"].items())
        return f"LandCoverAI({self.cache.folder}, size={self.cache.manifest['tile_size']}, {counts})"


@register_dataset("landcoverai", test_kwargs={"size": 64})
def landcoverai(root: str | None = None, size: int = 384, layout: str = "auto", cache_dir: str | None = None,
                resize: str = "area", normalization: str = "train") -> LandCoverAI:
    """LandCover.ai v1 from the folder ``root``; see the module docstring. Prepares its cache on first use."""
    return LandCoverAI(prepare(root, size, layout, cache_dir, resize=resize, normalization=normalization),
                       normalization)


landcoverai.prepare = prepare  # `bench prepare` and `bench run` call it first, with a progress bar
