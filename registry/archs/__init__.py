"""Built-in architectures: ``unet`` and ``unetplusplus`` written from scratch in plain PyTorch, and on any timm encoder
``tu-<timm model name>`` (a U-Net decoder) and ``deeplabv3plus-<timm model name>`` (DeepLabv3+)."""

from registry.archs import deeplabv3plus, timm_unet, unet, unetplusplus  # noqa: F401  (registers the entries)
