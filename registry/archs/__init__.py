"""Built-in architectures: ``unet`` and ``unetplusplus`` written from scratch in plain PyTorch, and ``tu-<timm model
name>``, a U-Net decoder on a timm encoder."""

from registry.archs import timm_unet, unet, unetplusplus  # noqa: F401  (registers the entries)
