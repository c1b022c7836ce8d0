"""The device-resident data path: its augmentation against NumPy and albumentations, its batches against the
DataLoader path's, and training through it."""

from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from user_faults import TINY

import bench.device_data
from bench.batches import DeviceBatches, LoaderBatches, TrainBatches
from bench.data import AugmentedTiles, Normalizer
from bench.device_data import (
    draw_transforms,
    hflip_matrix,
    rot90_matrix,
    shift_scale_rotate_matrix,
    vflip_matrix,
    warp,
)
from bench.grid import parse_grid
from bench.train import train_cell

CPU = torch.device("cpu")
SIDE = 32


def sample(count: int = 4, side: int = SIDE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (count, side, side, 3), dtype=np.uint8)
    masks = rng.integers(-1, 5, (count, side, side)).astype(np.int8)
    return images, masks


def apply(images: np.ndarray, masks: np.ndarray, forward: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    out_images, out_masks = warp(x, torch.from_numpy(masks).long(), forward)
    return out_images.permute(0, 2, 3, 1).numpy(), out_masks.numpy()


@pytest.mark.parametrize("name, matrix, reference", [
    ("hflip", lambda n: hflip_matrix(n, SIDE), lambda a: np.flip(a, axis=2)),
    ("vflip", lambda n: vflip_matrix(n, SIDE), lambda a: np.flip(a, axis=1)),
    ("rot90", lambda n: rot90_matrix(torch.full((n,), 1), SIDE), lambda a: np.rot90(a, 1, axes=(1, 2))),
    ("rot180", lambda n: rot90_matrix(torch.full((n,), 2), SIDE), lambda a: np.rot90(a, 2, axes=(1, 2))),
    ("rot270", lambda n: rot90_matrix(torch.full((n,), 3), SIDE), lambda a: np.rot90(a, 3, axes=(1, 2))),
])
def test_flips_and_quarter_turns_move_every_pixel_exactly(name, matrix, reference):
    images, masks = sample()
    out_images, out_masks = apply(images, masks, matrix(len(images)))
    assert np.array_equal(out_masks, reference(masks))  # labels, -1 included, move exactly with their pixels
    assert np.abs(out_images - reference(images)).max() < 1e-3


@pytest.mark.parametrize("angle, scale, shift_x, shift_y",
                         [(30.0, 1.05, 2, -3), (-44.0, 0.9, 0, 1), (12.5, 1.1, -2, 2)])
def test_shift_scale_rotate_matches_albumentations(angle, scale, shift_x, shift_y):
    images, masks = sample(count=1, side=48)
    forward = shift_scale_rotate_matrix(torch.tensor([angle]), torch.tensor([scale]), torch.tensor([float(shift_x)]),
                                        torch.tensor([float(shift_y)]), 48)
    out_images, out_masks = apply(images, masks, forward)
    same = A.Affine(translate_px={"x": (shift_x, shift_x), "y": (shift_y, shift_y)}, scale=(scale, scale),
                    rotate=(angle, angle), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                    border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=-1, p=1.0)(image=images[0], mask=masks[0])
    # Nearest sampling can differ only where a source coordinate falls within rounding of a pixel border.
    assert (out_masks[0] == same["mask"]).mean() > 0.995
    assert np.abs(out_images[0] - same["image"]).mean() < 1.0  # OpenCV rounds to uint8 and uses fixed-point weights
    assert ((out_masks[0] == -1) == (same["mask"] == -1)).mean() > 0.995


def test_exposed_pixels_are_unlabelled_and_unlabelled_pixels_stay_unlabelled():
    images, _ = sample(count=64)
    labelled = np.full((64, SIDE, SIDE), 2, np.int8)
    forward = draw_transforms(["hflip", "vflip", "rot90", "shift_scale_rotate"], 64, SIDE,
                              torch.Generator().manual_seed(1))
    _, out = apply(images, labelled, forward)
    assert set(np.unique(out)) <= {-1, 2}  # no class invented, no 0 or 255 from the border
    # Where each output pixel reads, in float64: outside the tile must be -1, inside must keep its label.
    ys, xs = np.mgrid[0:SIDE, 0:SIDE]
    pixels = np.stack([xs.ravel(), ys.ravel(), np.ones(xs.size)])
    source = np.linalg.inv(forward.numpy()) @ pixels  # [64, 3, SIDE * SIDE]
    low, high = -0.5, SIDE - 0.5
    margin = np.minimum(np.abs(source[:, :2] - low), np.abs(source[:, :2] - high)).min(1)
    outside = ((source[:, :2] < low) | (source[:, :2] > high)).any(1)
    clear = margin > 1e-3  # leave out pixels that read within rounding of the tile's edge
    flat = out.reshape(64, -1)
    assert outside[clear].any() and (~outside[clear]).any()
    assert (flat[outside & clear] == -1).all() and (flat[~outside & clear] == 2).all()
    _, still_unlabelled = apply(images, np.full((64, SIDE, SIDE), -1, np.int8), forward)
    assert (still_unlabelled == -1).all()


def test_transforms_are_drawn_with_the_loader_paths_probabilities():
    count = 4000
    generator = torch.Generator().manual_seed(0)
    hflips = (draw_transforms(["hflip"], count, SIDE, generator)[:, 0, 0] < 0).double().mean()
    turns = draw_transforms(["rot90"], count, SIDE, generator)
    quarter = [(torch.allclose(m, rot90_matrix(torch.tensor([k]), SIDE)[0])) for m in turns[:400] for k in range(4)]
    ssr = draw_transforms(["shift_scale_rotate"], count, SIDE, generator)
    applied = ~torch.isclose(ssr, torch.eye(3, dtype=torch.float64)).all(-1).all(-1)
    assert abs(hflips - 0.5) < 0.04 and abs(applied.double().mean() - 0.5) < 0.04
    assert sum(quarter) == 400  # every draw is one of the four quarter turns
    scales = torch.linalg.det(ssr[applied][:, :2, :2]).sqrt()
    assert scales.min() >= 0.9 - 1e-9 and scales.max() <= 1.1 + 1e-9


def batches_of(batches, epoch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images.clone(), target.clone()) for images, target in batches.epoch(epoch)]


@pytest.mark.parametrize("resident", [True, False])
def test_without_augmentation_both_paths_give_identical_batches(resident, monkeypatch):
    if not resident:  # the pinned-host-memory store, as when a split does not fit in GPU memory
        monkeypatch.setattr(bench.device_data, "fits_on_device", lambda nbytes, device: False)
    images, masks = sample(count=10)
    normalize = Normalizer((0.4, 0.5, 0.3), (0.2, 0.2, 0.1), CPU)
    device = DeviceBatches(images, masks, [], seed=3, batch_size=4, normalize=normalize)
    assert device.store.resident is resident
    loader = LoaderBatches(TrainBatches(AugmentedTiles(images, masks, [], seed=3), 4, 0, False), normalize)
    assert len(device) == len(loader) == 2
    for epoch in range(2):
        for (a_images, a_target), (b_images, b_target) in zip(batches_of(device, epoch), batches_of(loader, epoch),
                                                              strict=True):
            assert torch.equal(a_target, b_target) and torch.allclose(a_images, b_images)


def test_memory_this_process_holds_unused_counts_as_free(monkeypatch):
    """The driver's free memory leaves out what torch's allocator keeps for reuse (an earlier cell's tensors): that
    must not send a later cell of the same size to the host path."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * gib)
    cuda = torch.device("cuda", 0)
    assert bench.device_data.fits_on_device(14 * gib, cuda)  # half of 2 + (30 - 4) GiB
    assert not bench.device_data.fits_on_device(14 * gib + 1, cuda)
    assert bench.device_data.fits_on_device(10**15, CPU)


def test_device_batches_are_a_function_of_seed_and_epoch():
    images, masks = sample(count=8)
    normalize = Normalizer((0.5,) * 3, (0.25,) * 3, CPU)
    augment = ["hflip", "vflip", "rot90", "shift_scale_rotate"]
    first = batches_of(DeviceBatches(images, masks, augment, 5, 4, normalize), 1)
    again = batches_of(DeviceBatches(images, masks, augment, 5, 4, normalize), 1)
    other = batches_of(DeviceBatches(images, masks, augment, 5, 4, normalize), 2)
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(first, other, strict=True))


GRID = (TINY.replace("train_size = 8", "train_size = 12").replace("epochs = 1", "epochs = 2")
        + "lr = 0.01\naugment = []\n")


def train(tmp_path: Path, data_path: str, augment: str = "[]") -> tuple[list[dict], dict]:
    from bench.cell_job import GridData

    text = GRID.replace("augment = []", f"augment = {augment}\ndata_path = \"{data_path}\"")
    grid = parse_grid(text, tmp_path / f"{data_path}.toml")
    cell = grid.cells[0]
    return train_cell(cell, GridData(grid).for_cell(cell), CPU, tmp_path / data_path)


def test_both_data_paths_give_the_same_metrics_without_augmentation(tmp_path):
    device_history, device_metrics = train(tmp_path, "device")
    loader_history, loader_metrics = train(tmp_path, "loader")
    assert device_metrics["data_path"] == "device (resident)" and loader_metrics["data_path"] == "loader (0 workers)"
    for a, b in zip(device_history, loader_history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["confusion_matrix"] == b["confusion_matrix"]
    assert device_metrics["test_confusion_matrix"] == loader_metrics["test_confusion_matrix"]


def test_training_through_the_device_path_with_every_augmentation(tmp_path):
    history, metrics = train(tmp_path, "device", '["hflip", "vflip", "rot90", "shift_scale_rotate"]')
    assert len(history) == 2 and all(np.isfinite(h["train_loss"]) for h in history)
    assert metrics["first_step_seconds"] > 0 and metrics["compiled"] is False
