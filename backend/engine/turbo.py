"""Few-step edit-friendly inversion and editing (TurboEdit, Deutch et al., SIGGRAPH Asia 2024; card:
shared/METHODS.md section 2a), the base Cora builds on.

With 3-5 steps there is no ODE to invert. Instead each noisy latent is drawn *independently* from q(x_t | x_0),
and the noise a step would have to add to land on the next drawn latent is stored ("edit-friendly" DDPM inversion,
Huberman-Spiegelglas et al. 2024):

    z_i = x_{i+1} - mu(x_i, t_i, c_src)

mu the deterministic DDPM posterior mean from the model's eps. Two choices of the paper make it work in few steps:
- **noise shift**: x_i is drawn at the *next lower* timestep than the one the network is told (told 799, drawn at
  599; the last step is told 199 and given x_0 itself), which matches the statistics a distilled model expects;
- **pseudo-guidance**: the edit follows x'_{i+1} = k x_{i+1} + [mu(x'_i, c_src) - k mu(x_i, c_src)]
  + w [mu(x'_i, c_tgt) - mu(x'_i, c_src)], with k = 1 (i.e. mu(x'_i, c_src) + z_i + w x the prompt difference),
  except on the last step where k = min(1, 15.5 / |z|) keeps an outsized correction out.
All three UNet evaluations of a step (inversion branch, edit with the source prompt, edit with the target prompt)
run as one batch of 3; no classifier-free guidance (SDXL-Turbo is distilled without it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine

# Nominal timesteps per step count (TurboEdit's run configs: a 5-step trailing schedule without its first step for
# 4 steps; [799, 499, 199] for 3), and Cora's 4-step schedule.
TURBO_TIMESTEPS = {3: (799, 499, 199), 4: (799, 599, 399, 199), 5: (799, 639, 479, 319, 159)}
CORA_TIMESTEPS = {3: (999, 599, 199), 4: (999, 799, 499, 199), 5: (999, 799, 599, 399, 199)}
LAST_STEP_MAX_NORM = 15.5

MeanHook = Callable[[int, torch.Tensor], torch.Tensor]
"""(step, means (3, ...) = [inversion, edit with source, edit with target]) -> means: Cora's corrections."""


def noise_levels(timesteps: tuple[int, ...]) -> tuple[int, ...]:
    """The noise shift: step i's latent is drawn at the level of step i + 1's timestep; the last one is x_0."""
    return (*timesteps[1:], 0)


def train_alphas(engine: Engine) -> torch.Tensor:
    """alpha-bar_t of the model's training schedule (whatever scheduler class its config names)."""
    return DDPMScheduler.from_config(dict(engine.bundle.scheduler_config)).alphas_cumprod.to(engine.device)


def posterior_mean(alphas: torch.Tensor, sample: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
    """The deterministic DDPM step from t to t_prev (its mean, no noise), as DDPMScheduler.step computes it."""
    alpha_t = alphas[t].float()
    alpha_prev = alphas[t_prev].float() if t_prev >= 0 else torch.ones_like(alpha_t)
    step_alpha = alpha_t / alpha_prev
    x0 = (sample.float() - (1 - alpha_t).sqrt() * eps.float()) / alpha_t.sqrt()
    x0_coefficient = alpha_prev.sqrt() * (1 - step_alpha) / (1 - alpha_t)
    sample_coefficient = step_alpha.sqrt() * (1 - alpha_prev) / (1 - alpha_t)
    return (x0_coefficient * x0 + sample_coefficient * sample.float()).to(sample.dtype)


def drawn_latents(
    engine: Engine, x0: torch.Tensor, levels: tuple[int, ...], alphas: torch.Tensor, seed: int
) -> list[torch.Tensor]:
    """[x_0 drawn at each level ..., x_0]: independent draws from q(x_t | x_0) (level 0 = x_0 itself)."""
    latents = []
    for index, level in enumerate(levels):
        if level <= 0:
            latents.append(x0)
            continue
        noise = engine.randn(tuple(x0.shape), seed + index)
        alpha = alphas[level].to(x0.dtype)
        latents.append(alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise)
    return [*latents, x0]


@dataclass
class TurboEditResult:
    latents: torch.Tensor  # the edited x_0 (1, ...)
    corrections: list[torch.Tensor]  # z_i, one per step
    norms: list[float]


@torch.no_grad()
def turbo_edit(
    engine: Engine,
    x0: torch.Tensor,
    source: Conditioning,
    target: Conditioning,
    timesteps: tuple[int, ...],
    pseudo_guidance: float,
    seed: int,
    max_norm: float = LAST_STEP_MAX_NORM,
    mean_hook: MeanHook | None = None,
    stage: str = "editing",
) -> TurboEditResult:
    """Invert and edit in one pass of len(timesteps) batch-3 UNet calls."""
    alphas = train_alphas(engine)
    levels = noise_levels(timesteps)
    drawn = drawn_latents(engine, x0, levels, alphas, seed)
    conditioning = Conditioning.cat([source, source, target])
    edited, corrections, norms = drawn[0], [], []
    total = len(timesteps)
    for step, t in enumerate(timesteps):
        engine.report.check_cancel()
        t_prev = timesteps[step + 1] if step + 1 < total else -1
        batch = torch.cat([drawn[step], edited, edited])
        timestep = torch.tensor(t, device=engine.device)
        eps = engine.unet(batch, timestep, **conditioning.unet_kwargs()).sample
        means = posterior_mean(alphas, batch, eps, t, t_prev)
        if mean_hook is not None:
            means = mean_hook(step, means)
        inverted, edit_source, edit_target = means.chunk(3)
        correction = drawn[step + 1] - inverted
        norm = float(correction.float().norm())
        k = min(1.0, max_norm / norm) if step == total - 1 and max_norm > 0 and norm > 0 else 1.0
        edited = edit_source + k * correction + pseudo_guidance * (edit_target - edit_source)
        corrections.append(correction)
        norms.append(norm)
        engine.report.progress(step + 1, total, stage)
        engine.preview(step + 1, total, preview_estimate(alphas, edited, levels[step + 1] if step + 1 < total else 0))
    return TurboEditResult(edited, corrections, norms)


def preview_estimate(alphas: torch.Tensor, latents: torch.Tensor, level: int) -> torch.Tensor:
    """For previews: the latent at its noise level, scaled back (a noisy but recognisable picture)."""
    return latents if level <= 0 else latents / alphas[level].sqrt().to(latents.dtype)
