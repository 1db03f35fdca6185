"""The Engine a method receives: the loaded model plus image <-> latent conversion, prompts, previews, caches."""

from __future__ import annotations

import logging

import numpy as np
import torch
from PIL import Image

from backend.engine.cache import LRUBytesCache
from backend.engine.conditioning import Conditioning, encode_prompts
from backend.engine.previews import fit_latent_rgb_factors, latent_to_rgb
from backend.engine.report import Reporter, SilentReporter
from backend.models.bundle import ModelBundle

log = logging.getLogger(__name__)

DEFAULT_INVERSION_CACHE_BYTES = 512 * 2**20


class Engine:
    """Shared machinery for one job on one loaded model. Methods build their loops from these parts."""

    def __init__(
        self,
        bundle: ModelBundle,
        report: Reporter | None = None,
        inversion_cache: LRUBytesCache | None = None,
    ) -> None:
        self.bundle = bundle
        self.report = report or SilentReporter()
        self.inversion_cache = inversion_cache if inversion_cache is not None else LRUBytesCache(0)

    # --- model facts -------------------------------------------------------------------------------------

    @property
    def unet(self):
        return self.bundle.unet

    @property
    def device(self) -> torch.device:
        return self.bundle.device

    @property
    def dtype(self) -> torch.dtype:
        return self.bundle.dtype

    @property
    def size_multiple(self) -> int:
        """Image sides must divide by this: VAE downsampling times the UNet's downsamplings."""
        unet_levels = len(self.unet.config.block_out_channels) - 1
        return self.bundle.vae_scale_factor * 2**unet_levels

    def generator(self, seed: int) -> torch.Generator:
        # Noise is drawn on the CPU so a seed gives the same picture on every device.
        return torch.Generator("cpu").manual_seed(int(seed))

    def randn(self, shape: tuple[int, ...], seed: int) -> torch.Tensor:
        noise = torch.randn(shape, generator=self.generator(seed), dtype=torch.float32)
        return noise.to(self.device, self.dtype)

    # --- images ------------------------------------------------------------------------------------------

    def working_size(self, height: int, width: int, max_side: int | None = None) -> tuple[int, int]:
        """The size the model works at: long side = the model's native size (or `max_side`), sides rounded
        to the UNet's multiple. The result is resized back to the user's size."""
        target = max_side or self.bundle.default_size
        scale = target / max(height, width)
        multiple = self.size_multiple

        def fit(side: int) -> int:
            return max(multiple, int(round(side * scale / multiple)) * multiple)

        return fit(height), fit(width)

    def to_working(self, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        if rgb.shape[:2] == size:
            return rgb
        return np.asarray(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.LANCZOS))

    def prepare_image(self, rgb: np.ndarray, max_side: int | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """The user's picture at working size, and its latents z_0."""
        working = self.to_working(rgb, self.working_size(*rgb.shape[:2], max_side))
        return working, self.encode_image(working)

    @staticmethod
    def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """uint8/bool mask -> float32 in [0, 1] of `size` (bilinear keeps soft edges soft)."""
        image = Image.fromarray((mask.astype(np.float32) * (255.0 if mask.dtype == bool else 1.0)).astype(np.uint8))
        return np.asarray(image.resize((size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0

    def mask_to_latent(self, mask: np.ndarray) -> torch.Tensor:
        """(1, 1, h, w) float mask at latent resolution from a pixel mask of the working size: each latent cell
        takes the largest value of its factor x factor pixels, so every cell the mask touches is free to change.
        (An averaged mask leaves a small object's cells mostly "known": a 24 px circle is 3 cells across, and
        re-noised z_0 in them kept its old colour however the prompt read. The pixel composite after decoding puts
        back what lies outside the mask.)"""
        factor = self.bundle.vae_scale_factor
        values = np.asarray(mask, dtype=np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)  # bool, uint8, float
        pixels = torch.from_numpy(np.ascontiguousarray(values))[None, None]
        small = torch.nn.functional.max_pool2d(pixels, factor, stride=factor)
        return small.to(self.device, self.dtype)

    @torch.no_grad()
    def encode_image(self, rgb: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> scaled VAE latents (1, 4, H/8, W/8), the mean of the posterior (deterministic)."""
        vae = self.bundle.vae
        pixels = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        posterior = vae.encode(pixels.to(self.device, vae.dtype)).latent_dist
        latents = (posterior.mean - self.bundle.latent_shift) * self.bundle.latent_scaling
        return latents.to(self.dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> np.ndarray:
        """Scaled latents (1, 4, h, w) -> uint8 (h*8, w*8, 3): the full VAE decode, used for results only."""
        vae = self.bundle.vae
        scaled = latents.to(vae.dtype) / self.bundle.latent_scaling + self.bundle.latent_shift
        pixels = vae.decode(scaled).sample[0].float().clamp(-1, 1)
        return ((pixels + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()

    # --- prompts -----------------------------------------------------------------------------------------

    def encode_prompts(self, prompts: list[str], size: tuple[int, int] | None = None) -> Conditioning:
        return encode_prompts(self.bundle, prompts, size)

    # --- previews ----------------------------------------------------------------------------------------

    def latent_rgb_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear latent -> RGB map of this model's VAE, fitted once per loaded model (cheap per-step previews)."""
        if self.bundle.latent_rgb is None:
            self.bundle.latent_rgb = self._fit_latent_rgb()
        return self.bundle.latent_rgb

    @torch.no_grad()
    def _fit_latent_rgb(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Smooth random colour fields: enough variety for a 4x3 least-squares fit, tiny to encode.
        rng = np.random.default_rng(0)
        side = self.size_multiple * max(1, 64 // self.size_multiple)
        coarse = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
        images = np.stack(
            [np.asarray(Image.fromarray(c).resize((side, side), Image.Resampling.BICUBIC)) for c in coarse]
        )
        latents = torch.cat([self.encode_image(image) for image in images]).float().cpu()
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
        return fit_latent_rgb_factors(latents, pixels)

    def preview(self, step: int, total: int, x0_pred: torch.Tensor) -> None:
        """Preview from the x0 prediction (not the noisy latent): what the image will become."""
        if not self.report.previews:
            return
        rgb = latent_to_rgb(x0_pred[:1].detach().float().cpu(), self.latent_rgb_factors())
        self.report.preview(step, total, rgb)
