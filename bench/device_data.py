"""The device-resident training path's pieces: tiles uploaded once in their own dtype, uint8, uint16 or float32
(:class:`TileStore`), partial masks drawn once, and augmentation as affine maps applied on the device
(:func:`draw_transforms`, :func:`warp`); its batches, sampled, augmented and normalised on the device in one pass, are
:class:`bench.batches.DeviceBatches`.

Augmentations are affine maps of pixel coordinates, so a tile's flips, quarter turn and shift-scale-rotate compose into
one 3x3 matrix, applied with one ``grid_sample`` per batch: bilinear for images (filled with 0 where the map reaches
outside the tile), nearest for labels, shifted by one so that the zero padding becomes ``-1``: pixels brought in from
outside are unlabelled, and an unlabelled pixel can never turn into a label. The matrices follow albumentations'
conventions (pixel centres at integer coordinates, rotation about ``((W - 1) / 2, (H - 1) / 2)``), so the same
parameters give the same transform as the DataLoader path's ``bench.data.AUGMENTATIONS``.

Randomness is drawn on the CPU from generators seeded by (run seed, epoch, step), so an epoch is the same on any device
and after a resume. Batches come in the same order as the DataLoader path's (:class:`bench.batches.EpochOrder`);
with augmentation off the two paths feed the model identical batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from bench import recipe
from bench.data import UNLABELLED

DEVICE_SHARE = 0.5  # tiles go to GPU memory when they take at most this share of what is free
UPLOAD_CHUNK = 256  # tiles per host -> device copy, so a memory-mapped split is never read whole into RAM


# -- transforms as forward pixel matrices (source pixel -> output pixel), float64 [B, 3, 3] ---------------------------


def _batch_of(matrix: list[list[float]], count: int) -> torch.Tensor:
    return torch.tensor(matrix, dtype=torch.float64).expand(count, 3, 3).clone()


def hflip_matrix(count: int, side: int) -> torch.Tensor:
    return _batch_of([[-1, 0, side - 1], [0, 1, 0], [0, 0, 1]], count)


def vflip_matrix(count: int, side: int) -> torch.Tensor:
    return _batch_of([[1, 0, 0], [0, -1, side - 1], [0, 0, 1]], count)


def rot90_matrix(turns: torch.Tensor, side: int) -> torch.Tensor:
    """``numpy.rot90(tile, k)`` (counter-clockwise quarter turns) for each ``k`` in ``turns``."""
    one = torch.tensor([[0, 1, 0], [-1, 0, side - 1], [0, 0, 1]], dtype=torch.float64)
    powers = torch.stack([torch.linalg.matrix_power(one, k) for k in range(4)])
    return powers[turns]


def shift_scale_rotate_matrix(angle: torch.Tensor, scale: torch.Tensor, shift_x: torch.Tensor, shift_y: torch.Tensor,
                              side: int) -> torch.Tensor:
    """albumentations' Affine: scale, then rotate by ``angle`` degrees (counter-clockwise on screen), both about the
    tile's centre, then translate by (``shift_x``, ``shift_y``) pixels."""
    centre = (side - 1) / 2
    radians = torch.deg2rad(angle.double())
    cos, sin = torch.cos(radians) * scale.double(), torch.sin(radians) * scale.double()
    matrix = torch.zeros(len(angle), 3, 3, dtype=torch.float64)
    matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 1, 0], matrix[:, 1, 1] = cos, sin, -sin, cos
    matrix[:, 0, 2] = centre + shift_x - (cos + sin) * centre
    matrix[:, 1, 2] = centre + shift_y - (cos - sin) * centre
    matrix[:, 2, 2] = 1
    return matrix


def _where(chosen: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    identity = torch.eye(3, dtype=torch.float64).expand_as(matrices)
    return torch.where(chosen.view(-1, 1, 1), matrices, identity)


def draw_transforms(augment: Sequence[str], count: int, side: int, generator: torch.Generator) -> torch.Tensor:
    """One forward matrix per tile, composing ``augment`` in its order, each drawn as bench.data.AUGMENTATIONS
    draws it, with the probabilities and ranges of :mod:`bench.recipe`."""
    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)

    forward = torch.eye(3, dtype=torch.float64).expand(count, 3, 3).clone()
    for name in augment:
        if name not in recipe.AUGMENT_P:
            raise ValueError(f"unknown augmentation {name!r}")
        # which tiles it touches, drawn first; rot90 (probability 1) turns every tile, with no draw
        probability = recipe.AUGMENT_P[name]
        chosen = torch.rand(count, generator=generator) < probability if probability < 1 else None
        if name == recipe.HFLIP:
            step = hflip_matrix(count, side)
        elif name == recipe.VFLIP:
            step = vflip_matrix(count, side)
        elif name in (recipe.ROT90, recipe.ROT90_HALF):
            step = rot90_matrix(torch.randint(0, 4, (count,), generator=generator), side)
        elif name == recipe.SHIFT_SCALE_ROTATE:
            shift = recipe.SHIFT_LIMIT
            step = shift_scale_rotate_matrix(uniform(-recipe.ROTATE_LIMIT, recipe.ROTATE_LIMIT),
                                             uniform(*recipe.SCALE_RANGE), uniform(-shift, shift) * side,
                                             uniform(-shift, shift) * side, side)
        forward = (step if chosen is None else _where(chosen, step)) @ forward
    return forward


def warp(images: torch.Tensor, masks: torch.Tensor, forward: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply forward pixel matrices ``[B, 3, 3]`` to float images ``[B, C, S, S]`` (bilinear, filled with 0) and
    integer masks ``[B, S, S]`` (nearest, filled with -1); returns float images and int64 masks."""
    side = images.shape[-1]
    # grid_sample wants, for each output pixel, where to read in the source, in [-1, 1] units with pixel centres at
    # (2i + 1) / side - 1 (align_corners=False): invert the forward map and change units on both sides.
    to_unit = torch.tensor([[2 / side, 0, 1 / side - 1], [0, 2 / side, 1 / side - 1], [0, 0, 1]], dtype=torch.float64)
    theta = to_unit @ torch.linalg.inv(forward) @ torch.linalg.inv(to_unit)
    theta = theta[:, :2].to(device=images.device, dtype=torch.float32)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    labels_plus_one = (masks.to(torch.float32) - UNLABELLED).unsqueeze(1)  # -1 -> 0, the padding value
    sampled = F.grid_sample(labels_plus_one, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, sampled.squeeze(1).round().to(torch.int64) + UNLABELLED


# -- where the tiles live ---------------------------------------------------------------------------------------------


def fits_on_device(nbytes: int, device: torch.device) -> bool:
    """Whether tiles of ``nbytes`` (their real size: two bytes a value for uint16, four for float32) take at most
    DEVICE_SHARE of the device's free memory. Free includes what this process's allocator holds unused (the previous
    cell's tensors): cudaMemGetInfo counts it as taken, and a later cell would otherwise fall back to the slower host
    path that an earlier one did not take."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return nbytes <= DEVICE_SHARE * free


def upload(array: np.ndarray, device: torch.device, pin: bool = False) -> torch.Tensor:
    """A copy of ``array`` (a NumPy array or memory map) as a tensor on ``device``, copied a chunk at a time."""
    out = torch.empty(array.shape, dtype=torch.from_numpy(array[:0]).dtype, device=device, pin_memory=pin)
    for start in range(0, len(array), UPLOAD_CHUNK):
        out[start:start + UPLOAD_CHUNK].copy_(torch.from_numpy(np.array(array[start:start + UPLOAD_CHUNK])))
    return out


class TileStore:
    """Images ``[N, H, W, C]`` in their dataset's dtype (uint8, uint16 or float32; converted to float only batch by
    batch) and masks int8 ``[N, H, W]`` where the device reads them fast: in its memory when they fit, otherwise in
    pinned host memory, gathered into alternating pinned buffers and copied without blocking."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, device: torch.device, batch_size: int):
        self.device = device
        self.resident = fits_on_device(images.nbytes + masks.nbytes, device)
        home, pin = (device, False) if self.resident else (torch.device("cpu"), device.type == "cuda")
        self.images, self.masks = upload(images, home, pin), upload(masks, home, pin)
        if not self.resident:
            self._buffers = [(torch.empty((batch_size, *self.images.shape[1:]), dtype=self.images.dtype,
                                          pin_memory=pin),
                              torch.empty((batch_size, *self.masks.shape[1:]), dtype=self.masks.dtype,
                                          pin_memory=pin), None) for _ in range(2)]
            self._turn = 0

    def __len__(self) -> int:
        return len(self.images)

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident:  # index_select: its kernels take uint16, a dtype few of torch's do
            indices = indices.to(self.device)
            return torch.index_select(self.images, 0, indices), torch.index_select(self.masks, 0, indices)
        images, masks, copied = self._buffers[self._turn]
        if copied is not None:
            copied.synchronize()  # the copy that last read this buffer is done: it may be refilled
        images, masks = images[:len(indices)], masks[:len(indices)]
        torch.index_select(self.images, 0, indices, out=images)
        torch.index_select(self.masks, 0, indices, out=masks)
        on_device = images.to(self.device, non_blocking=True), masks.to(self.device, non_blocking=True)
        event = torch.cuda.Event() if self.device.type == "cuda" else None
        if event is not None:
            event.record()
        buffer = self._buffers[self._turn]
        self._buffers[self._turn] = (buffer[0], buffer[1], event)
        self._turn = 1 - self._turn
        return on_device

