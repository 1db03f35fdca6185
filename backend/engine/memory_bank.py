"""DragonDiffusion's memory bank: one DDIM inversion that keeps what the edit's sampling needs.

Mou et al. (ICLR 2024, Sec. 3.3 "memory bank") invert the image once and keep, for every step,
- the inverted latent z_t: the reference branch of the gradient guidance recomputes features from it, and
- the K/V projections of the UNet decoder's self-attention: the edit's sampling attends to them ("visual
  cross-attention"), which keeps the content and look of the original.
Both are indexed by the *sampling* step that uses the same timestep (`MemoryBank.latent(step)`,
`bank.kv.get(layer, step)`).

Where the K/V live is a memory decision: the bank's size is known before inverting (tokens x channels x 2 x
layers x steps), so it stays on the accelerator when it fits the budget (a quarter of the free device memory
unless told otherwise) and goes to host memory otherwise - the official code always keeps it on the CPU (about
1.4 GB at 512 px in fp16), which costs a transfer per layer and step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from backend.engine.attention import AttentionController, KVBank, RecordKV, attention_layers, layer_resolution
from backend.engine.cache import inversion_key, value_nbytes
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.inversion import ddim_invert

_MB = 2**20


@dataclass
class MemoryBank:
    """The inversion trajectory [z_0 … z_T] and the decoder self-attention K/V of every step; `guides` keeps what
    the guidance computes from the bank alone (DragonDiffusion's F_gud per step), so a re-run reuses it; `key` is
    the bank's inversion-cache key (None when not cached)."""

    trajectory: list[torch.Tensor]
    kv: KVBank
    layers: tuple[str, ...]
    guides: dict[int, dict[int, torch.Tensor]] = field(default_factory=dict)
    key: str | None = None

    @property
    def steps(self) -> int:
        return len(self.trajectory) - 1

    def latent(self, step: int) -> torch.Tensor:
        """The inverted latent at the timestep of sampling step `step` (step 0 = z_T)."""
        if not 0 <= step < self.steps:
            raise IndexError(f"memory bank has {self.steps} steps, not step {step}")
        return self.trajectory[self.steps - step]

    @property
    def nbytes(self) -> int:
        latents = sum(z.numel() * z.element_size() for z in self.trajectory)
        return latents + self.kv.nbytes + value_nbytes(self.guides)

    def describe(self) -> str:
        where = "host memory" if torch.device(self.kv.device).type == "cpu" else str(self.kv.device)
        return (
            f"memory bank: {self.steps} steps x {len(self.layers)} self-attention layers, "
            f"K/V {self.kv.nbytes / _MB:.1f} MB in {where}, latents {(self.nbytes - self.kv.nbytes) / _MB:.1f} MB"
        )


def decoder_self_attention(engine: Engine) -> list[str]:
    """The layers DragonDiffusion banks: every self-attention (attn1) of the UNet's up blocks."""
    return attention_layers(engine.unet, "self", blocks=("up",))


def kv_bank_bytes(engine: Engine, latents: torch.Tensor, layers: Sequence[str], steps: int) -> int:
    """Size of the K/V a bank of `steps` steps will hold, before computing any of it."""
    height, width = latents.shape[-2:]
    total = 0
    for layer in layers:
        attention = engine.unet.get_submodule(layer)
        rows, cols = layer_resolution(engine.unet, layer, (height, width))
        keys = attention.to_k.out_features
        values = attention.to_v.out_features
        total += latents.shape[0] * rows * cols * (keys + values)
    return total * steps * latents.element_size()


def bank_device(engine: Engine, nbytes: int, budget_bytes: int | None = None) -> torch.device:
    """The engine's device if `nbytes` fit the budget (default: a quarter of the free accelerator memory), else the
    CPU. On a CPU engine both are the same memory."""
    if engine.device.type == "cpu":
        return engine.device
    if budget_bytes is None:
        budget_bytes = _free_bytes(engine.device) // 4
    return engine.device if nbytes <= budget_bytes else torch.device("cpu")


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "mps" and hasattr(torch.mps, "recommended_max_memory"):
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return 0


@torch.no_grad()
def invert_with_memory(
    engine: Engine,
    latents: torch.Tensor,
    cond: Conditioning,
    steps: int,
    layers: Sequence[str] | None = None,
    budget_bytes: int | None = None,
) -> MemoryBank:
    """DDIM-invert `latents` with `cond` (no CFG, as DragonDiffusion does) and bank the K/V of `layers` (default:
    the decoder's self-attention) at every step; the engine's report logs the bank's size and place."""
    layers = tuple(decoder_self_attention(engine) if layers is None else layers)
    nbytes = kv_bank_bytes(engine, latents, layers, steps)
    kv = KVBank(device=bank_device(engine, nbytes, budget_bytes))
    controller = AttentionController(engine.unet)
    with controller.installed({layer: RecordKV(kv) for layer in layers}):
        trajectory = ddim_invert(engine, latents, cond, steps, controller=controller)
    bank = MemoryBank(trajectory, kv, layers)
    engine.report.log(bank.describe())
    return bank


def cached_memory_bank(
    engine: Engine, image: np.ndarray, latents: torch.Tensor, prompt: str, cond: Conditioning, steps: int
) -> MemoryBank:
    """`invert_with_memory` through the engine's inversion cache (bounded in bytes; the bank's K/V count): re-running
    an edit on the same picture, prompt and steps with other weights or another move skips the inversion."""
    key = inversion_key(image, engine.bundle.model_id, prompt, steps, "memory-bank")
    bank = engine.inversion_cache.get(key)
    if bank is not None:
        engine.report.log(f"memory bank reused from cache ({steps} steps)")
        return bank
    bank = invert_with_memory(engine, latents, cond, steps)
    bank.key = key
    engine.inversion_cache.put(key, bank)
    return bank
