"""DDIM inversion (Song et al. 2021, eq. 13 run backwards): image latents z_0 -> z_T along the DDIM path.

Deterministic DDIM is an ODE discretisation, so stepping it in reverse gives noise latents that regenerate
(approximately) the input. The approximation: eps is evaluated at z_{t-1} instead of the unknown z_t, which is
why inversion drifts at large guidance scales (null-text inversion fixes that for CFG > 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

from backend.engine.attention import AttentionController
from backend.engine.cache import inversion_key
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.noise_reg import NoiseRegularisation
from backend.engine.sampling import make_scheduler, predict_noise


def alpha_at(scheduler: DDIMScheduler, t: int) -> torch.Tensor:
    """a_t = prod(1 - beta); before the first timestep DDIM uses `final_alpha_cumprod` (as scheduler.step does)."""
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def ddim_step_between(
    scheduler: DDIMScheduler, sample: torch.Tensor, eps: torch.Tensor, t_from: int, t_to: int
) -> torch.Tensor:
    """Move `sample` from timestep t_from to t_to along the deterministic DDIM path, in either direction."""
    alpha_from = alpha_at(scheduler, t_from).to(sample.device, torch.float32)
    alpha_to = alpha_at(scheduler, t_to).to(sample.device, torch.float32)
    x0 = (sample.float() - (1 - alpha_from).sqrt() * eps.float()) / alpha_from.sqrt()
    return (alpha_to.sqrt() * x0 + (1 - alpha_to).sqrt() * eps.float()).to(sample.dtype)


@torch.no_grad()
def ddim_invert(
    engine: Engine,
    latents: torch.Tensor,
    cond: Conditioning,
    steps: int,
    uncond: Conditioning | None = None,
    guidance_scale: float = 1.0,
    stage: str = "inverting",
    controller: AttentionController | None = None,
    regularise: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Trajectory [z_0, z_{t_1}, …, z_T] (len steps + 1); trajectory[-1 - i] pairs with scheduler.timesteps[i].

    With a `controller`, its step is set before each UNet call to the index of the *sampling* step that uses the
    same timestep (steps - 1 - inversion index), so whatever attention rules record here (a memory bank's K/V) is
    found under the step that will read it. `regularise` rewrites each predicted noise before the step uses it
    (pix2pix-zero's noise regularisation: backend/engine/noise_reg.py)."""
    scheduler = make_scheduler(engine, steps)
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    trajectory = [latents]
    ascending = scheduler.timesteps.flip(0)
    for index, t in enumerate(ascending):
        engine.report.check_cancel()
        if controller is not None:
            controller.step = steps - 1 - index
        eps = predict_noise(engine, latents, t, cond, uncond, guidance_scale)
        if regularise is not None:
            eps = regularise(eps)
        latents = ddim_step_between(scheduler, latents, eps, int(t) - ratio, int(t))
        trajectory.append(latents)
        engine.report.progress(index + 1, steps, stage)
    return trajectory


def cached_ddim_inversion(
    engine: Engine,
    image_key_source,
    latents: torch.Tensor,
    prompt: str,
    cond: Conditioning,
    steps: int,
    uncond: Conditioning | None = None,
    guidance_scale: float = 1.0,
    noise_reg: NoiseRegularisation | None = None,
) -> list[torch.Tensor]:
    """`ddim_invert` through the engine's inversion cache: re-running an edit with other parameters on the
    same image, prompt and steps skips the inversion entirely. `noise_reg`: pix2pix-zero's regularisation of each
    predicted noise (part of the key)."""
    extra = {} if noise_reg is None else {"noise_reg": dataclasses.astuple(noise_reg)}
    key = inversion_key(
        image_key_source, engine.bundle.model_id, prompt, steps, "ddim", guidance=float(guidance_scale), **extra
    )
    cached = engine.inversion_cache.get(key)
    if cached is not None:
        engine.report.log(f"inversion reused from cache ({steps} steps)")
        return [z.to(engine.device) for z in cached]
    regularise = None if noise_reg is None else noise_reg.regulariser()
    trajectory = ddim_invert(engine, latents, cond, steps, uncond, guidance_scale, regularise=regularise)
    engine.inversion_cache.put(key, [z.detach().cpu() for z in trajectory])
    return trajectory
