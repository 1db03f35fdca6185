"""Null-text inversion (Mokady, Hertz, Aberman, Pritch, Cohen-Or; CVPR 2023): DDIM inversion that survives
classifier-free guidance.

Plain DDIM inversion (prompt only, w = 1) gives noise that regenerates the picture at w = 1, but an edit samples
with CFG (w = 7.5), and every guided step drifts off the inverted path. Null-text inversion keeps the path and
changes the *unconditional* embedding instead, one per step: from the noisiest step to the cleanest, starting from
z̄_T = z*_T, it optimises ∅_t so that one guided DDIM step from z̄_t lands on the pivot z*_{t-1} of the plain
inversion, then takes that step with the optimised ∅_t. Sampling with the per-step embeddings regenerates the
picture at w = 7.5, and a prompt edit (Prompt-to-Prompt, MDE-Edit) starts from there.

As the reference code (the card, shared/METHODS.md section 5a): Adam with lr 1e-2 (1 - i/100) at step i, at most
10 inner iterations, early stop when the loss is below epsilon + 2e-5 i (epsilon = 1e-5), each step starting from
the previous step's embedding. The optimisation runs in fp32 (it does not converge in fp16): a half-precision UNet
is lifted to fp32 for it and put back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from backend.engine.cache import inversion_key
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.inversion import ddim_invert, ddim_step_between
from backend.engine.sampling import make_scheduler

NTI_GUIDANCE = 7.5
NTI_INNER_STEPS = 10
NTI_EPSILON = 1e-5
NTI_LR = 1e-2


@dataclass
class NullTextInversion:
    """z_T of the plain inversion (the pivots' start), and the optimised unconditional embedding of every sampling
    step (`uncond[i]` pairs with scheduler.timesteps[i]); `losses` the last inner loss of each step."""

    z_T: torch.Tensor
    uncond: list[torch.Tensor]
    losses: list[float]
    guidance: float

    @property
    def steps(self) -> int:
        return len(self.uncond)

    def conditioning(self, step: int, like: Conditioning) -> Conditioning:
        """The unconditional conditioning of sampling step `step`: `like` (the negative prompt's) with the
        optimised embedding in place of its hidden states."""
        hidden = self.uncond[step].to(like.hidden.device, like.hidden.dtype)
        return replace(like, hidden=hidden.expand(len(like), -1, -1))

    def to(self, device: torch.device | str) -> NullTextInversion:
        return NullTextInversion(
            self.z_T.to(device), [u.to(device) for u in self.uncond], list(self.losses), self.guidance
        )


@contextmanager
def fp32_unet(engine: Engine) -> Iterator[None]:
    """The UNet in fp32 for the duration (optimising through fp16 fails), then back to the model's dtype."""
    unet = engine.unet
    original = next(unet.parameters()).dtype
    if original == torch.float32:
        yield
        return
    unet.to(torch.float32)
    try:
        yield
    finally:
        unet.to(original)


def null_text_invert(
    engine: Engine,
    latents: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    steps: int,
    guidance: float = NTI_GUIDANCE,
    inner_steps: int = NTI_INNER_STEPS,
    epsilon: float = NTI_EPSILON,
) -> NullTextInversion:
    """Invert `latents` with `cond` and optimise the null-text embedding of every step (module docstring).

    Progress is reported per step ("null-text inversion"); cancelling is checked at every inner iteration."""
    with fp32_unet(engine):
        latents = latents.float()
        cond = as_fp32(cond)
        uncond = as_fp32(uncond)
        pivots = ddim_invert(engine, latents, cond, steps, stage="inverting (DDIM pivots)")
        scheduler = make_scheduler(engine, steps)
        ratio = scheduler.config.num_train_timesteps // steps
        embedding = uncond.hidden.detach().clone()
        current = pivots[-1]
        kept, losses = [], []
        for index, t in enumerate(scheduler.timesteps):
            target = pivots[-2 - index]
            with torch.no_grad():
                eps_cond = engine.unet(current, t, **cond.unet_kwargs()).sample
            embedding = embedding.detach().requires_grad_(True)
            optimiser = torch.optim.Adam([embedding], lr=NTI_LR * (1.0 - index / 100.0))
            loss_value = float("nan")
            for _ in range(inner_steps):
                engine.report.check_cancel()
                with torch.enable_grad():
                    eps_uncond = engine.unet(current, t, **replace(uncond, hidden=embedding).unet_kwargs()).sample
                    eps = eps_uncond + guidance * (eps_cond - eps_uncond)
                    stepped = ddim_step_between(scheduler, current, eps, int(t), int(t) - ratio)
                    loss = F.mse_loss(stepped, target)
                    optimiser.zero_grad(set_to_none=True)
                    loss.backward()
                optimiser.step()
                loss_value = float(loss.detach())
                if loss_value < epsilon + index * 2e-5:
                    break
            embedding = embedding.detach()
            kept.append(embedding.clone())
            losses.append(loss_value)
            with torch.no_grad():
                eps_uncond = engine.unet(current, t, **replace(uncond, hidden=embedding).unet_kwargs()).sample
                eps = eps_uncond + guidance * (eps_cond - eps_uncond)
                current = ddim_step_between(scheduler, current, eps, int(t), int(t) - ratio)
            engine.report.progress(index + 1, steps, "null-text inversion")
    return NullTextInversion(pivots[-1].to(engine.dtype), kept, losses, guidance)


def as_fp32(conditioning: Conditioning) -> Conditioning:
    """The same conditioning with its floating-point parts in fp32."""
    return Conditioning(*(x.float() if x is not None and x.is_floating_point() else x for x in conditioning._parts()))


def cached_null_text_inversion(
    engine: Engine,
    image: np.ndarray,
    latents: torch.Tensor,
    prompt: str,
    cond: Conditioning,
    uncond: Conditioning,
    steps: int,
    guidance: float = NTI_GUIDANCE,
    inner_steps: int = NTI_INNER_STEPS,
    epsilon: float = NTI_EPSILON,
    negative_prompt: str = "",
) -> NullTextInversion:
    """`null_text_invert` through the engine's inversion cache (the slow part of an NTI edit: up to 10 x steps
    forward and backward passes): a re-run on the same picture and prompt with other edit settings skips it."""
    key = inversion_key(
        image,
        engine.bundle.model_id,
        prompt,
        steps,
        "null-text",
        guidance=float(guidance),
        inner=int(inner_steps),
        epsilon=float(epsilon),
        negative=negative_prompt,
    )
    cached = engine.inversion_cache.get(key)
    if cached is not None:
        engine.report.log(f"null-text inversion reused from cache ({steps} steps)")
        return cached.to(engine.device)
    inversion = null_text_invert(engine, latents, cond, uncond, steps, guidance, inner_steps, epsilon)
    engine.report.log(
        f"null-text inversion: {steps} steps, last inner loss {inversion.losses[-1]:.2e} "
        f"(mean {sum(inversion.losses) / len(inversion.losses):.2e})"
    )
    engine.inversion_cache.put(key, inversion.to("cpu"))
    return inversion
