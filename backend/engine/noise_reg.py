"""pix2pix-zero's noise regularisation of DDIM inversion (Parmar et al., SIGGRAPH 2023, Sec. 3.2; card:
shared/METHODS.md section 4, step 3).

DDIM inversion's predicted noise drifts away from white Gaussian noise (neighbouring cells correlate), and an
inverted z_T that is not Gaussian-like edits badly. Each predicted eps is therefore nudged, before the inversion
step uses it, down two losses (gradient steps on eps itself; no gradient through the UNet):
- **pairwise auto-correlation**: per channel, a pyramid of 2 x 2 average poolings down to 8 x 8; at every level the
  squared mean of the noise times itself rolled by a random offset in [1, side / 2), along each axis;
- **KL to N(0, 1)**: var + mean^2 - 1 - log var over all cells.
Defaults as the reference code: 5 rounds of (5 auto-correlation steps of lambda_AC / 5, lambda_AC = 20, then one KL
step of lambda_KL = 20).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

LAMBDA_AC = 20.0
LAMBDA_KL = 20.0
ROUNDS = 5
ROLLS = 5
SMALLEST = 8  # the pyramid stops at this side


def auto_correlation_loss(noise: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sum over items, channels and pyramid levels of the squared mean of noise x (noise rolled by a random
    offset), along height and along width. White noise scores near 0, smooth noise high."""
    level = noise.float().flatten(0, 1)[:, None]  # every (item, channel) its own map
    total = level.new_zeros(())
    while True:
        side = level.shape[-1]
        shift = int(torch.randint(1, max(side // 2, 2), (1,), generator=generator))
        for axis in (2, 3):
            products = level * torch.roll(level, shifts=shift, dims=axis)
            total = total + products.mean(dim=(1, 2, 3)).square().sum()
        if min(level.shape[-2:]) <= SMALLEST:
            return total
        level = F.avg_pool2d(level, 2)


def kl_loss(noise: torch.Tensor) -> torch.Tensor:
    """KL divergence (up to a factor 2) of N(mean, var) of all cells from N(0, 1): var + mean^2 - 1 - log var."""
    values = noise.float()
    variance = values.var()
    return variance + values.mean().square() - 1 - torch.log(variance)


def regularised_noise(
    eps: torch.Tensor,
    lambda_ac: float = LAMBDA_AC,
    lambda_kl: float = LAMBDA_KL,
    rounds: int = ROUNDS,
    rolls: int = ROLLS,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """eps after `rounds` of (`rolls` auto-correlation gradient steps of lambda_ac / rolls, one KL step of
    lambda_kl); the same dtype and shape."""
    current = eps.detach().float()
    with torch.enable_grad():
        for _ in range(rounds):
            if lambda_ac:
                for _ in range(rolls):
                    leaf = current.clone().requires_grad_(True)
                    (gradient,) = torch.autograd.grad(auto_correlation_loss(leaf, generator), leaf)
                    current = current - lambda_ac / rolls * gradient
            if lambda_kl:
                leaf = current.clone().requires_grad_(True)
                (gradient,) = torch.autograd.grad(kl_loss(leaf), leaf)
                current = current - lambda_kl * gradient
    return current.to(eps.dtype)


def noise_regulariser(
    lambda_ac: float = LAMBDA_AC, lambda_kl: float = LAMBDA_KL, rounds: int = ROUNDS, seed: int = 0
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A regulariser for `ddim_invert(..., regularise=...)`, its random rolls drawn from `seed`."""
    generator = torch.Generator().manual_seed(seed)

    def regularise(eps: torch.Tensor) -> torch.Tensor:
        return regularised_noise(eps, lambda_ac, lambda_kl, rounds, generator=generator)

    return regularise


@dataclass(frozen=True)
class NoiseRegularisation:
    """The regularisation's settings (an inversion cache key part); `regulariser()` makes a fresh one."""

    lambda_ac: float = LAMBDA_AC
    lambda_kl: float = LAMBDA_KL
    rounds: int = ROUNDS
    seed: int = 0

    def regulariser(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return noise_regulariser(self.lambda_ac, self.lambda_kl, self.rounds, self.seed)
