"""The datasets ``torchgeo-<Name>``: for each covered dataset, on tiny files in the layout its torchgeo class reads
(torchgeo_layouts.py), the cached tiles equal what the torchgeo class returns for the same files, sample by sample;
the splits, no-data classes and options; every refusal in one line; and a grid run end to end on the CPU."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pytest
from grids import dataset_grid

import registry
from bench.cli import main
from registry.datasets import torchgeo_datasets
from registry.datasets.tile_cache import MANIFEST
from registry.errors import UserError

torchgeo_datasets_module = pytest.importorskip("torchgeo.datasets")
import torch  # noqa: E402  (after the skip: torchgeo brings it, and the harness needs it anyway)
from torch.utils.data import random_split  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")  # torchgeo reading TIFFs
COVERED = list(torchgeo_datasets.COVERED)
TILE = 64
# The harness split -> torchgeo split; None: held out of torchgeo's train as its datamodules do (0.2, seed 0).
SPLITS = {"LoveDA": {"train": "train", "val": "val"},
          "DeepGlobeLandCover": {"train": "train", "val": None, "test": "test"},
          "Potsdam2D": {"train": "train", "val": None, "test": "test"},
          "Vaihingen2D": {"train": "train", "val": None, "test": "test"},
          "InriaAerialImageLabeling": {"train": "train", "val": "val"},
          "LandCoverAI": {"train": "train", "val": "val", "test": "test"},
          "GID15": {"train": "train", "val": "val"}}
NO_DATA = {"LoveDA": 0, "DeepGlobeLandCover": 6}  # the raw mask value torchgeo returns for no-data
CLASSES = {"LoveDA": 7, "DeepGlobeLandCover": 6, "Potsdam2D": 6, "Vaihingen2D": 6, "InriaAerialImageLabeling": 2,
           "LandCoverAI": 5, "GID15": 16}


def torchgeo_samples(name: str, root: Path, **kwargs) -> dict[str, list[dict]]:
    """The samples of each harness split, as torchgeo's class returns them, in the order the cache stores them."""
    cls = getattr(torchgeo_datasets_module, name)
    splits = {}
    for split, source in SPLITS[name].items():
        dataset = cls(root=str(root), split=source or "train", **kwargs)
        if source is None or (split == "train" and SPLITS[name]["val"] is None):
            train, val = random_split(dataset, [0.8, 0.2], torch.Generator().manual_seed(0))  # the datamodules'
            indices = sorted((val if split == "val" else train).indices)
        else:
            indices = range(len(dataset))
        splits[split] = [dataset[i] for i in indices]
    return splits


def expected_tiles(name: str, sample: dict, tile: int = TILE, stride: int = TILE,
                   edge: str = "pad") -> list[tuple[np.ndarray, np.ndarray]]:
    """A sample's tiles, cut independently: whole-number images as uint8 HWC, the no-data value -1 and the values
    above it one lower, tiles row by row, padded with 0 and -1 (or, with "drop", only whole tiles)."""
    image = sample["image"].numpy()
    assert np.array_equal(image, np.round(image)) and image.min() >= 0 and image.max() <= 255
    image = image.astype(np.uint8).transpose(1, 2, 0)
    raw = sample["mask"].numpy().astype(np.int64)
    mask = raw.copy()
    if name in NO_DATA:
        mask[raw == NO_DATA[name]] = -1
        mask[raw > NO_DATA[name]] -= 1
    height, width = mask.shape

    def starts(length):
        if edge == "drop":
            return range(0, length - tile + 1, stride)
        return [s for s in range(0, length, stride) if s == 0 or s - stride + tile < length]

    tiles = []
    for y in starts(height):
        for x in starts(width):
            padded_image = np.zeros((tile, tile, image.shape[2]), np.uint8)
            padded_mask = np.full((tile, tile), -1, np.int64)
            part = image[y:y + tile, x:x + tile]
            padded_image[:part.shape[0], :part.shape[1]] = part
            padded_mask[:part.shape[0], :part.shape[1]] = mask[y:y + tile, x:x + tile]
            tiles.append((padded_image, padded_mask))
    return tiles


def check_equal_sample_by_sample(name: str, dataset, samples: dict[str, list[dict]], **cut) -> None:
    assert dataset.splits == tuple(samples)
    for split, split_samples in samples.items():
        images, masks = dataset.split(split)
        offset = 0
        for number, sample in enumerate(split_samples):
            for image, mask in expected_tiles(name, sample, **cut):
                assert np.array_equal(images[offset], image), f"{name} {split} sample {number} tile {offset}: image"
                assert np.array_equal(masks[offset].astype(np.int64), mask), f"{name} {split} sample {number}: mask"
                offset += 1
        assert offset == len(images) == len(masks), f"{name} {split}: {len(images)} tiles, {offset} expected"


def build(name: str, root: Path, tmp_path: Path, **kwargs):
    return registry.create_dataset(f"torchgeo-{name}", root=str(root), tile_size=kwargs.pop("tile_size", TILE),
                                   cache_dir=str(tmp_path / "cache"), **kwargs)


@pytest.mark.parametrize("name", COVERED)
def test_cached_tiles_equal_what_torchgeo_returns(name, request, tmp_path):
    root = request.getfixturevalue(f"torchgeo-{name}_root")
    dataset = build(name, root, tmp_path)
    check_equal_sample_by_sample(name, dataset, torchgeo_samples(name, root))
    cls = getattr(torchgeo_datasets_module, name)
    names = list(getattr(cls, "classes", ["background", "building"]))
    assert dataset.num_classes == CLASSES[name] and list(dataset.class_names) == [
        n for n in names if n not in ("no-data", "Unknown")]
    assert dataset.in_chans == (4 if name == "Potsdam2D" else 3)
    assert dataset.split("train")[0].dtype == np.uint8


def test_edge_drop_and_stride(tmp_path, request):
    root = request.getfixturevalue("torchgeo-Vaihingen2D_root")
    dataset = build("Vaihingen2D", root, tmp_path, tile_size=48, stride=32, edge="drop")
    check_equal_sample_by_sample("Vaihingen2D", dataset, torchgeo_samples("Vaihingen2D", root), tile=48, stride=32,
                                 edge="drop")
    assert dataset.split("train")[1].dtype == np.uint8  # nothing padded, no no-data class: fully annotated


def test_scale_takes_the_centre_pixel_and_the_area_mean(tmp_path, request):
    root = request.getfixturevalue("torchgeo-Potsdam2D_root")
    full, half = build("Potsdam2D", root, tmp_path), build("Potsdam2D", root, tmp_path, scale=0.5)
    for split in full.splits:
        (images, masks), (small_images, small_masks) = full.split(split), half.split(split)
        assert small_images.shape[1:3] == (TILE // 2, TILE // 2)
        assert np.array_equal(small_masks, masks[:, 1::2, 1::2])
        means = images.reshape(len(images), TILE // 2, 2, TILE // 2, 2, 4).astype(float).mean(axis=(2, 4))
        assert np.abs(small_images - means).max() <= 0.5 + 1e-9


def test_keyword_arguments_pass_through_and_make_their_own_cache(tmp_path, request):
    root = request.getfixturevalue("torchgeo-LoveDA_root")
    urban = build("LoveDA", root, tmp_path, scene=["urban"])
    both = build("LoveDA", root, tmp_path)
    check_equal_sample_by_sample("LoveDA", urban, torchgeo_samples("LoveDA", root, scene=["urban"]))
    assert urban.cache.folder != both.cache.folder
    assert len(urban.split("train")[0]) < len(both.split("train")[0])


def test_a_second_build_opens_the_cache_and_a_changed_file_is_prepared_again(tmp_path, request):
    root = tmp_path / "copy"
    shutil.copytree(request.getfixturevalue("torchgeo-LandCoverAI_root"), root)
    first = build("LandCoverAI", root, tmp_path)
    written = {p: p.stat().st_mtime_ns for p in first.cache.folder.iterdir()}
    again = build("LandCoverAI", root, tmp_path)
    assert {p: p.stat().st_mtime_ns for p in again.cache.folder.iterdir()} == written
    tile = root / "output" / "M-33-20-D-c-4-2_0_m.png"
    from PIL import Image
    Image.fromarray(np.full((64, 64, 3), 4, np.uint8)).save(tile)
    changed = build("LandCoverAI", root, tmp_path)
    assert (changed.split("train")[1][0] == 4).all()


@pytest.mark.parametrize(("kwargs", "said"), [
    ({"download": True}, "download is not passed to torchgeo"),
    ({"transforms": "flip"}, "transforms is not passed to torchgeo"),
    ({"split": "val"}, "split is not passed to torchgeo"),
    ({"scenes": ["urban"]}, "torchgeo's LoveDA takes no argument 'scenes' (it takes scene, checksum"),
    ({"scene": ["suburban"]}, "The possible scenes are 'rural' and/or 'urban'"),
    ({"tile_size": 0}, "tile_size must be a positive integer"),
    ({"scale": 0.3}, "scale 0.3 makes 64-pixel tiles 19.2 pixels"),
    ({"edge": "wrap"}, "edge must be one of pad, drop"),
    ({"val_share": 1.5}, "val_share must be a number in (0, 1)"),
])
def test_bad_arguments_are_one_line(kwargs, said, tmp_path, request):
    root = request.getfixturevalue("torchgeo-LoveDA_root")
    with pytest.raises(UserError) as err:
        build("LoveDA", root, tmp_path, **kwargs)
    assert said in str(err.value) and "\n" not in str(err.value), str(err.value)


@pytest.mark.parametrize("name", COVERED)
def test_files_not_at_root_is_torchgeos_message_on_one_line(name, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        build(name, tmp_path / "empty", tmp_path)
    text = str(err.value)
    assert text.startswith(f"torchgeo-{name} (train split): Dataset not found in `root=") and "\n" not in text, text


def test_held_out_val_needs_a_sample(tmp_path, request):
    root = request.getfixturevalue("torchgeo-Potsdam2D_root")
    with pytest.raises(UserError, match="val_share 0.01 of 5 training sample"):
        build("Potsdam2D", root, tmp_path, val_share=0.01)


def test_inria_under_a_numbered_path_is_refused_with_the_reason(tmp_path, request):
    root = tmp_path / "user1" / "inria"
    shutil.copytree(request.getfixturevalue("torchgeo-InriaAerialImageLabeling_root"), root)
    with pytest.raises(UserError, match="train split has no sample .* letters-then-digits"):
        build("InriaAerialImageLabeling", root, tmp_path)


def test_a_damaged_file_is_one_line_naming_it_and_leaves_no_complete_cache(tmp_path, request):
    root = tmp_path / "copy"
    shutil.copytree(request.getfixturevalue("torchgeo-GID15_root"), root)
    damaged = sorted((root / "GID" / "ann_dir" / "val").glob("*.png"))[-1]
    damaged.write_bytes(damaged.read_bytes()[:60])
    with pytest.raises(UserError) as err:
        build("GID15", root, tmp_path)
    assert "cannot read sample 1 of torchgeo's val split" in str(err.value) and "\n" not in str(err.value)
    assert not list((tmp_path / "cache").rglob(MANIFEST))


def test_without_torchgeo_it_says_how_to_install_and_lists_nothing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchgeo", None)  # import torchgeo now raises ImportError
    monkeypatch.setitem(sys.modules, "torchgeo.datasets", None)
    with pytest.raises(UserError, match=r"pip install 'partialseg-bench\[torchgeo\]'"):
        registry.create_dataset("torchgeo-LoveDA", root=str(tmp_path))
    monkeypatch.setattr(torchgeo_datasets.importlib.util, "find_spec", lambda name: None)
    assert torchgeo_datasets.listed_names() == ()


def test_listed_only_the_covered_names_and_imports_no_torchgeo_to_list():
    assert registry.list_datasets("torchgeo-*") == sorted(f"torchgeo-{n}" for n in COVERED)


def test_names_that_are_not_image_and_mask_datasets_are_refused(tmp_path):
    with pytest.raises(registry.UnknownNameError, match="did you mean 'torchgeo-LoveDA'"):
        registry.DATASETS.entry("torchgeo-LoveDAA")
    with pytest.raises(UserError, match="torchgeo's NAIP is not a NonGeoDataset"):
        registry.create_dataset("torchgeo-NAIP", root=str(tmp_path))


class _Samples(torchgeo_datasets_module.NonGeoDataset):
    """A NonGeoDataset asked for by name: float images that are not whole numbers, and a mask (or, with label=True,
    a label instead)."""

    splits = ("train", "test")
    classes = ("sea", "land")
    label = False

    def __init__(self, root: str = "data", split: str = "train", transforms=None) -> None:
        self.root, self.split = root, split
        self.paths = sorted(Path(root).glob(f"{split}-*.npy"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        image = torch.from_numpy(np.load(self.paths[index]))
        mask = (image[0] > 0.5).long()
        return {"image": image, "label" if self.label else "mask": mask}


def test_another_nongeo_dataset_by_name(monkeypatch, tmp_path):
    root = tmp_path / "samples"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.save(root / f"{'train' if i < 5 else 'test'}-{i}.npy", rng.random((2, 40, 40), dtype=np.float32))
    monkeypatch.setattr(torchgeo_datasets_module, "TinySamples", _Samples, raising=False)
    dataset = build("TinySamples", root, tmp_path, tile_size=None)  # the default, larger than the samples: padded
    assert dataset.splits == ("train", "val", "test") and dataset.class_names == ("sea", "land")
    images, masks = dataset.split("train")
    assert images.dtype == np.float32 and images.shape == (4, 512, 512, 2)
    assert np.array_equal(images[0, :40, :40], np.load(root / "train-0.npy").transpose(1, 2, 0))
    assert (masks[:, 40:] == -1).all()
    monkeypatch.setattr(_Samples, "label", True)
    with pytest.raises(UserError, match="samples hold image, label, not an image and a mask"):
        build("TinySamples", root, tmp_path / "other")


# -- through the command line ----------------------------------------------------------------------------------------


def write_grid(path: Path, root: Path, cache: Path) -> Path:
    path.write_text(dataset_grid("torchgeo LoveDA end to end", f"""name = "torchgeo-LoveDA"
root = "{root}"
cache_dir = "{cache}"
tile_size = 64
scene = ["urban", "rural"]"""), encoding="utf-8")
    return path


def test_a_grid_on_loveda_runs_end_to_end(tmp_path, request):
    root = request.getfixturevalue("torchgeo-LoveDA_root")
    out, board = tmp_path / "runs", tmp_path / "leaderboard.md"
    grid = write_grid(tmp_path / "loveda.toml", root, tmp_path / "cache")
    assert main(["run", "--grid", str(grid), "--out", str(out), "--leaderboard", str(board), "--device", "cpu"]) == 0
    with sqlite3.connect(out / "results.sqlite") as db:
        rows = [(json.loads(c), json.loads(m)) for c, m in db.execute("SELECT config, metrics FROM cells "
                                                                      "WHERE status = 'done'")]
    assert len(rows) == 1
    config, metrics = rows[0]
    assert "root" not in config["dataset"]["kwargs"] and config["dataset"]["kwargs"]["scene"] == ["urban", "rural"]
    assert 0 <= metrics["final_miou"] <= 1
    assert metrics["labelled_fraction"] == pytest.approx(0.2, abs=0.01)  # of the annotated pixels: no-data is not
    assert "torchgeo-LoveDA" in board.read_text()


def test_bench_prepare_prepares_and_a_bad_root_is_one_line_exit_2(tmp_path, request, capsys):
    root = request.getfixturevalue("torchgeo-Potsdam2D_root")
    assert main(["prepare", "torchgeo-Potsdam2D", "--root", str(root), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "torchgeo-Potsdam2D ready" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    grid = write_grid(tmp_path / "loveda.toml", tmp_path / "empty", tmp_path / "cache")
    assert main(["run", "--grid", str(grid), "--dry-run", "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Dataset not found" in err, err
