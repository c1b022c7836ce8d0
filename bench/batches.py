"""The batches a cell trains and is evaluated on.

Two data paths give the training batches of an epoch, the same interface each (``len()``, the steps of an epoch, and
``epoch(epoch)``, its batches of normalised float images ``[B, C, H, W]`` and int64 targets on the device):

- :class:`LoaderBatches` (the reference's way): tiles read and augmented by albumentations on the CPU in DataLoader
  workers (:class:`TrainBatches`), then moved to the device and normalised there;
- :class:`DeviceBatches`: tiles held on the device (:class:`bench.device_data.TileStore`), each batch gathered,
  augmented (:mod:`bench.device_data`'s affine maps) and normalised there in one pass.

Both take each step's tiles from :class:`EpochOrder`, a function of (run seed, epoch) only: the two paths train on
the same tiles in the same order, and an epoch is the same whether the run went straight through or was resumed.
Without augmentation they feed the model identical batches.

Over several processes ``batch_size`` is the global batch, and rank ``rank`` of ``world`` gets items ``rank::world``
of each step's batch. Evaluation batches (:func:`eval_batches`) are the tiles in order, unaugmented.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from bench.data import AUGMENT_STREAM, ORDER_STREAM, AugmentedTiles, Normalizer, derive_seed, owned_tensor
from bench.device_data import TileStore, draw_transforms, warp


def steps_per_epoch(tiles: int, batch_size: int) -> int:
    """Incomplete last batches are dropped (a batch of one would break BatchNorm) unless the split is smaller than
    one batch."""
    return tiles // batch_size if tiles > batch_size else -(-tiles // batch_size)


@dataclass(frozen=True)
class EpochOrder:
    """Which of ``tiles`` tiles each step of an epoch trains on, and rank ``rank`` of ``world``'s share of them."""

    tiles: int
    batch_size: int  # the global batch
    seed: int
    rank: int = 0
    world: int = 1

    def __len__(self) -> int:
        return steps_per_epoch(self.tiles, self.batch_size)

    def steps(self, epoch: int) -> list[torch.Tensor]:
        """Each step's global batch of tile indices (int64), in step order: a permutation of the tiles drawn from
        (run seed, epoch), cut into batches of ``batch_size``."""
        shuffle = torch.Generator().manual_seed(derive_seed(self.seed, ORDER_STREAM, epoch))
        order = torch.randperm(self.tiles, generator=shuffle)
        return [order[step * self.batch_size:(step + 1) * self.batch_size] for step in range(len(self))]

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's items of a step's global batch."""
        return batch[self.rank::self.world]


class TrainBatches:
    """Shuffled, augmented training batches for one epoch at a time, read by a DataLoader, on the CPU: images
    ``[B, H, W, C]`` in the dataset's dtype and int8 masks ``[B, H, W]``.

    Over several processes the tiles of each rank's share are chosen before they are read and augmented, so no rank
    does another's work, and a tile is augmented as in one process (its draws depend on the seed, epoch and tile
    only)."""

    def __init__(self, tiles: AugmentedTiles, batch_size: int, num_workers: int, pin_memory: bool, rank: int = 0,
                 world: int = 1):
        self.tiles, self.order = tiles, EpochOrder(len(tiles), batch_size, tiles.seed, rank, world)
        self.num_workers, self.pin_memory = num_workers, pin_memory

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.tiles.epoch = epoch
        steps = [self.order.share(batch).tolist() for batch in self.order.steps(epoch)]
        loader = torch.utils.data.DataLoader(
            self.tiles, batch_sampler=steps, num_workers=self.num_workers, pin_memory=self.pin_memory,
            persistent_workers=False,
        )
        return iter(loader)


class LoaderBatches:
    """The DataLoader path: :class:`TrainBatches` moved to the device and normalised there."""

    def __init__(self, batches: TrainBatches, normalize: Normalizer):
        self.batches = batches
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, epoch: int):
        return (self.normalize(images, masks) for images, masks in self.batches.epoch(epoch))


class DeviceBatches:
    """The device path: tiles uploaded once (to the device's memory when they fit, else to pinned host memory), and
    every batch gathered, augmented and normalised on the device. Over several processes each rank's share of a
    step's batch gets the transforms those tiles get in one process (drawn for the whole batch, then shared out)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: Sequence[str], seed: int, batch_size: int,
                 normalize: Normalizer, rank: int = 0, world: int = 1):
        if images.shape[1] != images.shape[2]:
            raise ValueError(f"the device data path needs square tiles, not {images.shape[1]}x{images.shape[2]}")
        self.store = TileStore(images, masks, normalize.device, batch_size)
        self.order = EpochOrder(len(self.store), batch_size, seed, rank, world)
        self.augment, self.seed, self.normalize = list(augment), seed, normalize

    def __len__(self) -> int:
        return len(self.order)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for step, indices in enumerate(self.order.steps(epoch)):
            images, masks = self.store.gather(self.order.share(indices))
            images, target = images.permute(0, 3, 1, 2).float(), masks.to(torch.int64)
            if self.augment:
                draws = torch.Generator().manual_seed(derive_seed(self.seed, AUGMENT_STREAM, epoch, step))
                forward = draw_transforms(self.augment, len(indices), images.shape[-1], draws)
                images, target = warp(images, target, self.order.share(forward))
            yield self.normalize.scale(images, self.store.images.dtype), target


def eval_batches(images, masks, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Evaluation tiles in order, unaugmented: from NumPy arrays (a batch copied at a time) or from tensors already
    on the device (sliced)."""
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size], masks[start:start + batch_size]
        yield tuple(part if isinstance(part, torch.Tensor) else owned_tensor(part) for part in batch)
