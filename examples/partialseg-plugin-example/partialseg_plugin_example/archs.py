"""``tiny_fcn``: a plain fully convolutional network, registered through an entry point that names its builder."""

from __future__ import annotations

import torch
from torch import nn

from registry import UserError


class TinyFCN(nn.Module):
    """``depth`` 3x3 convolutions (padding 1, ReLU) of ``width`` channels, then a 1x1 convolution to the logits.

    Every layer keeps the resolution, so the logits are at the input's size and any size is accepted."""

    size_divisor = 1

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 16, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"tiny_fcn takes a batch [N, C, H, W], not a tensor of shape {tuple(x.shape)}")
        return self.head(self.features(x))


def tiny_fcn(num_classes: int, in_chans: int = 3, width: int = 16, depth: int = 3) -> TinyFCN:
    """The builder named by the ``partialseg.archs`` entry point (the harness registers it under that name)."""
    for name, value in (("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"architecture 'tiny_fcn': {name} must be a positive integer, not {value!r}")
    return TinyFCN(num_classes, in_chans, width, depth)
