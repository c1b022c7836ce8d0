"""``deeplabv3plus-<timm model name>``: DeepLabv3+ (Chen et al. 2018, "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation") on a timm encoder, the family of the LandCover.ai paper's baseline.

The encoder is ``timm.create_model(name, features_only=True, output_stride=16)``: its last stages are dilated instead
of strided, so its deepest feature is at stride 16 (or 8). On that feature, atrous spatial pyramid pooling (ASPP): a
1x1 convolution, three 3x3 convolutions dilated 6, 12 and 18 times (doubled at output stride 8), and the feature's
mean over the tile, each to ``aspp_channels``, concatenated and projected back to ``aspp_channels`` by a 1x1
convolution. The decoder up-samples that (bilinear) to the encoder's stride-4 feature, concatenates the stride-4
feature projected to ``low_level_channels`` (48 in the paper: fewer than the ASPP's, so that the fine feature does not
outweigh the context), applies two 3x3 convolutions of ``decoder_channels``, a 1x1 convolution to the class logits,
and a bilinear x4 up-sampling to the input's size. Every convolution is followed by BatchNorm and ReLU, except the
pooling branch's (one value per channel and tile: a batch of one in training would leave BatchNorm nothing to
normalise) and the classifier.

With ``separable=True``, the ASPP's dilated convolutions and the decoder's are depthwise-separable, as in the paper
(:class:`~registry.archs.blocks.SeparableConvBNReLU`): on a ResNet-18 a training step at 384 px falls from 138 to 65
GFLOP per image and the parameters from 16.6 to 12.3 million (docs/perf.md). ``deeplabv3plus-xception65`` with
``separable=True`` is the paper's model on its aligned Xception-65. The default is plain convolutions, which the cells
stored before this option was added were trained with. ``size_divisor`` is the output stride. An encoder that timm
cannot dilate (vision transformers) or that has no stride-4 feature is refused when built. The encoder starts from
random weights, or from ``pretrained_path``: see :mod:`registry.archs.timm_encoder` (the file of the undilated encoder
fits: dilation changes no parameter).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from registry import ARCHS
from registry.archs import timm_encoder
from registry.archs.blocks import ConvBNReLU, DoubleConv, SeparableConvBNReLU
from registry.errors import UserError

PREFIX = "deeplabv3plus-"
# Shown by `bench list archs` and covered by the registry-wide contract tests; every other timm name that can be
# dilated works too (deeplabv3plus-resnet50, deeplabv3plus-xception71, ...).
LISTED = ("deeplabv3plus-resnet18", "deeplabv3plus-efficientnet_b0")
PAPER_RATES = (6, 12, 18)  # ASPP dilations at output stride 16


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: parallel 1x1, dilated 3x3 and image-pooling branches, concatenated and
    projected by a 1x1 convolution. The dilated branches are depthwise-separable when ``separable``."""

    def __init__(self, in_channels: int, channels: int, rates: tuple[int, ...], separable: bool = False):
        super().__init__()
        atrous = SeparableConvBNReLU if separable else ConvBNReLU
        self.branches = nn.ModuleList([ConvBNReLU(in_channels, channels, kernel_size=1),
                                       *(atrous(in_channels, channels, dilation=rate) for rate in rates)])
        self.pooling = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, channels, kernel_size=1),
                                     nn.ReLU(inplace=True))
        self.project = ConvBNReLU((len(rates) + 2) * channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pooling(x).expand(-1, -1, *x.shape[-2:])  # a constant map: what up-sampling 1x1 gives
        return self.project(torch.cat([*(branch(x) for branch in self.branches), pooled], dim=1))


class TimmDeepLabV3Plus(nn.Module):
    """A dilated timm encoder, ASPP on its deepest feature, and the decoder that joins it to the stride-4 feature."""

    def __init__(self, encoder_name: str, num_classes: int, in_chans: int = 3, output_stride: int = 16,
                 aspp_channels: int = 256, low_level_channels: int = 48, decoder_channels: int = 256,
                 separable: bool = False):
        super().__init__()
        self.arch = PREFIX + encoder_name
        if isinstance(output_stride, bool) or output_stride not in (8, 16):
            raise UserError(f"{self.arch}: output_stride must be 8 or 16, not {output_stride!r}")
        if not isinstance(separable, bool):
            raise UserError(f"{self.arch}: separable must be true or false, not {separable!r}")
        widths = {"aspp_channels": aspp_channels, "low_level_channels": low_level_channels,
                  "decoder_channels": decoder_channels}
        for key, value in widths.items():
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UserError(f"{self.arch}: {key} must be a positive int, not {value!r}")
        self.encoder = timm_encoder.create_encoder(self.arch, encoder_name, in_chans, output_stride=output_stride)
        channels, strides, self.nhwc = timm_encoder.feature_layout(self.encoder)
        if 4 not in strides or strides[-1] != output_stride:
            raise UserError(f"{self.arch}: DeepLabv3+ needs encoder features at stride 4 and, dilated, at stride "
                            f"{output_stride}; this encoder's are {list(strides)}")
        self.low_level_index = strides.index(4)
        self.size_divisor = output_stride
        self.aspp = ASPP(channels[-1], aspp_channels, tuple(rate * 16 // output_stride for rate in PAPER_RATES),
                         separable)
        self.low_level = ConvBNReLU(channels[self.low_level_index], low_level_channels, kernel_size=1)
        joined = aspp_channels + low_level_channels
        self.decoder = (nn.Sequential(*SeparableConvBNReLU(joined, decoder_channels),
                                      *SeparableConvBNReLU(decoder_channels, decoder_channels))
                        if separable else DoubleConv(joined, decoder_channels))
        self.head = nn.Conv2d(decoder_channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % self.size_divisor or width % self.size_divisor:
            raise UserError(f"{self.arch} needs input sides divisible by {self.size_divisor}, got {height}x{width}")
        features = timm_encoder.encode(self.encoder, x, self.nhwc)
        low_level = self.low_level(features[self.low_level_index])
        context = F.interpolate(self.aspp(features[-1]), size=low_level.shape[-2:], mode="bilinear",
                                align_corners=False)
        logits = self.head(self.decoder(torch.cat([low_level, context], dim=1)))
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)


@ARCHS.register_prefix(PREFIX, known=timm_encoder.timm_model_names, listed=LISTED,
                       what="a timm model name that timm can dilate, see timm.list_models()",
                       test_kwargs={"aspp_channels": 8, "low_level_channels": 4, "decoder_channels": 8})
def timm_deeplabv3plus(encoder_name: str, num_classes: int, in_chans: int = 3, output_stride: int = 16,
                       aspp_channels: int = 256, low_level_channels: int = 48, decoder_channels: int = 256,
                       separable: bool = False, pretrained: bool = False,
                       pretrained_path: str | None = None) -> TimmDeepLabV3Plus:
    """DeepLabv3+ on the timm encoder ``encoder_name`` at ``output_stride`` 16 or 8, with depthwise-separable
    convolutions in its head when ``separable``, randomly initialised, or with the encoder's weights from the local
    file ``pretrained_path``; never downloaded."""
    timm_encoder.check_pretrained(PREFIX + encoder_name, encoder_name, pretrained, pretrained_path)
    model = TimmDeepLabV3Plus(encoder_name, num_classes, in_chans, output_stride, aspp_channels, low_level_channels,
                              decoder_channels, separable)
    if pretrained_path is not None:
        timm_encoder.load_encoder_weights(model.encoder, pretrained_path, model.arch, encoder_name)
    return model
