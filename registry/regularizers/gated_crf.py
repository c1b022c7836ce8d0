"""Gated CRF loss (Obukhov, Georgoulis, Dai, Van Gool, "Gated CRF Loss for Weakly Supervised Semantic Image
Segmentation", NeurIPS 2019 workshop / arXiv:1906.04651)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from registry import register_regularizer
from registry.errors import UserError
from registry.losses._common import check_number
from registry.regularizers._common import check_rampup, sigmoid_rampup


class GatedCRF:
    """Pairwise energy of the softmax over local windows, weighted by a position-and-colour Gaussian kernel.

    Probabilities and images are first down-sampled by ``scale`` (bilinear). For each pixel ``i`` and each other pixel
    ``j`` of the ``window`` x ``window`` neighbourhood around it::

        k_ij = exp(-|pos_i - pos_j|^2 / (2 sigma_xy^2) - |rgb_i - rgb_j|^2 / (2 sigma_rgb^2))
        energy = mean_i sum_j k_ij (1 - sum_c p_ic p_jc)

    Positions are in down-sampled pixels (``sigma_xy`` too). Colours are the *normalised* input (per-channel
    ``(x - mean) / std``), so ``sigma_rgb`` is in normalised units: the default 0.5 is about the paper's 0.1 on the
    0..1 scale for channel stds near 0.2 (ImageNet-like). The gate keeps only pairs whose both pixels lie inside the
    tile (the unfold's zero padding is excluded); the pixel itself (``j = i``) is left out. Unlabelled and labelled
    pixels alike take part (the term is a smoothness prior); ``target`` is not used.

    A constant prediction has zero energy: with very few labels the term can pull the model there before the labels
    have taught it anything. ``rampup`` (a share of training, default 0: none) scales the energy by the sigmoid
    ramp-up of :mod:`registry.regularizers.entropy`, so that the labels speak first.
    """

    def __init__(self, window: int = 5, sigma_xy: float = 6.0, sigma_rgb: float = 0.5, scale: float = 0.5,
                 rampup: float = 0.0):
        if isinstance(window, bool) or not isinstance(window, int) or window < 3 or window % 2 == 0:
            raise UserError(f"gated_crf: window must be an odd integer >= 3, not {window!r}")
        self.window = window
        self.sigma_xy = check_number("gated_crf", "sigma_xy", sigma_xy, positive=True)
        self.sigma_rgb = check_number("gated_crf", "sigma_rgb", sigma_rgb, positive=True)
        self.scale = check_number("gated_crf", "scale", scale, positive=True)
        if self.scale > 1:
            raise UserError(f"gated_crf: scale must be in (0, 1], not {scale!r}")
        self.rampup = check_rampup("gated_crf", rampup)

    def __call__(self, logits: torch.Tensor, target: torch.Tensor, images: torch.Tensor,
                 progress: float) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=1)
        images = images.float()
        if self.scale != 1.0:
            size = (max(1, round(probs.shape[2] * self.scale)), max(1, round(probs.shape[3] * self.scale)))
            probs = F.interpolate(probs, size=size, mode="bilinear", align_corners=False)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        n, c, h, w = probs.shape
        k, r = self.window, self.window // 2
        # [N, ch, K, h*w]: the K neighbours of every pixel (zeros outside the tile)
        p_j = F.unfold(probs, k, padding=r).view(n, c, k * k, h * w)
        rgb_j = F.unfold(images, k, padding=r).view(n, images.shape[1], k * k, h * w)
        inside = F.unfold(probs.new_ones(1, 1, h, w), k, padding=r).view(1, k * k, h * w)
        p_i = probs.view(n, c, 1, h * w)
        rgb_i = images.reshape(n, images.shape[1], 1, h * w)
        offsets = torch.arange(k, device=probs.device, dtype=probs.dtype) - r
        d2 = (offsets.view(k, 1) ** 2 + offsets.view(1, k) ** 2).view(1, k * k, 1)
        gate = inside * (d2 > 0)  # pairs inside the tile, and not the pixel with itself
        kernel = torch.exp(-d2 / (2 * self.sigma_xy ** 2)
                           - ((rgb_i - rgb_j) ** 2).sum(1) / (2 * self.sigma_rgb ** 2)) * gate
        disagreement = 1.0 - (p_i * p_j).sum(1)
        return sigmoid_rampup(progress, self.rampup) * (kernel * disagreement).sum(1).mean()

    def __repr__(self) -> str:
        return (f"GatedCRF(window={self.window}, sigma_xy={self.sigma_xy}, sigma_rgb={self.sigma_rgb}, "
                f"scale={self.scale}, rampup={self.rampup})")


register_regularizer("gated_crf", test_kwargs={"window": 3, "scale": 1.0})(GatedCRF)
