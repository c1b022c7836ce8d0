"""The reference experiment's two models, ``reference-unet`` and ``reference-unetplusplus``, as its code builds them
(sayedgamal99/PyTorch-Implementation-of-UNet-for-Land-Cover-Segmentation-with-Partial-CE-Loss, ``src/models.py``).

They differ from this project's own U-Nets, so a comparison with the reference's published figures needs these:

- ``reference-unet`` (13.39 M parameters at base 64; 417 GFLOP of training, forward and backward, per 384 x 384
  image, as ``bench perf`` counts them): every double convolution maps ``in -> out -> out``, and the bilinear
  up-sampling uses ``align_corners=True``. This project's ``unet`` follows milesial/Pytorch-UNet, whose first decoder
  convolution goes to ``in / 2`` channels, and up-samples with ``align_corners=False``: 17.26 M parameters,
  539 GFLOP. With transposed convolutions instead (``bilinear=False`` here, ``upsampling="transpose"`` there) the two
  have the same layout: 31.04 M, 650 GFLOP.
- ``reference-unetplusplus`` (34.91 M, 1281 GFLOP): node ``X[i][j]``, ``j >= 1``, is a double convolution over the
  node to its left, ``X[i][j-1]``, and the node below-left ``X[i+1][j-1]`` up-sampled by a 2x2 transposed
  convolution to the left one's width. This project's ``unetplusplus`` is the paper's dense nesting (every earlier
  node of the level) with parameter-free bilinear up-sampling: 36.62 M, 1860 GFLOP.

The modules and their attributes keep the reference's names (``inc``, ``down1.maxpool_conv.1.double_conv.0``,
``up4_3.up``, ``final``...), so its published ``best_model.pth`` files load with ``load_state_dict(strict=True)``.
Those files are training checkpoints, dicts ``{'epoch', 'model_state_dict', 'optimizer_state_dict', 'metrics'}``:
the weights are under ``'model_state_dict'``. Both models have depth 5, four 2x poolings; input sides must be
multiples of 16 (``size_divisor``). The reference pads an up-sampled feature to its skip's size, which differs only
when a pooling met an odd side; at multiples of 16 none does, so there is no padding here and the outputs are the
reference's.
"""

from __future__ import annotations

import torch
from torch import nn

from registry import register_arch
from registry.archs import blocks
from registry.archs.blocks import check_input_size, check_levels
from registry.errors import UserError

DEPTH = 5  # both models are built for five levels, four poolings
SIZE_DIVISOR = 2 ** (DEPTH - 1)


class DoubleConv(nn.Module):
    """:class:`blocks.DoubleConv` (middle width = ``out_channels``) under the name ``double_conv``: the reference's
    weights are ``double_conv.0.weight``, ``double_conv.1.running_mean``..."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.double_conv = blocks.DoubleConv(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.double_conv(x)


class Down(nn.Module):
    """2x2 max-pool, then a :class:`DoubleConv`, under the reference's name ``maxpool_conv``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.maxpool_conv = nn.Sequential(nn.MaxPool2d(2), DoubleConv(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool_conv(x)


class Up(nn.Module):
    """A decoder step: up-sample the deeper feature x2 with ``up``, concatenate it after the skip feature, then
    ``conv``, a :class:`DoubleConv`. :func:`unet_up` and :func:`nested_up` make the two models' kinds."""

    def __init__(self, up: nn.Module, conv: DoubleConv):
        super().__init__()
        self.up = up
        self.conv = conv

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(deep)], dim=1))


def unet_up(in_channels: int, out_channels: int, bilinear: bool) -> Up:
    """The U-Net's step; ``in_channels`` counts the concatenation. Bilinear up-sampling keeps the deeper feature's
    channels (the level below outputs half of ``in_channels`` for that); a transposed convolution halves them.
    ``align_corners=True`` as in the reference: ``False`` would shift the interpolated pixels, and give other outputs
    from the same weights."""
    if bilinear:
        up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True)
    else:
        up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
    return Up(up, DoubleConv(in_channels, out_channels))


def nested_up(in_channels: int, out_channels: int) -> Up:
    """A UNet++ node: a 2x2 transposed convolution takes the node below-left from its width, ``in_channels``, to the
    level's, ``out_channels``; concatenated after the node to the left, that makes ``2 * out_channels`` for the
    double convolution."""
    return Up(nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2),
              DoubleConv(2 * out_channels, out_channels))


def check_base_channels(arch: str, base_channels: int) -> None:
    if isinstance(base_channels, bool) or not isinstance(base_channels, int):
        raise UserError(f"{arch}: base_channels must be a positive integer, not {base_channels!r}")
    check_levels(arch, base_channels, DEPTH)


class ReferenceUNet(nn.Module):
    """Encoder ``inc, down1..down4`` of widths ``base_channels * 2**i``, decoder ``up1..up4``, 1x1 head ``outc``.

    With bilinear up-sampling the bottom level and the decoder steps but the last output half their level's width,
    so that each concatenation has twice its level's width, as with a transposed convolution.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, base_channels: int = 64, bilinear: bool = True):
        super().__init__()
        check_base_channels("reference-unet", base_channels)
        if not isinstance(bilinear, bool):
            raise UserError(f"reference-unet: bilinear must be true or false, not {bilinear!r}")
        self.size_divisor = SIZE_DIVISOR
        widths = [base_channels * 2**i for i in range(DEPTH)]
        halve = 2 if bilinear else 1
        self.inc = DoubleConv(in_chans, widths[0])
        for k in range(1, DEPTH):
            self.add_module(f"down{k}", Down(widths[k - 1], widths[k] // (halve if k == DEPTH - 1 else 1)))
        for k in range(1, DEPTH):  # up1 is the deepest step, from level DEPTH - 1 to level DEPTH - 2
            level = DEPTH - 1 - k
            out = widths[level] // halve if level > 0 else widths[0]
            self.add_module(f"up{k}", unet_up(widths[level + 1], out, bilinear))
        self.outc = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("reference-unet", DEPTH, self.size_divisor, x)
        skips = [self.inc(x)]
        for k in range(1, DEPTH):
            skips.append(getattr(self, f"down{k}")(skips[-1]))
        x = skips.pop()
        for k in range(1, DEPTH):
            x = getattr(self, f"up{k}")(x, skips.pop())
        return self.outc(x)


class ReferenceUNetPlusPlus(nn.Module):
    """Nodes ``conv{i}_0`` (the encoder; a max-pool before each but the first) and ``up{i+j}_{j-1}`` for ``X[i][j]``,
    ``j >= 1``: the reference numbers a node by its anti-diagonal ``i + j``, the encoder step after which it can be
    computed, and its place on it. One 1x1 head, ``final``, on ``X[0][4]``; no deep supervision."""

    def __init__(self, num_classes: int, in_chans: int = 3, base_channels: int = 64):
        super().__init__()
        check_base_channels("reference-unetplusplus", base_channels)
        self.size_divisor = SIZE_DIVISOR
        widths = [base_channels * 2**i for i in range(DEPTH)]
        self.pool = nn.MaxPool2d(2)
        for i in range(DEPTH):
            self.add_module(f"conv{i}_0", DoubleConv(in_chans if i == 0 else widths[i - 1], widths[i]))
        for diagonal in range(1, DEPTH):  # the reference's order, so the state_dict's keys come in its order too
            for j in range(1, diagonal + 1):
                i = diagonal - j
                self.add_module(f"up{diagonal}_{j - 1}", nested_up(widths[i + 1], widths[i]))
        self.final = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("reference-unetplusplus", DEPTH, self.size_divisor, x)
        nodes = [[self.conv0_0(x)]]  # nodes[i][j] is X[i][j]
        for diagonal in range(1, DEPTH):
            nodes.append([getattr(self, f"conv{diagonal}_0")(self.pool(nodes[-1][0]))])
            for j in range(1, diagonal + 1):
                i = diagonal - j
                nodes[i].append(getattr(self, f"up{diagonal}_{j - 1}")(nodes[i + 1][j - 1], nodes[i][j - 1]))
        return self.final(nodes[0][-1])


@register_arch("reference-unet", test_kwargs={"base_channels": 4})
def reference_unet(num_classes: int, in_chans: int = 3, base_channels: int = 64,
                   bilinear: bool = True) -> ReferenceUNet:
    """The reference experiment's UNet: 13.39 M parameters at base 64 with bilinear up-sampling, 31.04 M without."""
    return ReferenceUNet(num_classes, in_chans, base_channels, bilinear)


@register_arch("reference-unetplusplus", test_kwargs={"base_channels": 4})
def reference_unetplusplus(num_classes: int, in_chans: int = 3, base_channels: int = 64) -> ReferenceUNetPlusPlus:
    """The reference experiment's UNet++: 34.91 M parameters at base 64."""
    return ReferenceUNetPlusPlus(num_classes, in_chans, base_channels)
