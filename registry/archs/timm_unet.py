"""``tu-<timm model name>``: a U-Net decoder on any timm encoder, in the manner of segmentation_models_pytorch's
``tu-`` encoders.

The encoder is ``timm.create_model(name, features_only=True, pretrained=False, in_chans=in_chans)``: its
``feature_info`` gives each feature's channels and stride (reduction). From the deepest feature (stride ``R``, 32 for
most encoders) the decoder climbs to full resolution in ``log2(R)`` stages; each up-samples x2 (nearest, as smp),
concatenates the encoder feature of that stride when there is one, and applies two (3x3 conv, BatchNorm, ReLU). An
encoder whose first feature is at stride 4 (ConvNeXt, most transformers) simply has its last two stages without a skip.
A 1x1 convolution maps the last stage to the class logits; ``size_divisor`` is ``R``.

Weights are never downloaded: the encoder starts from random weights, or from ``pretrained_path``, a local file of the
encoder's own ``state_dict`` (``torch.save(timm.create_model(name, features_only=True, pretrained=True).state_dict(),
path)`` on a machine that can download them, or from a local timm checkpoint with
``pretrained_cfg_overlay=dict(file=...)``).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from registry import ARCHS
from registry.archs.blocks import DoubleConv
from registry.errors import UserError

PREFIX = "tu-"
# Shown by `bench list archs` and covered by the registry-wide contract tests; every other timm name works too.
LISTED = ("tu-resnet18", "tu-resnet34", "tu-efficientnet_b0", "tu-convnext_atto")


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("tu- architectures need timm: pip install timm") from None
    return timm


def timm_model_names() -> list[str]:
    """Every model name timm knows (imported on first use: timm takes a second to import)."""
    return _timm().list_models()


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
        try:
            self.encoder = _timm().create_model(encoder_name, features_only=True, pretrained=False, in_chans=in_chans)
        except (RuntimeError, NotImplementedError, AssertionError, TypeError) as err:
            raise UserError(f"{self.arch}: timm cannot build it as a feature encoder: {err}") from None
        channels = self.encoder.feature_info.channels()
        reductions = self.encoder.feature_info.reduction()
        powers = all(r >= 1 and r & (r - 1) == 0 for r in reductions)
        if not powers or sorted(set(reductions)) != list(reductions) or reductions[-1] < 2:
            raise UserError(f"{self.arch}: a U-Net needs encoder features at distinct, rising power-of-two strides "
                            f"(2, 4, ..., 32); this encoder's are {reductions}")
        # An encoder may hand its features channels-last as NHWC tensors (Swin): turn them to NCHW.
        self.nhwc = getattr(getattr(self.encoder, "output_fmt", None), "value", "NCHW") == "NHWC"
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
        features = self.encoder(x)
        if self.nhwc:
            features = [f.permute(0, 3, 1, 2) for f in features]
        skips = dict(zip(self.feature_strides, features))
        y = features[-1]
        for stride, stage in zip(self.stage_strides, self.decoder):
            y = stage(y, skips.get(stride))
        return self.head(y)


def load_encoder_weights(encoder: nn.Module, path: str | Path, arch: str) -> None:
    """Load a local file of the encoder's ``state_dict`` (``torch.save`` or ``.safetensors``) into ``encoder``;
    every mistake is a :class:`UserError` that names the file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{arch}: pretrained_path {str(path)!r}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001  (a corrupt file, an object weights_only refuses: many types)
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{arch}: cannot read encoder weights from {path}: {detail}") from None
    how = (f"save it with torch.save(timm.create_model({arch[len(PREFIX):]!r}, features_only=True).state_dict(), "
           f"path)")
    if not isinstance(state, dict):
        raise UserError(f"{arch}: {path} holds a {type(state).__name__}, not a state_dict; {how}")
    expected = set(encoder.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        parts = [f"{len(keys)} {kind} keys (e.g. {', '.join(keys[:3])})"
                 for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise UserError(f"{arch}: {path} does not hold this encoder's weights: {'; '.join(parts)}; {how}")
    try:
        encoder.load_state_dict(state)
    except RuntimeError as err:  # same keys, other shapes: another depth or width, or other in_chans
        lines = [line.strip() for line in str(err).splitlines() if "size mismatch" in line]
        raise UserError(f"{arch}: {path} does not fit this encoder: {'; '.join(lines[:2]) or err}") from None


@ARCHS.register_prefix(PREFIX, known=timm_model_names, listed=LISTED,
                       what="a timm model name, see timm.list_models()",
                       test_kwargs={"decoder_channels": (8, 8, 8, 8, 8)})
def timm_unet(encoder_name: str, num_classes: int, in_chans: int = 3,
              decoder_channels: tuple[int, ...] | list[int] | None = None, pretrained: bool = False,
              pretrained_path: str | None = None) -> TimmUNet:
    """U-Net decoder (``decoder_channels``, default 256, 128, 64, 32, 16) on the timm encoder ``encoder_name``, randomly
    initialised, or with the encoder's weights from the local file ``pretrained_path``; never downloaded."""
    arch = PREFIX + encoder_name
    if pretrained and pretrained_path is None:
        raise UserError(
            f"{arch}: pretrained=True needs pretrained_path: the harness never downloads weights. Save the encoder's "
            f"weights to a file where they can be had (torch.save(timm.create_model({encoder_name!r}, "
            f"features_only=True, pretrained=True).state_dict(), 'encoder.pt')) and pass pretrained_path = "
            f"'encoder.pt'"
        )
    model = TimmUNet(encoder_name, num_classes, in_chans, decoder_channels)
    if pretrained_path is not None:
        load_encoder_weights(model.encoder, pretrained_path, arch)
    return model
