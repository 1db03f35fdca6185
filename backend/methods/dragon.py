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
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from backend.engine.attention import AttentionController, ReplaceKV
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.features import FeatureTap
from backend.engine.inversion import alpha_at
from backend.engine.memory_bank import MemoryBank
from backend.engine.sampling import make_scheduler, predict_noise, predicted_x0

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


GuidanceTerm = tuple[EnergyFunction, torch.Tensor | None]
"""An energy and the latent cells its gradient may change ((h, w) bool; None = all): the official code lets the
edit energies move the edited region and the content energy everything else."""


def guidance_gradient(
    engine: Engine,
    latents: torch.Tensor,
    guide_latents: torch.Tensor,
    t: torch.Tensor | int,
    cond: Conditioning,
    energy_at_scale: EnergyFunction | Sequence[GuidanceTerm],
    blocks: Sequence[int] = FEATURE_BLOCKS,
) -> tuple[torch.Tensor, float]:
    """dE/dz_t^gen and E, with E the mean over the feature scales of `energy_at_scale(F_gen, F_gud)`: F_gen from
    the current latents (with gradient), F_gud from the memory bank's latents of the same step (without). With
    several terms, each one's gradient is kept to its region and the gradients are summed (one UNet pass)."""
    terms = [(energy_at_scale, None)] if callable(energy_at_scale) else list(energy_at_scale)
    guide = decoder_features(engine, guide_latents, t, cond, requires_grad=False, blocks=blocks)
    current_latents = latents.detach().requires_grad_(True)
    gradient, total = torch.zeros_like(latents, dtype=torch.float32), 0.0
    with torch.enable_grad():
        current = decoder_features(engine, current_latents, t, cond, requires_grad=True, blocks=blocks)
        for index, (term, region) in enumerate(terms):
            value = sum(term(current[b].float(), guide[b].float()) for b in blocks) / len(blocks)
            if not value.requires_grad:  # a term with nothing to compare (e.g. no vacated region)
                continue
            (part,) = torch.autograd.grad(value, current_latents, retain_graph=index < len(terms) - 1)
            gradient += part.float() if region is None else part.float() * region.to(part.device)
            total += float(value.detach())
    return gradient.to(latents.dtype), total


# --- object moving (Sec. 3.4.3) -------------------------------------------------------------------------------


def shift(tensor: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift the last two axes by (dy, dx), filling with zeros: what leaves the frame is gone (no wrap-around)."""
    out = torch.zeros_like(tensor)
    height, width = tensor.shape[-2:]
    if abs(dy) >= height or abs(dx) >= width:
        return out
    src_y, dst_y = slice(max(-dy, 0), height - max(dy, 0)), slice(max(dy, 0), height - max(-dy, 0))
    src_x, dst_x = slice(max(-dx, 0), width - max(dx, 0)), slice(max(dx, 0), width - max(-dx, 0))
    out[..., dst_y, dst_x] = tensor[..., src_y, src_x]
    return out


@dataclass(frozen=True)
class MoveMasks:
    """The regions of a move, all (H, W) bool at one resolution (Sec. 3.4.3, "Object moving"):
    gud - where the object is (m_gud; the part whose new place is still inside the image),
    gen - where it goes (m_gen = m_gud shifted by (dy, dx)),
    share - neither: must not change (m_share = C(m_gen u object)),
    inpaint - the vacated place (m_ipt = object minus m_gen),
    reference - what the vacated place should look like (m_ref; the user's region, default m_share)."""

    object: torch.Tensor
    dy: int
    dx: int
    user_reference: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.object.any():
            raise ValueError("the object mask is empty (or too small for this resolution)")
        if not shift(self.object.bool(), self.dy, self.dx).any():
            raise ValueError("the move takes the object entirely out of the image")

    @property
    def gen(self) -> torch.Tensor:
        return shift(self.object.bool(), self.dy, self.dx)

    @property
    def gud(self) -> torch.Tensor:
        return shift(self.gen, -self.dy, -self.dx)

    @property
    def share(self) -> torch.Tensor:
        return ~(self.object.bool() | self.gen)

    @property
    def inpaint(self) -> torch.Tensor:
        return self.object.bool() & ~self.gen

    @property
    def reference(self) -> torch.Tensor:
        return self.share if self.user_reference is None else self.user_reference.bool()

    def at(self, size: tuple[int, int]) -> MoveMasks:
        """The move on a coarser grid (masks nearest-resized, the vector scaled and rounded), so that m_gen is
        still m_gud shifted and the two pair point for point."""
        scale_y, scale_x = size[0] / self.object.shape[-2], size[1] / self.object.shape[-1]
        reference = None if self.user_reference is None else mask_at(self.user_reference, size)
        return MoveMasks(mask_at(self.object, size), round(self.dy * scale_y), round(self.dx * scale_x), reference)


def move_energy(masks: MoveMasks, w_edit: float, w_content: float, w_opt: float) -> EnergyFunction:
    """Eq. 7 for moving: w_e E_edit (the object's features at the new place, Eq. 3 + 5) + w_c E_content (Eq. 6
    over m_share) + w_o E_opt (Eq. 9 over the vacated place)."""
    edit, content = _move_terms(masks, w_edit, w_content, w_opt)

    def at_scale(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        return edit(gen, gud) + content(gen, gud)

    return at_scale


def move_guidance(
    masks: MoveMasks, w_edit: float, w_content: float, w_opt: float, latent_size: tuple[int, int]
) -> list[GuidanceTerm]:
    """Eq. 7 for moving as two guidance terms, as the official code applies them: the edit energies (E_edit +
    E_opt) move only the latent cells the object touches, old or new place; the content energy the others."""
    edit, content = _move_terms(masks, w_edit, w_content, w_opt)
    touched = (masks.object.bool() | masks.gen).float()[None, None]
    region = F.adaptive_max_pool2d(touched, latent_size)[0, 0] > 0
    return [(edit, region), (content, ~region)]


def _move_terms(masks: MoveMasks, w_edit: float, w_content: float, w_opt: float) -> tuple[EnergyFunction, ...]:
    grids: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def at(features: torch.Tensor) -> dict[str, torch.Tensor]:
        """The move's masks on this feature grid, computed once per grid size, not at every step and term."""
        size = tuple(features.shape[-2:])
        if size not in grids:
            grid = masks.at(size)
            names = ("gen", "gud", "share", "inpaint", "reference")
            grids[size] = {name: getattr(grid, name).to(features.device) for name in names}
        return grids[size]

    def edit(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        grid = at(gen)
        total = w_edit * energy(s_local(gen, grid["gen"], gud, grid["gud"]))
        if w_opt and grid["inpaint"].any() and grid["reference"].any():
            total = total + w_opt * move_inpaint_energy(gen, gud, grid["inpaint"], grid["reference"])
        return total

    def content(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        grid = at(gen)
        if not grid["share"].any():
            return gen.new_zeros(())
        return w_content * energy(s_local(gen, grid["share"], gud, grid["share"]))

    return edit, content


def moved_start(z_T: torch.Tensor, masks: MoveMasks) -> torch.Tensor:
    """The move's z_T: the inverted noise with the object's own cells pasted at its new place (the official code's
    initialisation; the guidance does the rest)."""
    grid = masks.at(tuple(z_T.shape[-2:]))
    return torch.where(grid.gen.to(z_T.device), shift(z_T, grid.dy, grid.dx), z_T)


def guided_sampling(
    engine: Engine,
    bank: MemoryBank,
    start: torch.Tensor,
    cond: Conditioning,
    uncond: Conditioning | None,
    guidance_scale: float,
    energy_at_scale: EnergyFunction | Sequence[GuidanceTerm],
    step_size: float,
    guided_steps: int,
    visual_attention_from: int | None,
) -> torch.Tensor:
    """Sec. 3.4-3.5: DDIM from `start` with CFG; in the first `guided_steps` steps the noise gets step_size x
    dE/dz_t (features against the bank's latent of the same step) and the update takes x0 from it
    (`guided_ddim_step`); from step `visual_attention_from` on (None = never) the decoder self-attention reads
    the bank's K/V instead of its own (visual cross-attention)."""
    steps = bank.steps
    scheduler = make_scheduler(engine, steps)
    ratio = scheduler.config.num_train_timesteps // steps
    controller = AttentionController(engine.unet)
    rules = {}
    if visual_attention_from is not None:
        rules = {layer: ReplaceKV(bank.kv, steps=range(visual_attention_from, steps)) for layer in bank.layers}
    latents = start
    with controller.installed(rules):
        for step, t in enumerate(scheduler.timesteps):
            engine.report.check_cancel()
            controller.step = step
            with torch.no_grad():
                eps = predict_noise(engine, latents, t, cond, uncond, guidance_scale)
            guided = eps
            if step < guided_steps and step_size:
                # The guidance branch runs without the bank's K/V: it compares this latent's own features.
                controller.step = -1
                gradient, _ = guidance_gradient(engine, latents, bank.latent(step), t, cond, energy_at_scale)
                guided = eps + step_size * gradient
            x0 = predicted_x0(scheduler, latents, guided, t)
            latents = guided_ddim_step(scheduler, latents, eps, guided, int(t), int(t) - ratio)
            engine.report.progress(step + 1, steps, "editing")
            engine.preview(step + 1, steps, x0)
    return latents
