"""Built-in architectures: ``unet`` and ``unetplusplus`` written from scratch in plain PyTorch; the reference
experiment's own two models, ``reference-unet`` and ``reference-unetplusplus`` (its layout and weight names, so its
checkpoints load); and on any timm encoder ``tu-<timm model name>`` (a U-Net decoder) and
``deeplabv3plus-<timm model name>`` (DeepLabv3+)."""

from registry.archs import deeplabv3plus, reference, timm_unet, unet, unetplusplus  # noqa: F401  (registers the entries)
