"""The dataset ``tiles``: folders of image files and their mask files (PNG, JPEG, TIFF: whatever GDAL reads), paired
by name, kept in a tile cache as ``rasters`` keeps its scenes: the same reading, checks, class tables, tiling, splits,
statistics and resumable cache (:mod:`registry.datasets.rasters`), with another way of finding and pairing files.
docs/datasets.md shows a grid.

Files. ``images`` and ``masks`` are paths under ``root`` with ``{id}`` once (``"images/{id}.jpg"``,
``"masks/{id}_m.png"``, ``"{id}_sat.jpg"`` and ``"{id}_mask.png"`` in one folder) and no wildcard: every file that
``images`` matches is an image whose id is the part ``{id}`` matched (no ``/`` in it), and the file that ``masks``
names with that id is its mask. An image without its mask, or a mask without its image, is refused. A file that both
patterns match belongs to the one with more fixed characters (``a_m.png`` is a mask of ``"{id}_m.png"``, not an image
of ``"{id}.png"``). GDAL's sidecar files are skipped, and not read (GDAL would list a file's folder at every open to
find them, slow in a folder of thousands of tiles): a PNG or JPEG tile has no CRS, and its world file is not looked at.
Every image must have the same band count and dtype (uint8, uint16 or float32, kept as it is); image and mask the same
size (and, for GeoTIFFs, CRS and transform).

Classes. ``classes`` names them in order. Index masks (the default): the first band holds integers, value ``i`` is
class ``i`` unless ``values`` maps each class to its value(s) (``values = {building = [1, 2], road = 3, ...}``), and
values in ``ignore`` (and the mask's nodata) become ``-1``, not annotated. Colour masks: ``colours`` maps every class
to its colour, or a list of colours, each ``[r, g, b]`` (0..255) or ``"#rrggbb"`` (``colours = {building = [0, 0,
255], road = ["#ff0000", [200, 0, 0]]}``); the mask's first three bands are read as red, green and blue (8-bit), and
``ignore`` holds colours then (``ignore = [[0, 0, 0]]``). Any other value or colour is refused, with the file and its
pixel count. ``values`` and ``colours`` are not given together.

Tiles. Without ``tile_size``, every file is one tile, named by its id: the files must then be square and of one size.
With it, files are cut as rasters' scenes are: ``tile_size`` pixels every ``stride`` (default ``tile_size``), edges
padded (``edge = "pad"``, the outside not annotated) or dropped (``"drop"``), tiles named ``{id}_{y}_{x}``. ``scale``
resizes tiles (0.5: 1024-pixel files stored at 512), by area for images and by the pixel under each output pixel's
centre for masks. ``bands`` picks and orders image bands, numbered from 1 (default: all); ``rgb_bands`` (three of
them) says which show as red, green and blue, else the files' colour interpretation does.

Splits, by file, never by tile. With ``{split}`` in both patterns (``"{split}/images/{id}.png"``), the splits are
folders: ``split`` maps train, val and optionally test to their folders' names (``{train = "Train", val = "Val", test =
"Test"}``; default: each split's own name, and test only when its folder has images); an id in two split folders is
refused. Without it, ``split`` is shares (``{train = 0.7, val = 0.15, test = 0.15}``, the default: the files, sorted
by id, shuffled with ``split_seed``, dealt out in those shares) or split files under ``root`` listing ids (or the
images' file names), one a line (``{train = "train.txt", val = "val.txt"}``): an id listed in none is left out, one
listed twice, or in two files, is refused.

What the dataset serves is what ``rasters`` serves (images ``[N, S, S, bands]`` in their dtype; masks ``[N, S, S]``,
uint8 when no pixel is unannotated, else int8 or int16; ``mean`` and ``std`` per band over the training pixels inside
the files). Files are prepared in units of many (``UNIT_TILES`` tiles or ``UNIT_PIXELS`` source pixels): each unit
syncs the cache and records its progress once, so thousands of small files are not dominated by that, and an
interrupted preparation resumes at the first unit not finished.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from registry import register_dataset
from registry.datasets.rasters import (
    SPLITS,
    Found,
    Options,
    Progress,
    Rasters,
    Scene,
    Unit,
    Words,
    _is_int,
    _is_sidecar,
    check_bands,
    check_classes,
    check_edge_and_seed,
    check_root,
    check_scale,
    check_tiling,
    class_table,
    prepare_cache,
    show_colour,
    split_names,
    split_option,
    tile_positions,
    value_table,
)
from registry.datasets.tile_cache import TileCache
from registry.errors import UserError

WORDS = Words("tiles", "image", "mask", "image and mask", "mask", "file")
UNIT_TILES = 256  # a unit of the cache closes at this many tiles...
UNIT_PIXELS = 2**28  # ...or source pixels (256 files of 1024 x 1024): what an interruption may have to redo
DEFAULT_FOLDERS = {"train": "train", "val": "val", "test": "test"}  # with {split}: test only if its folder has images
HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{6})")


# -- options ---------------------------------------------------------------------------------------------------------


def _check_pattern(name: str, pattern: Any) -> str:
    """A path with ``{id}`` once, ``{split}`` at most once, and no wildcard."""
    rest = pattern.replace("{id}", "", 1).replace("{split}", "", 1) if isinstance(pattern, str) else ""
    if (not isinstance(pattern, str) or pattern.count("{id}") != 1 or pattern.count("{split}") > 1
            or any(c in rest for c in "{}*?[")):
        raise UserError(f"tiles: {name} must be a path under root with {{id}} once (and optionally {{split}}) and no "
                        f"wildcard, such as 'images/{{id}}.png', not {pattern!r}")
    return pattern


def _colour(name: str, value: Any) -> int:
    """One colour, ``[r, g, b]`` or ``"#rrggbb"``, packed as :func:`registry.datasets.rasters.pack_colours` packs."""
    if isinstance(value, str) and HEX_COLOUR.fullmatch(value):
        return int(value[1:], 16)
    if (isinstance(value, (list, tuple)) and len(value) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in value)):
        return (int(value[0]) << 16) | (int(value[1]) << 8) | int(value[2])
    raise UserError(f"tiles: {name} must be a colour [r, g, b] (each 0..255) or '#rrggbb', or a list of them, not "
                    f"{value!r}")


def _colours(name: str, value: Any) -> tuple[int, ...]:
    """A colour, or a list of colours (``[255, 0, 0]`` is one colour, ``[[255, 0, 0], "#00ff00"]`` two)."""
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) == 3
                                  and all(_is_int(v) for v in value)):
        return (_colour(name, value),)
    if not isinstance(value, (list, tuple)):
        raise UserError(f"tiles: {name} must be a colour [r, g, b] (each 0..255) or '#rrggbb', or a list of them, "
                        f"not {value!r}")
    return tuple(_colour(name, item) for item in value)


def _tables(classes: Any, values: Any, colours: Any, ignore: Any) -> tuple[tuple[str, ...], dict[int, int]]:
    """The class names and the table of mask values, or (``colours``) of packed colours."""
    if values is not None and colours is not None:
        raise UserError("tiles: give values (for index masks) or colours (for colour masks), not both")
    if colours is None:
        return value_table(classes, values, ignore, WORDS)
    names = check_classes(classes, WORDS, "values or colours map them")
    if not isinstance(colours, dict):
        raise UserError(f"tiles: colours must be a table from class names to colours, not {colours!r}")
    ignored = _colours("ignore", ignore if ignore is not None else [])
    return names, class_table(names, colours, ignored, _colours, WORDS, option="colours", noun="colour",
                              show=show_colour)


def _split_folders(split: Any) -> dict[str, str]:
    """With ``{split}`` in the patterns: split name -> folder name."""
    if split is None:
        return dict(DEFAULT_FOLDERS)
    if (not isinstance(split, dict) or not {"train", "val"} <= set(split) or not set(split) <= set(SPLITS)
            or not all(isinstance(v, str) and v and not any(c in v for c in "{}*?[") for v in split.values())):
        raise UserError(f"tiles: with {{split}} in the patterns, split must be a table from train, val and optionally "
                        f"test to their folders' names, such as {{train = 'Train', val = 'Val'}}, not {split!r}")
    return {name: split[name] for name in SPLITS if name in split}


def check_options(root, images, masks, classes, values, colours, ignore, bands, rgb_bands, tile_size, stride, scale,
                  edge, split, split_seed) -> Options:
    """The options of ``tiles``, checked (what only the files can tell is checked when they are read)."""
    root = check_root(root, WORDS)
    images, masks = _check_pattern("images", images), _check_pattern("masks", masks)
    if images == masks:
        raise UserError(f"tiles: images and masks must be different paths, not both {images!r}")
    if ("{split}" in images) != ("{split}" in masks):
        raise UserError(f"tiles: {{split}} must be in both images and masks or in neither, not images = {images!r}, "
                        f"masks = {masks!r}")
    class_names, table = _tables(classes, values, colours, ignore)
    scale = check_scale(scale, WORDS)
    if tile_size is None:
        if stride is not None:
            raise UserError("tiles: stride needs tile_size (without tile_size every file is one tile)")
        tiling = (None, None, None)
    else:
        tiling = check_tiling(tile_size, stride, scale, WORDS)
    check_edge_and_seed(edge, split_seed, WORDS)
    chosen, rgb = check_bands(bands, rgb_bands, WORDS)
    folders = "{split}" in images
    return Options(root, images, masks, class_names, table, chosen, rgb, *tiling, edge,
                   _split_folders(split) if folders else split_option(split, WORDS), int(split_seed), words=WORDS,
                   colours=colours is not None, whole_files=tile_size is None, split_folders=folders,
                   list_folders=False, scale=scale)


# -- finding and pairing files ---------------------------------------------------------------------------------------


def _fixed_characters(pattern: str) -> int:
    return len(pattern.replace("{id}", "").replace("{split}", ""))


def _matches(root: Path, pattern: str) -> dict[str, Path]:
    """id -> file, of the files under ``root`` that ``pattern`` (with ``{id}``, ``{split}`` filled in) matches."""
    glob = pattern.replace("{id}", "*")
    before, after = (re.escape(part) for part in pattern.split("{id}"))
    matcher = re.compile(f"{before}(?P<id>[^/]+){after}")
    found = {}
    for path in root.glob(glob):
        match = matcher.fullmatch(path.relative_to(root).as_posix())
        if match and path.is_file() and not _is_sidecar(path):
            found[match["id"]] = path
    return dict(sorted(found.items()))


def find_split_pairs(options: Options, split: str | None = None) -> dict[str, tuple[Path, Path]]:
    """id -> (image, mask) of the files the patterns match (with ``{split}``, in the folder of ``split``): every image
    with its mask and every mask with its image. A split folder without files is left out (empty) only when it is
    the default test folder."""
    folder = options.split[split] if split is not None else ""
    images_pattern, masks_pattern = (p.replace("{split}", folder) for p in (options.images, options.labels))
    images, masks = _matches(options.root, images_pattern), _matches(options.root, masks_pattern)
    # a file both patterns match belongs to the more specific one ("{id}_m.png" rather than "{id}.png")
    mine = _fixed_characters(options.images) > _fixed_characters(options.labels)
    both = set(images.values()) & set(masks.values())
    images = {i: p for i, p in images.items() if mine or p not in both}
    masks = {i: p for i, p in masks.items() if not mine or p not in both}
    optional = split == "test" and options.split == DEFAULT_FOLDERS
    if not images and not (optional and not masks):
        where = f" for split {split} (folder {folder!r})" if split is not None else ""
        raise UserError(f"{options.root}: no image matches images = {options.images!r}{where}")
    pairs = {}
    for tile_id, image in images.items():
        if tile_id not in masks:
            mask = options.root / masks_pattern.format(id=tile_id)
            raise UserError(f"{mask}: mask not found for image {image} (masks = {options.labels!r})")
        pairs[tile_id] = (image, masks[tile_id])
    for tile_id, mask in masks.items():
        if tile_id not in images:
            raise UserError(f"{mask}: mask without its image (no file matching images = {options.images!r} has the "
                            f"id {tile_id!r})")
    return pairs


def find_tiles(options: Options) -> Found:
    """``(id -> (image, mask), split -> ids)``: from the split folders, or the splits of rasters (shares, files)."""
    if not options.split_folders:
        pairs = find_split_pairs(options)
        return pairs, split_names(options, pairs)
    pairs, names, split_of = {}, {}, {}
    for split in options.split:
        found = find_split_pairs(options, split)
        for tile_id, (image, _) in found.items():
            if tile_id in pairs:
                raise UserError(f"{image}: file {tile_id} is in two splits, {split_of[tile_id]} "
                                f"({pairs[tile_id][0]}) and {split}; a file belongs to one split")
            split_of[tile_id] = split
        pairs.update(found)
        if found:
            names[split] = list(found)
    return pairs, names


def batched_units(by_split: dict[str, list[Scene]], options: Options) -> list[Unit]:
    """Consecutive files of a split, up to ``UNIT_TILES`` tiles or ``UNIT_PIXELS`` source pixels a unit."""
    units = []
    for split, scenes in by_split.items():
        batch: list[Scene] = []
        tiles = pixels = 0
        for scene in scenes:
            batch.append(scene)
            tiles += len(tile_positions(scene, options))
            pixels += scene.height * scene.width
            if tiles >= UNIT_TILES or pixels >= UNIT_PIXELS or scene is scenes[-1]:
                units.append(Unit(f"{split}:{batch[0].name}:{len(batch)}", split, tuple(batch)))
                batch, tiles, pixels = [], 0, 0
    return units


# -- the dataset -----------------------------------------------------------------------------------------------------


def prepare(root: str | Path | None = None, images: str = "images/{id}.png", masks: str = "masks/{id}.png",
            classes: list[str] | None = None, values: dict[str, Any] | None = None,
            colours: dict[str, Any] | None = None, ignore: list[Any] | None = None, bands: list[int] | None = None,
            rgb_bands: list[int] | None = None, tile_size: int | None = None, stride: int | None = None,
            scale: float = 1.0, edge: str = "pad", split: dict[str, Any] | None = None, split_seed: int = 0,
            cache_dir: str | Path | None = None, progress: Progress | None = None, verify: bool = False) -> TileCache:
    """Prepare (or resume preparing, or just open) the tile cache of the files under ``root``; see the module
    docstring for the options. With ``verify``, every file of a complete cache is checked against its SHA-256."""
    options = check_options(root, images, masks, classes, values, colours, ignore, bands, rgb_bands, tile_size,
                            stride, scale, edge, split, split_seed)
    return prepare_cache(options, find_tiles(options), batched_units, cache_dir, progress, verify)


class Tiles(Rasters):
    """Prepared tiles: splits as read-only memory maps (see the module docstring)."""


TEST_KWARGS = {"classes": ["background", "building", "woodland", "water", "road"],
               "split": {"train": 0.5, "val": 0.25, "test": 0.25}}


@register_dataset("tiles", test_kwargs=TEST_KWARGS)
def tiles(root: str | None = None, images: str = "images/{id}.png", masks: str = "masks/{id}.png",
          classes: list[str] | None = None, values: dict[str, Any] | None = None,
          colours: dict[str, Any] | None = None, ignore: list[Any] | None = None, bands: list[int] | None = None,
          rgb_bands: list[int] | None = None, tile_size: int | None = None, stride: int | None = None,
          scale: float = 1.0, edge: Literal["pad", "drop"] = "pad", split: dict[str, Any] | None = None,
          split_seed: int = 0, cache_dir: str | None = None) -> Tiles:
    """Image and mask files from the folder ``root``; see the module docstring. Prepares its cache on first use."""
    return Tiles(prepare(root, images, masks, classes, values, colours, ignore, bands, rgb_bands, tile_size, stride,
                         scale, edge, split, split_seed, cache_dir), rgb_bands)


tiles.prepare = prepare  # `bench prepare` and `bench run` call it first, with a progress bar
