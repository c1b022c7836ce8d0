"""``tu-<timm model name>``: a U-Net decoder on any timm encoder, in the manner of segmentation_models_pytorch's
``tu-`` encoders.

The encoder is ``timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans)``: its
``feature_info`` gives each feature's channels and stride (reduction). From the deepest feature (stride ``R``, 32 for
most encoders) the decoder climbs to full resolution in ``log2(R)`` stages; each up-samples x2 (nearest, as smp),
concatenates the encoder feature of that stride when there is one, and applies two (3x3 conv, BatchNorm, ReLU). An
encoder whose first feature is at stride 4 (ConvNeXt, most transformers) simply has its last two stages without a skip.
A 1x1 convolution maps the last stage to the class logits; ``size_divisor`` is ``R``.

The encoder starts from random weights, or from ``pretrained_path``: see :mod:`registry.archs.timm_encoder`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from registry import ARCHS
from registry.archs import timm_encoder
from registry.archs.blocks import DoubleConv
from registry.errors import UserError

PREFIX = "tu-"
# Shown by `bench list archs` and covered by the registry-wide contract tests; every other timm name works too.
LISTED = ("tu-resnet18", "tu-resnet34", "tu-efficientnet_b0", "tu-convnext_atto")


class DecoderStage(nn.Module):
    """Up-sample x2, concatenate the skip feature (when there is one), then a :class:`DoubleConv`."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = self.up(x)
        return self.conv(x if skip is None else torch.cat([skip, x], dim=1))


class TimmUNet(nn.Module):
    """A timm encoder (``features_only``), a U-Net decoder of ``len(decoder_channels)`` stages and a 1x1 head."""

    def __init__(self, encoder_name: str, num_classes: int, in_chans: int = 3,
                 decoder_channels: tuple[int, ...] | list[int] | None = None):
        super().__init__()
        self.arch = PREFIX + encoder_name
        self.encoder = timm_encoder.create_encoder(self.arch, encoder_name, in_chans)
        channels, reductions, self.nhwc = timm_encoder.feature_layout(self.encoder)
        powers = all(r >= 1 and r & (r - 1) == 0 for r in reductions)
        if not powers or sorted(set(reductions)) != list(reductions) or reductions[-1] < 2:
            raise UserError(f"{self.arch}: a U-Net needs encoder features at distinct, rising power-of-two strides "
                            f"(2, 4, ..., 32); this encoder's are {list(reductions)}")
        self.size_divisor = int(reductions[-1])
        num_stages = int(math.log2(self.size_divisor))
        if decoder_channels is None:
            decoder_channels = tuple(16 * 2**i for i in reversed(range(num_stages)))  # 256, 128, 64, 32, 16
        if (not isinstance(decoder_channels, (list, tuple)) or len(decoder_channels) != num_stages
                or not all(isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in decoder_channels)):
            raise UserError(f"{self.arch}: decoder_channels must be {num_stages} positive ints (one per x2 "
                            f"up-sampling from stride {self.size_divisor}), not {decoder_channels!r}")
        self.feature_strides = tuple(reductions)
        skip_channels = dict(zip(reductions, channels))
        # Stage i brings the decoder from stride R / 2**i to R / 2**(i+1) and reads the skip feature of that stride.
        self.stage_strides = tuple(self.size_divisor >> (i + 1) for i in range(num_stages))
        widths = [channels[-1], *decoder_channels]
        self.decoder = nn.ModuleList(
            DecoderStage(widths[i], skip_channels.get(stride, 0), widths[i + 1])
            for i, stride in enumerate(self.stage_strides)
        )
        self.head = nn.Conv2d(widths[-1], num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.size_divisor or width % self.size_divisor:
            raise UserError(f"{self.arch} needs input sides divisible by {self.size_divisor}, got {height}x{width}")
        features = timm_encoder.encode(self.encoder, x, self.nhwc)
        skips = dict(zip(self.feature_strides, features))
        y = features[-1]
        for stride, stage in zip(self.stage_strides, self.decoder):
            y = stage(y, skips.get(stride))
        return self.head(y)


@ARCHS.register_prefix(PREFIX, known=timm_encoder.timm_model_names, listed=LISTED,
                       what="a timm model name, see timm.list_models()",
                       test_kwargs={"decoder_channels": (8, 8, 8, 8, 8)})
def timm_unet(encoder_name: str, num_classes: int, in_chans: int = 3,
              decoder_channels: tuple[int, ...] | list[int] | None = None, pretrained: bool = False,
              pretrained_path: str | None = None) -> TimmUNet:
    """U-Net decoder (``decoder_channels``, default 256, 128, 64, 32, 16) on the timm encoder ``encoder_name``, randomly
    initialised, or with the encoder's weights from the local file ``pretrained_path``; never downloaded."""
    timm_encoder.check_pretrained(PREFIX + encoder_name, encoder_name, pretrained, pretrained_path)
    model = TimmUNet(encoder_name, num_classes, in_chans, decoder_channels)
    if pretrained_path is not None:
        timm_encoder.load_encoder_weights(model.encoder, pretrained_path, model.arch, encoder_name)
    return model
