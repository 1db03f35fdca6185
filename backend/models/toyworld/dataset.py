"""Training data for the toy-world model: rendered scenes, and their VAE latents cached once.

The UNet never sees pixels: a large fixed set of scenes is rendered and encoded once with the trained VAE and
cached as a .safetensors file in the work dir (the VAE then costs nothing per UNet step; the feasibility probe
measured it as the cheapest big win). Scene `i` of a cache is `scene_for_seed(seed, i)`, so captions are
re-derived from the seed instead of stored, and each step draws a fresh caption variant (word order, optional
size/position words) with classifier-free-guidance dropout (empty caption, p = 0.1).

Every batch is a pure function of (seed, step): resuming from a checkpoint replays exactly the batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from backend.models.toyworld.grounding import object_coverage, token_weights
from backend.models.toyworld.world import Scene, caption, render, scene_for_seed

log = logging.getLogger(__name__)

CFG_DROPOUT = 0.1
_CHUNK = 256


def _render_chunk(seed: int, start: int, stop: int, size: int) -> np.ndarray:
    return np.stack([render(scene_for_seed(seed, index), size)[0] for index in range(start, stop)])


def render_pool(workers: int) -> contextlib.AbstractContextManager:
    """Processes for render_images (a null context for workers <= 1). Open one for many calls: each start
    spawns `workers` interpreters that import torch, seconds apiece."""
    if workers <= 1:
        return contextlib.nullcontext()
    # spawn, not fork: the parent may hold a CUDA context, which forked children must not inherit.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def render_images(
    seed: int, count: int, size: int, workers: int = 0, start: int = 0, pool: ProcessPoolExecutor | None = None
) -> np.ndarray:
    """uint8 (count, size, size, 3): scenes start..start+count of `seed`, rendered in `pool` or in `workers`
    processes of its own."""
    bounds = [(a, min(a + _CHUNK, start + count)) for a in range(start, start + count, _CHUNK)]
    if pool is None and workers > 1 and len(bounds) > 1:
        with render_pool(workers) as own:
            return render_images(seed, count, size, start=start, pool=own)
    if pool is None or len(bounds) == 1:
        chunks = [_render_chunk(seed, a, b, size) for a, b in bounds]
    else:
        chunks = list(pool.map(_render_chunk, *zip(*[(seed, a, b, size) for a, b in bounds])))
    return np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)


def to_pixels(images: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1], the VAE's input range."""
    tensor = torch.as_tensor(images).to(device)
    return tensor.permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_latents(
    vae,
    seed: int,
    count: int,
    size: int,
    batch_size: int = 256,
    workers: int = 0,
    progress: Callable[[int, int], None] | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Posterior means (count, C, size/8, size/8) of scenes start..start+count-1 of `seed`, unscaled, float16 on
    the CPU."""
    device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
    parts = []
    block = max(batch_size, _CHUNK * max(workers, 1) * 2)  # render a few chunks per worker at a time
    with render_pool(workers) as pool:
        for first in range(start, start + count, block):
            images = render_images(seed, min(block, start + count - first), size, start=first, pool=pool)
            for offset in range(0, len(images), batch_size):
                pixels = to_pixels(images[offset : offset + batch_size], device).to(dtype)
                parts.append(vae.encode(pixels).latent_dist.mean.float().half().cpu())
            if progress is not None:
                progress(min(first + block, start + count) - start, count)
    return torch.cat(parts)


def cache_path(work_dir: Path, seed: int, count: int, size: int) -> Path:
    return Path(work_dir) / f"latents_{size}px_{count}_seed{seed}.safetensors"


def cached_counts(work_dir: Path, seed: int, size: int) -> list[int]:
    """Scene counts of the finished latent caches of (seed, size) in `work_dir`, ascending."""
    counts = []
    for path in Path(work_dir).glob(f"latents_{size}px_*_seed{seed}.safetensors"):
        middle = path.name[len(f"latents_{size}px_") : -len(f"_seed{seed}.safetensors")]
        if middle.isdigit() and cache_path(work_dir, seed, int(middle), size) == path:
            counts.append(int(middle))
    return sorted(counts)


def save_latents(path: Path, latents: torch.Tensor, scaling_factor: float) -> None:
    """Atomic: a crash mid-write never leaves a truncated cache that a resume would trust."""
    partial = path.with_suffix(".partial")
    save_file({"latents": latents.contiguous()}, str(partial), metadata={"scaling_factor": repr(scaling_factor)})
    partial.replace(path)


def load_latents(path: Path) -> torch.Tensor:
    return load_file(str(path))["latents"]


class LatentCaptionDataset(torch.utils.data.Dataset):
    """(scaled latents, token ids) of the cached scenes; `batch(step, size)` is what the trainer draws."""

    def __init__(
        self,
        latents: torch.Tensor,
        tokenizer,
        seed: int,
        scaling_factor: float,
        cfg_dropout: float = CFG_DROPOUT,
        grounding: bool = False,
    ) -> None:
        self.latents = latents
        self.tokenizer = tokenizer
        self.seed = seed
        self.scaling_factor = scaling_factor
        self.cfg_dropout = cfg_dropout
        self.grounding = grounding
        self._scenes: dict[int, Scene] = {}
        self._coverage: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.latents)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One scene with its full caption (no augmentation, no dropout)."""
        ids = self.tokenize([caption(self.scene(index))])[0]
        return self.latents[index].float() * self.scaling_factor, ids

    def scene(self, index: int) -> Scene:
        if index not in self._scenes:
            self._scenes[index] = scene_for_seed(self.seed, index)
        return self._scenes[index]

    def tokenize(self, captions: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(
            list(captions), padding="max_length", max_length=77, truncation=True, return_tensors="pt"
        ).input_ids

    def captions(self, step: int, indices: np.ndarray) -> list[str]:
        """Caption variants for one step, empty with probability cfg_dropout (the unconditional branch)."""
        rng = np.random.default_rng([self.seed, step, 1])
        texts = [caption(self.scene(int(index)), rng) for index in indices]
        dropped = rng.random(len(texts)) < self.cfg_dropout
        return ["" if drop else text for text, drop in zip(texts, dropped)]

    def coverage(self, index: int) -> np.ndarray:
        """The scene's object masks on the latent grid (see grounding.object_coverage), computed once."""
        if index not in self._coverage:
            self._coverage[index] = object_coverage(self.scene(index), self.latents.shape[-1])
        return self._coverage[index]

    def batch(self, step: int, batch_size: int) -> tuple[torch.Tensor, ...]:
        """The batch of training step `step`: a pure function of (seed, step). (latents, token ids), and with
        `grounding` also each object's mask on the latent grid and which tokens name it (grounding.py)."""
        rng = np.random.default_rng([self.seed, step, 0])
        indices = rng.integers(0, len(self), size=batch_size)
        latents = self.latents[torch.from_numpy(indices)].float() * self.scaling_factor
        texts = self.captions(step, indices)
        if not self.grounding:
            return latents, self.tokenize(texts)
        scenes = [self.scene(int(index)) for index in indices]
        coverage = torch.from_numpy(np.stack([self.coverage(int(index)) for index in indices])).float()
        return latents, self.tokenize(texts), coverage, token_weights(scenes, texts)
