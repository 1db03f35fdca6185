"""DragonDiffusion (Mou, Wang, Xie, Shan, Zhang; ICLR 2024): drag-style editing by gradient guidance from feature
correspondence, with a memory bank of the inversion. Paper: shared/papers/004_13e99f6cf754c4b7.txt; card:
shared/METHODS.md section 1. The five tasks (move, resize, appearance replace, paste, point drag) are being built
on the pieces here (issue 6); so far this module holds the paper's energies and its update rule, and the memory
bank lives in backend/engine/memory_bank.py.

Notation as in the paper (Sec. 3.4):
- F_gen: UNet-decoder features of the latent being generated, z_t^gen (with gradient);
- F_gud: features of the guidance latent z_t^gud from the memory bank (no gradient: sg(.) in the paper);
- m_gen, m_gud: where the content should be and where it was; m_share: what must not change;
- S_local (Eq. 3): mean over the masked pixels of 0.5 cos(F_gen[m_gen], sg(F_gud[m_gud])) + 0.5, pixel k of
  m_gen paired with pixel k of m_gud in raster order (a shifted mask pairs each point with its origin);
- S_global (Eq. 4): the same similarity between the *mean* features of the two regions (appearance);
- an energy is 1 / (alpha + beta S) with alpha = 1, beta = 4 (Eq. 5, 6): small when the features agree;
- E = w_e E_edit + w_c E_content + w_o E_opt (Eq. 7); E_opt for move (Eq. 9) makes the vacated region m_ipt look
  like a reference region m_ref and unlike the object that left it.
The gradient of E with respect to z_t^gen, times a step size eta, is added to the predicted noise in the first
n = 30 of 50 steps; the DDIM update then takes x0 from the guided noise and the direction from the unguided one
(`guided_ddim_step`), so the guidance moves only the clean-image estimate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.features import FeatureTap
from backend.engine.inversion import alpha_at

ALPHA = 1.0
BETA = 4.0
INPAINT_WEIGHT = 2.5  # w_i of Eq. 9
# Sec. 3.4.2: the 2nd and 3rd decoder blocks (semantic and geometric correspondence), guidance averaged over both.
FEATURE_BLOCKS = (1, 2)

EnergyFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(F_gen, F_gud) at one scale, both (B, C, h, w) -> scalar energy; masks are resized with `mask_at`."""


def masked_features(features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) features at the True pixels of an (H, W) mask, raster order: (B, C, N)."""
    if mask.shape != features.shape[-2:]:
        raise ValueError(f"mask {tuple(mask.shape)} does not match features {tuple(features.shape[-2:])}")
    mask = mask.to(features.device, torch.bool)
    if not mask.any():
        raise ValueError("empty mask: there is nothing to compare")
    return features[..., mask]


def s_local(gen: torch.Tensor, gen_mask: torch.Tensor, gud: torch.Tensor, gud_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 3: dense similarity, point k of m_gen against point k of m_gud, in [0, 1]."""
    current, guide = masked_features(gen, gen_mask), masked_features(gud, gud_mask).detach()
    if current.shape != guide.shape:
        raise ValueError(f"m_gen has {current.shape[-1]} pixels and m_gud {guide.shape[-1]}: they must pair up")
    return (0.5 * F.cosine_similarity(current, guide, dim=1) + 0.5).mean()


def s_global(gen: torch.Tensor, gen_mask: torch.Tensor, gud: torch.Tensor, gud_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 4: similarity of the regions' mean features (a region's overall appearance), in [0, 1]."""
    current = masked_features(gen, gen_mask).mean(dim=-1)
    guide = masked_features(gud, gud_mask).detach().mean(dim=-1)
    return (0.5 * F.cosine_similarity(current, guide, dim=1) + 0.5).mean()


def energy(similarity: torch.Tensor, alpha: float = ALPHA, beta: float = BETA) -> torch.Tensor:
    """Eq. 5 / 6: 1 / (alpha + beta S); from 1 / alpha (nothing alike) down to 1 / (alpha + beta) (identical)."""
    return 1.0 / (alpha + beta * similarity)


def move_inpaint_energy(
    gen: torch.Tensor,
    gud: torch.Tensor,
    inpaint_mask: torch.Tensor,
    reference_mask: torch.Tensor,
    inpaint_weight: float = INPAINT_WEIGHT,
) -> torch.Tensor:
    """Eq. 9, E_opt of object moving: the vacated region m_ipt (old place minus new place) should look like the
    reference region m_ref (global similarity) and not like the object that was there (local similarity, which
    this term *raises* the energy by). Zero when the object's new place covers its old one entirely."""
    if not inpaint_mask.any():
        return gen.new_zeros(())
    alike = energy(s_global(gen, inpaint_mask, gud, reference_mask))
    return inpaint_weight * alike + s_local(gen, inpaint_mask, gud, inpaint_mask)


def guided_ddim_step(
    scheduler: DDIMScheduler,
    latents: torch.Tensor,
    eps: torch.Tensor,
    eps_guided: torch.Tensor,
    t: int,
    t_prev: int,
) -> torch.Tensor:
    """DragonDiffusion's DDIM update: z_{t_prev} = sqrt(a_prev) x0(eps_guided) + sqrt(1 - a_prev) eps.

    x0 is predicted from the guided noise, the direction towards z_t from the unguided one; with
    eps_guided = eps this is the plain deterministic DDIM step."""
    alpha = alpha_at(scheduler, int(t)).to(latents.device, torch.float32)
    alpha_prev = alpha_at(scheduler, int(t_prev)).to(latents.device, torch.float32)
    x0 = (latents.float() - (1 - alpha).sqrt() * eps_guided.float()) / alpha.sqrt()
    return (alpha_prev.sqrt() * x0 + (1 - alpha_prev).sqrt() * eps.float()).to(latents.dtype)


def mask_at(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """An (H, W) mask on a feature grid of `size`: nearest-neighbour resize, then > 0.5 (as the official code)."""
    grid = F.interpolate(mask.float()[None, None], size=size, mode="nearest")[0, 0]
    return grid > 0.5


def decoder_features(
    engine: Engine,
    latents: torch.Tensor,
    t: torch.Tensor | int,
    cond: Conditioning,
    *,
    requires_grad: bool,
    blocks: Sequence[int] = FEATURE_BLOCKS,
) -> dict[int, torch.Tensor]:
    """Outputs of the given decoder blocks for z_t, from a UNet pass cut after the last of them (the official
    code's "estimator", here the same UNet with a hook). Conditional prompt only, no CFG, as in the paper."""
    tap = FeatureTap(engine.unet, blocks, detach=not requires_grad, truncate=True)
    with torch.set_grad_enabled(requires_grad):
        return dict(tap.run(latents, t, **cond.unet_kwargs()))


def guidance_gradient(
    engine: Engine,
    latents: torch.Tensor,
    guide_latents: torch.Tensor,
    t: torch.Tensor | int,
    cond: Conditioning,
    energy_at_scale: EnergyFunction,
    blocks: Sequence[int] = FEATURE_BLOCKS,
) -> tuple[torch.Tensor, float]:
    """dE/dz_t^gen and E, with E the mean over the feature scales of `energy_at_scale(F_gen, F_gud)`: F_gen from
    the current latents (with gradient), F_gud from the memory bank's latents of the same step (without)."""
    guide = decoder_features(engine, guide_latents, t, cond, requires_grad=False, blocks=blocks)
    current_latents = latents.detach().requires_grad_(True)
    with torch.enable_grad():
        current = decoder_features(engine, current_latents, t, cond, requires_grad=True, blocks=blocks)
        total = sum(energy_at_scale(current[b].float(), guide[b].float()) for b in blocks) / len(blocks)
        (gradient,) = torch.autograd.grad(total, current_latents)
    return gradient, float(total.detach())
