"""The datasets ``torchgeo-<Name>``: torchgeo's ``NonGeoDataset`` classes whose samples hold an image and a mask, read
from your copy by torchgeo's own class (always with ``download=False``), converted once into a tile cache
(:mod:`registry.datasets.tile_cache`). Needs the optional extra: ``pip install 'partialseg-bench[torchgeo]'``.

Covered (listed by ``bench list datasets`` when torchgeo is installed; ``COVERED`` below cites torchgeo's source for
each): LoveDA, DeepGlobeLandCover, Potsdam2D, Vaihingen2D, InriaAerialImageLabeling, LandCoverAI, GID15. Any other
torchgeo ``NonGeoDataset`` whose samples are ``{"image": [C, H, W], "mask": [H, W], ...}`` and whose class has a
``split`` argument and ``classes`` may be asked for by name (``torchgeo-LandCoverAI100``); it is read the same way,
without a no-data class.

Splits. The harness's ``train``, ``val`` and ``test`` are torchgeo's splits of those names. Where torchgeo has no
``val`` split, a seeded share of the training *samples* is held out as ``val`` (whole samples: the tiles of one sample
are never in two splits), drawn as torchgeo's own datamodules draw theirs: ``random_split`` of the training samples
into ``1 - val_share`` and ``val_share`` with a generator seeded ``split_seed`` (0.2 and 0 are the datamodules'
``val_split_pct`` and seed, so the defaults give their validation samples). A torchgeo ``test`` split whose samples
have no mask (LoveDA, GID15, Inria) is left out.

Classes. torchgeo's class names, in its order, but the dataset's no-data class (LoveDA's "no-data", DeepGlobe's
"Unknown"), whose pixels become ``-1``, not annotated; the classes after it move down by one.

Options, besides the keyword arguments of torchgeo's class, which pass through (``scene = ["urban"]`` for LoveDA,
``checksum``) and are part of the cache's identity; ``split``, ``transforms`` and ``download = true`` are refused:

- ``tile_size`` (the dataset's default in ``COVERED``, 512 or its sample size): the side of a tile in source pixels;
  samples larger than a tile are cut into tiles, row by row;
- ``stride`` (``tile_size``), ``edge`` (``"pad"``: a tile reaching past a sample's right or bottom edge is kept, its
  outside ``-1`` and its image 0; ``"drop"``: left out) and ``scale`` (in (0, 1]: tiles stored at ``tile_size *
  scale`` pixels, images by area, masks by the pixel under each output pixel's centre), as for the ``rasters``
  dataset;
- ``val_share`` (0.2) and ``split_seed`` (0): the held-out validation samples, where torchgeo has no val split;
- ``root`` (your copy: the folder you would give torchgeo's class as ``root``) and ``cache_dir``.

What it serves: images ``[N, S, S, C]`` as uint8 (what the covered datasets' files hold: torchgeo returns them as
float tensors of whole numbers 0..255, and every sample is checked to convert exactly), or, for a dataset asked by
name, uint8, uint16 or float32 as its first training sample's values allow; masks ``[N, S, S]``, int8 with ``-1`` for
no-data and padding (served as uint8 when no pixel is ``-1``); ``mean`` and ``std`` per band over the training tiles'
pixels inside their samples. The cache is filled in units of ``UNIT_SAMPLES`` samples, each fingerprinted by the files
torchgeo reads for them (size and modification time), and depends on torchgeo's version too.

torchgeo is imported only when such a dataset is built (it takes seconds), never when the harness starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from registry import DATASETS, IMAGE_SCALES
from registry.datasets.band_statistics import Statistics, band_statistics
from registry.datasets.rasters import Words, check_edge_and_seed, check_tiling, inside_output, tile_starts
from registry.datasets.tile_cache import (
    CachedTiles,
    CachePlan,
    TileCache,
    TileCacheWriter,
    cache_folder_for,
    file_fingerprint,
    open_or_prepare,
    whole_tile,
)
from registry.errors import UserError

PREFIX = "torchgeo-"
INSTALL = "pip install 'partialseg-bench[torchgeo]'"
UNIT_SAMPLES = 32  # samples per unit of the resumable cache
DEFAULT_TILE = 512
REFUSED = {"split": "the harness sets it (train, val and test are torchgeo's splits)",
           "transforms": "the cache holds the samples as torchgeo reads them; the harness augments batches itself",
           "root": "", "download": ""}

Progress = Callable[[int, int], None]  # (tiles done, tiles to do)


@dataclass(frozen=True)
class Spec:
    """What the harness knows of a torchgeo dataset: its harness split -> torchgeo split (``val`` None: held out of
    the training samples), its no-data class (the raw mask value torchgeo returns for it, and its name in torchgeo's
    ``classes``), class names where torchgeo's class has none, the default tile side, and how to find a sample's files
    (default: :func:`sample_files`)."""

    splits: dict[str, str | None]
    no_data: tuple[int, str] | None = None
    class_names: tuple[str, ...] | None = None
    tile_size: int = DEFAULT_TILE
    image_dtype: str = "uint8"
    files: Callable[[Any, int], list[Path] | None] | None = None
    hint: str = ""  # added to the message when a split has no sample


def _deepglobe_files(dataset: Any, index: int) -> list[Path]:
    return [Path(dataset.image_fns[index]), Path(dataset.mask_fns[index])]


def _landcoverai_files(dataset: Any, index: int) -> list[Path]:
    tile = dataset.ids[index].rstrip()  # torchgeo keeps the split file's lines, newlines and all
    folder = Path(dataset.root) / "output"
    return [folder / f"{tile}.jpg", folder / f"{tile}_m.png"]


# Each entry cites torchgeo 0.8.1's torchgeo/datasets/<module>.py (and torchgeo/datamodules/ for the held-out val).
COVERED: dict[str, Spec] = {
    # loveda.py: splits train/val/test, the test split has no masks ("if self.split != 'test'"). Masks are the PNGs'
    # raw values: 0 is no-data ("No-data regions assigned with 0 and should be ignored"), 1..7 background..agriculture;
    # torchgeo's classes tuple lists them from index 0 with 'no-data' last, so raw value v is classes[v - 1].
    # RGB PNGs of 1024 x 1024 (img.convert('RGB')).
    "LoveDA": Spec({"train": "train", "val": "val"}, no_data=(0, "no-data")),
    # deepglobelandcover.py: splits train/test (the Kaggle copy's training_data/test_data, both with masks), no val
    # (its datamodule holds out val_split_pct=0.2 with random_split, seed 0). Masks are RGB colours mapped by
    # rgb_to_mask to the colormap's index: 6 is 'Unknown' (0, 0, 0), which the challenge does not score. 2448 px JPEGs.
    "DeepGlobeLandCover": Spec({"train": "train", "val": None, "test": "test"}, no_data=(6, "Unknown"),
                               files=_deepglobe_files),
    # potsdam.py: splits train/test (both from 5_Labels_all), no val (datamodule: 0.2, seed 0). 6000 px RGBIR GeoTIFFs
    # (4 uint8 bands, read by rasterio); six colour-coded classes, Clutter/background among them: no no-data class.
    "Potsdam2D": Spec({"train": "train", "val": None, "test": "test"}),
    # vaihingen.py: as Potsdam, 3-band IRRG TIFFs of about 2000 x 2500 px (img.convert('RGB')).
    "Vaihingen2D": Spec({"train": "train", "val": None, "test": "test"}),
    # inria.py: splits train/val/test; val is the first five images of each city of the training folder (train the
    # rest), test has no masks. Masks: band 1 clipped to 0..1; the class has no classes attribute: the dataset's two
    # classes are building / not building. 5000 px RGB GeoTIFFs.
    "InriaAerialImageLabeling": Spec(
        {"train": "train", "val": "val"}, class_names=("background", "building"),
        hint="(torchgeo's InriaAerialImageLabeling numbers an image by the first letters-then-digits anywhere in its "
             "path, such as 'user1' in /home/user1/...: keep your copy at a path without any)"),
    # landcoverai.py (LandCoverAI, the NonGeoDataset): splits train/val/test listed in train.txt, val.txt, test.txt;
    # samples are split.py's 512 x 512 tiles, output/{id}.jpg and output/{id}_m.png; five classes, no no-data.
    "LandCoverAI": Spec({"train": "train", "val": "val", "test": "test"}, files=_landcoverai_files),
    # gid15.py: splits train/val/test under GID/img_dir, masks GID/ann_dir/<split>/<stem>_15label.png for train and
    # val only. 16 classes, 'background' (index 0) among them: torchgeo scores it as a class, so no no-data here.
    # 6800 x 7200 px RGB TIFFs.
    "GID15": Spec({"train": "train", "val": "val"}),
}


def torchgeo_installed() -> bool:
    """Whether torchgeo can be imported, found without importing it (that takes seconds)."""
    return importlib.util.find_spec("torchgeo") is not None


def listed_names() -> tuple[str, ...]:
    """The names ``bench list datasets`` shows: the covered datasets, when torchgeo is installed."""
    return tuple(PREFIX + name for name in COVERED) if torchgeo_installed() else ()


def _import_torchgeo():
    try:
        import torchgeo.datasets
    except ImportError as err:
        raise UserError(f"the torchgeo-* datasets need torchgeo, which is not installed ({err}): {INSTALL}") from None
    return torchgeo.datasets


def known_names() -> list[str]:
    """Every dataset class of ``torchgeo.datasets`` (the builder refuses those that are not NonGeoDatasets with
    image and mask samples, saying why)."""
    datasets = _import_torchgeo()
    from torch.utils.data import Dataset

    return sorted(name for name in dir(datasets) if not name.startswith("_")
                  and inspect.isclass(getattr(datasets, name)) and issubclass(getattr(datasets, name), Dataset))


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


# -- options ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """The checked options."""

    name: str
    root: Path
    spec: Spec
    kwargs: dict[str, Any]
    tile_size: int
    stride: int
    output_size: int
    edge: str
    val_share: float
    split_seed: int
    version: str = ""

    def identity(self) -> dict[str, Any]:
        """What the cache depends on besides the files: every option but the root, and torchgeo's version."""
        return {"dataset": PREFIX + self.name, "torchgeo": self.version, "kwargs": self.kwargs,
                "tile_size": self.tile_size, "stride": self.stride, "size": self.output_size, "edge": self.edge,
                "val_share": self.val_share if self.spec.splits.get("val", "") is None else None,
                "split_seed": self.split_seed if self.spec.splits.get("val", "") is None else None}


def _dataset_class(name: str) -> tuple[type, str]:
    """torchgeo's class ``name`` and torchgeo's version; refused unless it is a NonGeoDataset."""
    datasets = _import_torchgeo()
    import torchgeo

    cls = getattr(datasets, name, None)
    if not inspect.isclass(cls):
        raise UserError(f"{PREFIX}{name}: torchgeo {torchgeo.__version__} has no dataset class {name!r}")
    if not issubclass(cls, datasets.NonGeoDataset):
        raise UserError(f"{PREFIX}{name}: torchgeo's {name} is not a NonGeoDataset (its samples are not image and "
                        "mask pairs by index); only NonGeoDatasets are read")
    return cls, torchgeo.__version__


def _check_kwargs(name: str, cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments passed through to torchgeo's class: accepted by it, never downloading, JSON-able."""
    parameters = inspect.signature(cls).parameters
    for key, value in kwargs.items():
        if key == "download" and value is False:
            continue
        if key in REFUSED:
            why = REFUSED[key] or ("nothing is downloaded: put the files at root" if key == "download" else
                                   "give it as the dataset's root")
            raise UserError(f"{PREFIX}{name}: {key} is not passed to torchgeo ({why})")
        if key not in parameters:
            offered = [p for p in parameters if p not in REFUSED]
            raise UserError(f"{PREFIX}{name}: torchgeo's {name} takes no argument {key!r} (it takes "
                            f"{', '.join(offered) or 'none'}, and the harness's tile_size, stride, scale, edge, "
                            "val_share, split_seed)")
    passed = {key: value for key, value in kwargs.items() if key != "download"}
    try:
        json.dumps(passed, sort_keys=True)
    except TypeError:
        raise UserError(f"{PREFIX}{name}: its arguments must be plain values (numbers, strings, lists, tables), "
                        f"not {passed!r}") from None
    return passed


def _spec_of(name: str, cls: type) -> Spec:
    """The covered dataset's table entry, or one for a class asked by name: its split names that torchgeo has."""
    if name in COVERED:
        return COVERED[name]
    if "split" not in inspect.signature(cls).parameters:
        raise UserError(f"{PREFIX}{name}: torchgeo's {name} takes no split argument; only datasets with train and "
                        "val (or train alone) splits are read")
    declared = getattr(cls, "splits", None)
    names = list(declared) if isinstance(declared, (tuple, list, dict)) else ["train", "val", "test"]
    if "train" not in names:
        raise UserError(f"{PREFIX}{name}: torchgeo's {name} has no train split (its splits: {', '.join(names)})")
    splits = {"train": "train", "val": "val" if "val" in names else None}
    if "test" in names:
        splits["test"] = "test"
    return Spec(splits, image_dtype="")


def check_options(name, root, tile_size, stride, scale, edge, val_share, split_seed, kwargs) -> tuple[Options, type]:
    cls, version = _dataset_class(name)
    if root is None:
        raise UserError(f"dataset '{PREFIX}{name}' needs the folder of your copy (the root torchgeo's {name} reads): "
                        "pass --data-root PATH, or set root in the grid's [dataset] table")
    root = Path(root).expanduser()
    spec = _spec_of(name, cls)
    tile_size = spec.tile_size if tile_size is None else tile_size
    words = Words(PREFIX + name, "image", "mask", "image and mask", "mask", "sample")
    tile_size, stride, output_size = check_tiling(tile_size, stride, scale, words)
    check_edge_and_seed(edge, split_seed, words)
    if isinstance(val_share, bool) or not isinstance(val_share, (int, float)) or not 0 < val_share < 1:
        raise UserError(f"{PREFIX}{name}: val_share must be a number in (0, 1), not {val_share!r}")
    options = Options(name, root, spec, _check_kwargs(name, cls, kwargs), int(tile_size), int(stride), output_size,
                      edge, float(val_share), int(split_seed), version)
    return options, cls


# -- reading through torchgeo ----------------------------------------------------------------------------------------


def open_split(cls: type, options: Options, split: str) -> Any:
    """torchgeo's dataset for one of its splits, as its class reads the copy at root; its refusal as one line."""
    kwargs = dict(options.kwargs, root=str(options.root), split=split)
    if "download" in inspect.signature(cls).parameters:
        kwargs["download"] = False  # never: the harness reads the user's copy
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rasterio's NotGeoreferencedWarning on plain TIFFs, say
            return cls(**kwargs)
    except (FileNotFoundError, AssertionError, RuntimeError, OSError, ValueError, KeyError) as err:
        said = _one_line(err)
        if "download" in said:  # torchgeo's advice to download does not apply: the harness never does
            said += " (the harness never downloads: put the files torchgeo reads at root)"
        raise UserError(f"{PREFIX}{options.name} ({split} split): {said}") from None


def sample_files(dataset: Any, index: int) -> list[Path] | None:
    """The files torchgeo reads for sample ``index``, image first, when its class keeps them as most do (a ``files``
    list of dicts of paths); None otherwise."""
    files = getattr(dataset, "files", None)
    if isinstance(files, list) and index < len(files) and isinstance(files[index], dict):
        entry = files[index]
        keys = sorted(entry, key=lambda key: key != "image")
        paths = [Path(entry[key]) for key in keys if isinstance(entry[key], (str, os.PathLike))]
        return paths or None
    return None


def load_sample(options: Options, dataset: Any, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` as torchgeo returns it: image ``[C, H, W]`` and mask ``[H, W]`` as NumPy arrays."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sample = dataset[index]
    except Exception as err:  # noqa: BLE001  (PIL, rasterio and torchgeo raise many types; the file is what matters)
        files = _files_of(options, dataset, index)
        where = f" ({files[0]})" if files else ""
        raise UserError(f"{PREFIX}{options.name}: cannot read sample {index} of torchgeo's {split} split{where}: "
                        f"{_one_line(err)}") from None
    if not isinstance(sample, dict) or "image" not in sample or "mask" not in sample:
        keys = ", ".join(sample) if isinstance(sample, dict) else type(sample).__name__
        raise UserError(f"{PREFIX}{options.name}: torchgeo's {split} samples hold {keys}, not an image and a mask; "
                        "only image and mask datasets are read")
    image, mask = np.asarray(sample["image"]), np.asarray(sample["mask"])
    if image.ndim != 3 or mask.ndim != 2 or image.shape[1:] != mask.shape:
        raise UserError(f"{PREFIX}{options.name}: torchgeo's {split} sample {index} has an image {list(image.shape)} "
                        f"and a mask {list(mask.shape)}; only images [C, H, W] with masks [H, W] are read")
    return image, mask


def _files_of(options: Options, dataset: Any, index: int) -> list[Path] | None:
    finder = options.spec.files or sample_files
    try:
        return finder(dataset, index)
    except (AttributeError, IndexError, TypeError):
        return None


def _header_size(path: Path) -> tuple[int, int] | None:
    """(height, width) of an image file from its header (PIL opens lazily), None when PIL cannot tell."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.height, image.width
    except Exception:  # noqa: BLE001  (a format PIL does not read: the sample is loaded instead)
        return None


@dataclass(frozen=True)
class Sample:
    """One sample of a harness split: where torchgeo has it, its name, files and size."""

    split: str  # torchgeo's
    index: int
    name: str
    files: tuple[Path, ...]
    height: int
    width: int


def _samples(options: Options, dataset: Any, split: str, indices: list[int]) -> list[Sample]:
    """The samples ``indices`` of torchgeo's ``split``, with their sizes from their image headers (or, where the
    files are not known or not readable so, from loading them)."""
    samples = []
    for index in indices:
        files = _files_of(options, dataset, index)
        size = _header_size(files[0]) if files else None
        if size is None:
            image, _ = load_sample(options, dataset, split, index)
            size = image.shape[1:]
        name = files[0].stem if files else f"{split}-{index}"
        samples.append(Sample(split, index, name, tuple(files or ()), *size))
    return samples


def held_out(count: int, share: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, val) sample indices, as torchgeo's datamodules split a training set: ``random_split`` into
    ``1 - share`` and ``share`` with a generator seeded ``seed``; each sorted."""
    import torch
    from torch.utils.data import random_split

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Length of split at index 1 is 0": the caller refuses that, in its words
        train, val = random_split(range(count), [1 - share, share], generator=torch.Generator().manual_seed(seed))
    return sorted(train.indices), sorted(val.indices)


def _has_masks(options: Options, dataset: Any, split: str) -> bool:
    """Whether torchgeo's split holds masks (its first sample has one): a test split without them is left out."""
    if len(dataset) == 0:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return "mask" in dataset[0]
    except Exception:  # noqa: BLE001  (load_sample will say what is wrong, if the split is used)
        return True


def plan_splits(cls: type, options: Options) -> tuple[dict[str, Any], dict[str, list[Sample]]]:
    """torchgeo's datasets by its split name, and the harness's splits as lists of samples."""
    spec = options.spec
    opened = {"train": open_split(cls, options, "train")}
    if spec.splits.get("val"):
        opened["val"] = open_split(cls, options, spec.splits["val"])
    by_split: dict[str, list[Sample]] = {}
    if spec.splits.get("val", "") is None:
        count = len(opened["train"])
        train, val = held_out(count, options.val_share, options.split_seed)
        if count and (not train or not val):
            raise UserError(f"{PREFIX}{options.name}: val_share {options.val_share} of {count} training sample(s) "
                            "leaves a split empty; the held-out val split needs one sample at least")
        by_split["train"] = _samples(options, opened["train"], "train", train)
        by_split["val"] = _samples(options, opened["train"], "train", val)
    else:
        for split in ("train", "val"):
            by_split[split] = _samples(options, opened[split], split, list(range(len(opened[split]))))
    if "test" in spec.splits:
        test = open_split(cls, options, spec.splits["test"])
        if options.name in COVERED or _has_masks(options, test, "test"):
            opened["test"] = test
            by_split["test"] = _samples(options, test, "test", list(range(len(test))))
    for split, samples in by_split.items():
        if not samples:
            raise UserError(f"{PREFIX}{options.name}: torchgeo's {name_of(spec, split)} split has no sample at "
                            f"{options.root}{' ' + spec.hint if spec.hint else ''}")
    return opened, by_split


def name_of(spec: Spec, split: str) -> str:
    """The torchgeo split that a harness split comes from."""
    return spec.splits.get(split) or "train"


# -- classes, images, tiles ------------------------------------------------------------------------------------------


def class_names(options: Options, dataset: Any) -> tuple[str, ...]:
    """The harness's class names: torchgeo's, without its no-data class."""
    if options.spec.class_names is not None:
        return options.spec.class_names
    names = getattr(dataset, "classes", None)
    if isinstance(names, dict):
        names = list(names.values())
    if not isinstance(names, (list, tuple)) or len(names) < 2 or not all(isinstance(n, str) for n in names):
        raise UserError(f"{PREFIX}{options.name}: torchgeo's {options.name} has no class names (a classes attribute "
                        "of two or more names); the harness needs them")
    if options.spec.no_data is not None:
        names = [n for n in names if n != options.spec.no_data[1]]
    return tuple(names)


def mask_classes(options: Options, raw: np.ndarray, classes: int, where: str) -> np.ndarray:
    """Class indices (int16, ``-1`` not annotated) of a mask as torchgeo returns it: the no-data value becomes -1 and
    the values above it move down by one; any value that is then no class is refused."""
    raw = raw.astype(np.int64, copy=False)
    if options.spec.no_data is None:
        mapped = raw
    else:
        value = options.spec.no_data[0]
        mapped = np.where(raw == value, -1, raw - (raw > value))
    bad = (mapped < -1) | (mapped >= classes) | ((mapped == -1) & (options.spec.no_data is None))
    if bad.any():
        found = sorted({int(v) for v in np.unique(raw[bad])[:5]})
        raise UserError(f"{PREFIX}{options.name}: {where} has mask value(s) {', '.join(map(str, found))}, which are "
                        f"no class (torchgeo's values are 0..{classes - 1 + (options.spec.no_data is not None)})")
    return mapped.astype(np.int16)


def image_dtype(image: np.ndarray) -> str:
    """What dtype holds an image's values exactly: uint8 for whole numbers 0..255, uint16 to 65535, else float32."""
    if image.size and np.isfinite(image).all() and (image == np.round(image)).all() and image.min() >= 0:
        top = image.max()
        return "uint8" if top <= 255 else "uint16" if top <= 65535 else "float32"
    return "float32"


def convert_image(options: Options, image: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """torchgeo's ``[C, H, W]`` float image as ``[H, W, C]`` of ``dtype``, refused unless every value converts
    exactly (so the cache holds what torchgeo returns)."""
    if not np.isfinite(image).all():
        raise UserError(f"{PREFIX}{options.name}: {where} has NaN or infinite image values")
    converted = image.astype(dtype)
    if dtype != np.float32 and not np.array_equal(converted, image):
        raise UserError(f"{PREFIX}{options.name}: {where} has image values that {dtype} does not hold exactly "
                        f"(from {float(image.min()):g} to {float(image.max()):g})")
    return np.ascontiguousarray(converted.transpose(1, 2, 0))


def positions(sample: Sample, options: Options) -> list[tuple[int, int]]:
    """(y, x) of the sample's tiles, row by row."""
    return [(y, x) for y in tile_starts(sample.height, options.tile_size, options.stride, options.edge)
            for x in tile_starts(sample.width, options.tile_size, options.stride, options.edge)]


def cut(image: np.ndarray, mask: np.ndarray, y: int, x: int, options: Options, mask_dtype: np.dtype
        ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The tile at (y, x) of a sample's image ``[H, W, C]`` and classes ``[H, W]``: (image, mask, rows, columns
    inside the sample), padded with 0 and -1 past its edges, resized by ``scale``."""
    tile = options.tile_size
    part, classes = image[y:y + tile, x:x + tile], mask[y:y + tile, x:x + tile].astype(mask_dtype)
    return (*whole_tile(part, classes, tile, options.output_size), *classes.shape)


# -- preparing -------------------------------------------------------------------------------------------------------


def cache_folder(options: Options, cache_dir: str | Path | None) -> Path:
    return cache_folder_for(cache_dir, f"{PREFIX}{options.name}-{options.output_size}", options.root,
                            options.identity())


def _root_fingerprint(root: Path) -> str:
    """Every file under root: the fingerprint of samples whose files torchgeo does not name."""
    return file_fingerprint(*sorted(path for path in root.rglob("*") if path.is_file()))


def _units(by_split: dict[str, list[Sample]]) -> list[tuple[str, str, int, list[Sample]]]:
    """(key, split, first sample's index in the split, samples) of each unit: ``UNIT_SAMPLES`` samples of a split."""
    return [(f"{split}-{start // UNIT_SAMPLES}", split, start, samples[start:start + UNIT_SAMPLES])
            for split, samples in by_split.items() for start in range(0, len(samples), UNIT_SAMPLES)]


def _first_sample(options: Options, opened: dict[str, Any], first: Sample) -> tuple[str, int]:
    """The images' dtype (the table's, or what the first training sample's values fit) and channel count (the first
    sample's: torchgeo's docs say it, its files decide it)."""
    image, _ = load_sample(options, opened[first.split], first.split, first.index)
    return options.spec.image_dtype or image_dtype(image), int(image.shape[0])


def prepare(name: str, root: str | Path | None = None, tile_size: int | None = None, stride: int | None = None,
            scale: float = 1.0, edge: str = "pad", val_share: float = 0.2, split_seed: int = 0,
            cache_dir: str | Path | None = None, progress: Progress | None = None, verify: bool = False,
            **kwargs: Any) -> TileCache:
    """Prepare (or resume preparing, or just open) the tile cache of torchgeo's dataset ``name`` read from ``root``;
    see the module docstring for the options (``kwargs`` go to torchgeo's class). With ``verify``, every file of a
    complete cache is checked against its SHA-256."""
    options, cls = check_options(name, root, tile_size, stride, scale, edge, val_share, split_seed, kwargs)
    opened, by_split = plan_splits(cls, options)
    names = class_names(options, opened["train"])
    tile_positions = {sample: positions(sample, options) for samples in by_split.values() for sample in samples}
    ids = {split: [f"{s.name}_{y}_{x}" for s in samples for y, x in tile_positions[s]]
           for split, samples in by_split.items()}
    for split, split_ids in ids.items():
        if not split_ids:
            raise UserError(f"{PREFIX}{name}: split {split} has no tile: its samples are smaller than tile_size "
                            f"{options.tile_size} and edge = 'drop'")
    may_pad = any(y + options.tile_size > s.height or x + options.tile_size > s.width
                  for s, places in tile_positions.items() for y, x in places)
    unannotated = options.spec.no_data is not None or may_pad
    mask_dtype = ("int8" if len(names) <= 127 else "int16") if unannotated else "uint8"
    dtype, in_chans = _first_sample(options, opened, by_split["train"][0])
    units = _units(by_split)
    source = {**options.identity(), "resize": "none" if options.output_size == options.tile_size
              else "image area (OpenCV), mask nearest pixel centre"}
    plan = CachePlan(ids, options.output_size, in_chans, source, image_dtype=dtype, mask_dtype=mask_dtype)
    whole = None if all(s.files for samples in by_split.values() for s in samples) else _root_fingerprint(options.root)
    fingerprints = {key: whole or file_fingerprint(*[f for s in samples for f in s.files])
                    for key, _, _, samples in units}

    def write(writer: TileCacheWriter, keys: set[str]) -> TileCache:
        todo = [unit for unit in units if unit[0] in keys]
        total = sum(len(tile_positions[s]) for _, _, _, samples in todo for s in samples)
        done = 0
        for key, split, start, samples in todo:
            index = sum(len(tile_positions[s]) for s in by_split[split][:start])
            statistics, count, missing = Statistics(in_chans, plan.dtype("images")), 0, 0
            for sample in samples:
                for image, mask, rows, columns in _tiles(options, opened, sample, names, plan):
                    writer.write(split, index + count, image, mask)
                    if split == "train":  # normalisation statistics come from the training split alone
                        statistics.add(image[:inside_output(rows, options.tile_size, options.output_size),
                                             :inside_output(columns, options.tile_size, options.output_size)])
                    if plan.dtype("masks").kind == "i":
                        missing += int(np.count_nonzero(mask < 0))
                    count += 1
                    if progress is not None:
                        progress(done + count, total)
            writer.unit_done(key, fingerprints[key], count, {**statistics.payload(), "unannotated": missing})
            done += count
        payloads = {key: writer.units[key]["payload"] for key, _, _, _ in units}
        mean, std = band_statistics([payloads[key] for key, split, _, _ in units if split == "train"],
                                    IMAGE_SCALES[plan.image_dtype])
        extra = {"mean": mean, "std": std, "root": str(options.root.resolve()), "class_names": list(names),
                 "counts": {s: len(v) for s, v in ids.items()},
                 "samples": {s: [[x.split, x.index, x.name] for x in v] for s, v in by_split.items()},
                 "unannotated": sum(p["unannotated"] for p in payloads.values())}
        return writer.finish([key for key, _, _, _ in units], extra)

    return open_or_prepare(cache_folder(options, cache_dir), plan, fingerprints, verify, write)


def _tiles(options: Options, opened: dict[str, Any], sample: Sample, names: tuple[str, ...], plan: CachePlan):
    """The tiles of one sample, read through torchgeo and checked."""
    where = f"sample {sample.index} of torchgeo's {sample.split} split ({sample.files[0] if sample.files else ''})"
    image, raw = load_sample(options, opened[sample.split], sample.split, sample.index)
    if image.shape[1:] != (sample.height, sample.width) or image.shape[0] != plan.in_chans:
        raise UserError(f"{PREFIX}{options.name}: {where} is {list(image.shape)}; its file says "
                        f"{sample.height}x{sample.width} and the first sample has {plan.in_chans} channel(s)")
    pixels = convert_image(options, image, plan.dtype("images"), where)
    classes = mask_classes(options, raw, len(names), where)
    for y, x in positions(sample, options):
        yield cut(pixels, classes, y, x, options, plan.dtype("masks"))


class TorchGeoDataset(CachedTiles):
    """A prepared torchgeo dataset: splits as read-only memory maps (see the module docstring)."""


@DATASETS.register_prefix(PREFIX, known=known_names if torchgeo_installed() else None, listed=listed_names(),
                          what="the name of a torchgeo NonGeoDataset class", test_kwargs={"tile_size": 64})
def torchgeo_dataset(name: str, root: str | None = None, tile_size: int | None = None, stride: int | None = None,
                     scale: float = 1.0, edge: Literal["pad", "drop"] = "pad", val_share: float = 0.2,
                     split_seed: int = 0, cache_dir: str | None = None, **kwargs: Any) -> TorchGeoDataset:
    """torchgeo's dataset ``name`` read from your copy at ``root``; see the module docstring. Prepares its cache on
    first use."""
    cache = prepare(name, root, tile_size, stride, scale, edge, val_share, split_seed, cache_dir, **kwargs)
    return TorchGeoDataset(PREFIX + name, cache)


torchgeo_dataset.prepare = prepare  # `bench prepare` and `bench run` call it first (bound to the name), with a bar
