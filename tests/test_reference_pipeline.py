"""The reference experiment's data pipeline, against an independent rerun of its steps with the libraries it used.

The reference reads split.py's tiles with PIL, hides labels on the 512-pixel tile (NumPy ``RandomState(42 + index)``,
the first ``int(fraction * 512 * 512)`` of a permutation keep theirs), then applies albumentations' ``Resize`` and
``Normalize(ImageNet)``. Here those steps are written out with PIL, NumPy and albumentations, and compared with what
``landcoverai`` (``resize = "bilinear"``, ``normalization = "imagenet"``) and the ``reference_pixels`` masker give.
"""

from __future__ import annotations

import hashlib
import json

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from user_faults import one_line, run_main

import registry
from bench.data import AugmentedTiles, Normalizer, partial_masks
from bench.device_data import draw_transforms
from bench.grid import load_grid
from registry.datasets.landcoverai import IMAGENET_MEAN, IMAGENET_STD, read_split_ids, tile_folder

SIZE = 96  # 512 -> 96: a map that is not a whole ratio, as 512 -> 384 is not


def reference_tile(root, tile_id: str, index: int, fraction: float, size: int, seed: int = 42):
    """One training tile as the reference's dataset class returns it, with its transforms minus the augmentation."""
    folder = tile_folder(root)
    image = np.array(Image.open(folder / f"{tile_id}.jpg").convert("RGB"))
    mask = np.array(Image.open(folder / f"{tile_id}_m.png"))[:, :, 0].astype(np.int32)
    flat = mask.flatten()
    flat[np.random.RandomState(seed + index).permutation(flat.size)[int(flat.size * fraction):]] = -1
    transform = A.Compose([A.Resize(size, size), A.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)])
    out = transform(image=image, mask=flat.reshape(mask.shape))
    return out["image"], out["mask"]


@pytest.fixture(scope="module")
def reference_dataset(landcoverai_tiles):
    return registry.create_dataset("landcoverai", root=str(landcoverai_tiles), size=SIZE, resize="bilinear",
                                   normalization="imagenet")


@pytest.mark.parametrize("fraction", [0.10, 0.15])
def test_partial_labels_equal_the_references_drawn_before_resizing(landcoverai_tiles, reference_dataset, fraction):
    images, masks = reference_dataset.split("train")
    partial = partial_masks(masks, registry.create_masker("reference_pixels", source_size=512), fraction, seed=42)
    ids = read_split_ids(landcoverai_tiles)["train"]
    normalize = Normalizer(reference_dataset.mean, reference_dataset.std, torch.device("cpu"))
    for index, tile_id in enumerate(ids):
        expected_image, expected_mask = reference_tile(landcoverai_tiles, tile_id, index, fraction, SIZE)
        np.testing.assert_array_equal(partial[index], expected_mask)  # -1 exactly where the reference has it
        ours, _ = normalize(*(torch.from_numpy(array[index:index + 1].copy()) for array in (images, masks)))
        np.testing.assert_allclose(ours[0].permute(1, 2, 0).numpy(), expected_image, atol=2e-5)
    kept = (partial >= 0).mean()
    assert abs(kept - fraction) < 0.01  # int(fraction * 512 * 512) of the source pixels, seen through the resize


def test_the_projects_resize_differs_from_the_references_where_it_should(landcoverai_tiles, reference_dataset):
    """Area-filtered images and centre-sampled masks (the default) are another preprocessing, with its own cache."""
    area = registry.create_dataset("landcoverai", root=str(landcoverai_tiles), size=SIZE)
    (area_images, area_masks), (ref_images, ref_masks) = area.split("train"), reference_dataset.split("train")
    assert area.cache.folder != reference_dataset.cache.folder
    assert not np.array_equal(area_images, ref_images) and not np.array_equal(area_masks, ref_masks)
    assert area.mean != IMAGENET_MEAN and reference_dataset.mean == IMAGENET_MEAN
    assert reference_dataset.std == IMAGENET_STD


def test_at_512_no_resize_happens_and_one_cache_serves_both(landcoverai_tiles):
    area = registry.create_dataset("landcoverai", root=str(landcoverai_tiles), size=512)
    bilinear = registry.create_dataset("landcoverai", root=str(landcoverai_tiles), size=512, resize="bilinear")
    assert area.cache.folder == bilinear.cache.folder


def test_the_references_data_folder_is_read_as_split_pys_tiles(landcoverai_tiles, reference_dataset, tmp_path):
    """The reference's code writes split.py's tiles into patches/, beside the split files."""
    for split in ("train", "val", "test"):
        (tmp_path / f"{split}.txt").write_bytes((landcoverai_tiles / f"{split}.txt").read_bytes())
    (tmp_path / "patches").symlink_to(landcoverai_tiles / "output")
    copy = registry.create_dataset("landcoverai", root=str(tmp_path), size=SIZE, resize="bilinear")
    for ours, theirs in zip(copy.split("train"), reference_dataset.split("train")):
        np.testing.assert_array_equal(ours, theirs)


def test_bench_prepare_makes_the_bilinear_cache_that_a_run_then_opens(landcoverai_tiles, tmp_path, capsys):
    cache_dir = tmp_path / "cache"
    code, out, err = run_main(capsys, "prepare", "landcoverai", "--root", str(landcoverai_tiles), "--size", "64",
                              "--resize", "bilinear", "--cache-dir", str(cache_dir))
    assert code == 0, err
    [folder] = [path for path in cache_dir.iterdir() if path.is_dir()]
    assert "bilinear" in folder.name and str(folder) in out.replace("\n", "")
    dataset = registry.create_dataset("landcoverai", root=str(landcoverai_tiles), size=64, resize="bilinear",
                                      cache_dir=str(cache_dir))
    assert dataset.cache.folder == folder
    code, _, err = run_main(capsys, "prepare", "landcoverai", "--root", str(landcoverai_tiles), "--resize", "cubic",
                            "--cache-dir", str(cache_dir))
    one_line(code, err, 2, "resize must be one of area, bilinear, not 'cubic'")


def test_reference_pixels_at_the_tiles_own_size_is_the_references_draw():
    """0.1037 of 1600 pixels is 165.9: the reference keeps int() of it, 165, where round() would keep 166."""
    full = torch.randint(0, 5, (40, 40), generator=torch.Generator().manual_seed(0))
    masker = registry.create_masker("reference_pixels")
    partial = masker(full, 0.1037, torch.Generator(), seed=42, index=7)
    assert int((partial >= 0).sum()) == 165
    expected = full.numpy().astype(np.int32).flatten()
    expected[np.random.RandomState(49).permutation(1600)[165:]] = -1
    np.testing.assert_array_equal(partial.numpy(), expected.reshape(40, 40))


def test_reference_pixels_refuses_a_fraction_whose_count_truncates_to_nothing():
    masker = registry.create_masker("reference_pixels", source_size=16)
    masker.check(8, 8, 1 / 256)
    with pytest.raises(registry.UserError, match="keeps no pixel"):
        masker.check(8, 8, 0.99 / 256)


@pytest.mark.parametrize("value", [0, -3, 2.5, True])
def test_reference_pixels_refuses_a_bad_source_size(value):
    with pytest.raises(registry.UserError, match="source_size must be a positive integer"):
        registry.create_masker("reference_pixels", source_size=value)


def test_rot90_half_leaves_the_tile_as_it_is_five_times_in_eight_on_both_paths():
    count, side = 4000, 8
    forward = draw_transforms(["rot90_half"], count, side, torch.Generator().manual_seed(0))
    identity = torch.eye(3, dtype=torch.float64)
    device_share = float(torch.isclose(forward, identity).flatten(1).all(1).double().mean())
    tile = np.arange(side * side, dtype=np.uint8).reshape(side, side, 1).repeat(3, 2)
    tiles = AugmentedTiles(np.repeat(tile[None], count, 0), np.zeros((count, side, side), np.int8), ["rot90_half"], 0)
    loader_share = np.mean([np.array_equal(tiles[i][0].numpy(), tile) for i in range(count)])
    for share in (device_share, loader_share):
        assert abs(share - 5 / 8) < 0.03


GRID = """
[dataset]
name = "{dataset}"
{dataset_args}
[axes]
archs = [{{ name = "unet", base_channels = 4, depth = 3 }}]
losses = ["partial_ce"]
maskers = ["random_pixels"]
[recipe]
epochs = 1
{recipe}
"""


def write_grid(tmp_path, dataset="synthetic", dataset_args="tile_size = 32", recipe=""):
    path = tmp_path / "grid.toml"
    path.write_text(GRID.format(dataset=dataset, dataset_args=dataset_args, recipe=recipe))
    return path


@pytest.mark.parametrize("option", ['resize = "bilinear"', 'normalization = "imagenet"'])
def test_synthetic_refuses_the_reference_pipelines_options_in_one_line(option, tmp_path, capsys):
    """Synthetic tiles are generated at their size (nothing is resized) with their own statistics."""
    path = write_grid(tmp_path, dataset_args=f"tile_size = 32\n{option}")
    code, _, err = run_main(capsys, "run", "--grid", str(path), "--dry-run", "--out", str(tmp_path / "runs"))
    one_line(code, err, 2, f"{path} line 5", "dataset 'synthetic'", option.split()[0], "it takes tile_size")


@pytest.mark.parametrize("option, message", [
    ('resize = "cubic"', "resize must be one of area, bilinear, not 'cubic'"),
    ('normalization = "coco"', "normalization must be one of train, imagenet, not 'coco'"),
])
def test_landcoverai_refuses_unknown_pipeline_options_in_one_line(option, message, landcoverai_tiles, tmp_path, capsys):
    path = write_grid(tmp_path, "landcoverai", f"size = 64\n{option}")
    code, _, err = run_main(capsys, "run", "--grid", str(path), "--data-root", str(landcoverai_tiles),
                            "--out", str(tmp_path / "runs"))
    one_line(code, err, 2, message)


def test_a_cells_identity_records_the_pipeline(landcoverai_tiles, tmp_path):
    ids = set()
    for args in ("size = 64", 'size = 64\nresize = "bilinear"', 'size = 64\nnormalization = "imagenet"'):
        grid = load_grid(str(write_grid(tmp_path, "landcoverai", args)), data_root=landcoverai_tiles)
        [cell] = grid.cells
        ids.add(cell.cell_id)
        assert "root" not in json.dumps(cell.config["dataset"])
    assert len(ids) == 3


@pytest.mark.parametrize("amp, accepted", [(True, True), (False, True), ('"fp16"', True), ('"bf16"', True),
                                           ('"fp32"', False), ("1", False), ('"true"', False)])
def test_amp_takes_true_false_fp16_or_bf16(amp, accepted, tmp_path, capsys):
    amp = str(amp).lower() if isinstance(amp, bool) else amp
    path = write_grid(tmp_path, recipe=f"amp = {amp}")
    code, _, err = run_main(capsys, "run", "--grid", str(path), "--dry-run", "--out", str(tmp_path / "runs"))
    if accepted:
        assert code == 0, err
    else:
        one_line(code, err, 2, f"{path} line 11", 'must be true, false, "fp16" or "bf16"')


def test_a_reference_style_checkpoint_is_scored_on_the_seed_grids_pipeline(landcoverai_tiles, tmp_path, capsys):
    """The reference's checkpoint layout (weights under model_state_dict, numpy float64 metrics beside them), of its
    UNet, scored with the seed grid's preprocessing: its dataset-level and per-batch mIoU are stored apart from the
    trained cells, with the file's SHA-256."""
    torch.manual_seed(0)
    model = registry.create_arch("reference-unet", num_classes=5, base_channels=4)
    weights = tmp_path / "best_model.pth"
    torch.save({"epoch": 11, "model_state_dict": model.state_dict(), "optimizer_state_dict": {},
                "metrics": {"mean_iou": np.float64(0.4887), "accuracy": np.float64(0.864)}}, weights)
    out = tmp_path / "runs"
    code, _, err = run_main(capsys, "evaluate", "--arch", "reference-unet:base_channels=4", "--weights", str(weights),
                            "--grid", "seed", "--data-root", str(landcoverai_tiles), "--set", "dataset.size=64",
                            "--out", str(out))
    assert code == 0, err
    code, exported, err = run_main(capsys, "export", "--out", str(out), "--format", "json")
    [row] = json.loads(exported)
    assert row["config"]["kind"] == "evaluation"
    assert row["config"]["dataset"]["kwargs"] == {"size": 64, "resize": "bilinear", "normalization": "imagenet"}
    assert row["metrics"]["eval_batch_size"] == 32 and row["metrics"]["split"] == "val"
    assert row["metrics"]["tiles"] == len(read_split_ids(landcoverai_tiles)["val"])
    assert 0 <= row["metrics"]["miou"] <= 1 and 0 <= row["metrics"]["per_batch_miou"] <= 1
    assert row["metrics"]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert "Evaluated weights" in (out / "leaderboard.md").read_text()
