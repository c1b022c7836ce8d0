"""``bench predict``: a model's class map of whole scenes of any size, as georeferenced rasters.

The model is a finished cell's ``best.pt`` or weights trained elsewhere (:mod:`bench.predict_model`), or a cell's best
weights mapping its dataset's test scenes (:mod:`bench.whole_scenes`); with it come the dataset's normalisation (its
mean and std), bands (``bands``, raster band numbers from 1; all when it has none), scale (``scale``, source pixels to
stored ones: LandCover.ai's 512 -> 384 is 0.75; 1 when it has none), class names and tile side, and the recipe's
evaluation batch and precision (:class:`Predictor`).

A scene is cut into windows of the tile side at the training resolution (:mod:`bench.windows`: ``tile / scale``
source pixels, overlapping, the border padded by reflection), each read with rasterio, resized by area to the tile
side when the scale is not 1 (as the dataset's tiles were), normalised and predicted on the device in batches
(optionally averaged over the flips and quarter turns, ``tta``); the softmax probabilities are resized back to the
source grid, blended, and handed over a band of rows at a time to :mod:`bench.predict_outputs`, which writes them,
with the pixels that the source says hold no data (a nodata value, an alpha band or a mask on the bands read), which
are left out of the map, its areas and its scores.
Reading runs one batch ahead in a thread, so that the disk and the device work at once. Only the model runs on
torch's intra-op threads; everything else torch does for a scene runs on one (:func:`intra_op_threads`).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.data import Normalizer
from bench.device import Precision
from bench.windows import Layout, RowBand, dihedral, reflect, undo_dihedral
from registry.datasets.rasters import GDAL_CACHE_MB, declares_no_data, holds_data, opened, pixel_area_m2, reading
from registry.datasets.tile_cache import resize_area
from registry.errors import UserError

# What a folder given as INPUT holds that is read as a scene (GDAL reads many more; name those files one by one).
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
# A scene whose pixels are this many times larger or smaller than every training scene's gets a warning: its objects
# are drawn at another size than the model learned them (LandCover.ai's own 25 and 50 cm are a factor of 2 apart).
PIXEL_SIZE_TOLERANCE = 1.25
TTA_TRANSFORMS = 8  # the flips and quarter turns of a square window (bench.windows.dihedral)
M_TOP_PAD = -2  # glibc's mallopt parameter: how much freed memory at the heap's top is kept
KEEP_FREED_BYTES = 2**30  # how much keep_freed_memory keeps (docs/perf.md: why this much)


@dataclass
class Predictor:
    """A model on the device and what the grid says about the data it was trained on."""

    model: torch.nn.Module
    label: str  # which weights: the cell's label, or the architecture and the weights file
    class_names: tuple[str, ...]
    normalize: Normalizer
    tile: int  # the training tile side: the window side at the training resolution
    scale: float  # source pixels -> training pixels (0.75: 512 source pixels were resized to 384)
    bands: tuple[int, ...] | None  # raster band numbers from 1, in the training data's order; None: all
    in_chans: int
    dtype: np.dtype  # the training images' dtype, which the scenes must have
    device: torch.device
    precision: Precision
    batch_size: int
    figures: dict[str, Any] = field(default_factory=dict)  # the cell's tile-level figures (best mIoU...), if any
    threads: int = field(default_factory=torch.get_num_threads)  # torch's intra-op threads for the model
    # the dataset's scene(image, labels) (registry's DATASET_CONTRACT): its label rasters' coding; None: class indices
    scene_labels: Callable[[Path, Path], Any] | None = None
    pixel_sizes: tuple[float, ...] = ()  # the ground sides (m) of the training scenes' pixels; empty: not known

    @property
    def window(self) -> int:
        """The window side in source pixels."""
        return max(1, round(self.tile / self.scale))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# -- the scenes ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    """An input raster, as its header describes it, and its label raster if scores are wanted."""

    path: Path
    height: int
    width: int
    count: int
    dtype: np.dtype
    crs: Any
    transform: Any
    masked: bool = False  # the bands read declare pixels with no data: a nodata value, an alpha band or a mask
    labels: Path | None = None
    # how the label raster's values become classes: a dataset test scene's read_classes (registry's DATASET_CONTRACT);
    # None: values are class indices (bench.predict_outputs.SceneConfusion)
    read_classes: Callable[[Any, Any], np.ndarray] | None = None

    @property
    def stem(self) -> str:
        return self.path.stem


def find_scenes(inputs: list[Path], skip: Path | None = None) -> list[Path]:
    """The raster files ``inputs`` name: files as they are, folders' files with a raster suffix (not those under
    ``skip``, the output folder), in name order; one line for an input that is not there or holds none."""
    found: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
                           and (skip is None or p.resolve().parent != skip.resolve()))
            if not files:
                raise UserError(f"{path}: a folder with no raster file ({', '.join(RASTER_SUFFIXES)})")
            found += files
        elif path.exists():
            found.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems and stems[path.stem].resolve() != path.resolve():
            raise UserError(f"{path} and {stems[path.stem]}: two scenes named {path.stem!r}, whose outputs would "
                            "have the same names; predict them into different --output folders")
        stems[path.stem] = path
    return list(dict.fromkeys(found))


def label_path(pattern: str, image: Path) -> Path:
    """The label raster of ``image``: ``pattern`` with ``{stem}`` (the image's name without its suffix) and
    ``{folder}`` (the image's folder) filled in; a relative path is taken from the current folder."""
    try:
        return Path(pattern.format(stem=image.stem, folder=str(image.parent)))
    except (KeyError, IndexError, ValueError) as err:
        raise UserError(f"--labels {pattern}: a pattern may name {{stem}} and {{folder}}, not {err}") from None


def inspect_scene(path: Path, predictor: Predictor, labels: str | None = None) -> Scene:
    """``path``'s header, checked against the training data (bands, dtype), and its label raster's (there, the same
    size); one line for what does not fit."""
    with opened(path, "raster") as source:
        scene = Scene(path, source.height, source.width, source.count, np.dtype(source.dtypes[0]), source.crs,
                      source.transform)
        if predictor.bands is None and scene.count != predictor.in_chans:
            raise UserError(f"{path}: has {scene.count} bands; the grid's training data has {predictor.in_chans}")
        if predictor.bands is not None and max(predictor.bands) > scene.count:
            raise UserError(f"{path}: has {scene.count} bands; the grid's training data reads bands "
                            f"{', '.join(map(str, predictor.bands))}")
        if scene.dtype != predictor.dtype:
            raise UserError(f"{path}: holds {scene.dtype}; the grid's training data is {predictor.dtype}")
        scene = replace(scene, masked=declares_no_data(source, bands_read(predictor)))
    if labels is None:
        return scene
    truth = label_path(labels, path)
    if not truth.exists():
        raise UserError(f"--labels {labels}: no label raster {truth} for {path}")
    with opened(truth, "label raster") as source:
        if (source.height, source.width) != (scene.height, scene.width):
            raise UserError(f"{truth}: is {source.height}x{source.width} pixels; its scene {path} is "
                            f"{scene.height}x{scene.width}")
    read_classes = None if predictor.scene_labels is None else predictor.scene_labels(path, truth).read_classes
    return replace(scene, labels=truth, read_classes=read_classes)


def pixel_size_warning(scene: Scene, predictor: Predictor) -> str | None:
    """What to tell of a scene whose pixels' ground side differs from every training scene's by more than
    ``PIXEL_SIZE_TOLERANCE`` times; None when it does not, or when either is not known."""
    area = pixel_area_m2(scene.crs, scene.transform)
    if area is None or not predictor.pixel_sizes:
        return None
    side = math.sqrt(area)
    nearest = min(predictor.pixel_sizes, key=lambda size: abs(math.log(side / size)))
    if max(side / nearest, nearest / side) <= PIXEL_SIZE_TOLERANCE:
        return None
    trained = " and ".join(f"{size:g} m" for size in predictor.pixel_sizes)
    return (f"{scene.path}: its pixels are {side:.3g} m on the ground, the training scenes' {trained}: the model "
            f"sees its objects {nearest / side:.2g} times the size it learned; resampling the scene to {nearest:g} m "
            f"first (gdalwarp -tr {nearest:g} {nearest:g}) gives a map at the model's scale")


def bands_read(predictor: Predictor) -> list[int]:
    """The raster band numbers (from 1) that the predictor reads of a scene (whose band count, without ``bands``,
    is the training data's: :func:`inspect_scene`)."""
    return list(predictor.bands or range(1, predictor.in_chans + 1))


# -- predicting ------------------------------------------------------------------------------------------------------


def keep_freed_memory(pad: int = KEEP_FREED_BYTES) -> None:
    """Ask glibc's allocator to keep up to ``pad`` bytes of freed memory for the process's next allocations instead
    of handing it back to the system (``mallopt(M_TOP_PAD)``, what ``MALLOC_TOP_PAD_`` sets; a no-op without glibc).

    Each batch of windows allocates and frees the model's activations, tens of MB each. Handed back, they are paged in
    again by the next batch, and where the system reports freed memory to a hypervisor (Linux's free page reporting,
    as on the project's virtual machines), paging memory in costs about 2.7 ms per MB: a 4000 x 4000 scene at batch 8
    went from 18.3 to 27.4 windows/s with it kept (docs/perf.md). It raises the peak RSS by what is kept (there,
    1.24 to 1.45 GB; a 9500 x 9500 scene 1.80 GB)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_TOP_PAD, pad)


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` inside, put back after.

    A scene's torch work besides the model (normalising, softmax, blending, the class map) is element-wise passes over
    a few MB each, too short to gain from more threads; and each of those passes waits for every thread to finish its
    share, so that on a machine where another process runs it waits for a time slice: 8 windows' blending took 2 ms
    on one thread and 190 ms on two, with a test suite running beside it. So a scene is predicted under
    ``intra_op_threads(1)`` and the model alone on :attr:`Predictor.threads`."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_band(source, y: int, layout: Layout, bands: list[int]) -> np.ndarray:
    """The scene rows ``y .. y + window`` and every column of the padded scene, reflected where they lie outside it,
    as ``[window, padded width, bands]``: one read for a whole row of windows."""
    columns = layout.columns()
    rows = reflect(np.arange(y, y + layout.window), layout.height)
    cols = reflect(np.arange(columns[0], columns[-1] + layout.window), layout.width)
    from rasterio.windows import Window

    top, left = int(rows.min()), int(cols.min())
    window = Window(left, top, int(cols.max()) + 1 - left, int(rows.max()) + 1 - top)
    pixels = source.read(bands, window=window)  # [bands, h, w]
    return np.moveaxis(pixels.take(rows - top, axis=1).take(cols - left, axis=2), 0, -1)  # take: 3x fancy indexing


def window_batches(source, layout: Layout, predictor: Predictor) -> Iterator[tuple[list[tuple[int, int]], np.ndarray]]:
    """The windows of the scene open in ``source``, row by row, in batches: ``(positions, tiles [N, tile, tile,
    bands])``, each tile resized by area to the training tile side when the window is not that side already."""
    bands = bands_read(predictor)
    columns = layout.columns()
    positions, tiles = [], []
    for y in layout.rows():
        band = read_band(source, y, layout, bands)
        for x in columns:
            tile = band[:, x - columns[0]:x - columns[0] + layout.window]
            positions.append((y, x))
            tiles.append(resize_area(np.ascontiguousarray(tile), predictor.tile))
            if len(tiles) == predictor.batch_size:
                yield positions, np.stack(tiles)
                positions, tiles = [], []
    if tiles:
        yield positions, np.stack(tiles)


def ahead(batches: Iterator, path: Path) -> Iterator:
    """``batches`` read one ahead in a thread, read errors as one line naming ``path``."""
    import rasterio

    def take():
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), reading(path, "raster"):  # GDAL's settings are per thread
            return next(batches, None)

    with ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(take)
        while (batch := pending.result()) is not None:
            pending = reader.submit(take)
            yield batch


def probabilities(predictor: Predictor, tiles: np.ndarray, tta: bool = False) -> torch.Tensor:
    """The model's softmax probabilities ``[N, C, tile, tile]`` (float32, on the device) for tiles ``[N, tile,
    tile, bands]`` of the training dtype; with ``tta``, averaged over the eight flips and quarter turns."""
    batch = torch.from_numpy(tiles).to(predictor.device, non_blocking=True)
    images = predictor.normalize.scale(batch.permute(0, 3, 1, 2).float(), batch.dtype)
    transforms = TTA_TRANSFORMS if tta else 1
    total = None
    for index in range(transforms):
        with predictor.precision.autocast(), intra_op_threads(predictor.threads):
            logits = predictor.model(dihedral(images, index).contiguous(memory_format=torch.channels_last))
        # float32: the blend sums many windows' probabilities
        probs = undo_dihedral(torch.softmax(logits.float(), dim=1), index)
        total = probs if total is None else total.add_(probs)  # the first softmax's own tensor: summed into in place
    return total if transforms == 1 else total.div_(transforms)


def to_source_grid(probs: torch.Tensor, window: int) -> torch.Tensor:
    """Probabilities ``[N, C, tile, tile]`` resized (bilinearly) to the window's side in source pixels."""
    if probs.shape[-1] == window:
        return probs
    return F.interpolate(probs, size=(window, window), mode="bilinear", align_corners=False)


def layout_of(scene: Scene, predictor: Predictor, overlap: int | None) -> Layout:
    """The windows over ``scene``: ``overlap`` training pixels (default a quarter of the tile) in source pixels."""
    overlap = predictor.tile // 4 if overlap is None else overlap
    return Layout(scene.height, scene.width, predictor.window, min(predictor.window - 1,
                                                                   round(overlap / predictor.scale)))


def blended_rows(predictor: Predictor, scene: Scene, layout: Layout, tta: bool = False,
                 done: Callable[[int], None] | None = None) -> Iterator[tuple[int, torch.Tensor, np.ndarray | None]]:
    """The scene's blended probabilities, a band of rows at a time, top to bottom: ``(first row, [C, rows,
    width] on the device, which of those pixels hold data [rows, width] or None when the scene declares no pixel
    without)``; ``done(windows)`` after each batch. Call it under ``torch.inference_mode()`` and
    ``intra_op_threads(1)``."""
    from rasterio.windows import Window

    band = RowBand(layout, predictor.num_classes, predictor.device)
    with opened(scene.path, "raster") as source, ExitStack() as stack:
        # the reader thread has its own dataset: GDAL's are not to be shared between threads
        masks = stack.enter_context(opened(scene.path, "raster")) if scene.masked else None
        bands = bands_read(predictor)

        def with_mask(rows: list[tuple[int, torch.Tensor]]) -> Iterator[tuple[int, torch.Tensor, np.ndarray | None]]:
            for row, probs in rows:
                valid = None
                if masks is not None:
                    with reading(scene.path, "raster"):
                        valid = holds_data(masks, bands, Window(0, row, scene.width, probs.shape[1]))
                yield row, probs, valid

        for positions, tiles in ahead(window_batches(source, layout, predictor), scene.path):
            probs = to_source_grid(probabilities(predictor, tiles, tta), layout.window)
            for (y, x), window in zip(positions, probs, strict=True):
                yield from with_mask(band.add(y, x, window))
            if done is not None:
                done(len(positions))
        yield from with_mask(band.finish())


def check_overlap(overlap: int | None, predictor: Predictor) -> None:
    if overlap is not None and not 0 <= overlap < predictor.tile:
        raise UserError(f"--overlap {overlap}: must be from 0 to {predictor.tile - 1} (pixels of the "
                        f"{predictor.tile}-pixel window)")
