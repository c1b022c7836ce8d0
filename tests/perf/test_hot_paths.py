"""Timing regressions of the CPU hot paths, checked against ``baseline.json`` (see conftest.py and perfcheck.py).

Each test builds its inputs (not timed) and calls ``perf(fn, rounds=N)`` once; ``fn`` takes no arguments and is one
round. The maskers and losses are parametrized over their registries, so a newly registered one is timed at once
(reported as new, not checked, until the baseline is refreshed).

To add a benchmark:

    def test_something(perf):
        inputs = ...                                      # fixed, seeded inputs: a realistic batch
        perf(lambda: something(inputs), rounds=30)

then record it with ``python -m pytest tests/perf --refresh-perf-baseline`` and commit ``baseline.json``. Keep a
round between about 0.2 and 50 ms, make it do the same work every time (reseed generators inside ``fn``), and pick
``rounds`` so that the rounds take about half a second: the whole suite must stay well under a minute on 2 cores.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from raster_layout import SceneSpec, read_windows, write_scene

import registry
from bench.device_data import draw_transforms, warp
from bench.metrics import confusion_matrix
from registry.datasets import rasters
from registry.datasets.synthetic import generate_tile

NUM_CLASSES = 5
TILE = 64
FRACTION = 0.1


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def full_masks(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, NUM_CLASSES, (count, TILE, TILE), generator=seeded(seed))


def partial_targets(count: int, seed: int = 1) -> torch.Tensor:
    g = seeded(seed)
    target = torch.randint(0, NUM_CLASSES, (count, TILE, TILE), generator=g)
    target[torch.rand(target.shape, generator=g) >= FRACTION] = -1
    return target


@pytest.mark.parametrize(("arch", "kwargs", "rounds"), [
    ("unet", {"base_channels": 8}, 20),           # ~17 ms a round on one core of the CI machines
    ("unetplusplus", {"base_channels": 8}, 10),   # ~55 ms
], ids=["unet", "unetplusplus"])
def test_arch_forward_backward(perf, arch, kwargs, rounds):
    """One training step's forward and backward pass (no optimizer) of a small model, batch 4 of 64 x 64."""
    torch.manual_seed(0)
    model = registry.create_arch(arch, NUM_CLASSES, **kwargs).train()
    images = torch.randn(4, 3, TILE, TILE, generator=seeded())
    target = full_masks(4)

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(images)
        torch.nn.functional.cross_entropy(logits, target).backward()

    perf(step, rounds=rounds)


@pytest.mark.parametrize("name", registry.list_maskers())
def test_masker(perf, name):
    """A batch of 64 full masks of 64 x 64 made partial at 10 %, as the harness does per tile."""
    masker = registry.create_masker(name, **registry.MASKERS.entry(name).test_kwargs)
    masks = list(full_masks(64))

    # A masker that reproduces another program's draws takes the seed and tile index (bench.data.draw_partial).
    tile = {"seed": 0, "index": 0} if getattr(masker, "takes_tile_index", False) else {}

    def mask_batch():
        generator = seeded()  # the same pixels, hence the same work, in every round
        return [masker(mask, FRACTION, generator, **tile) for mask in masks]

    perf(mask_batch, rounds=40)


@pytest.mark.parametrize("name", registry.list_losses())
def test_loss_forward_backward(perf, name):
    """Loss and its gradient on logits of a batch of 16 of 64 x 64 with 10 % of the pixels labelled."""
    loss_fn = registry.create_loss(name, **registry.LOSSES.entry(name).test_kwargs)
    logits = torch.randn(16, NUM_CLASSES, TILE, TILE, generator=seeded()).requires_grad_()
    target = partial_targets(16)

    def step():
        logits.grad = None
        loss_fn(logits, target).backward()

    perf(step, rounds=40)


def test_confusion_matrix(perf):
    """One evaluation batch (32 of 64 x 64) counted into the confusion matrix, 10 % of its pixels ignored."""
    target = full_masks(32, seed=2)
    target[torch.rand(target.shape, generator=seeded(3)) < 0.1] = -1
    pred = full_masks(32, seed=4)
    perf(lambda: confusion_matrix(pred, target, NUM_CLASSES), rounds=40)


def test_synthetic_tiles(perf):
    """Two 128-pixel synthetic tiles (the default grid's size), always the same two: tiles differ in work."""
    perf(lambda: [generate_tile(0, index, 128) for index in (0, 1)], rounds=15)


def test_device_augmentation(perf):
    """A batch of 16 tiles of 64 x 64 through the device path's augmentation (drawing the flips, quarter turns and
    shift-scale-rotate, then one grid_sample for images and one for labels), on the CPU."""
    images = torch.randint(0, 256, (16, 3, TILE, TILE), generator=seeded()).float()
    masks = partial_targets(16)
    augment = ["hflip", "vflip", "rot90", "shift_scale_rotate"]
    perf(lambda: warp(images, masks, draw_transforms(augment, 16, TILE, seeded())), rounds=30)


@pytest.fixture(scope="module")
def raster_scenes(tmp_path_factory):
    """A 1536 x 1536 four-band uint16 LZW scene for training and a 512 x 512 one for validation: a small copy of
    what scripts/measure_rasters_prepare.py measures at full size."""
    root = tmp_path_factory.mktemp("perf-rasters")
    scenes = [write_scene(root, SceneSpec("scene-0", 1536, 1536, 4, "uint16"), keep=False),
              write_scene(root, SceneSpec("scene-1", 512, 512, 4, "uint16", seed=3), keep=False)]
    (root / "train.txt").write_text("scene-0\n")
    (root / "val.txt").write_text("scene-1\n")
    return root, [(scene.image_path, scene.label_path) for scene in scenes]


def test_rasters_read_windows(perf, raster_scenes):
    """rasterio reading the windows that preparing the scenes reads, and nothing else: the yardstick of the next."""
    perf(lambda: read_windows(raster_scenes[1], 512), rounds=8)


def test_rasters_prepare(perf, raster_scenes, tmp_path):
    """Preparing the same scenes' tile cache from nothing (512-pixel tiles): reading, labels, statistics, writing,
    the manifest's digests. Its ratio over rasters_read_windows' is what docs/datasets.md reports at full size."""
    root, cache = raster_scenes[0], tmp_path / "cache"

    def prepare():
        shutil.rmtree(cache, ignore_errors=True)
        rasters.prepare(root, classes=["background", "building", "woodland", "water", "road"], tile_size=512,
                        split={"train": "train.txt", "val": "val.txt"}, cache_dir=cache)

    perf(prepare, rounds=8)
