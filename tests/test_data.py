"""Training data: augmentation keeps ignored pixels ignored and labels on their pixels; all randomness is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.batches import TrainBatches, eval_batches
from bench.data import AugmentedTiles, Normalizer, derive_seed

SIZE = 16


def coordinate_tiles(n: int = 4):
    """Images whose pixels carry their own coordinates (channels 0, 1) and label (channel 2); a partial mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    labels = rng.integers(0, 5, (n, SIZE, SIZE))
    images = np.stack([np.stack([np.broadcast_to(yy, (SIZE, SIZE)), np.broadcast_to(xx, (SIZE, SIZE)), 40 * lab], -1)
                       for lab in labels]).astype(np.uint8)
    masks = np.where(rng.random(labels.shape) < 0.3, labels, -1).astype(np.int8)
    return images, masks


def test_augmentation_moves_labels_with_their_pixels_and_keeps_ignored_pixels_ignored():
    images, masks = coordinate_tiles()
    tiles = AugmentedTiles(images, masks, ["hflip", "vflip", "rot90"], seed=0)
    changed = 0
    for epoch in range(6):
        tiles.epoch = epoch
        for index in range(len(tiles)):
            image, mask = (t.numpy() for t in tiles[index])
            assert mask.dtype == np.int8 and image.dtype == np.uint8
            labelled = mask >= 0
            # each label sits on the pixel it was given for, wherever that pixel went
            assert np.array_equal(mask[labelled], image[..., 2][labelled] // 40)
            source = masks[index][image[..., 0], image[..., 1]]
            assert np.array_equal(mask, source)  # -1 stays -1, labels stay labels
            assert labelled.sum() == (masks[index] >= 0).sum()
            changed += not np.array_equal(image, images[index])
    assert changed > 0.5 * 6 * len(tiles)  # the transforms really ran


def test_augmentation_is_a_function_of_seed_epoch_and_index():
    images, masks = coordinate_tiles()
    a = AugmentedTiles(images, masks, ["hflip", "vflip", "rot90"], seed=1)
    b = AugmentedTiles(images, masks, ["hflip", "vflip", "rot90"], seed=1)
    b.epoch = a.epoch = 3
    assert all(torch.equal(a[i][0], b[i][0]) for i in (2, 0, 3, 1))  # order of access does not matter
    outputs = set()
    for epoch in range(8):
        a.epoch = epoch
        outputs.add(a[0][0].numpy().tobytes())
    assert len(outputs) > 2


def test_no_augmentation_returns_tiles_unchanged():
    images, masks = coordinate_tiles()
    tiles = AugmentedTiles(images, masks, [], seed=0)
    image, mask = tiles[1]
    assert np.array_equal(image.numpy(), images[1]) and np.array_equal(mask.numpy(), masks[1])


def test_epoch_order_is_seeded_and_drops_incomplete_batches():
    images, masks = np.zeros((10, 4, 4, 3), np.uint8), np.zeros((10, 4, 4), np.int8)
    for i in range(10):
        images[i] = i
    batches = TrainBatches(AugmentedTiles(images, masks, [], seed=5), batch_size=4, num_workers=0, pin_memory=False)
    assert len(batches) == 2

    def order(epoch):
        return [int(x) for imgs, _ in batches.epoch(epoch) for x in imgs[:, 0, 0, 0]]

    assert order(0) == order(0) and len(order(0)) == 8
    assert order(0) != order(1)


def test_split_smaller_than_a_batch_still_trains():
    images, masks = np.zeros((3, 4, 4, 3), np.uint8), np.zeros((3, 4, 4), np.int8)
    batches = TrainBatches(AugmentedTiles(images, masks, [], seed=0), batch_size=8, num_workers=0, pin_memory=False)
    assert len(batches) == 1 and sum(len(x) for x, _ in batches.epoch(0)) == 3


def test_eval_batches_cover_the_split_in_order():
    images = np.arange(5).reshape(5, 1, 1, 1).astype(np.uint8)
    masks = np.zeros((5, 1, 1), np.uint8)
    seen = [int(v) for imgs, _ in eval_batches(images, masks, 2) for v in imgs.flatten()]
    assert seen == [0, 1, 2, 3, 4]


def test_normalizer_layout_and_values():
    normalize = Normalizer((0.5, 0.25, 0.0), (0.25, 0.5, 1.0), torch.device("cpu"))
    images = torch.full((2, 3, 5, 3), 255, dtype=torch.uint8)
    masks = torch.full((2, 3, 5), -1, dtype=torch.int8)
    x, y = normalize(images, masks)
    assert x.shape == (2, 3, 3, 5) and x.dtype == torch.float32
    assert x[:, 0].unique().tolist() == [pytest.approx(2.0)] and x[:, 2].unique().tolist() == [pytest.approx(1.0)]
    assert y.dtype == torch.int64 and (y == -1).all()


def test_derived_seeds_are_distinct_for_nearby_inputs():
    seeds = {derive_seed(0, stream, i) for stream in range(3) for i in range(100)}
    assert len(seeds) == 300 and all(0 <= s < 2**63 for s in seeds)


# -- shift_scale_rotate: an interpolating warp, so labels are checked against the image's colour -------------------

BLOCK, TILE = 12, 48
# One colour per class, and one for unlabelled pixels; no colour is a blend of two others, and none is the fill (0).
PALETTE = {-1: (250, 250, 60), 0: (200, 40, 40), 1: (40, 200, 40), 2: (40, 40, 200), 3: (200, 200, 200),
           4: (60, 250, 250)}


def block_tiles(n: int = 6):
    """Tiles of 12-pixel blocks, each block one class or unlabelled, the image painted in that block's colour: after
    a warp, a pixel whose whole neighbourhood is one colour must carry that colour's label."""
    rng = np.random.default_rng(1)
    blocks = rng.integers(-1, 5, (n, TILE // BLOCK, TILE // BLOCK))
    masks = blocks.repeat(BLOCK, 1).repeat(BLOCK, 2).astype(np.int8)
    colours = np.array([PALETTE[k] for k in range(-1, 5)], dtype=np.uint8)
    return colours[masks.astype(int) + 1], masks


def uniform_windows(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(interior, colour): pixels whose 3x3 neighbourhood is one colour, and that colour."""
    padded = np.pad(image.astype(int), ((1, 1), (1, 1), (0, 0)), mode="edge")
    same = np.ones(image.shape[:2], bool)
    for dy in range(3):
        for dx in range(3):
            same &= (padded[dy:dy + image.shape[0], dx:dx + image.shape[1]] == image).all(-1)
    return same, image


def test_shift_scale_rotate_moves_labels_with_their_pixels_and_exposes_unlabelled_pixels():
    images, masks = block_tiles()
    tiles = AugmentedTiles(images, masks, ["shift_scale_rotate"], seed=0)
    checked = exposed = warped = 0
    for epoch in range(8):
        tiles.epoch = epoch
        for index in range(len(tiles)):
            image, mask = (t.numpy() for t in tiles[index])
            assert mask.dtype == np.int8 and image.dtype == np.uint8 and mask.shape == masks[index].shape
            assert set(np.unique(mask)) <= set(range(-1, 5))  # never 255, never anything but a class or -1
            interior, colour = uniform_windows(image)
            for label, rgb in PALETTE.items():
                here = interior & (colour == rgb).all(-1)
                assert (mask[here] == label).all(), (epoch, index, label)
                checked += int(here.sum())
            fill = interior & (colour == 0).all(-1)
            assert (mask[fill] == -1).all()  # brought in from outside the tile: unlabelled, not class 0
            exposed += int(fill.sum())
            warped += not np.array_equal(mask, masks[index])
    assert checked > 0.5 * 8 * len(tiles) * TILE * TILE
    assert exposed > 100 and warped > 8 * len(tiles) / 4


def test_shift_scale_rotate_never_labels_an_unlabelled_pixel():
    images, masks = block_tiles(4)
    masks[:] = -1
    tiles = AugmentedTiles(images, masks, ["hflip", "rot90", "shift_scale_rotate"], seed=3)
    for epoch in range(10):
        tiles.epoch = epoch
        assert all((tiles[i][1] == -1).all() for i in range(len(tiles)))


def fitted_warp(image: np.ndarray) -> tuple[float, float, np.ndarray, float]:
    """(rotation in degrees, scale, shift of the centre in pixels, anisotropy) of the warp that made ``image`` from a
    tile whose channels 0 and 1 are 5 x (column, row) and channel 2 is 255: a least-squares affine fit on the pixels
    that the fill did not reach (bilinear interpolation of a linear ramp returns the ramp)."""
    inside = image[..., 2] == 255
    rows, cols = np.nonzero(inside)
    design = np.stack([cols, rows, np.ones_like(cols)], 1).astype(float)
    solution, *_ = np.linalg.lstsq(design, image[inside][:, :2] / 5.0, rcond=None)  # output -> source
    forward = np.linalg.inv(solution[:2].T)  # source -> output, up to the offset
    centre = np.full(2, (image.shape[0] - 1) / 2)
    shift = forward @ (centre - solution[2]) - centre
    anisotropy = abs(forward[0, 0] - forward[1, 1]) + abs(forward[0, 1] + forward[1, 0])  # 0 for a scaled rotation
    return (float(np.degrees(np.arctan2(forward[1, 0], forward[0, 0]))), float(np.sqrt(np.linalg.det(forward))),
            shift, float(anisotropy))


def test_shift_scale_rotate_ranges_and_probability():
    """Measured from the warped images: rotations within 45 degrees, scales within 0.9..1.1 and the same on both axes
    (as ShiftScaleRotate's), shifts within 6.25 % of the side, each range explored; the warp applied to about half the
    draws (p = 0.5)."""
    yy, xx = np.mgrid[:TILE, :TILE]
    images = np.stack([5 * xx, 5 * yy, np.full_like(xx, 255)], -1).astype(np.uint8)[None]
    tiles = AugmentedTiles(images, np.zeros((1, TILE, TILE), np.int8), ["shift_scale_rotate"], seed=0)
    warps = []
    for epoch in range(200):
        tiles.epoch = epoch
        image = tiles[0][0].numpy()
        if not np.array_equal(image, images[0]):
            warps.append(fitted_warp(image))
    assert 70 <= len(warps) <= 130  # binomial(200, 0.5): 100 +- 7
    angles = [abs(warp[0]) for warp in warps]
    scales = [warp[1] for warp in warps]
    shifts = [float(np.abs(warp[2]).max()) for warp in warps]
    assert max(warp[3] for warp in warps) < 0.01
    assert 40 < max(angles) <= 45.1
    assert 0.895 <= min(scales) < 0.92 and 1.08 < max(scales) <= 1.105
    assert 1.5 < max(shifts) <= 0.0625 * TILE + 0.1  # albumentations truncates shifts to whole pixels: 2 of 3 here


@pytest.mark.parametrize("augment", [["hflip", "vflip", "rot90"], ["shift_scale_rotate"],
                                     ["hflip", "vflip", "rot90", "shift_scale_rotate"]])
def test_augmentation_is_deterministic_per_seed_epoch_and_index(augment):
    images, masks = block_tiles(1)
    images, masks = images.repeat(8, 0), masks.repeat(8, 0)  # eight copies of one tile

    def outputs(seed: int, epoch: int, order) -> dict[int, bytes]:
        tiles = AugmentedTiles(images, masks, augment, seed=seed)
        tiles.epoch = epoch
        return {i: b"".join(t.numpy().tobytes() for t in tiles[i]) for i in order}

    reference = outputs(1, 2, range(8))
    assert outputs(1, 2, [3, 1, 7, 0, 2, 6, 5, 4]) == reference  # the order of access does not matter
    assert outputs(1, 3, range(8)) != reference and outputs(2, 2, range(8)) != reference
    assert len(set(reference.values())) > 2  # copies of one tile are augmented apart: the index is part of the seed


def test_grid_and_data_know_the_same_augmentations():
    from bench import recipe as grid
    from bench.data import AUGMENTATIONS

    assert set(grid.AUGMENTATIONS) == set(AUGMENTATIONS) and set(grid.DEFAULT_AUGMENT) <= set(AUGMENTATIONS)
