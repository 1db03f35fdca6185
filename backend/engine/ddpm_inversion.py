"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov, Michaeli, CVPR 2024) over a full schedule.

DDIM inversion follows the ODE backwards and drifts; DDPM "inversion" instead draws every noisy latent x_t
*independently* from q(x_t | x_0) and stores, per step, the noise z_t that the stochastic DDPM step (eta = 1) would
need to land exactly on the next drawn latent:

    x_{t-1} = mu(x_t, eps(x_t, t, c)) + sigma_t z_t   =>   z_t = (x_{t-1} - mu(x_t, eps)) / sigma_t

Sampling again with the same z reproduces the drawn trajectory exactly (to rounding), whatever the prompt's weight
was at inversion; sampling with other attention or another prompt while keeping z changes the picture only where
the change acts. The few-step variant with the noise shift is in turbo.py; Eye-for-an-eye uses this one (100
steps, inversion CFG 3.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.sampling import make_scheduler, predict_noise
from backend.engine.turbo import posterior_mean, train_alphas


@dataclass
class DDPMTrajectory:
    """One image's inversion from step `start` on: `latents[i]` is x at `timesteps[i]` (then x_0 last), `noises[i]`
    the z of the step from timesteps[i] to the next."""

    timesteps: tuple[int, ...]
    latents: list[torch.Tensor]
    noises: list[torch.Tensor]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.latents, *self.noises))


def ddpm_timesteps(engine: Engine, steps: int) -> tuple[int, ...]:
    """The model's DDIM-spaced timesteps for `steps` steps, descending (SD: 991, 981, ..., 1 for 100)."""
    return tuple(int(t) for t in make_scheduler(engine, steps).timesteps)


def step_sigma(alphas: torch.Tensor, t: int, t_prev: int) -> torch.Tensor:
    """sigma_t of the DDPM step t -> t_prev (eta = 1): sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))."""
    alpha_t = alphas[t].float()
    alpha_prev = alphas[t_prev].float() if t_prev >= 0 else torch.ones_like(alpha_t)
    return ((1 - alpha_prev) / (1 - alpha_t) * (1 - alpha_t / alpha_prev)).clamp_min(0).sqrt()


def previous_timestep(timesteps: tuple[int, ...], index: int) -> int:
    """The step's target timestep; after the last one (SD's schedule ends at t = 1) timestep 0, as DDPM/DDIM with
    `set_alpha_to_one=False` do, so the last step keeps a little noise for its z to absorb."""
    if index + 1 < len(timesteps):
        return timesteps[index + 1]
    return 0 if timesteps[-1] > 0 else -1


def ddpm_step(
    alphas: torch.Tensor, latents: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor
) -> torch.Tensor:
    """x_{t-1} = mu(x_t, eps) + sigma_t z: the stochastic DDPM step with a given z."""
    mean = posterior_mean(alphas, latents, eps, t, t_prev)
    return (mean.float() + step_sigma(alphas, t, t_prev) * noise.float()).to(latents.dtype)


@torch.no_grad()
def ddpm_invert(
    engine: Engine,
    x0: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning,
    timesteps: tuple[int, ...],
    guidance: float,
    seed: int,
    start: int = 0,
    stage: str = "inverting",
) -> list[DDPMTrajectory]:
    """Edit-friendly inversion of a batch of latents x0 (B, ...) from step `start` of `timesteps` on, all images in
    one UNet batch per step; returns one trajectory per image. Draws are seeded per step (seed + step index)."""
    alphas = train_alphas(engine)
    kept = timesteps[start:]
    drawn = []
    for index, t in enumerate(kept):
        noise = engine.randn(tuple(x0.shape), seed + start + index)
        alpha = alphas[t].to(x0.dtype)
        drawn.append(alpha.sqrt() * x0 + (1 - alpha).sqrt() * noise)
    drawn.append(x0)
    batch_cond, batch_uncond = (c.repeat(x0.shape[0]) for c in (cond, uncond))
    noises = []
    for index, t in enumerate(kept):
        engine.report.check_cancel()
        t_prev = previous_timestep(kept, index)
        eps = predict_noise(
            engine, drawn[index], torch.tensor(t, device=engine.device), batch_cond, batch_uncond, guidance
        )
        mean = posterior_mean(alphas, drawn[index], eps, t, t_prev)
        sigma = step_sigma(alphas, t, t_prev)
        residual = drawn[index + 1].float() - mean.float()
        noises.append((residual / sigma if sigma > 0 else torch.zeros_like(residual)).to(x0.dtype))
        engine.report.progress(index + 1, len(kept), stage)
    return [
        DDPMTrajectory(kept, [x[i : i + 1] for x in drawn], [z[i : i + 1] for z in noises]) for i in range(x0.shape[0])
    ]
