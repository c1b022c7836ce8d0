"""What the architectures on timm encoders share: building the encoder (``features_only``, never downloading), the
layout of its features, and loading its weights from a local file.

Weights are never downloaded: an encoder starts from random weights, or from ``pretrained_path``, a local file of the
encoder's own ``state_dict`` (``torch.save(timm.create_model(name, features_only=True, pretrained=True).state_dict(),
path)`` on a machine that can download them, or from a local timm checkpoint with
``pretrained_cfg_overlay=dict(file=...)``). The file is the same for every architecture on that encoder: a dilated
encoder (``output_stride``) has the same parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from registry.errors import UserError


def _timm():
    try:
        import timm
    except ImportError:
        raise UserError("architectures on timm encoders need timm: pip install timm") from None
    return timm


def timm_model_names() -> list[str]:
    """Every model name timm knows (imported on first use: timm takes a second to import)."""
    return _timm().list_models()


def create_encoder(arch: str, encoder_name: str, in_chans: int, **options: Any) -> nn.Module:
    """``timm.create_model(encoder_name, features_only=True, pretrained=False, in_chans=in_chans, **options)``; an
    encoder timm cannot build so is a :class:`UserError` naming ``arch``."""
    try:
        return _timm().create_model(encoder_name, features_only=True, pretrained=False, in_chans=in_chans, **options)
    except (RuntimeError, NotImplementedError, AssertionError, TypeError) as err:
        how = f" with {', '.join(f'{k}={v!r}' for k, v in options.items())}" if options else ""
        raise UserError(f"{arch}: timm cannot build it as a feature encoder{how}: {err}") from None


def feature_layout(encoder: nn.Module) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    """The encoder's features, shallowest first: their channels, their strides, and whether they come as NHWC
    tensors (Swin) rather than NCHW."""
    nhwc = getattr(getattr(encoder, "output_fmt", None), "value", "NCHW") == "NHWC"
    return tuple(encoder.feature_info.channels()), tuple(encoder.feature_info.reduction()), nhwc


def encode(encoder: nn.Module, x: torch.Tensor, nhwc: bool) -> list[torch.Tensor]:
    """The encoder's features of ``x`` as NCHW tensors."""
    features = encoder(x)
    return [f.permute(0, 3, 1, 2) for f in features] if nhwc else list(features)


def load_encoder_weights(encoder: nn.Module, path: str | Path, arch: str, encoder_name: str) -> None:
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
    how = f"save it with {save_command(encoder_name)}"
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


def save_command(encoder_name: str) -> str:
    return f"torch.save(timm.create_model({encoder_name!r}, features_only=True, pretrained=True).state_dict(), path)"


def check_pretrained(arch: str, encoder_name: str, pretrained: bool, pretrained_path: str | None) -> None:
    """``pretrained = true`` alone would mean a download, which the harness never does: ask for the file."""
    if pretrained and pretrained_path is None:
        raise UserError(f"{arch}: pretrained=True needs pretrained_path: the harness never downloads weights. Save "
                        f"the encoder's weights to a file where they can be had ({save_command(encoder_name)} with "
                        f"path 'encoder.pt') and pass pretrained_path = 'encoder.pt'")
