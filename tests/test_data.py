"""Training data: augmentation keeps ignored pixels ignored and labels on their pixels; all randomness is seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data import AugmentedTiles, Normalizer, TrainBatches, derive_seed, eval_batches

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
