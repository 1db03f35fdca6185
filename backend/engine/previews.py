"""Cheap per-step previews: latent -> RGB by a linear map, no VAE decode.

A VAE decode per step would double the cost of sampling; a 4x3 linear map of the x0 prediction's latent
channels gives a recognisable thumbnail in microseconds. The map depends on the VAE, so it is *fitted* per
model (least squares against a few real decodes, `fit_latent_rgb_factors`) at load time and stored with the
model; `default_factors` falls back to a generic mapping when none was fitted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


class LatentRGBFactors(NamedTuple):
    """rgb = latent_channels @ weights + bias, rgb in [0, 1]. weights (C, 3), bias (3,)."""

    weights: torch.Tensor
    bias: torch.Tensor


def _generic_factors(channels: int = 4, gain: float = 0.25) -> LatentRGBFactors:
    # Our own fallback, not fitted to any VAE: the first three channels as R, G, B around mid-grey. Scaled
    # latents have roughly unit spread, so a 0.25 gain keeps about two standard deviations inside [0, 1].
    weights = torch.zeros(channels, 3)
    weights[:3] = torch.eye(3) * gain
    return LatentRGBFactors(weights, torch.full((3,), 0.5))


# Fallbacks per family, read-only (real factors are fitted per model at load time).
LATENT_RGB_FACTORS: Mapping[str, LatentRGBFactors] = MappingProxyType(
    {"sd1": _generic_factors(), "sd2": _generic_factors(), "sdxl": _generic_factors()}
)


def default_factors(
    family: str, fitted: LatentRGBFactors | tuple[torch.Tensor, torch.Tensor] | None = None
) -> LatentRGBFactors:
    """The factors to preview a model with: those fitted at model-load time if given, else the family fallback."""
    if fitted is not None:
        weights, bias = fitted
        return LatentRGBFactors(
            torch.as_tensor(weights, dtype=torch.float32), torch.as_tensor(bias, dtype=torch.float32)
        )
    if family not in LATENT_RGB_FACTORS:
        logger.warning("no latent->RGB factors for family %r; using the generic mapping", family)
        return _generic_factors()
    return LATENT_RGB_FACTORS[family]


def fit_latent_rgb_factors(latents: torch.Tensor, images: torch.Tensor) -> LatentRGBFactors:
    """Least-squares fit of rgb = latent @ weights + bias.

    `latents` (N, C, h, w); `images` (N, 3, H, W) in [0, 1] (e.g. the VAE's decodes of those latents),
    area-downsampled to (h, w) so each latent pixel is matched with the image patch it decodes to.
    """
    if latents.ndim != 4 or images.ndim != 4 or images.shape[1] != 3 or latents.shape[0] != images.shape[0]:
        raise ValueError(f"need latents (N, C, h, w) and images (N, 3, H, W), got {latents.shape}, {images.shape}")
    small = F.interpolate(images.double(), size=latents.shape[-2:], mode="area")
    inputs = latents.double().permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    outputs = small.permute(0, 2, 3, 1).reshape(-1, 3)
    design = torch.cat([inputs, torch.ones(inputs.shape[0], 1, dtype=inputs.dtype, device=inputs.device)], dim=1)
    # lstsq on CPU: the CUDA driver only solves full-rank systems and the fit is tiny anyway.
    solution = torch.linalg.lstsq(design.cpu(), outputs.cpu()).solution
    return LatentRGBFactors(solution[:-1].float(), solution[-1].float())


def latent_to_rgb(
    latents: torch.Tensor,
    factors: LatentRGBFactors | tuple[torch.Tensor, torch.Tensor],
    size: tuple[int, int] | None = None,
    scale: int = 1,
) -> np.ndarray:
    """Preview image (H, W, 3) uint8 of one latent (C, h, w) or (1, C, h, w).

    Nearest upscaling to `size` = (height, width) if given, else by an integer `scale` (8 = image size).
    """
    if latents.ndim == 4 and latents.shape[0] == 1:
        latents = latents[0]
    if latents.ndim != 3:
        raise ValueError(f"need one latent (C, h, w) or (1, C, h, w), got shape {tuple(latents.shape)}")
    weights, bias = (torch.as_tensor(f, dtype=torch.float32, device=latents.device) for f in factors)
    rgb = torch.einsum("chw,ck->hwk", latents.detach().float(), weights) + bias
    pixels = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    height, width = size if size is not None else (pixels.shape[0] * scale, pixels.shape[1] * scale)
    return _nearest_resize(pixels, height, width)


def _nearest_resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    if (height, width) == pixels.shape[:2]:
        return pixels
    rows = np.arange(height) * pixels.shape[0] // height
    cols = np.arange(width) * pixels.shape[1] // width
    return pixels[rows[:, None], cols[None, :]]
