"""The one sampling loop: every method's denoising goes through `denoise`, with one per-step hook.

Per step: cancel check -> predict noise (classifier-free guidance by default, or the method's own predictor,
e.g. with gradient guidance) -> DDIM step -> the method's hook `(step, t, latents, x0_pred) -> latents`
-> progress + preview from x0_pred.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler

from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine

StepHook = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor | None]
NoisePredictor = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def make_scheduler(engine: Engine, steps: int) -> DDIMScheduler:
    """A fresh DDIM scheduler from the model's own config (deterministic, eta = 0), set to `steps` steps."""
    config = dict(engine.bundle.scheduler_config)
    config.update(clip_sample=False)
    scheduler = DDIMScheduler.from_config(config)
    scheduler.set_timesteps(int(steps), device=engine.device)
    return scheduler


def predict_noise(
    engine: Engine,
    latents: torch.Tensor,
    t: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None = None,
    guidance_scale: float = 1.0,
) -> torch.Tensor:
    """eps(z_t, t, c), with classifier-free guidance eps_u + w (eps_c - eps_u) when w != 1."""
    if uncond is None or guidance_scale == 1.0:
        return engine.unet(latents, t, **cond.unet_kwargs()).sample
    both = Conditioning.cat([uncond, cond])
    eps_uncond, eps_cond = engine.unet(torch.cat([latents, latents]), t, **both.unet_kwargs()).sample.chunk(2)
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def predicted_x0(scheduler: DDIMScheduler, latents: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x0 = (z_t - sqrt(1 - a_t) eps) / sqrt(a_t): the clean-image estimate at this step (DDIM eq. 12)."""
    alpha = scheduler.alphas_cumprod.to(latents.device)[int(t)].to(latents.dtype)
    return (latents - (1 - alpha).sqrt() * eps) / alpha.sqrt()


def denoise(
    engine: Engine,
    latents: torch.Tensor,
    scheduler: DDIMScheduler,
    timesteps: torch.Tensor,
    predict: NoisePredictor,
    hook: StepHook | None = None,
    stage: str = "denoising",
) -> torch.Tensor:
    """Run DDIM from `latents` at timesteps[0] down through `timesteps`; returns the final latents."""
    total = len(timesteps)
    for step, t in enumerate(timesteps):
        engine.report.check_cancel()
        eps = predict(latents, t, step)
        output = scheduler.step(eps, t, latents, eta=0.0)
        latents, x0_pred = output.prev_sample, output.pred_original_sample
        if hook is not None:
            replaced = hook(step, t, latents, x0_pred)
            latents = latents if replaced is None else replaced
        engine.report.progress(step + 1, total, stage)
        engine.preview(step + 1, total, x0_pred)
    return latents


def guided_predictor(
    engine: Engine, cond: Conditioning, uncond: Conditioning | None, guidance_scale: float
) -> NoisePredictor:
    """The default predictor: classifier-free guidance with fixed prompts."""

    def predict(latents: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        return predict_noise(engine, latents, t, cond, uncond, guidance_scale)

    return predict


@torch.no_grad()
def sample(
    engine: Engine,
    cond: Conditioning,
    uncond: Conditioning | None,
    size: tuple[int, int],
    steps: int,
    guidance_scale: float,
    seed: int,
    hook: StepHook | None = None,
) -> torch.Tensor:
    """Plain text-to-image DDIM sampling (the benchmark's reference and the 'generate' baseline)."""
    scheduler = make_scheduler(engine, steps)
    factor = engine.bundle.vae_scale_factor
    channels = engine.unet.config.in_channels
    latents = engine.randn((1, channels, size[0] // factor, size[1] // factor), seed) * scheduler.init_noise_sigma
    predict = guided_predictor(engine, cond, uncond, guidance_scale)
    return denoise(engine, latents, scheduler, scheduler.timesteps, predict, hook, stage="sampling")
