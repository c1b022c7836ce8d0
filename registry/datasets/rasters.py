"""The dataset ``rasters``: your own large image rasters and their label rasters (GeoTIFFs, or any format GDAL reads),
cut into tiles once and kept in a tile cache (:mod:`registry.datasets.tile_cache`). docs/datasets.md shows a grid.

Scenes. ``images`` is a glob pattern under ``root`` (``"images/*.tif"``; ``**`` descends into folders); each file it
matches is a scene, named by its stem, and GDAL's sidecar files (``.aux.xml``, ``.ovr``...) are skipped. ``labels``
names each scene's label raster from its stem (``"labels/{stem}.tif"``, ``"labels/{stem}_label.tif"``, or
``"{stem}_mask.tif"`` beside the images: a file matching ``labels`` is never taken for an image). Image and label raster
must agree in size, CRS and transform; every scene must have the same band count and dtype (uint8, uint16 or
float32, kept as it is in the cache). The label raster's first band holds integers.

Classes. ``classes`` names them in order; raster value ``i`` is class ``i``, unless ``values`` maps each class to its
raster value(s) (``values = {building = [1, 2], road = 3, ...}``). Values in ``ignore`` and the label raster's nodata
value become ``-1``, not annotated; any other value is refused, with its file and pixel count.

Tiles. ``tile_size`` source pixels square, every ``stride`` pixels (default ``tile_size``), row by row. At the right
and bottom edges a tile that would reach past the raster is kept, its outside not annotated and its image 0
(``edge="pad"``), or left out (``edge="drop"``). ``scale`` resizes tiles (0.75: 512 -> 384), by area for images and
by the pixel under each output pixel's centre for masks. ``bands`` picks and orders bands, numbered from 1 as GDAL
numbers them (default: all); ``rgb_bands`` (three of them) says which show as red, green and blue, else the rasters'
colour interpretation does when it names them.

Splits, by scene, never by tile. ``split`` is either shares (``{train = 0.7, val = 0.15, test = 0.15}``, the
default): the scenes, sorted by name, shuffled with ``split_seed`` and dealt out in those shares, each split at least
one scene; or split files under ``root`` listing scene names, one a line (``{train = "train.txt", val = "val.txt"}``):
a scene listed in none is left out.

What the dataset serves: images ``[N, S, S, bands]`` of the rasters' dtype; masks ``[N, S, S]``, uint8 when no pixel
is unannotated, else int8 (int16 above 127 classes); ``mean`` and ``std`` per band, in units of the dtype's scale
(uint8 / 255, uint16 / 65535, float32 as is), over every pixel of the training tiles that lies inside its raster
and holds data (annotated or not; the padding and the pixels without data are left out).

Test scenes. The test split's scenes are served whole as well (``test_scenes``): every cell maps them with its best
weights, as ``bench predict`` does, and its scores over whole scenes (edges included) are stored beside the test
tiles' ("scene mIoU").

Preparing reads one scene at a time, in windows of at most ``READ_BYTES`` of image, so that its memory does not grow
with the number or size of the scenes; an interrupted preparation resumes at the first scene not finished.

The same machinery serves the dataset ``tiles`` (:mod:`registry.datasets.tiles`: folders of image and mask files
paired by ``{id}`` patterns, with colour masks): what differs is said by :class:`Options` (``words``, ``colours``,
``whole_files``, ``list_folders``), how the pairs are found and split, and how scenes are grouped into units.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from registry import IMAGE_SCALES, register_dataset
from registry.datasets.band_statistics import Statistics, band_statistics
from registry.datasets.tile_cache import (
    SPLITS,
    CachedTiles,
    CachePlan,
    TileCache,
    TileCacheWriter,
    cache_folder_for,
    centre_indices,
    file_fingerprint,
    open_or_prepare,
    resize_mask,
    whole_tile,
)
from registry.errors import UserError

DEFAULT_SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}
EDGES = ("pad", "drop")
SIDECARS = (".aux.xml", ".ovr", ".msk", ".tfw", ".tifw", ".wld", ".jgw", ".pgw", ".prj", ".hdr", ".xml", ".txt")
READ_BYTES = 64 * 2**20  # the most image bytes read at once
GDAL_CACHE_MB = 256  # GDAL's block cache (its default is 5 % of the memory): blocks shared by two windows
NOT_CLASS = -2  # what the label lookup gives a raster value that the class table does not name
PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the chunk that ends every PNG (its CRC is fixed)
PNG_TAIL_BYTES = 65536  # how far from a PNG's end its IEND chunk is looked for (some writers append bytes after it)

Progress = Callable[[int, int], None]  # (tiles done, tiles to do)


@dataclass(frozen=True)
class Words:
    """How one-line messages name a dataset's things: its entry's name (which starts the messages about options),
    its image and label files and the two together, what holds a label value, and what a split holds."""

    dataset: str
    image: str
    label: str
    pair: str
    file: str
    scene: str


RASTER_WORDS = Words("rasters", "image raster", "label raster", "image and label raster", "raster", "scene")


# -- reading rasters -------------------------------------------------------------------------------------------------


def _detail(err: BaseException) -> str:
    """The deepest message of a chain: rasterio says "Read failed. See previous exception", GDAL says why."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text


@contextmanager
def reading(path: Path, what: str) -> Iterator[None]:
    """Any failure to open or decode ``path`` as a one-line UserError naming it."""
    try:
        yield
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001  (GDAL's errors come in many types; the message is what matters)
        if not path.exists():
            raise UserError(f"{path}: {what} not found") from None
        raise UserError(f"{path}: cannot read this {what} (corrupt or truncated?): {_detail(err)}") from None


@contextmanager
def opened(path: Path, what: str):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a PNG pair, say: both share the identity
        with reading(path, what):
            source = rasterio.open(path)
        with source:
            yield source


def pixel_area_m2(crs: Any, transform: Any) -> float | None:
    """A pixel's area in square metres, from a raster's transform and its CRS's unit; None when the CRS has no
    length unit (geographic, or none)."""
    if crs is None or not crs.is_projected:
        return None
    try:
        _, metres = crs.linear_units_factor
    except Exception:  # noqa: BLE001  (rasterio's CRSError: a unit it cannot say)
        return None
    return abs(transform.a * transform.e - transform.b * transform.d) * metres ** 2


def declares_no_data(source: Any, bands: list[int] | tuple[int, ...]) -> bool:
    """Whether the raster open in ``source`` may hold pixels without data on ``bands`` (numbers from 1): a nodata
    value, an alpha band or a mask, as GDAL's mask flags say."""
    from rasterio.enums import MaskFlags

    return any(MaskFlags.all_valid not in source.mask_flag_enums[band - 1] for band in bands)


def holds_data(source: Any, bands: list[int] | tuple[int, ...], window: Any,
               pixels: np.ndarray | None = None) -> np.ndarray:
    """Which pixels of ``window`` of the raster open in ``source`` hold data ``[rows, columns]`` (bool): those that
    any of ``bands`` does, as GDAL's masks say (a pixel whose every band is at the nodata value holds none).

    ``pixels``, the window's values ``[rows, columns, bands]`` when they were read already: where every band's mask
    is its nodata value, they say it without a second read (GDAL's nodata masks read the bands again, which made
    preparing a scene three times slower)."""
    from rasterio.enums import MaskFlags

    by_value = all(MaskFlags.nodata in source.mask_flag_enums[band - 1] for band in bands)
    if pixels is None or not by_value:
        return source.read_masks(list(bands), window=window).any(axis=0)
    valid = np.zeros(pixels.shape[:2], bool)
    for index, band in enumerate(bands):
        nodata = pixels.dtype.type(source.nodatavals[band - 1])
        values = pixels[..., index]
        valid |= ~np.isnan(values) if np.isnan(nodata) else values != nodata
    return valid


def _check_png_end(source: Any, path: Path, what: str) -> None:
    """A PNG cut short is refused: GDAL's whole-image PNG reading (its fast path, which reads a tile file twice as
    fast as its line by line path) fills the missing rows without an error, so the file's end is checked instead."""
    if source.driver != "PNG":
        return
    with reading(path, what), open(path, "rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - PNG_TAIL_BYTES))
        tail = f.read()
    if PNG_END not in tail:
        raise UserError(f"{path}: cannot read this {what} (corrupt or truncated?): the PNG ends before its IEND chunk")


def _gdal_settings(options: Options | None = None):
    """GDAL's settings while reading: its block cache, and (``list_folders`` off) no listing of a file's folder at
    every open, which GDAL does to find sidecar files and which costs more than the read in a folder of thousands of
    tiles."""
    import rasterio

    listing = {} if options is None or options.list_folders else {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"}
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB, **listing)


# -- options ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The checked options; ``table`` maps raster values to class indices (``-1``: not annotated). The fields after
    ``split_seed`` are those of the dataset ``tiles``: with ``colours`` the label files are RGB and the table's keys
    are packed colours (:func:`pack_colours`); with ``whole_files`` every file is one tile (``tile_size`` is None
    until the files' size is known: :func:`whole_file_options`) named by the file's name; ``split_folders``: the
    split names folders (the patterns' ``{split}``), not split files."""

    root: Path
    images: str
    labels: str
    class_names: tuple[str, ...]
    table: dict[int, int]
    bands: tuple[int, ...] | None
    rgb_bands: tuple[int, ...] | None
    tile_size: int | None
    stride: int | None
    output_size: int | None
    edge: str
    split: dict[str, Any]
    split_seed: int
    words: Words = RASTER_WORDS
    colours: bool = False
    whole_files: bool = False
    split_folders: bool = False
    list_folders: bool = True  # GDAL lists a file's folder at each open (its sidecars); see _gdal_settings
    scale: float = 1.0

    def identity(self) -> dict[str, Any]:
        """What the cache depends on besides the scenes: every option but the root. (The fields of ``tiles`` are
        added only when set, so that the identity of a ``rasters`` cache stays what it was.)"""
        identity = {"images": self.images, "labels": self.labels, "classes": list(self.class_names),
                    "table": [list(item) for item in sorted(self.table.items())],
                    "bands": None if self.bands is None else list(self.bands), "tile_size": self.tile_size,
                    "stride": self.stride, "size": self.output_size, "edge": self.edge, "split": self.split,
                    "split_seed": self.split_seed}
        identity.update({name: True for name in ("colours", "whole_files") if getattr(self, name)})
        return identity


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _int_list(name: str, value: Any, low: int | None = None, words: Words = RASTER_WORDS) -> tuple[int, ...]:
    items = [value] if _is_int(value) else value
    if not isinstance(items, (list, tuple)) or not all(_is_int(v) for v in items):
        raise UserError(f"{words.dataset}: {name} must be a list of integers, not {value!r}")
    if low is not None and any(v < low for v in items):
        raise UserError(f"{words.dataset}: {name} must be integers from {low}, not {value!r}")
    return tuple(int(v) for v in items)


def check_classes(classes: Any, words: Words = RASTER_WORDS, mapped_by: str = "values maps them") -> tuple[str, ...]:
    """The class names: at least two, each once."""
    if not isinstance(classes, (list, tuple)) or len(classes) < 2 or not all(isinstance(c, str) and c
                                                                             for c in classes):
        raise UserError(f"{words.dataset}: classes must be a list of at least two class names ({words.file} value i "
                        f"is class i, or {mapped_by}), not {classes!r}")
    repeated = sorted({c for c in classes if list(classes).count(c) > 1})
    if repeated:
        raise UserError(f"{words.dataset}: classes names {', '.join(repeated)} twice")
    return tuple(classes)


def class_table(classes: tuple[str, ...], given: Any, ignored: tuple[int, ...], parse: Callable[[str, Any], tuple],
                words: Words = RASTER_WORDS, option: str = "values", noun: str = "raster value",
                show: Callable[[int], str] = str) -> dict[int, int]:
    """Label value (or packed colour) -> class index, ``-1`` for those ignored: from ``given``, the table ``option``
    from each class name to its values (``parse(name, value)`` reads them), or value ``i`` is class ``i``."""
    table: dict[int, int] = {}
    if given is None:
        table = {index: index for index in range(len(classes))}
    else:
        if not isinstance(given, dict):
            raise UserError(f"{words.dataset}: {option} must be a table from class names to {noun}s, not {given!r}")
        missing, unknown = [c for c in classes if c not in given], [c for c in given if c not in classes]
        if missing or unknown:
            said = ([f"no {option} for {', '.join(missing)}"] if missing else []) + \
                   ([f"{', '.join(unknown)} not in classes"] if unknown else [])
            raise UserError(f"{words.dataset}: {option} must give the {noun}s of every class and no other name "
                            f"({'; '.join(said)})")
        for index, name in enumerate(classes):
            for value in parse(f"{option}.{name}", given[name]):
                if value in table:
                    raise UserError(f"{words.dataset}: {noun} {show(value)} is given to both "
                                    f"{classes[table[value]]!r} and {name!r} in {option}")
                table[value] = index
    for value in ignored:
        if value in table:
            raise UserError(f"{words.dataset}: ignore {noun.split()[-1]} {show(value)} is the {noun} of class "
                            f"{classes[table[value]]!r} (map {noun}s to classes with {option} = {{...}} to leave it "
                            "out)")
        table[value] = -1
    return table


def value_table(classes: Any, values: Any, ignore: Any,
                words: Words = RASTER_WORDS) -> tuple[tuple[str, ...], dict[int, int]]:
    """The class names and the table of label values: ``values`` (or value ``i`` is class ``i``) and ``ignore``."""
    names = check_classes(classes, words)
    ignored = _int_list("ignore", ignore if ignore is not None else [], words=words)
    table = class_table(names, values, ignored, lambda name, value: _int_list(name, value, words=words), words,
                        noun=f"{words.file} value")
    return names, table


def split_option(split: Any, words: Words = RASTER_WORDS) -> dict[str, Any]:
    """The split table checked: shares (floats) or split files (paths), train and val and optionally test, in that
    order."""
    split = DEFAULT_SPLIT if split is None else split
    if not isinstance(split, dict) or not {"train", "val"} <= set(split) or not set(split) <= set(SPLITS):
        raise UserError(f"{words.dataset}: split must be a table with train, val and optionally test, each a share of "
                        f"the {words.scene}s or a split file, not {split!r}")
    split = {name: split[name] for name in SPLITS if name in split}  # one order, whatever the table's
    if all(isinstance(v, str) and v for v in split.values()):
        return split
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in split.values()):
        raise UserError(f"{words.dataset}: split gives either shares of the {words.scene}s (numbers) or split files "
                        f"(paths), not {split!r}")
    if any(not v > 0 for v in split.values()) or abs(sum(split.values()) - 1) > 1e-6:
        raise UserError(f"{words.dataset}: split shares must be positive and add up to 1, not {split!r}")
    return {name: float(share) for name, share in split.items()}


def check_root(root: Any, words: Words = RASTER_WORDS) -> Path:
    if root is None:
        raise UserError(f"dataset {words.dataset!r} needs the folder of your {words.dataset}: pass --data-root PATH, "
                        "or set root in the grid's [dataset] table")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise UserError(f"{root}: {words.dataset} folder not found")
    return root


def check_tiling(tile_size: Any, stride: Any, scale: Any, words: Words = RASTER_WORDS) -> tuple[int, int, int]:
    """``(tile_size, stride, output_size)``, checked."""
    for name, value in (("tile_size", tile_size), ("stride", tile_size if stride is None else stride)):
        if not _is_int(value) or value < 1:
            raise UserError(f"{words.dataset}: {name} must be a positive integer, not {value!r}")
    stride = tile_size if stride is None else stride
    check_scale(scale, words)
    output_size = round(tile_size * scale)
    if output_size < 1 or abs(tile_size * scale - output_size) > 1e-6:
        raise UserError(f"{words.dataset}: scale {scale} makes {tile_size}-pixel tiles {tile_size * scale:g} pixels; "
                        "choose one that gives a whole number")
    return int(tile_size), int(stride), output_size


def check_scale(scale: Any, words: Words = RASTER_WORDS) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
        raise UserError(f"{words.dataset}: scale must be a number in (0, 1], not {scale!r}")
    return float(scale)


def check_edge_and_seed(edge: Any, split_seed: Any, words: Words = RASTER_WORDS) -> None:
    if edge not in EDGES:
        raise UserError(f"{words.dataset}: edge must be one of {', '.join(EDGES)}, not {edge!r}")
    if not _is_int(split_seed):
        raise UserError(f"{words.dataset}: split_seed must be an integer, not {split_seed!r}")


def check_bands(bands: Any, rgb_bands: Any,
                words: Words = RASTER_WORDS) -> tuple[tuple[int, ...] | None, tuple[int, ...] | None]:
    """``(bands, rgb_bands)``, band numbers from 1, checked (against the files later: inspect_scene)."""
    chosen = None if bands is None else _int_list("bands", bands, low=1, words=words)
    if chosen is not None and (not chosen or len(set(chosen)) != len(chosen)):
        raise UserError(f"{words.dataset}: bands must name each band once, not {bands!r}")
    rgb = None if rgb_bands is None else _int_list("rgb_bands", rgb_bands, low=1, words=words)
    if rgb is not None and (len(rgb) != 3 or (chosen is not None and not set(rgb) <= set(chosen))):
        raise UserError(f"{words.dataset}: rgb_bands must be three of the bands read "
                        f"({list(chosen) if chosen else 'all'}), numbered from 1, not {rgb_bands!r}")
    return chosen, rgb


def check_options(root, images, labels, classes, values, ignore, bands, rgb_bands, tile_size, stride, scale, edge,
                  split, split_seed) -> Options:
    root = check_root(root)
    if not isinstance(images, str) or not images:
        raise UserError(f"rasters: images must be a glob pattern under root, such as 'images/*.tif', not {images!r}")
    if (not isinstance(labels, str) or labels.count("{stem}") != 1 or any(c in labels.replace("{stem}", "")
                                                                        for c in "{}*?[")):
        raise UserError(f"rasters: labels must name a scene's label raster from its stem, with {{stem}} once and no "
                        f"wildcard, such as 'labels/{{stem}}.tif', not {labels!r}")
    class_names, table = value_table(classes, values, ignore)
    tile_size, stride, output_size = check_tiling(tile_size, stride, scale)
    check_edge_and_seed(edge, split_seed)
    chosen, rgb = check_bands(bands, rgb_bands)
    return Options(root, images, labels, class_names, table, chosen, rgb, tile_size, stride, output_size,
                   edge, split_option(split), int(split_seed), scale=float(scale))


# -- scenes ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """A scene: an image raster, its label raster, and what their headers say."""

    name: str
    image: Path
    label: Path
    height: int
    width: int
    files: tuple[Path, ...]  # every file GDAL reads for the two (sidecars too): the scene's fingerprint
    label_nodata: float | None
    # the image declares pixels without data on the bands read (a nodata value, an alpha band or a mask): those are
    # not annotated, whatever their labels say
    image_masked: bool = False

    @property
    def key(self) -> str:
        return self.name


def _is_sidecar(path: Path) -> bool:
    return path.name.lower().endswith(SIDECARS)


def find_pairs(options: Options) -> dict[str, tuple[Path, Path]]:
    """Scene name -> (image, label), from the patterns; every image must have its label and every label its image."""
    root = options.root
    prefix, suffix = options.labels.split("{stem}")
    label_glob = prefix + "*" + suffix

    def stem_of_label(path: Path) -> str | None:
        relative = path.relative_to(root).as_posix()
        if relative.startswith(prefix) and relative.endswith(suffix) and len(relative) > len(prefix) + len(suffix):
            stem = relative[len(prefix):len(relative) - len(suffix)]
            return stem if "/" not in stem else None
        return None

    labels = {path for path in root.glob(label_glob) if path.is_file() and stem_of_label(path) is not None}
    pairs: dict[str, tuple[Path, Path]] = {}
    for image in sorted(root.glob(options.images)):
        if not image.is_file() or image in labels or _is_sidecar(image):
            continue
        if image.stem in pairs:
            raise UserError(f"{image}: another image has the stem {image.stem!r} ({pairs[image.stem][0]}); scenes "
                            "are named by their stems")
        label = root / options.labels.format(stem=image.stem)
        if not label.is_file():
            raise UserError(f"{label}: label raster not found for image {image} (labels = {options.labels!r})")
        pairs[image.stem] = (image, label)
    if not pairs:
        raise UserError(f"{root}: no image raster matches images = {options.images!r}")
    for label in sorted(labels):
        stem = stem_of_label(label)
        if stem not in pairs and not _is_sidecar(label):
            raise UserError(f"{label}: label raster without its image (no file matching images = "
                            f"{options.images!r} has the stem {stem!r})")
    return pairs


def find_scenes(options: Options) -> tuple[dict[str, tuple[Path, Path]], dict[str, list[str]]]:
    """rasters' scenes: ``(name -> (image, label), split -> names)``."""
    pairs = find_pairs(options)
    return pairs, split_names(options, pairs)


def _short(value: Any) -> str:
    return " ".join(str(value).split())[:120]


def _check_label_bands(lbl: Any, label: Path, options: Options) -> None:
    """Integer labels in the first band, or (``colours``) three 8-bit bands of red, green and blue."""
    if options.colours:
        if lbl.count < 3 or any(dtype != "uint8" for dtype in lbl.dtypes[:3]):
            raise UserError(f"{label}: colour masks need three 8-bit bands (red, green, blue); this one has "
                            f"{lbl.count} band(s) of {lbl.dtypes[0]}")
    elif not np.issubdtype(np.dtype(lbl.dtypes[0]), np.integer):
        raise UserError(f"{label}: {options.words.label} has {lbl.dtypes[0]} values; labels must be integers")


def inspect_scene(name: str, image: Path, label: Path, options: Options) -> tuple[Scene, dict[str, Any]]:
    """The scene, from its two headers (sizes, CRS, transform, bands, dtypes checked), and what its image is:
    band count, dtype and colour interpretation."""
    words = options.words
    with opened(image, words.image) as src, opened(label, words.label) as lbl:
        if (src.height, src.width) != (lbl.height, lbl.width):
            raise UserError(f"{image} ({src.height}x{src.width}) and {label} ({lbl.height}x{lbl.width}): "
                            f"{words.pair} sizes differ")
        if src.crs != lbl.crs:
            raise UserError(f"{image} and {label}: {words.pair} CRS differ ({_short(src.crs)} and "
                            f"{_short(lbl.crs)})")
        if not src.transform.almost_equals(lbl.transform):
            raise UserError(f"{image} and {label}: {words.pair} transforms differ "
                            f"({tuple(src.transform)[:6]} and {tuple(lbl.transform)[:6]})")
        bands = options.bands or tuple(range(1, src.count + 1))
        for band in (*bands, *(options.rgb_bands or ())):
            if band > src.count:
                raise UserError(f"{image}: band {band} is out of range: this {words.image.split()[-1]} has "
                                f"{src.count} band(s), numbered from 1")
        dtypes = {src.dtypes[band - 1] for band in bands}
        if len(dtypes) != 1 or next(iter(dtypes)) not in IMAGE_SCALES:
            raise UserError(f"{image}: {'/'.join(sorted(dtypes))} pixels; the image bands must be one of "
                            f"{', '.join(IMAGE_SCALES)}")
        _check_label_bands(lbl, label, options)
        _check_png_end(src, image, words.image)
        _check_png_end(lbl, label, words.label)
        files = tuple(dict.fromkeys(Path(f) for f in (*src.files, *lbl.files)))
        described = {"count": src.count, "dtype": next(iter(dtypes)),
                     "colours": [src.colorinterp[band - 1].name for band in bands]}
        nodata = None if options.colours else lbl.nodata
        return Scene(name, image, label, src.height, src.width, files, nodata, declares_no_data(src, bands)), \
            described


def inspect_scenes(pairs: dict[str, tuple[Path, Path]], names: list[str],
                   options: Options) -> tuple[dict[str, Scene], dict[str, Any]]:
    """The scenes ``names``, each checked against the first: the same band count and dtype."""
    scenes, first = {}, None
    for name in names:
        scene, described = inspect_scene(name, *pairs[name], options)
        if first is None:
            first = (scene, described)
        for what, word in (("count", "bands"), ("dtype", "pixels")):
            if described[what] != first[1][what]:
                raise UserError(f"{scene.image}: {described[what]} {word}, but {first[0].image} has "
                                f"{first[1][what]} {word}; every {options.words.scene} must have the same band count "
                                "and dtype")
        scenes[name] = scene
    return scenes, first[1]


def whole_file_options(options: Options, scenes: list[Scene]) -> Options:
    """With ``whole_files``, the options that make each file one tile: ``tile_size`` is the files' side, which must
    be one for all, and square."""
    if not options.whole_files:
        return options
    first = scenes[0]
    for scene in scenes:
        if scene.height != scene.width or (scene.height, scene.width) != (first.height, first.width):
            other = f" and {first.image} is {first.height}x{first.width}" if scene is not first else ""
            raise UserError(f"{scene.image} is {scene.height}x{scene.width} pixels{other}: without tile_size every "
                            "file is one tile, so the files must be square and of one size; give tile_size to cut "
                            "them into tiles")
    tile_size, stride, output_size = check_tiling(first.height, None, options.scale, options.words)
    return replace(options, tile_size=tile_size, stride=stride, output_size=output_size)


# -- splits ----------------------------------------------------------------------------------------------------------


def deal_scenes(names: list[str], shares: dict[str, float], seed: int,
                words: Words = RASTER_WORDS) -> dict[str, list[str]]:
    """The scenes, sorted, shuffled with ``seed``, dealt out in ``shares`` (largest remainders), each split at least
    one; every split sorted by name."""
    if len(names) < len(shares):
        raise UserError(f"{words.dataset}: {len(names)} {words.scene}(s) cannot be split into {', '.join(shares)}: "
                        f"each split needs one {words.scene} at least")
    order = [sorted(names)[i] for i in np.random.default_rng(seed).permutation(len(names))]
    exact = {name: share * len(names) for name, share in shares.items()}
    counts = {name: int(value) for name, value in exact.items()}
    for name in sorted(shares, key=lambda n: counts[n] - exact[n])[:len(names) - sum(counts.values())]:
        counts[name] += 1
    for name in shares:
        while counts[name] == 0:  # few scenes: take one from the split that has the most
            counts[max(counts, key=counts.get)] -= 1
            counts[name] += 1
    dealt, start = {}, 0
    for name in (s for s in SPLITS if s in shares):
        dealt[name] = sorted(order[start:start + counts[name]])
        start += counts[name]
    return dealt


def read_split_files(options: Options, pairs: dict[str, tuple[Path, Path]]) -> dict[str, list[str]]:
    """The scenes each split file lists, in its order; every mistake named with its file and line."""
    scene = options.words.scene
    by_file_name = {image.name: name for name, (image, _) in pairs.items()}
    listed: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for split in (s for s in SPLITS if s in options.split):
        path = options.root / options.split[split]
        if not path.is_file():
            raise UserError(f"{path}: split file not found (split.{split})")
        listed[split] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            name = entry if entry in pairs else by_file_name.get(entry)
            if name is None:
                known = sorted(pairs)
                shown = ", ".join(known[:3]) + (f" and {len(known) - 3} more" if len(known) > 3 else "")
                raise UserError(f"{path} line {number}: no {scene} {entry!r} ({scene}s: {shown})")
            if name in seen:
                raise UserError(f"{path} line {number}: {scene} {name} is listed twice (also at {seen[name]})")
            seen[name] = f"{path.name} line {number}"
            listed[split].append(name)
        if not listed[split]:
            raise UserError(f"{path}: lists no {scene}")
    return listed


def split_names(options: Options, pairs: dict[str, tuple[Path, Path]]) -> dict[str, list[str]]:
    """Each split's scenes: those its split file lists, or those dealt out in the shares."""
    if all(isinstance(v, str) for v in options.split.values()):
        return read_split_files(options, pairs)
    return deal_scenes(list(pairs), options.split, options.split_seed, options.words)


# -- tiles -----------------------------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, stride: int, edge: str) -> list[int]:
    """Where tiles start along a side of ``length`` pixels: every ``stride``; with ``"drop"`` only tiles that fit,
    with ``"pad"`` up to the first that reaches the end."""
    if edge == "drop":
        return list(range(0, length - tile + 1, stride))
    starts = []
    for start in range(0, length, stride):
        starts.append(start)
        if start + tile >= length:
            break
    return starts


def tile_positions(scene: Scene, options: Options) -> list[tuple[int, int]]:
    """(y, x) of the scene's tiles, row by row."""
    return [(y, x) for y in tile_starts(scene.height, options.tile_size, options.stride, options.edge)
            for x in tile_starts(scene.width, options.tile_size, options.stride, options.edge)]


def tile_ids(scene: Scene, options: Options) -> list[str]:
    """The ids of the scene's tiles: ``{scene}_{y}_{x}``, their top left corners, or the file's name alone when
    every file is one tile."""
    if options.whole_files:
        return [scene.name]
    return [f"{scene.name}_{y}_{x}" for y, x in tile_positions(scene, options)]


def pack_colours(bands: np.ndarray) -> np.ndarray:
    """The colours of uint8 red, green and blue bands ``[3, ...]`` packed in one uint32 each: ``r << 16 | g << 8 |
    b``, the keys of a colour table."""
    red, green, blue = (band.astype(np.uint32) for band in bands[:3])
    return (red << 16) | (green << 8) | blue


def show_colour(packed: int) -> str:
    """A packed colour as the grid writes it: ``[r, g, b]``."""
    return f"[{packed >> 16}, {(packed >> 8) & 255}, {packed & 255}]"


@functools.lru_cache(maxsize=4)
def _colour_lookup(items: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The class of every packed 24-bit colour (int16, 32 MB; ``NOT_CLASS`` where the table names none): one gather
    maps a window's colours, and it is made once for all the files of a preparation."""
    lookup = np.full(2**24, NOT_CLASS, np.int16)
    for colour, index in items:
        lookup[colour] = index
    lookup.flags.writeable = False
    return lookup


def label_lookup(table: dict[int, int], dtype: np.dtype, nodata: float | None) -> np.ndarray | None:
    """For 8- and 16-bit labels, the class of every bit pattern (int16; ``-1`` not annotated, ``NOT_CLASS`` not
    named), indexed by the labels viewed as unsigned; None for wider types."""
    dtype = np.dtype(dtype)
    if dtype.itemsize > 2:
        return None
    info = np.iinfo(dtype)
    lookup = np.full(2 ** (8 * dtype.itemsize), NOT_CLASS, np.int16)
    for value, index in table.items():
        if info.min <= value <= info.max:
            lookup[value % len(lookup)] = index
    if nodata is not None and float(nodata).is_integer() and info.min <= nodata <= info.max:
        lookup[int(nodata) % len(lookup)] = -1
    return lookup


def _lookup(options: Options, dtype: np.dtype, nodata: float | None) -> np.ndarray | None:
    """The lookup that maps a label file's values (or packed colours) to classes; see :func:`map_labels`."""
    if options.colours:
        return _colour_lookup(tuple(sorted(options.table.items())))
    return label_lookup(options.table, dtype, nodata)


def _read_labels(lbl: Any, window: Any, colours: bool) -> np.ndarray:
    """A window's label values: the first band, or (``colours``) the packed colours of the first three."""
    return pack_colours(lbl.read([1, 2, 3], window=window)) if colours else lbl.read(1, window=window)


def map_labels(labels: np.ndarray, lookup: np.ndarray | None, table: dict[int, int],
               nodata: float | None) -> np.ndarray:
    """Class indices (int16) of a window of raster values."""
    if lookup is not None:
        return lookup[labels.view(f"u{labels.dtype.itemsize}")]
    values, inverse = np.unique(labels, return_inverse=True)
    classes = np.array([-1 if nodata is not None and v == nodata else table.get(int(v), NOT_CLASS) for v in values],
                       np.int16)
    return classes[inverse].reshape(labels.shape)


def count_values(path: Path, values: list[int], options: Options | None = None) -> dict[int, int]:
    """How many pixels of the label raster at ``path`` hold each of ``values`` (packed colours, with ``colours``),
    read in row windows."""
    from rasterio.windows import Window

    colours, what = (options.colours, options.words.label) if options is not None else (False, "label raster")
    counts = dict.fromkeys(values, 0)
    with opened(path, what) as lbl, reading(path, what):
        rows = max(1, READ_BYTES // max(1, lbl.width * np.dtype(lbl.dtypes[0]).itemsize * (4 if colours else 1)))
        for y in range(0, lbl.height, rows):
            window = _read_labels(lbl, Window(0, y, lbl.width, min(rows, lbl.height - y)), colours)
            for value in values:
                counts[value] += int(np.count_nonzero(window == value))
    return counts


def _not_classes_error(label: Path, labels: np.ndarray, mapped: np.ndarray, options: Options) -> UserError:
    bad = sorted(int(v) for v in np.unique(labels[mapped == NOT_CLASS]))
    counts = count_values(label, bad, options)
    named = sorted(v for v, i in options.table.items() if i >= 0)
    show = show_colour if options.colours else str
    listed = ", ".join(f"{show(v)} ({counts[v]} pixels)" for v in bad[:5]) + (f" and {len(bad) - 5} more"
                                                                                 if len(bad) > 5 else "")
    if options.colours:
        known = ", ".join(show_colour(v) for v in named[:8]) + (f" and {len(named) - 8} more" if len(named) > 8
                                                                 else "")
        return UserError(f"{label}: mask colour(s) {listed} not in the class table (classes have colours "
                         f"{known}; ignore and colours say which colours are what)")
    file = options.words.file
    return UserError(f"{label}: {file} value(s) {listed} not in the class table (classes have values "
                     f"{_ranges(named)}; ignore, values and the {file}'s nodata say which values are what)")


def _ranges(values: list[int]) -> str:
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}..{value}")
            start = None
    return ", ".join(parts)


def _windows(scene: Scene, options: Options, row_bytes: int) -> list[tuple[int, int, list[int]]]:
    """``(y, height, xs)`` of each window read: one row of tiles, or as many of its tiles as ``READ_BYTES`` holds
    (``row_bytes``: the image bytes of one column of the row)."""
    tile, positions = options.tile_size, tile_positions(scene, options)
    windows = []
    for y in sorted({y for y, _ in positions}):
        xs = [x for row, x in positions if row == y]
        per_column = row_bytes * min(tile, scene.height - y)
        while xs:
            chunk = [xs[0]]
            while len(chunk) < len(xs) and (min(xs[len(chunk)] + tile, scene.width) - xs[0]) * per_column \
                    <= READ_BYTES:
                chunk.append(xs[len(chunk)])
            windows.append((y, min(tile, scene.height - y), chunk))
            xs = xs[len(chunk):]
    return windows


class _OpenScene:
    """The files of the scene being read, opened by the reading thread, which closes them when it moves on to the
    next scene (one scene's files are open at a time), and the lookup of its labels."""

    def __init__(self, options: Options):
        self.options, self.key, self._files = options, None, ExitStack()

    def open(self, scene: Scene) -> tuple[Any, Any, np.ndarray | None]:
        if self.key != scene.key:
            self.close()
            words = self.options.words
            src = self._files.enter_context(opened(scene.image, words.image))
            lbl = self._files.enter_context(opened(scene.label, words.label))
            self.files = (src, lbl, _lookup(self.options, np.dtype(lbl.dtypes[0]), scene.label_nodata))
            self.key = scene.key
        return self.files

    def close(self) -> None:
        self.key = None
        self._files.close()


def cut_scenes(scenes: list[Scene], options: Options, mask_dtype: np.dtype, bands: tuple[int, ...],
               dtype: np.dtype) -> Iterator[tuple[np.ndarray, np.ndarray, int, int, np.ndarray | None]]:
    """The scenes' tiles in order: ``(image [S, S, bands], mask [S, S], rows, columns, data)``, where ``rows`` and
    ``columns`` say how much of the tile lies inside the raster and ``data`` ``[S, S]`` (bool) which of its pixels
    the image holds data for (None: all of them, the scene declaring no pixel without). Windows of one row of tiles
    (at most ``READ_BYTES``) are read (pixel-interleaved) and their labels mapped by a second thread, one window
    ahead of the tiles being cut, across the scenes' boundaries (GDAL and NumPy work without holding the GIL: a
    folder of small files is read while the tiles of the one before are written)."""
    from rasterio.windows import Window

    tile, size, words = options.tile_size, options.output_size, options.words
    reads = [(scene, window) for scene in scenes
             for window in _windows(scene, options, len(bands) * dtype.itemsize)]
    opened = _OpenScene(options)

    def read(scene: Scene, y: int, height: int, xs: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The window's pixels ``[h, w, bands]``, class indices ``[h, w]``, checked, and which pixels hold data."""
        window = Window(xs[0], y, min(xs[-1] + tile, scene.width) - xs[0], height)
        with _gdal_settings(options):  # GDAL's settings are per thread
            src, lbl, lookup = opened.open(scene)
            pixels = np.empty((height, window.width, len(bands)), dtype)  # pixel-interleaved, as tiles are
            with reading(scene.image, words.image):
                src.read(list(bands), window=window, out=pixels.transpose(2, 0, 1))  # GDAL follows the strides
                valid = holds_data(src, bands, window, pixels) if scene.image_masked else None
            with reading(scene.label, words.label):
                labels = _read_labels(lbl, window, options.colours)
        if dtype.kind == "f" and not np.isfinite(pixels).all():
            raise UserError(f"{scene.image}: {np.count_nonzero(~np.isfinite(pixels))} values in rows "
                            f"{y}..{y + height - 1} are NaN or infinite; the images must be finite numbers")
        mapped = map_labels(labels, lookup, options.table, scene.label_nodata)
        if mapped.min(initial=0) == NOT_CLASS:
            raise _not_classes_error(scene.label, labels, mapped, options)
        if valid is not None:
            mapped[~valid] = -1
        return pixels, mapped.astype(mask_dtype), valid

    try:
        with ThreadPoolExecutor(max_workers=1) as reader:
            ahead = reader.submit(read, reads[0][0], *reads[0][1]) if reads else None
            for number, (scene, (y, height, xs)) in enumerate(reads):
                pixels, mapped, valid = ahead.result()
                ahead = reader.submit(read, reads[number + 1][0], *reads[number + 1][1]) \
                    if number + 1 < len(reads) else None
                x0 = xs[0]
                for x in xs:
                    inside = min(tile, scene.width - x)
                    # whole tiles stay views of the window: the writer writes their rows without copying them
                    image, mask = whole_tile(pixels[:, x - x0:x - x0 + inside], mapped[:, x - x0:x - x0 + inside],
                                             tile, size)
                    data = None if valid is None else _data_tile(valid[:, x - x0:x - x0 + inside], tile, size)
                    yield image, mask, height, inside, data
    finally:
        opened.close()  # the reading thread is done (the pool was shut down, waiting for it)


def _data_tile(valid: np.ndarray, tile: int, size: int) -> np.ndarray:
    """Which pixels of a tile hold data, at its stored side ``size``: ``valid`` (``[h, w]`` of its source pixels)
    padded with False to ``tile`` pixels square and resized as masks are (:func:`resize_mask`)."""
    padded = np.zeros((tile, tile), bool)
    padded[:valid.shape[0], :valid.shape[1]] = valid
    return resize_mask(padded, size)


def inside_output(inside: int, tile: int, size: int) -> int:
    """How many of the ``size`` output pixels along a side take their centre from the ``inside`` source pixels."""
    return inside if size == tile else int(np.count_nonzero(centre_indices(tile, size) < inside))


# -- preparing -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A unit of the resumable cache: consecutive scenes of one split, written, recorded and redone together."""

    key: str
    split: str
    scenes: tuple[Scene, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(path for scene in self.scenes for path in scene.files)


UnitsOf = Callable[[dict[str, list[Scene]], Options], list[Unit]]


def scene_units(by_split: dict[str, list[Scene]], options: Options) -> list[Unit]:
    """rasters' units: one scene each, named by the scene."""
    return [Unit(scene.key, split, (scene,)) for split, scenes in by_split.items() for scene in scenes]


def cache_folder(options: Options, cache_dir: str | Path | None) -> Path:
    return cache_folder_for(cache_dir, f"{options.words.dataset}-{options.output_size}", options.root,
                            options.identity())


def _mask_dtype(options: Options, scenes: list[Scene], may_pad: bool) -> str:
    """uint8 when no pixel can be unannotated (nothing padded, ignored or nodata), else int8 (int16 above 127
    classes); a dataset whose int8 masks turn out to have no -1 serves them as uint8 (see Rasters.split)."""
    classes = len(options.class_names)
    if not may_pad and -1 not in options.table.values() and all(s.label_nodata is None and not s.image_masked
                                                                for s in scenes):
        return "uint8" if classes <= 256 else "int16"
    return "int8" if classes <= 127 else "int16"


Found = tuple[dict[str, tuple[Path, Path]], dict[str, list[str]]]  # (name -> (image, label), split -> names)


def plan_cache(options: Options, found: Found | None = None
               ) -> tuple[CachePlan, dict[str, list[Scene]], dict[str, Any], Options]:
    """Everything that headers tell, checked before any pixel is read: the plan, each split's scenes, what the
    images are, and the options (with ``whole_files``, their tile size now known). ``found``: the scenes and splits,
    else rasters' (:func:`find_scenes`)."""
    pairs, names = find_scenes(options) if found is None else found
    scenes, described = inspect_scenes(pairs, [n for split in names.values() for n in split], options)
    options = whole_file_options(options, list(scenes.values()))
    by_split = {split: [scenes[n] for n in split_names] for split, split_names in names.items()}
    ids: dict[str, list[str]] = {}
    may_pad = False
    for split, split_scenes in by_split.items():
        ids[split] = []
        for scene in split_scenes:
            may_pad |= any(y + options.tile_size > scene.height or x + options.tile_size > scene.width
                           for y, x in tile_positions(scene, options))
            ids[split] += tile_ids(scene, options)
        if not ids[split]:
            raise UserError(f"{options.words.dataset}: split {split} has no tile: its {options.words.scene}s "
                            f"({', '.join(names[split])}) are smaller than tile_size {options.tile_size} and "
                            "edge = 'drop'")
    bands = options.bands or tuple(range(1, described["count"] + 1))
    source = {"dataset": options.words.dataset, **options.identity(), "bands": list(bands),
              "resize": "none" if options.output_size == options.tile_size
              else "image area (OpenCV), mask nearest pixel centre"}
    if any(scene.image_masked for scene in scenes.values()):  # only then: the caches of other scenes stay as they are
        source["image_nodata"] = "not annotated"
    plan = CachePlan(ids, options.output_size, len(bands), source, image_dtype=described["dtype"],
                     mask_dtype=_mask_dtype(options, list(scenes.values()), may_pad))
    return plan, by_split, {**described, "bands": bands}, options


def rgb_positions(rgb_bands: list[int] | None, manifest: dict[str, Any]) -> tuple[int, ...] | None:
    """The channels that show as red, green and blue: ``rgb_bands`` (raster band numbers) among the bands read, else
    those whose colour interpretation says so, else None (the harness's default). Not part of the cache's identity:
    it only says how to show the tiles."""
    bands = manifest["source"]["bands"]
    if rgb_bands is not None:
        return tuple(bands.index(band) for band in rgb_bands)
    colours = manifest["colours"]
    if all(c in colours for c in ("red", "green", "blue")):
        return tuple(colours.index(c) for c in ("red", "green", "blue"))
    return None


def _write_units(writer: TileCacheWriter, todo: list[Unit], starts: dict[str, int], plan: CachePlan,
                 options: Options, bands: tuple[int, ...], progress: Progress | None) -> None:
    """Cut and write the units ``todo``, recording each when it is whole, with its training statistics and its
    count of unannotated pixels (``starts``: each scene's first index in its split)."""
    total = sum(len(tile_positions(scene, options)) for unit in todo for scene in unit.scenes)
    done = 0
    dtype, mask_dtype = plan.dtype("images"), plan.dtype("masks")
    for unit in todo:
        statistics, unannotated, count = Statistics(plan.in_chans, dtype), 0, 0
        start = starts[unit.scenes[0].key]  # a unit's scenes are consecutive in their split
        for image, mask, rows, columns, data in cut_scenes(list(unit.scenes), options, mask_dtype, bands, dtype):
            writer.write(unit.split, start + count, image, mask)
            if unit.split == "train":  # normalisation statistics come from the training split alone
                # the pixels inside the raster, those the image holds data for
                inside = (slice(inside_output(rows, options.tile_size, options.output_size)),
                          slice(inside_output(columns, options.tile_size, options.output_size)))
                statistics.add(image[inside] if data is None else image[inside][data[inside]])
            if mask_dtype.kind == "i":
                unannotated += int(np.count_nonzero(mask < 0))
            count += 1
            if progress is not None:
                progress(done + count, total)
        writer.unit_done(unit.key, file_fingerprint(*unit.files), count,
                         {**statistics.payload(), "unannotated": unannotated})
        done += count


def prepare_cache(options: Options, found: Found | None, units_of: UnitsOf, cache_dir: str | Path | None,
                  progress: Progress | None, verify: bool) -> TileCache:
    """Prepare (or resume preparing, or just open) the tile cache of ``options``: ``found`` the scenes and splits
    (else rasters' own), ``units_of`` how they are grouped into the cache's units."""
    with _gdal_settings(options):
        plan, by_split, described, options = plan_cache(options, found)
        units = units_of(by_split, options)
        fingerprints = {unit.key: file_fingerprint(*unit.files) for unit in units}
        folder = cache_folder(options, cache_dir)

        def write(writer: TileCacheWriter, keys: set[str]) -> TileCache:
            starts = {}  # each scene's first index in its split
            for scenes in by_split.values():
                index = 0
                for scene in scenes:
                    starts[scene.key] = index
                    index += len(tile_positions(scene, options))
            _write_units(writer, [unit for unit in units if unit.key in keys], starts, plan, options,
                         described["bands"], progress)
            payloads = [writer.units[unit.key]["payload"] for unit in units]
            mean, std = band_statistics([p for unit, p in zip(units, payloads) if unit.split == "train"],
                                        IMAGE_SCALES[plan.image_dtype])
            extra = {"mean": mean, "std": std, "root": str(options.root.resolve()),
                     "counts": {s: len(v) for s, v in plan.ids.items()}, "class_names": list(options.class_names),
                     "scenes": {s: [scene.name for scene in scenes] for s, scenes in by_split.items()},
                     "unannotated": sum(p["unannotated"] for p in payloads), "colours": described["colours"]}
            return writer.finish([unit.key for unit in units], extra)

        return open_or_prepare(folder, plan, fingerprints, verify, write)


def prepare(root: str | Path | None = None, images: str = "images/*.tif", labels: str = "labels/{stem}.tif",
            classes: list[str] | None = None, values: dict[str, Any] | None = None, ignore: list[int] | None = None,
            bands: list[int] | None = None, rgb_bands: list[int] | None = None, tile_size: int = 512,
            stride: int | None = None, scale: float = 1.0, edge: str = "pad", split: dict[str, Any] | None = None,
            split_seed: int = 0, cache_dir: str | Path | None = None, progress: Progress | None = None,
            verify: bool = False) -> TileCache:
    """Prepare (or resume preparing, or just open) the tile cache of the rasters under ``root``; see the module
    docstring for the options. With ``verify``, every file of a complete cache is checked against its SHA-256."""
    options = check_options(root, images, labels, classes, values, ignore, bands, rgb_bands, tile_size, stride, scale,
                            edge, split, split_seed)
    return prepare_cache(options, None, scene_units, cache_dir, progress, verify)


@dataclass(frozen=True)
class SceneToScore:
    """A scene of the test split, scored whole with each cell's best weights (the DATASET_CONTRACT's
    ``test_scenes``): its image and label rasters, its label values mapped to classes as its tiles' were."""

    image: Path
    labels: Path
    options: Options

    def read_classes(self, source: Any, window: Any) -> np.ndarray:
        """The classes (``-1`` not annotated) of ``window`` of the label raster open in ``source``; a value that the
        class table does not name is refused as preparing refuses it."""
        options = self.options
        nodata = None if options.colours else source.nodata
        values = _read_labels(source, window, options.colours)
        classes = map_labels(values, _lookup(options, np.dtype(source.dtypes[0]), nodata), options.table, nodata)
        if classes.min(initial=0) == NOT_CLASS:
            raise _not_classes_error(self.labels, values, classes, options)
        return classes


class Rasters(CachedTiles):
    """Prepared rasters (or tiles): splits as read-only memory maps (see the module docstring), ``rgb_bands`` and,
    with the options that made them (``options``, for rasters), the test scenes to score whole (``test_scenes``), any
    other pair of rasters read with the same class table (:meth:`scene`) and the training scenes' pixel sizes
    (:attr:`pixel_sizes`)."""

    def __init__(self, cache: TileCache, rgb_bands: list[int] | None = None, options: Options | None = None):
        super().__init__(cache.manifest["source"]["dataset"], cache)
        self.rgb_bands = rgb_positions(rgb_bands, cache.manifest)
        self.test_scenes: tuple[SceneToScore, ...] = ()
        self._options = options
        if options is not None:
            self.scene = functools.partial(SceneToScore, options=options)
            names = cache.manifest["scenes"].get("test", [])
            pairs = find_pairs(options) if names else {}
            self.test_scenes = tuple(self.scene(*pairs[name]) for name in names)

    @functools.cached_property
    def pixel_sizes(self) -> tuple[float, ...]:
        """The ground sides (metres, to 0.1 mm) of the training scenes' pixels, each once, from their headers;
        empty when none has a projected CRS (or the tiles came from no rasters)."""
        names = self.cache.manifest.get("scenes", {}).get("train", []) if self._options is not None else []
        pairs = find_pairs(self._options) if names else {}
        sizes = set()
        for name in names:
            with opened(pairs[name][0], self._options.words.image) as source:
                area = pixel_area_m2(source.crs, source.transform)
            if area:
                sizes.add(round(math.sqrt(area), 4))
        return tuple(sorted(sizes))


TEST_KWARGS = {"classes": ["background", "building", "woodland", "water", "road"], "tile_size": 64,
               "split": {"train": 0.5, "val": 0.25, "test": 0.25}}


@register_dataset("rasters", test_kwargs=TEST_KWARGS)
def rasters(root: str | None = None, images: str = "images/*.tif", labels: str = "labels/{stem}.tif",
            classes: list[str] | None = None, values: dict[str, Any] | None = None, ignore: list[int] | None = None,
            bands: list[int] | None = None, rgb_bands: list[int] | None = None, tile_size: int = 512,
            stride: int | None = None, scale: float = 1.0, edge: Literal["pad", "drop"] = "pad",
            split: dict[str, Any] | None = None, split_seed: int = 0, cache_dir: str | None = None) -> Rasters:
    """Image rasters and label rasters from the folder ``root``; see the module docstring. Prepares its cache on
    first use."""
    options = check_options(root, images, labels, classes, values, ignore, bands, rgb_bands, tile_size, stride, scale,
                            edge, split, split_seed)
    cache = prepare_cache(options, None, scene_units, cache_dir, None, False)
    return Rasters(cache, rgb_bands, options)


rasters.prepare = prepare  # `bench prepare` and `bench run` call it first, with a progress bar
