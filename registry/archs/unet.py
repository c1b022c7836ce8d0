"""U-Net (Ronneberger et al., 2015) as in the widely used PyTorch re-implementation (milesial/Pytorch-UNet).

The channel layout follows that implementation, so that the parameter counts match its published figures: with 3
input channels, base width 64 and depth 5, about 17.3 M parameters with bilinear up-sampling and 31.0 M with
transposed convolutions. One deliberate difference: bilinear up-sampling here uses ``align_corners=False`` (that
implementation uses ``True``); it has no parameters, so the counts are unaffected. The reference experiment's UNet
is not this one but ``reference-unet`` (registry/archs/reference.py): 13.39 M parameters, double convolutions
``in -> out -> out`` in the decoder, ``align_corners=True``.
"""

from __future__ import annotations

import torch
from torch import nn

from registry import register_arch
from registry.archs.blocks import DoubleConv, Down, Upsample2x, check_input_size, check_levels
from registry.errors import UserError

UPSAMPLINGS = ("bilinear", "transpose")


class Up(nn.Module):
    """One decoder step: up-sample the deeper feature x2, concatenate the skip feature, then a :class:`DoubleConv`.

    ``in_channels`` counts the concatenation. With ``"transpose"`` the learnt up-sampling halves the deeper feature's
    channels; with ``"bilinear"`` the deeper feature already has half of them and the double convolution's middle
    width is halved instead, as in milesial/Pytorch-UNet.
    """

    def __init__(self, in_channels: int, out_channels: int, upsampling: str):
        super().__init__()
        if upsampling == "bilinear":
            self.up = Upsample2x()
            self.conv = DoubleConv(in_channels, out_channels, in_channels // 2)
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(in_channels, out_channels)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(deep)], dim=1))


class UNet(nn.Module):
    """Encoder of ``depth`` levels of widths ``base_channels * 2**i``, a mirrored decoder with skip connections, and a
    1x1 convolution to the class logits. Input sides must be multiples of ``size_divisor = 2**(depth - 1)``."""

    def __init__(self, num_classes: int, in_chans: int = 3, base_channels: int = 64, depth: int = 5,
                 upsampling: str = "bilinear"):
        super().__init__()
        check_levels("unet", base_channels, depth)
        if upsampling not in UPSAMPLINGS:
            raise UserError(f"unet: upsampling must be one of {UPSAMPLINGS}, not {upsampling!r}")
        self.depth = depth
        self.size_divisor = 2 ** (depth - 1)
        widths = [base_channels * 2**i for i in range(depth)]
        # A transposed convolution halves the deeper feature's channels before the concatenation; bilinear up-sampling
        # cannot, so with it the bottom level and the decoder steps output half as many channels instead. Either way
        # decoder level i concatenates 2 * widths[i] channels, as in the reference.
        halve = 2 if upsampling == "bilinear" else 1
        bottom = widths[-1] // halve
        self.encoder = nn.ModuleList(
            [DoubleConv(in_chans, widths[0])]
            + [Down(widths[i - 1], widths[i]) for i in range(1, depth - 1)]
            + [Down(widths[-2], bottom)]
        )
        self.decoder = nn.ModuleList(
            Up(2 * widths[i], widths[i] // halve if i > 0 else widths[0], upsampling)
            for i in reversed(range(depth - 1))
        )
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size("unet", self.depth, self.size_divisor, x)
        skips = []
        for stage in self.encoder:
            x = stage(x)
            skips.append(x)
        x = skips.pop()
        for up in self.decoder:
            x = up(x, skips.pop())
        return self.head(x)


@register_arch("unet", test_kwargs={"base_channels": 4, "depth": 3})
def unet(num_classes: int, in_chans: int = 3, base_channels: int = 64, depth: int = 5,
         upsampling: str = "bilinear") -> UNet:
    """U-Net; ``upsampling`` is ``"bilinear"`` (default, 17.3 M parameters at base 64) or ``"transpose"`` (31.0 M)."""
    return UNet(num_classes, in_chans, base_channels, depth, upsampling)
