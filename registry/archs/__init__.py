"""Built-in architectures, written from scratch in plain PyTorch."""

from registry.archs import unet, unetplusplus  # noqa: F401  (registers the entries)
