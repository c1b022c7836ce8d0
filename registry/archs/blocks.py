"""Building blocks shared by the built-in architectures: convolution-BatchNorm-ReLU, the double convolution, the down
and up steps, and the input checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from registry.errors import UserError


class ConvBNReLU(nn.Sequential):
    """A ``kernel_size`` convolution (``dilation`` apart, padded to keep the size, in ``groups`` groups of channels),
    BatchNorm, ReLU. The convolution has no bias: the BatchNorm that follows would cancel it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1,
                 groups: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2), dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """A depthwise-separable :class:`ConvBNReLU`: each channel convolved on its own (``kernel_size``, ``dilation``
    apart), BatchNorm, ReLU, then a 1x1 convolution that mixes the channels, BatchNorm, ReLU: the form of the
    DeepLabv3+ authors' code. About ``kernel_size**2`` times less arithmetic than the plain convolution when
    ``out_channels`` is large. Six modules in one sequence, the depthwise convolution first."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__(*ConvBNReLU(in_channels, in_channels, kernel_size, dilation, groups=in_channels),
                         *ConvBNReLU(in_channels, out_channels, kernel_size=1))


class DoubleConv(nn.Sequential):
    """(3x3 conv, BatchNorm, ReLU) twice; ``mid_channels`` is the width between the two (``out_channels`` if None).
    Six modules in one sequence (not two :class:`ConvBNReLU`), so that the weights' names are flat."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None):
        mid_channels = mid_channels or out_channels
        super().__init__(*ConvBNReLU(in_channels, mid_channels), *ConvBNReLU(mid_channels, out_channels))


class Down(nn.Sequential):
    """One encoder step: 2x2 max-pool, then a :class:`DoubleConv`."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))


class Upsample2x(nn.Module):
    """Bilinear x2 up-sampling, without parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def check_levels(arch: str, base_channels: int, depth: int) -> None:
    """A U-Net needs at least one down-sampling, so two levels, and at least one channel at its widest level."""
    if depth < 2:
        raise UserError(f"{arch}: depth must be at least 2, not {depth}")
    if base_channels < 1:
        raise UserError(f"{arch}: base_channels must be a positive integer, not {base_channels}")


def check_input_size(arch: str, depth: int, size_divisor: int, x: torch.Tensor) -> None:
    """Every down-sampling halves the sides; an odd side would lose a row and misalign the skip connections."""
    height, width = x.shape[-2:]
    if height % size_divisor or width % size_divisor:
        raise UserError(
            f"{arch} with depth {depth} needs input sides divisible by {size_divisor}, got {height}x{width}"
        )
