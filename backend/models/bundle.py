"""A loaded model: the diffusers parts every method builds its own loop from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass
class ModelBundle:
    """UNet + VAE + text encoder(s) + tokenizer(s) + scheduler config of one model, on one device.

    `text_encoders`/`tokenizers` hold one entry for sd1/sd2 and two for sdxl (CLIP ViT-L, OpenCLIP bigG).
    """

    model_id: str
    family: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    default_size: int = 512
    latent_rgb: tuple[torch.Tensor, torch.Tensor] | None = None  # (weights 4x3, bias 3) fitted at load time
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scaling(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def latent_shift(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizers[0].model_max_length)

    def modules(self) -> list[Any]:
        return [self.unet, self.vae, *self.text_encoders]

    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in self.modules() for p in m.parameters())
