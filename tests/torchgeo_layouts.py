"""Tiny copies of torchgeo's datasets, each in exactly the layout its torchgeo 0.8 class reads with
``download=False`` (the folder names, file globs and the checks its ``_verify`` does), and a session fixture
``torchgeo-<Name>_root`` for each (the dataset contract tests ask for it). Samples are 64 to 128 pixels, of sides that
are not all multiples of 64, so that the 64-pixel test tiles are cut and padded. Masks hold every raw value the class
maps, the no-data value among them. Nothing here imports torchgeo.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning

# torchgeo's colour maps (deepglobelandcover.py; potsdam.py and vaihingen.py share theirs)
DEEPGLOBE_COLOURS = [(0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0), (0, 0, 255), (255, 255, 255),
                     (0, 0, 0)]
ISPRS_COLOURS = [(255, 0, 0), (255, 255, 255), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0)]
POTSDAM_TRAIN = ["top_potsdam_2_10", "top_potsdam_2_11", "top_potsdam_2_12", "top_potsdam_3_10", "top_potsdam_3_11"]
POTSDAM_TEST = ["top_potsdam_5_15", "top_potsdam_6_15"]
VAIHINGEN_TRAIN = [f"top_mosaic_09cm_area{n}.tif" for n in (1, 11, 13, 15, 17)]
VAIHINGEN_TEST = [f"top_mosaic_09cm_area{n}.tif" for n in (6, 24)]
SIZES = [(64, 64), (96, 80), (128, 100), (70, 128), (64, 96)]
INRIA_NUMBER = re.compile(r"([A-Za-z]+)(\d+)")  # how inria.py numbers an image, searched in its whole path


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _image(seed: int, size: tuple[int, int], bands: int = 3) -> np.ndarray:
    return _rng(seed).integers(0, 256, (*size, bands), dtype=np.uint8)


def _classes(seed: int, size: tuple[int, int], values: int) -> np.ndarray:
    """Blocks of 8 x 8 pixels of random values 0..values-1, every value present."""
    rng = _rng(1000 + seed)
    blocks = rng.integers(0, values, (size[0] // 8 + 1, size[1] // 8 + 1))
    blocks.flat[:values] = np.arange(values)
    return np.kron(blocks, np.ones((8, 8), np.int64))[:size[0], :size[1]].astype(np.uint8)


def _colours(classes: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    return np.array(colours, np.uint8)[classes]


def _write_geotiff(path: Path, array: np.ndarray) -> None:
    """An ``[H, W, C]`` uint8 array as a plain (ungeoreferenced) TIFF, through rasterio as torchgeo reads it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", height=array.shape[0], width=array.shape[1],
                           count=array.shape[2], dtype="uint8") as dst:
            dst.write(array.transpose(2, 0, 1))


def _write_picture(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def write_loveda(root: Path) -> Path:
    """loveda.py: ``{Train,Val,Test}/{Urban,Rural}/images_png/*.png`` and (not for Test) ``masks_png/`` of the same
    names, one band of raw values 0 (no-data) .. 7."""
    number = 0
    for split in ("Train", "Val", "Test"):
        for scene in ("Urban", "Rural"):
            for _ in range(2 if split == "Train" else 1):
                size = SIZES[number % len(SIZES)]
                _write_picture(root / split / scene / "images_png" / f"{number}.png", _image(number, size))
                if split != "Test":
                    _write_picture(root / split / scene / "masks_png" / f"{number}.png", _classes(number, size, 8))
                number += 1
    return root


def write_deepglobe(root: Path) -> Path:
    """deepglobelandcover.py: ``data/{training_data,test_data}/images/{id}_sat.jpg`` and ``masks/{id}_mask.png``, the
    masks in its colour map (black: Unknown)."""
    for split, count, first in (("training_data", 5, 0), ("test_data", 2, 100)):
        for i in range(count):
            size = SIZES[i % len(SIZES)]
            folder = root / "data" / split
            _write_picture(folder / "images" / f"{first + i}_sat.jpg", _image(first + i, size))
            _write_picture(folder / "masks" / f"{first + i}_mask.png",
                           _colours(_classes(first + i, size, 7), DEEPGLOBE_COLOURS))
    return root


def write_potsdam(root: Path) -> Path:
    """potsdam.py: ``4_Ortho_RGBIR/{name}_RGBIR.tif`` (four bands, read by rasterio) and ``{name}_label.tif`` (RGB,
    read by PIL) for names in its train and test lists."""
    for i, name in enumerate(POTSDAM_TRAIN + POTSDAM_TEST):
        size = SIZES[i % len(SIZES)]
        _write_geotiff(root / "4_Ortho_RGBIR" / f"{name}_RGBIR.tif", _image(i, size, bands=4))
        _write_picture(root / f"{name}_label.tif", _colours(_classes(i, size, 6), ISPRS_COLOURS))
    return root


def write_vaihingen(root: Path) -> Path:
    """vaihingen.py: ``top/{name}`` (three-band TIFFs) and ``{name}`` (RGB labels) beside ``top/``."""
    for i, name in enumerate(VAIHINGEN_TRAIN + VAIHINGEN_TEST):
        size = SIZES[(i + 1) % len(SIZES)]
        _write_picture(root / "top" / name, _image(i, size))
        _write_picture(root / name, _colours(_classes(i, size, 6), ISPRS_COLOURS))
    return root


def write_inria(root: Path) -> Path:
    """inria.py: ``AerialImageDataset/{train,test}/images/{city}{n}.tif`` and ``train/gt/`` of the same names (0 and
    255); images numbered 1..5 are its val split, the others train."""
    for i, name in enumerate(["austin1", "austin2", "austin6", "austin7", "chicago1", "chicago8"]):
        size = SIZES[i % len(SIZES)]
        folder = root / "AerialImageDataset" / "train"
        _write_geotiff(folder / "images" / f"{name}.tif", _image(i, size))
        _write_geotiff(folder / "gt" / f"{name}.tif", (_classes(i, size, 2) * 255)[..., None])
    _write_geotiff(root / "AerialImageDataset" / "test" / "images" / "bellingham1.tif", _image(50, (64, 64)))
    return root


def write_landcoverai(root: Path) -> Path:
    """landcoverai.py (LandCoverAI): ``train.txt``, ``val.txt``, ``test.txt`` listing ids, ``output/{id}.jpg`` and
    ``output/{id}_m.png`` (split.py's tiles, three equal channels; 64 pixels here for its 512)."""
    ids = {"train": ["M-33-20-D-c-4-2_0", "M-33-20-D-c-4-2_1", "N-34-61-B-a-1-1_3"],
           "val": ["M-33-48-A-c-4-4_2", "M-33-48-A-c-4-4_5"], "test": ["N-33-60-D-c-4-2_7", "N-33-60-D-c-4-2_8"]}
    seed = 0
    for split, split_ids in ids.items():
        (root / f"{split}.txt").write_text("".join(f"{tile}\n" for tile in split_ids), encoding="utf-8")
        for tile in split_ids:
            _write_picture(root / "output" / f"{tile}.jpg", _image(seed, (64, 64)))
            _write_picture(root / "output" / f"{tile}_m.png", np.repeat(_classes(seed, (64, 64), 5)[..., None], 3, 2))
            seed += 1
    return root


def write_gid15(root: Path) -> Path:
    """gid15.py: ``GID/img_dir/{train,val,test}/*.tif`` and ``GID/ann_dir/{train,val}/{stem}_15label.png``, one band
    of values 0..15."""
    seed = 0
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for i in range(count):
            size = SIZES[seed % len(SIZES)]
            stem = f"GF2_PMS1__L1A000{seed}-MSS1"
            _write_picture(root / "GID" / "img_dir" / split / f"{stem}.tif", _image(seed, size))
            if split != "test":
                _write_picture(root / "GID" / "ann_dir" / split / f"{stem}_15label.png", _classes(seed, size, 16))
            seed += 1
    return root


WRITERS = {"LoveDA": write_loveda, "DeepGlobeLandCover": write_deepglobe, "Potsdam2D": write_potsdam,
           "Vaihingen2D": write_vaihingen, "InriaAerialImageLabeling": write_inria, "LandCoverAI": write_landcoverai,
           "GID15": write_gid15}


def layout_folder(tmp_path_factory, name: str) -> Path:
    """A fresh folder for one layout, named without letters followed by digits (inria.py numbers images by the first
    such run anywhere in their path)."""
    folder = tmp_path_factory.getbasetemp() / f"torchgeo-layout-{name.lower()}"
    if name == "InriaAerialImageLabeling" and INRIA_NUMBER.search(str(folder)):
        pytest.skip(f"the temporary folder {folder} has letters followed by digits, which inria.py takes for a number")
    folder.mkdir()
    return folder


def _fixture(name: str):
    @pytest.fixture(name=f"torchgeo-{name}_root", scope="session")
    def root(tmp_path_factory) -> Path:
        return WRITERS[name](layout_folder(tmp_path_factory, name))

    root.__name__ = f"torchgeo_{name.lower()}_root"
    return root


torchgeo_loveda_root = _fixture("LoveDA")
torchgeo_deepglobelandcover_root = _fixture("DeepGlobeLandCover")
torchgeo_potsdam2d_root = _fixture("Potsdam2D")
torchgeo_vaihingen2d_root = _fixture("Vaihingen2D")
torchgeo_inriaaerialimagelabeling_root = _fixture("InriaAerialImageLabeling")
torchgeo_landcoverai_root = _fixture("LandCoverAI")
torchgeo_gid15_root = _fixture("GID15")
