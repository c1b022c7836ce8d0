"""UNet++, the nested U-Net of Zhou et al. (2018), "UNet++: A Nested U-Net Architecture for Medical Image Segmentation".

Node ``X[i][j]`` sits at level ``i`` (resolution ``1 / 2**i``) and column ``j``. Column 0 is the encoder; every other
node is a double convolution over all the earlier nodes of its level and the bilinearly up-sampled node below-left:
``X[i][j] = DoubleConv(concat(X[i][0], ..., X[i][j-1], Up(X[i+1][j-1])))``, of width ``base_channels * 2**i``. With 3
input channels and depth 5 this comes to about 9.2 M parameters at base width 32 (the paper's configuration) and
36.6 M at base 64: the figures published for the widely used PyTorch re-implementation (4uiiurz1/pytorch-nested-unet),
whose convolutions keep a bias that the BatchNorm after them cancels; dropping it here changes the counts by < 0.01 M.
The reference experiment's UNet++ is another, sparser one: ``reference-unetplusplus`` (registry/archs/reference.py).
"""

from __future__ import annotations

import torch
from torch import nn

from registry import register_arch
from registry.archs.blocks import DoubleConv, Down, Upsample2x, check_input_size, check_levels


class UNetPlusPlus(nn.Module):
    """Nested U-Net; the heads are 1x1 convolutions on the top row of nodes.

    Without deep supervision one head reads ``X[0][depth-1]``. With it, one head reads each ``X[0][j]``, ``j >= 1``:
    training mode returns the list of their logits (the loss is averaged over them) and eval mode their mean, the
    paper's "accurate" mode. Input sides must be multiples of ``size_divisor = 2**(depth - 1)``.
    """

    def __init__(self, num_classes: int, in_chans: int = 3, base_channels: int = 64, depth: int = 5,
                 deep_supervision: bool = False):
        super().__init__()
        check_levels("unetplusplus", base_channels, depth)
        self.depth = depth
        self.size_divisor = 2 ** (depth - 1)
        self.deep_supervision = deep_supervision
        widths = [base_channels * 2**i for i in range(depth)]
        self.encoder = nn.ModuleList(
            [DoubleConv(in_chans, widths[0])] + [Down(widths[i - 1], widths[i]) for i in range(1, depth)]
        )
        self.up = Upsample2x()
        # columns[j - 1][i] is node X[i][j]: it reads j nodes of its own level and one from the level below.
        self.columns = nn.ModuleList(
            nn.ModuleList(DoubleConv(j * widths[i] + widths[i + 1], widths[i]) for i in range(depth - j))
            for j in range(1, depth)
        )
        num_heads = depth - 1 if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv2d(widths[0], num_classes, kernel_size=1) for _ in range(num_heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_input_size("unetplusplus", self.depth, self.size_divisor, x)
        nodes = []  # nodes[i] lists X[i][0], X[i][1], ... as they are computed
        for stage in self.encoder:
            x = stage(x)
            nodes.append([x])
        for j, column in enumerate(self.columns, start=1):
            for i, block in enumerate(column):
                nodes[i].append(block(torch.cat([*nodes[i], self.up(nodes[i + 1][j - 1])], dim=1)))
        top = nodes[0][-len(self.heads):]
        logits = [head(feature) for head, feature in zip(self.heads, top)]
        if len(logits) == 1:
            return logits[0]
        # A running sum, not torch.stack: it keeps the heads' memory format (channels-last).
        return logits if self.training else sum(logits) / len(logits)


@register_arch("unetplusplus", test_kwargs={"base_channels": 4, "depth": 3})
def unetplusplus(num_classes: int, in_chans: int = 3, base_channels: int = 64, depth: int = 5,
                 deep_supervision: bool = False) -> UNetPlusPlus:
    """UNet++; 9.2 M parameters at base 32 and 36.6 M at base 64 (depth 5, 3 input channels)."""
    return UNetPlusPlus(num_classes, in_chans, base_channels, depth, deep_supervision)
