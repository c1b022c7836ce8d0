"""Training and validation data for one cell: partial masks drawn once per tile and seed, augmentation on the CPU (the
DataLoader path's), normalisation on the device. The batches are :mod:`bench.batches`'.

All randomness is a pure function of (run seed, epoch, tile index): the partial labels of a tile are the same in every
epoch and every run, and the order and augmentation of an epoch are the same whether the run went straight through or
was interrupted and resumed.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch

import registry
from bench.recipe import (
    AUGMENT_P,
    HFLIP,
    ROT90,
    ROT90_HALF,
    ROTATE_LIMIT,
    SCALE_RANGE,
    SHIFT_LIMIT,
    SHIFT_SCALE_ROTATE,
    VFLIP,
)

UNLABELLED = -1
# Each use of randomness draws from its own stream: derive_seed(run seed, purpose, ...).
MASK_STREAM, ORDER_STREAM, AUGMENT_STREAM, ACQUIRE_STREAM = 0, 1, 2, 3
AUGMENTATIONS = {  # the recipe's augmentations (bench.recipe.AUGMENTATIONS), each as albumentations draws it
    HFLIP: lambda: A.HorizontalFlip(p=AUGMENT_P[HFLIP]),
    VFLIP: lambda: A.VerticalFlip(p=AUGMENT_P[VFLIP]),
    ROT90: lambda: A.RandomRotate90(p=AUGMENT_P[ROT90]),
    ROT90_HALF: lambda: A.RandomRotate90(p=AUGMENT_P[ROT90_HALF]),  # so the identity 5/8 of the time
    # ShiftScaleRotate's ranges (bench.recipe) with A.Affine, which replaces it in albumentations 2. Images are
    # interpolated bilinearly and filled with 0; masks take the nearest pixel (never a blend of two classes) and are
    # filled with -1, so pixels that the shift or rotation brings in from outside the tile are unlabelled, not class 0.
    # cv2 warps int8 masks as they are.
    SHIFT_SCALE_ROTATE: lambda: A.Affine(
        translate_percent=(-SHIFT_LIMIT, SHIFT_LIMIT), scale=SCALE_RANGE, keep_ratio=True,
        rotate=(-ROTATE_LIMIT, ROTATE_LIMIT), interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
        border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=UNLABELLED, p=AUGMENT_P[SHIFT_SCALE_ROTATE],
    ),
}


def owned_tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor owning a contiguous copy: the datasets' arrays may be read-only memory maps, which torch must not
    share."""
    return torch.from_numpy(np.array(array, order="C"))


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, so that nearby seeds and indices give unrelated streams."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def tile_generator(seed: int, index: int) -> torch.Generator:
    """The generator a masker draws tile ``index``'s labelled pixels from under run seed ``seed``."""
    return torch.Generator().manual_seed(derive_seed(seed, MASK_STREAM, index))


def draw_partial(masker, full_mask: torch.Tensor, fraction: float, seed: int, index: int) -> torch.Tensor:
    """Tile ``index``'s partial mask under run seed ``seed``: the masker draws from the tile's generator, or, when it
    says ``takes_tile_index`` (it reproduces another program's draws), from the seed and index themselves."""
    if getattr(masker, "takes_tile_index", False):
        return masker(full_mask, fraction, tile_generator(seed, index), seed=seed, index=index)
    return masker(full_mask, fraction, tile_generator(seed, index))


def annotated_pixels(masks: np.ndarray) -> int | None:
    """How many pixels of full masks ``[N, H, W]`` are annotated (not ``-1``); None when all are (always for an
    unsigned dtype). Counted a few hundred tiles at a time: a memory-mapped split is never read whole into RAM."""
    if masks.dtype.kind == "u":
        return None
    count = sum(int(np.count_nonzero(masks[start:start + 256] >= 0)) for start in range(0, len(masks), 256))
    return None if count == masks.size else count


def class_counts(masks: np.ndarray, num_classes: int) -> list[int]:
    """How many labelled pixels of each class masks ``[N, H, W]`` hold (``-1`` is no class), counted a few hundred
    tiles at a time."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for start in range(0, len(masks), 256):
        chunk = np.asarray(masks[start:start + 256])
        counts += np.bincount(chunk[chunk >= 0].astype(np.int64), minlength=num_classes)[:num_classes]
    return counts.tolist()


def partial_masks(masks: np.ndarray, masker, fraction: float, seed: int) -> np.ndarray:
    """Apply ``masker`` to every full mask (``[N, H, W]``: uint8, or int8/int16 with ``-1`` where a pixel is not
    annotated); returns int8 ``[N, H, W]`` (int16 for int16 masks) with ``-1`` unlabelled, which every not-annotated
    pixel stays.

    int8, not uint8: ``-1`` must stay ``-1`` (as uint8 it would be 255), and one byte per pixel keeps a large split's
    partial labels as small as its full ones."""
    out = np.empty(masks.shape, dtype=np.int8 if masks.dtype.itemsize == 1 else np.int16)
    for index in range(len(masks)):
        full = torch.from_numpy(masks[index].astype(np.int64))
        partial = draw_partial(masker, full, fraction, seed, index)
        # equal to the full mask or -1 everywhere: so -1 wherever the full mask is (not annotated)
        if partial.shape != full.shape or not bool(((partial == full) | (partial == UNLABELLED)).all()):
            raise ValueError(f"masker {masker!r} returned a mask that is not a partial copy of tile {index}")
        out[index] = partial.numpy()
    return out


class AugmentedTiles(torch.utils.data.Dataset):
    """Training tiles with their partial masks, augmented on the CPU with albumentations.

    Flips and quarter turns move pixels without interpolating them, so a ``-1`` stays ``-1`` and every label stays on
    its pixel; ``shift_scale_rotate`` moves masks by their nearest pixel and fills what it exposes with ``-1``. Items
    are (image ``[H, W, C]`` in the dataset's dtype, uint8, uint16 or float32, mask int8 ``[H, W]``): normalising on
    the device is cheaper than shipping floats. albumentations keeps the dtype (uint16 is interpolated and rounded
    as uint8 is; float32 is neither rounded nor clipped) and takes any number of channels (OpenCV warps more than four
    in chunks).
    """

    def __init__(self, images: np.ndarray, masks: np.ndarray, augment: Sequence[str], seed: int):
        self.images = images
        self.masks = masks
        self.transform = A.Compose([AUGMENTATIONS[name]() for name in augment]) if augment else None
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.images[index], self.masks[index]
        if self.transform is not None:
            # Seeded per (seed, epoch, tile): the same whatever the worker, the batch order, or a resume.
            self.transform.set_random_seed(derive_seed(self.seed, AUGMENT_STREAM, self.epoch, index))
            out = self.transform(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        return owned_tensor(image), owned_tensor(mask)


# registry.IMAGE_SCALES by torch dtype: the scale a dataset's mean and std are in units of
IMAGE_SCALES = {getattr(torch, name): scale for name, scale in registry.IMAGE_SCALES.items()}


def image_scale(dtype: torch.dtype | np.dtype) -> float:
    """The value that stands for 1.0 in images of ``dtype`` (a torch or NumPy dtype)."""
    if not isinstance(dtype, torch.dtype):
        dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
    if dtype not in IMAGE_SCALES:
        raise ValueError(f"images must be uint8, uint16 or float32, not {dtype}")
    return IMAGE_SCALES[dtype]


class Normalizer:
    """Images ``[N, H, W, C]`` of a dataset's dtype (uint8, uint16 or float32) to normalised float ``[N, C, H, W]``
    on the device; masks to int64. ``mean`` and ``std`` are per channel in units of the dtype's scale
    (:data:`IMAGE_SCALES`): the images travel to the device in their own dtype and are normalised there."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        # in each dtype's units, computed once (for uint8 the very tensors this class always used)
        self.moments = {dtype: (mean * scale, std * scale) for dtype, scale in IMAGE_SCALES.items()}
        self.device = device

    def __call__(self, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = images.dtype
        images = images.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return self.scale(images, dtype), masks.to(self.device, non_blocking=True).to(torch.int64)

    def scale(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Float images ``[N, C, H, W]`` in the units of ``dtype`` (the dtype they were converted from: 0..255 for
        uint8), already on the device, normalised, in the channels-last layout the models run in."""
        image_scale(dtype)  # an unsupported dtype is named
        mean, std = self.moments[dtype]
        return ((images - mean) / std).contiguous(memory_format=torch.channels_last)
