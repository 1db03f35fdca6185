"""DragonDiffusion (Mou, Wang, Xie, Shan, Zhang; ICLR 2024): drag-style editing by gradient guidance from feature
correspondence, with a memory bank of the inversion. Paper: shared/papers/004_13e99f6cf754c4b7.txt; card:
shared/METHODS.md section 1.

The five tasks are methods here, each the same loop (`guided_sampling`) with its own start latent, energies,
gradient regions and visual cross-attention (Sec. 3.4.3 and 3.5; the card's table for the defaults):

| method | start z_T | E_edit | E_opt | visual cross-attention |
|---|---|---|---|---|
| dragon-move / dragon-resize | object's noise relocated | S_local, F_gud relocated | Eq. 9 | replace, from step 5 |
| dragon-appearance | base z_T | S_global vs the reference object | - | base outside + reference inside, to 35 |
| dragon-paste | reference object's noise pasted | S_local vs relocated F_ref | - | as appearance |
| dragon-drag | 3 x 3 patches copied | 3 x 3 patches, handle -> target | non-overlap | concat, from step 5 |

The memory bank (inversion latents + decoder self-attention K/V) lives in backend/engine/memory_bank.py.

Notation as in the paper (Sec. 3.4):
- F_gen: UNet-decoder features of the latent being generated, z_t^gen (with gradient);
- F_gud: features of the guidance latent z_t^gud from the memory bank (no gradient: sg(.) in the paper);
- m_gen, m_gud: where the content should be and where it was; m_share: what must not change;
- S_local (Eq. 3): mean over the pixels of m_gen of 0.5 cos(F_gen, sg(F_gud)) + 0.5, each point of m_gen paired
  with the point it came from: F_gud is relocated by the edit's own map (`Relocation`: shift, scale, paste) so the
  pair sits at the same place;
- S_global (Eq. 4): the same similarity between the *mean* features of the two regions (appearance);
- an energy is 1 / (alpha + beta S) with alpha = 1, beta = 4 (Eq. 5, 6): small when the features agree;
- E = w_e E_edit + w_c E_content + w_o E_opt (Eq. 7); E_opt for move (Eq. 9) makes the vacated region m_ipt look
  like a reference region m_ref and unlike the object that left it.
The gradient of E with respect to z_t^gen, times a step size eta, is added to the predicted noise in the first
n = 30 of 50 steps; the DDIM update then takes x0 from the guided noise and the direction from the unguided one
(`guided_ddim_step`), so the guidance moves only the clean-image estimate.

Choices of the official code kept here (the paper does not say): features of both blocks resized to image / 4 before
comparing; each energy's gradient kept to its region (edit inside, content outside; `gradient_regions` off gives
the paper's gradient of the summed E, one backward pass on one latent instead of one per term); eta = slider x 1e3
x 0.08 (move) or 0.04 (others); noise relocated cell by cell (nearest). Atelier's own additions: the toy-world model
needs a larger eta (`MODEL_GAIN`); F_gud are kept in the memory bank, so a re-run on the same picture (bank from the
inversion cache) computes neither the inversion nor them; results carry their masks and a feature correspondence
of points for the GUI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler

from backend.engine.attention import (
    AttentionController,
    AttentionRule,
    ConcatKV,
    MergeKV,
    ReplaceKV,
    layer_resolution,
)
from backend.engine.blend import composite, mask_array
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.features import FeatureTap
from backend.engine.inversion import alpha_at
from backend.engine.memory_bank import MemoryBank, cached_memory_bank
from backend.engine.sampling import make_scheduler, predict_noise, predicted_x0
from backend.errors import InputError
from backend.methods.registry import MethodResult, method
from backend.protocol import INSIGHT_KEY, EditRequest, ParamSpec

ALPHA = 1.0
BETA = 4.0
INPAINT_WEIGHT = 2.5  # w_i of Eq. 9
# Sec. 3.4.2: the 2nd and 3rd decoder blocks (semantic and geometric correspondence), guidance averaged over both.
FEATURE_BLOCKS = (1, 2)
# Both blocks' features are resized to the same grid, twice the latent's (H/4: 128 x 128 for SD at 512 px), as the
# official code does; the masks are taken on that grid. None compares them on their own grids.
FEATURE_SCALE: int | None = 2

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
    code's "estimator", here the same UNet with a hook). Conditional prompt only, no CFG, as in the paper. A batch
    of latents may come with one timestep each; `cond` is repeated to the batch."""
    tap = FeatureTap(engine.unet, blocks, detach=not requires_grad, truncate=True)
    if len(cond) != latents.shape[0]:
        cond = cond.repeat(latents.shape[0] // len(cond))
    with torch.set_grad_enabled(requires_grad):
        return on_feature_grid(dict(tap.run(latents, t, **cond.unet_kwargs())), latents)


def on_feature_grid(features: dict[int, torch.Tensor], latents: torch.Tensor) -> dict[int, torch.Tensor]:
    """The official code compares features on one grid, image / 4 (twice the latent's), bilinearly resized."""
    if FEATURE_SCALE is None:
        return features
    size = (latents.shape[-2] * FEATURE_SCALE, latents.shape[-1] * FEATURE_SCALE)
    return {b: F.interpolate(f, size=size, mode="bilinear", align_corners=False) for b, f in features.items()}


class GuideFeatures:
    """F_gud of a memory bank at each guided step (the bank's latent at the step's timestep, with the prompt it was
    inverted with: `cond` must be that prompt), computed a chunk of steps per UNet call: they do not depend on the
    edit, and one batched pass is about twice as fast as one pass per step on a CPU. They are kept in the bank
    (`MemoryBank.guides`), so a re-run on the same picture (bank from the inversion cache) computes none."""

    def __init__(
        self, engine: Engine, bank: MemoryBank, cond: Conditioning, timesteps: torch.Tensor, chunk: int = 8
    ) -> None:
        self.engine, self.bank, self.cond, self.timesteps, self.chunk = engine, bank, cond, timesteps, chunk

    @torch.no_grad()
    def at(self, step: int) -> dict[int, torch.Tensor]:
        kept = self.bank.guides
        if step not in kept:
            first = step - step % self.chunk
            chosen = range(first, min(first + self.chunk, self.bank.steps))
            latents = torch.cat([self.bank.latent(index) for index in chosen])
            timesteps = self.timesteps[first : first + len(chosen)].to(latents.device)
            tap = FeatureTap(self.engine.unet, FEATURE_BLOCKS, truncate=True)
            features = dict(tap.run(latents, timesteps, **self.cond.repeat(len(chosen)).unet_kwargs()))
            kept.update({index: {b: f[k : k + 1] for b, f in features.items()} for k, index in enumerate(chosen)})
            if self.bank.key is not None:  # the cached bank grew: let the cache count it
                self.engine.inversion_cache.remeasure(self.bank.key)
        return on_feature_grid(kept[step], self.bank.latent(step))


GuidanceTerm = tuple[EnergyFunction, torch.Tensor | None]
"""An energy and the latent cells its gradient may change ((h, w) bool; None = all): the official code lets the
edit energies move the edited region and the content energy everything else."""


def guidance_gradient(
    engine: Engine,
    latents: torch.Tensor,
    guide_latents: torch.Tensor | Sequence[torch.Tensor] | dict[int, torch.Tensor],
    t: torch.Tensor | int,
    cond: Conditioning,
    energy_at_scale: EnergyFunction | Sequence[GuidanceTerm],
    blocks: Sequence[int] = FEATURE_BLOCKS,
    guide_conds: Sequence[Conditioning] | None = None,
) -> tuple[torch.Tensor, float]:
    """dE/dz_t^gen and E, with E the mean over the feature scales of `energy_at_scale(F_gen, F_gud)`: F_gen from
    the current latents (with gradient), F_gud from the memory bank's latents of the same step (without), or given
    as features ({block: (B, C, h, w)}). Several guide latents (the base image's and a reference image's, same size)
    give F_gud stacked on the batch axis: item 0 the base, item 1 the reference; `guide_conds` are their prompts
    (default: `cond` for all).

    With several terms, each one's gradient is kept to its region and the gradients are summed. One forward and one
    backward pass serve all terms: the latents are repeated once per term and term k reads copy k's features, so
    the gradient reaching copy k is term k's alone."""
    terms = [(energy_at_scale, None)] if callable(energy_at_scale) else list(energy_at_scale)
    if isinstance(guide_latents, dict):
        guide = guide_latents
    else:
        guides = [guide_latents] if isinstance(guide_latents, torch.Tensor) else list(guide_latents)
        conds = [cond] * len(guides) if guide_conds is None else list(guide_conds)
        per_guide = [
            decoder_features(engine, z, t, c, requires_grad=False, blocks=blocks) for z, c in zip(guides, conds)
        ]
        guide = {b: torch.cat([features[b] for features in per_guide]) for b in blocks}
    copies = latents.detach().repeat(len(terms), *([1] * (latents.ndim - 1))).requires_grad_(True)
    total, values = 0.0, []
    with torch.enable_grad():
        current = decoder_features(engine, copies, t, cond, requires_grad=True, blocks=blocks)
        for index, (term, _) in enumerate(terms):
            value = sum(term(current[b][index : index + 1].float(), guide[b].float()) for b in blocks) / len(blocks)
            if value.requires_grad:  # a term with nothing to compare (e.g. no vacated region) gives no gradient
                values.append(value)
                total += float(value.detach())
        if not values:
            return torch.zeros_like(latents), total
        (parts,) = torch.autograd.grad(sum(values), copies)
    gradient = torch.zeros_like(latents, dtype=torch.float32)
    for index, (_, region) in enumerate(terms):
        part = parts[index : index + 1].float()
        gradient += part if region is None else part * region.to(part.device)
    return gradient.to(latents.dtype), total


# --- where content goes: one affine map per edit ---------------------------------------------------------------


def _normalised(pixel: float, size: int) -> float:
    """A pixel coordinate (centre of pixel 0 = 0) in grid_sample's [-1, 1] units (align_corners=False)."""
    return (2.0 * pixel + 1.0) / size - 1.0


@dataclass(frozen=True)
class Relocation:
    """Content of a source image placed in the edited image by one affine map, the same on every grid: `theta`
    (2 x 3, affine_grid's convention, x row then y row) takes a destination point in normalised coordinates to
    the source point whose content lands there. `source_mask` (H, W) bool is the object on the source image (the
    edited image itself for move and resize, the reference image for paste)."""

    source_mask: torch.Tensor
    theta: torch.Tensor

    def warp(self, tensor: torch.Tensor, size: tuple[int, int], mode: str = "bilinear") -> torch.Tensor:
        """A (B, C, h, w) tensor on the source image (any grid) resampled onto a destination grid of `size`;
        zero where the map points outside the source (the paper's zero padding when shrinking)."""
        theta = self.theta.to(tensor.device, torch.float32)[None].expand(tensor.shape[0], -1, -1)
        grid = F.affine_grid(theta, [tensor.shape[0], tensor.shape[1], *size], align_corners=False)
        out = F.grid_sample(tensor.float(), grid, mode=mode, padding_mode="zeros", align_corners=False)
        return out.to(tensor.dtype)

    def placed(self, size: tuple[int, int]) -> torch.Tensor:
        """m_gen: where the object lands, (h, w) bool on a destination grid of `size`."""
        return self.warp(self.source_mask.float()[None, None], size, mode="nearest")[0, 0] > 0.5


def move_relocation(object_mask: torch.Tensor, dy: float, dx: float, scale: float = 1.0) -> Relocation:
    """Move by (dy, dx) pixels and scale by gamma about the centre of the object's box (Sec. 3.4.3: move; resize)."""
    if scale <= 0:
        raise ValueError(f"the scale must be positive, got {scale}")
    mask = object_mask.bool()
    if not mask.any():
        raise ValueError("the object mask is empty (or too small for this resolution)")
    height, width = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    cy = _normalised((float(ys.min()) + float(ys.max())) / 2, height)
    cx = _normalised((float(xs.min()) + float(xs.max())) / 2, width)
    ny, nx = 2.0 * dy / height, 2.0 * dx / width
    theta = torch.tensor([[1 / scale, 0.0, cx - (cx + nx) / scale], [0.0, 1 / scale, cy - (cy + ny) / scale]])
    relocation = Relocation(mask, theta)
    if not relocation.placed((height, width)).any():
        raise ValueError("the move takes the object entirely out of the image")
    return relocation


def paste_relocation(
    reference_mask: torch.Tensor, placement: tuple[float, float, float], image_size: tuple[int, int]
) -> Relocation:
    """The reference image's object placed on the edited image: reference point (u, v) lands at image point
    (x + s u, y + s v) for placement (x, y, s) in the edited image's pixels (the GUI's reference layer: its top-left
    corner at (x, y), each reference pixel s image pixels wide)."""
    x, y, scale = placement
    if scale <= 0:
        raise ValueError(f"the placement scale must be positive, got {scale}")
    ref_height, ref_width = reference_mask.shape
    height, width = image_size

    def row(size: int, ref_size: int, offset: float) -> list[float]:
        # Image point X (continuous, pixel i spans [i, i + 1)) shows reference point U = (X - offset) / scale.
        return [size / (scale * ref_size), (size - 2 * offset) / (scale * ref_size) - 1]

    ax, bx = row(width, ref_width, x)
    ay, by = row(height, ref_height, y)
    relocation = Relocation(reference_mask.bool(), torch.tensor([[ax, 0.0, bx], [0.0, ay, by]]))
    if not relocation.placed(image_size).any():
        raise ValueError("the pasted object lies entirely outside the image")
    return relocation


# --- the tasks' energies (Sec. 3.4.3) --------------------------------------------------------------------------


class GridMasks:
    """A task's masks on each feature grid, computed once per grid size, not at every step and energy term."""

    def __init__(self, make: Callable[[tuple[int, int]], dict[str, torch.Tensor]]) -> None:
        self.make = make
        self.grids: dict[tuple[int, int], dict[str, torch.Tensor]] = {}

    def __call__(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        size = tuple(features.shape[-2:])
        if size not in self.grids:
            self.grids[size] = {name: m.to(features.device) for name, m in self.make(size).items()}
        return self.grids[size]


def _latent_region(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Latent cells an (H, W) mask touches at all (max-pool): the cells an energy's gradient may move."""
    return F.adaptive_max_pool2d(mask.float()[None, None], latent_size)[0, 0] > 0


@dataclass(frozen=True)
class MoveEdit:
    """Object moving / resizing: the object (its old place m_gud), where it goes (m_gen = the relocated object),
    m_share = C(m_gen u m_gud), the vacated place m_ipt = m_gud minus m_gen, and m_ref (the user's region for the
    vacated place, default m_share)."""

    relocation: Relocation
    user_reference: torch.Tensor | None = None

    @property
    def object(self) -> torch.Tensor:
        return self.relocation.source_mask

    def masks(self, size: tuple[int, int]) -> dict[str, torch.Tensor]:
        old = mask_at(self.object, size)
        gen = self.relocation.placed(size)
        share = ~(old | gen)
        reference = share if self.user_reference is None else mask_at(self.user_reference, size)
        return {"gud": old, "gen": gen, "share": share, "inpaint": old & ~gen, "reference": reference}


def move_guidance(
    edit: MoveEdit,
    w_edit: float,
    w_content: float,
    w_opt: float,
    latent_size: tuple[int, int],
    inpaint_weight: float = INPAINT_WEIGHT,
) -> list[GuidanceTerm]:
    """Eq. 7 for moving and resizing. E_edit (Eq. 3 + 5): the features at m_gen against the guide features
    relocated the same way (interpolated by gamma, zero-padded when shrinking), point for point. E_opt (Eq. 9):
    the vacated place like m_ref and unlike the object. E_content (Eq. 6) over m_share. As in the official code,
    the edit energies move only the latent cells the object touches (old or new place), the content energy the
    others."""
    grid = GridMasks(edit.masks)

    def edit_energy(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        masks = grid(gen)
        moved = edit.relocation.warp(gud, tuple(gen.shape[-2:]))
        total = w_edit * energy(s_local(gen, masks["gen"], moved, masks["gen"]))
        if w_opt and masks["inpaint"].any() and masks["reference"].any():
            total = total + w_opt * move_inpaint_energy(gen, gud, masks["inpaint"], masks["reference"], inpaint_weight)
        return total

    def content_energy(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        share = grid(gen)["share"]
        return w_content * energy(s_local(gen, share, gud, share)) if share.any() else gen.new_zeros(())

    full = edit.object.shape
    region = _latent_region(edit.object | edit.relocation.placed(full), latent_size)
    return [(edit_energy, region), (content_energy, ~region)]


def appearance_guidance(
    base_mask: torch.Tensor, reference_mask: torch.Tensor, w_edit: float, w_content: float, latent_size
) -> list[GuidanceTerm]:
    """Appearance replacing: E_edit with S_global (Eq. 4) between the object's mean feature now (m_gen, the base
    mask) and the reference object's (m_gud on the reference image, F_ref = guide item 1); E_content over
    m_share = C(m_gen) against the base image (guide item 0). No E_opt."""

    def edit_energy(gen: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
        size = tuple(gen.shape[-2:])
        return w_edit * energy(s_global(gen, mask_at(base_mask, size), guides[1:2], mask_at(reference_mask, size)))

    def content_energy(gen: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
        share = ~mask_at(base_mask, tuple(gen.shape[-2:]))
        return w_content * energy(s_local(gen, share, guides[:1], share)) if share.any() else gen.new_zeros(())

    region = _latent_region(base_mask, latent_size)
    return [(edit_energy, region), (content_energy, ~region)]


def paste_guidance(
    relocation: Relocation, w_edit: float, w_content: float, image_size: tuple[int, int], latent_size
) -> list[GuidanceTerm]:
    """Object pasting: E_edit point for point between the pasted region m_gen and the reference features
    relocated onto the image (m_gud on the reference); E_content over m_share = C(m_gen) against the base."""
    grid = GridMasks(lambda size: {"gen": relocation.placed(size)})

    def edit_energy(gen: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
        placed = grid(gen)["gen"]
        moved = relocation.warp(guides[1:2], tuple(gen.shape[-2:]))
        return w_edit * energy(s_local(gen, placed, moved, placed))

    def content_energy(gen: torch.Tensor, guides: torch.Tensor) -> torch.Tensor:
        share = ~grid(gen)["gen"]
        return w_content * energy(s_local(gen, share, guides[:1], share)) if share.any() else gen.new_zeros(())

    region = _latent_region(relocation.placed(image_size), latent_size)
    return [(edit_energy, region), (content_energy, ~region)]


def _patch_index(points: torch.Tensor, size: tuple[int, int], image_size: tuple[int, int]) -> torch.Tensor:
    """Flat indices of the 3 x 3 patch around each (x, y) image point on a grid of `size`: (N, 9), clamped at the
    border so that handle and target patches always pair up cell for cell."""
    height, width = size
    ys = (points[:, 1] * height / image_size[0]).floor().long().clamp(1, max(height - 2, 1))
    xs = (points[:, 0] * width / image_size[1]).floor().long().clamp(1, max(width - 2, 1))
    offsets = torch.arange(-1, 2)
    rows = (ys[:, None, None] + offsets[None, :, None]).clamp(0, height - 1)
    cols = (xs[:, None, None] + offsets[None, None, :]).clamp(0, width - 1)
    return (rows * width + cols).reshape(len(points), 9)


def drag_guidance(
    handles: torch.Tensor,
    targets: torch.Tensor,
    editable: torch.Tensor,
    w_edit: float,
    w_content: float,
    w_inpaint: float,
    latent_size: tuple[int, int],
) -> list[GuidanceTerm]:
    """Point dragging: for each handle -> target pair, the 3 x 3 feature patch at the target now should match
    the patch at the handle in the guide (S_local over the two patches, Eq. 3 + 5); the handle patch, where it does
    not overlap the target's, should stop looking like the content that left it (weight w_inpaint, as E_opt of
    moving); E_content over m_share = C(editable area). Energies are averaged over the points. `handles` and
    `targets` are (N, 2) x, y in pixels of an image of `editable`'s size."""
    image_size = tuple(editable.shape)

    def edit_energy(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        size = tuple(gen.shape[-2:])
        current, guide = gen.flatten(2), gud.flatten(2).detach()
        at_target = current[..., _patch_index(targets, size, image_size)]  # (B, C, N, 9)
        at_handle = guide[..., _patch_index(handles, size, image_size)]
        similarity = 0.5 * F.cosine_similarity(at_target, at_handle, dim=1) + 0.5  # (B, N, 9)
        total = w_edit * energy(similarity.mean(dim=-1)).mean()
        if w_inpaint:
            handle_cells = _patch_index(handles, size, image_size)
            vacated = ~torch.isin(handle_cells, _patch_index(targets, size, image_size))
            if vacated.any():
                left = 0.5 * F.cosine_similarity(current[..., handle_cells], at_handle, dim=1) + 0.5
                total = total + w_inpaint * left[:, vacated].mean()
        return total

    def content_energy(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        share = ~mask_at(editable, tuple(gen.shape[-2:]))
        return w_content * energy(s_local(gen, share, gud, share)) if share.any() else gen.new_zeros(())

    region = _latent_region(editable, latent_size)
    return [(edit_energy, region), (content_energy, ~region)]


def drag_start(z_T: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor, image_size) -> torch.Tensor:
    """The drag's z_T: the 3 x 3 latent patch under each handle copied onto its target (the official code's
    initialisation)."""
    size = tuple(z_T.shape[-2:])
    flat = z_T.flatten(2).clone()
    source = flat[..., _patch_index(handles, size, image_size)]
    flat[..., _patch_index(targets, size, image_size)] = source
    return flat.reshape(z_T.shape)


def relocated_start(z_T: torch.Tensor, relocation: Relocation, source_z_T: torch.Tensor | None = None) -> torch.Tensor:
    """The start latent of move, resize and paste: the inverted noise with the object's own noise (of this image,
    or of the reference image for paste) relocated onto its new place (the official code's initialisation; the
    guidance does the rest)."""
    size = tuple(z_T.shape[-2:])
    source = z_T if source_z_T is None else source_z_T
    # Nearest, as the official code's F.interpolate: interpolating noise would lower its variance (a smooth,
    # too-quiet patch the model turns into flat colour), copying cells keeps it noise.
    moved = relocation.warp(source, size, mode="nearest")
    return torch.where(relocation.placed(size).to(z_T.device), moved, z_T)


# --- visual cross-attention (Sec. 3.5) -------------------------------------------------------------------------


def token_mask(mask: torch.Tensor, unet, layer: str, latent_size: tuple[int, int]) -> torch.Tensor:
    """An (H, W) mask on an attention layer's token grid, flattened: (tokens,) bool (nearest, as the code)."""
    return mask_at(mask, layer_resolution(unet, layer, latent_size)).flatten()


def visual_attention(
    engine: Engine,
    bank: MemoryBank,
    mode: str,
    steps: range,
    reference: MemoryBank | None = None,
    edited: torch.Tensor | None = None,
    reference_mask: torch.Tensor | None = None,
) -> dict[str, AttentionRule]:
    """Rules for the decoder self-attention: "replace" its K/V with the bank's (move, resize), "concat" the bank's
    to its own (drag), "merge" base-outside-the-edit with reference-inside-its-object (appearance, paste)."""
    if mode == "replace":
        return {layer: ReplaceKV(bank.kv, steps=steps) for layer in bank.layers}
    if mode == "concat":
        return {layer: ConcatKV(bank.kv, steps=steps) for layer in bank.layers}
    if mode != "merge" or reference is None or edited is None or reference_mask is None:
        raise ValueError(f"unknown visual attention mode {mode!r} (or merge without a reference)")
    latent_size = tuple(bank.trajectory[0].shape[-2:])
    rules: dict[str, AttentionRule] = {}
    for layer in bank.layers:
        keep = ~token_mask(edited, engine.unet, layer, latent_size)
        take = token_mask(reference_mask, engine.unet, layer, latent_size)
        if keep.any() or take.any():
            rules[layer] = MergeKV(bank.kv, reference.kv, keep, take, steps)
    return rules


# --- the loop --------------------------------------------------------------------------------------------------


@dataclass
class GuidedRun:
    """What `guided_sampling` returns: the final latents and the latents it passed through at `keep_steps`."""

    latents: torch.Tensor
    kept: dict[int, torch.Tensor]
    energies: list[float]


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
    rules: dict[str, AttentionRule] | None = None,
    reference: MemoryBank | None = None,
    bank_cond: Conditioning | None = None,
    keep_steps: Sequence[int] = (),
) -> GuidedRun:
    """Sec. 3.4-3.5: DDIM from `start` with CFG; in the first `guided_steps` steps the noise gets step_size x
    dE/dz_t (features against the bank's latent of the same step, and the reference bank's when given) and the
    update takes x0 from it (`guided_ddim_step`); `rules` (`visual_attention`) act on the decoder self-attention
    in the denoising pass only. `cond` is the prompt of the result; the bank's guide features use `bank_cond` (the
    prompt it was inverted with; default `cond`), a reference bank's use `cond` (it was inverted with it)."""
    steps = bank.steps
    scheduler = make_scheduler(engine, steps)
    ratio = scheduler.config.num_train_timesteps // steps
    controller = AttentionController(engine.unet)
    latents, kept, energies = start, {}, []
    guide_features = [GuideFeatures(engine, bank, bank_cond or cond, scheduler.timesteps)]
    if reference is not None:
        guide_features.append(GuideFeatures(engine, reference, cond, scheduler.timesteps))
    with controller.installed(rules or {}):
        for step, t in enumerate(scheduler.timesteps):
            engine.report.check_cancel()
            if step in keep_steps:
                kept[step] = latents.detach()
            controller.step = step
            with torch.no_grad():
                eps = predict_noise(engine, latents, t, cond, uncond, guidance_scale)
            guided = eps
            if step < guided_steps and step_size:
                # The guidance branch runs without the bank's K/V: it compares this latent's own features.
                controller.step = -1
                guide = [features.at(step) for features in guide_features]
                guide = {b: torch.cat([g[b] for g in guide]) for b in FEATURE_BLOCKS}
                gradient, value = guidance_gradient(engine, latents, guide, t, cond, energy_at_scale)
                energies.append(value)
                guided = eps + step_size * gradient
            x0 = predicted_x0(scheduler, latents, guided, t)
            latents = guided_ddim_step(scheduler, latents, eps, guided, int(t), int(t) - ratio)
            engine.report.progress(step + 1, steps, "editing")
            engine.preview(step + 1, steps, x0)
    return GuidedRun(latents, kept, energies)


# --- where content ended up: feature correspondence of points (the GUI's viewer) -------------------------------

DIFT_TIMESTEP = 261  # DIFT (Tang et al. 2023): SD features at t = 261 match best


def correspondence_step(engine: Engine, steps: int) -> int:
    """The sampling step whose timestep is nearest DIFT's t = 261."""
    timesteps = [int(t) for t in make_scheduler(engine, steps).timesteps]
    return min(range(steps), key=lambda i: abs(timesteps[i] - DIFT_TIMESTEP))


@torch.no_grad()
def track_points(
    engine: Engine,
    bank: MemoryBank,
    run: GuidedRun,
    step: int,
    cond: Conditioning,
    points: torch.Tensor,
    image_size: tuple[int, int],
) -> dict[str, torch.Tensor]:
    """Where the content under each (x, y) point of the input went in the result: the decoder feature (3rd block)
    at the point in the inversion at `step` against every position of the edited run at the same step, nearest
    neighbour by cosine of the mean-free features. Returns source / target (N, 2) x, y pixels and score (N,) =
    (cos + 1) / 2."""
    scheduler = make_scheduler(engine, bank.steps)
    t = scheduler.timesteps[step]
    block = FEATURE_BLOCKS[-1]
    before = decoder_features(engine, bank.latent(step), t, cond, requires_grad=False, blocks=(block,))[block]
    after = decoder_features(engine, run.kept[step], t, cond, requires_grad=False, blocks=(block,))[block]
    height, width = before.shape[-2:]
    rows = (points[:, 1] * height / image_size[0]).long().clamp(0, height - 1)
    cols = (points[:, 0] * width / image_size[1]).long().clamp(0, width - 1)
    # Each map less its mean over the image: toy-world features share a large common part (two random places
    # have cosine ~0.9), which would make every place look alike.
    before = before[0].float() - before[0].float().mean(dim=(-2, -1), keepdim=True)
    after = after[0].float() - after[0].float().mean(dim=(-2, -1), keepdim=True)
    queries = F.normalize(before[:, rows, cols].T, dim=1)  # (N, C)
    candidates = F.normalize(after.flatten(1), dim=0)  # (C, h*w)
    cosine = queries @ candidates
    best, index = cosine.max(dim=1)
    found = torch.stack(
        [(index % width + 0.5) * image_size[1] / width, (index // width + 0.5) * image_size[0] / height], 1
    )
    return {"source": points.float(), "target": found, "score": (best + 1) / 2}


# --- the methods -----------------------------------------------------------------------------------------------

FAMILIES = ("sd1", "sd2")
# The official demo's "energy scale" slider x 1e3 x a task factor is the step size eta on dE/dz_t (card, table).
TASK_FACTOR = {"move": 0.08, "resize": 0.08, "appearance": 0.04, "paste": 0.04, "drag": 0.04}
# Models whose gradients are weaker than SD1.5's need a larger eta for the same edit. Measured on Atelier's toy
# world at 50 steps (python -m backend eval-dragon --tasks move): eta 250 (slider 0.5 x 1e3 x 0.08 x 6.25) moves
# 17 of 20 objects with background 29.9 dB; the paper's eta 40: 6 of 20 (6 left half behind, 24.8 dB); on 10 of the
# moves eta 500 gave 7 (26.8 dB) where eta 250 gave 9. Other models: gain 1, the paper's step.
MODEL_GAIN = {"toyworld": 6.25}


def _common(guidance: float, energy_scale: float, w_edit: float, w_content: float) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("steps", "int", 50, "DDIM steps (inversion and editing)", 2, 1000, label="Steps"),
        ParamSpec("guided_until", "float", 0.6, "Energy guidance in the first part of the steps (30 of 50)", 0, 1),
        ParamSpec("guidance", "float", guidance, "Classifier-free guidance scale", 1.0, 30.0, label="Guidance"),
        ParamSpec(
            "energy_scale",
            "float",
            energy_scale,
            f"Gradient step: eta = this x 1e3 x task factor (x {MODEL_GAIN['toyworld']:g} on the toy-world model)",
            0,
            100,
        ),
        ParamSpec("w_edit", "float", w_edit, "w_e: weight of the edit energy (Eq. 7)", 0.0, 100.0),
        ParamSpec("w_content", "float", w_content, "w_c: weight of the content energy (Eq. 7)", 0.0, 100.0),
        ParamSpec("visual_attention", "bool", True, "Visual cross-attention from the memory bank (Sec. 3.5)"),
        ParamSpec(
            "gradient_regions",
            "bool",
            True,
            "Each energy's gradient kept to its region (official code); off: the paper's gradient of the summed "
            "energy, one backward pass on one latent (faster)",
        ),
        ParamSpec(
            "max_side", "int", 0, "Long side the model works at, in pixels (0 = the model's native size)", 0, 4096
        ),
    )


MOVE_PARAMS = (
    *_common(4.0, 0.5, 4.0, 6.0),
    ParamSpec("w_opt", "float", 1.0, "w_o: weight of the inpainting energy E_opt (Eq. 9); 0 = without", 0, 100),
    ParamSpec("inpaint_weight", "float", INPAINT_WEIGHT, "w_i of Eq. 9", 0.0, 100.0),
    ParamSpec("attention_from", "float", 0.1, "Visual cross-attention from this part of the steps (5 of 50)", 0, 1),
)


def _run(engine: Engine, request: EditRequest, task: str) -> MethodResult:
    p = request.params
    working, latents = engine.prepare_image(request.image, p["max_side"] or None)
    size = working.shape[:2]
    latent_size = tuple(latents.shape[-2:])
    cond = engine.encode_prompts([request.source_prompt], size=size)
    uncond = engine.encode_prompts([request.negative_prompt], size=size)
    steps = p["steps"]
    guided_steps = round(p["guided_until"] * steps)
    eta = p["energy_scale"] * 1e3 * TASK_FACTOR[task] * MODEL_GAIN.get(engine.bundle.model_id, 1.0)
    engine.report.log(f"DragonDiffusion {task}: eta {eta:g} on dE/dz_t in the first {guided_steps} of {steps} steps")
    # 1. Inversion with the memory bank (latents of every step + decoder self-attention K/V)
    bank = cached_memory_bank(engine, working, latents, request.source_prompt, cond, steps)
    reference = None
    result_cond = cond
    if task in ("appearance", "paste"):
        # Two prompts, as the paper's: the base image's (its inversion) and the result's (sampling, and the
        # reference image's inversion); without a target prompt the source prompt serves for both.
        if request.target_prompt:
            result_cond = engine.encode_prompts([request.target_prompt], size=size)
        reference_image = engine.to_working(request.reference_image, size)
        reference_latents = engine.encode_image(reference_image)
        reference_prompt = request.target_prompt or request.source_prompt
        reference = cached_memory_bank(engine, reference_image, reference_latents, reference_prompt, result_cond, steps)
    # 2. The task: start latent, energies and their regions, visual cross-attention, what to report
    setup = TASKS[task](engine, request, size, latent_size, bank, reference)
    rules = {}
    if p["visual_attention"]:
        rules = visual_attention(
            engine,
            bank,
            setup.attention,
            setup.attention_steps(p, steps),
            reference,
            setup.edited,
            setup.reference_mask,
        )
    terms = setup.terms(p)
    if not p["gradient_regions"]:
        terms = [(_summed(terms), None)]
    # 3. Guided sampling from the task's start latent
    keep = correspondence_step(engine, steps)
    run = guided_sampling(
        engine,
        bank,
        setup.start,
        result_cond,
        uncond,
        p["guidance"],
        terms,
        eta,
        guided_steps,
        rules,
        reference,
        bank_cond=cond,
        keep_steps=(keep,),
    )
    image = composite(request.image, engine.decode_latents(run.latents), None)
    # 4. What was used and where content went (the GUI's correspondence viewer)
    metadata: dict[str, Any] = {
        "task": task,
        "step_size": eta,
        "guided_steps": guided_steps,
        "memory_bank": bank.describe(),
        "masks": {name: mask_array(mask, request.image.shape[:2]) for name, mask in setup.masks.items()},
        "energy": [round(value, 5) for value in run.energies],
    }
    if setup.track is not None:
        matches = track_points(engine, bank, run, keep, cond, setup.track, size)
        scale = torch.tensor([request.image.shape[1] / size[1], request.image.shape[0] / size[0]])
        source, found = (matches["source"] * scale).tolist(), (matches["target"] * scale).tolist()
        wanted = (setup.wanted * scale).tolist() if setup.wanted is not None else [None] * len(source)
        metadata["correspondence"] = [
            {"handle": s, "target": w, "found": f, "score": round(float(c), 3)}
            for s, w, f, c in zip(source, wanted, found, matches["score"])
        ]
        metadata[INSIGHT_KEY] = {
            "correspondences": {
                "source": np.array(source),
                "target": np.array(found),
                "score": matches["score"].numpy(),
            },
            "note": "where the content under each point went: nearest decoder feature at t = 261 (DIFT)",
        }
    return MethodResult(image, metadata)


def _summed(terms: Sequence[GuidanceTerm]) -> EnergyFunction:
    """Eq. 7 as the paper writes it: one energy, the sum of the terms, whose gradient reaches every latent cell."""

    def total(gen: torch.Tensor, gud: torch.Tensor) -> torch.Tensor:
        return sum(term(gen, gud) for term, _ in terms)

    return total


@dataclass
class TaskSetup:
    start: torch.Tensor
    terms: Callable[[dict], list[GuidanceTerm]]
    attention: str  # "replace" | "concat" | "merge"
    masks: dict[str, torch.Tensor]  # the masks used, at working size, for the metadata
    edited: torch.Tensor | None = None  # merge: the base region that takes the reference's K/V
    reference_mask: torch.Tensor | None = None  # merge: the reference object at working size
    track: torch.Tensor | None = None  # (N, 2) x, y points to follow into the result
    wanted: torch.Tensor | None = None  # where they were asked to go

    def attention_steps(self, p: dict, steps: int) -> range:
        if self.attention == "merge":
            return range(0, round(p["attention_until"] * steps))
        return range(round(p["attention_from"] * steps), steps)


def _mask(engine: Engine, mask: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    return torch.from_numpy(engine.resize_mask(mask, size) > 0.5)


def _object_points(mask: torch.Tensor, count: int = 16) -> torch.Tensor:
    """Up to `count` (x, y) pixel centres spread over a mask, for the correspondence viewer."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    pick = torch.linspace(0, len(ys) - 1, min(count, len(ys))).round().long()
    return torch.stack([xs[pick] + 0.5, ys[pick] + 0.5], 1).float()


def _move_setup(engine, request, size, latent_size, bank, reference) -> TaskSetup:
    dx, dy, scale = request.move
    obj = _mask(engine, request.masks["object"], size)
    sy, sx = size[0] / request.image.shape[0], size[1] / request.image.shape[1]
    user_reference = request.masks.get("fill")  # m_ref: what the vacated place should look like
    user_reference = None if user_reference is None else _mask(engine, user_reference, size)
    try:
        edit = MoveEdit(move_relocation(obj, dy * sy, dx * sx, scale), user_reference)
    except ValueError as error:
        raise InputError(str(error), hint="Check the object mask and the move on the drag layer.") from None
    masks = edit.masks(size)
    points = _object_points(obj)
    return TaskSetup(
        start=relocated_start(bank.latent(0), edit.relocation),
        terms=lambda q: move_guidance(edit, q["w_edit"], q["w_content"], q["w_opt"], latent_size, q["inpaint_weight"]),
        attention="replace",
        masks={
            "object": obj,
            "destination": masks["gen"],
            "vacated": masks["inpaint"],
            "reference_region": masks["reference"],
        },
        track=points,
        wanted=_forward(edit.relocation, points, size, size),
    )


def _forward(relocation: Relocation, points: torch.Tensor, source_size, size) -> torch.Tensor:
    """Where (x, y) pixel points of the source image land on the edited image: theta inverted."""
    inverse = torch.cat([relocation.theta, torch.tensor([[0.0, 0.0, 1.0]])]).inverse()[:2]
    xs, ys = 2 * points[:, 0] / source_size[1] - 1, 2 * points[:, 1] / source_size[0] - 1
    landed = inverse @ torch.stack([xs, ys, torch.ones_like(xs)])
    return torch.stack([(landed[0] + 1) * size[1] / 2, (landed[1] + 1) * size[0] / 2], 1)


def _appearance_setup(engine, request, size, latent_size, bank, reference) -> TaskSetup:
    base = _mask(engine, request.masks["object"], size)
    ref = _reference_mask(engine, request, size)
    return TaskSetup(
        start=bank.latent(0),
        terms=lambda q: appearance_guidance(base, ref, q["w_edit"], q["w_content"], latent_size),
        attention="merge",
        masks={"object": base, "reference_object": ref},
        edited=base,
        reference_mask=ref,
    )


def _reference_mask(engine: Engine, request: EditRequest, size: tuple[int, int]) -> torch.Tensor:
    """The reference object at working size (the reference image is resampled to it); no mask = all of it."""
    if request.reference_mask is None:
        return torch.ones(size, dtype=torch.bool)
    mask = _mask(engine, request.reference_mask, size)
    if not mask.any():
        raise InputError("the reference mask is empty", hint="Paint the reference object on the reference layer.")
    return mask


def _paste_setup(engine, request, size, latent_size, bank, reference) -> TaskSetup:
    ref_mask = _reference_mask(engine, request, size)
    height, width = request.image.shape[:2]
    ref_height, ref_width = request.reference_image.shape[:2]
    # The map is made in the user's pixels, the reference's own and the picture's (the placement is in those); in
    # normalised coordinates it holds on every grid, whatever the two images were resampled to.
    full_mask = (
        torch.ones(ref_height, ref_width, dtype=torch.bool)
        if request.reference_mask is None
        else torch.from_numpy(request.reference_mask > 127)
    )
    placement = request.reference_placement or (0.0, 0.0, min(width / ref_width, height / ref_height))
    try:
        relocation = paste_relocation(full_mask, placement, (height, width))
    except ValueError as error:
        raise InputError(str(error), hint="Move the reference layer so that its object lies on the image.") from None
    placed = relocation.placed(size)
    points = _object_points(ref_mask)
    return TaskSetup(
        start=relocated_start(bank.latent(0), relocation, reference.latent(0)),
        terms=lambda q: paste_guidance(relocation, q["w_edit"], q["w_content"], size, latent_size),
        attention="merge",
        masks={"pasted": placed, "reference_object": ref_mask},
        edited=placed,
        reference_mask=ref_mask,
        wanted=_forward(relocation, points, size, size),
    )


def _drag_setup(engine, request, size, latent_size, bank, reference) -> TaskSetup:
    sy, sx = size[0] / request.image.shape[0], size[1] / request.image.shape[1]
    handles = torch.tensor([[pair.handle[0] * sx, pair.handle[1] * sy] for pair in request.points], dtype=torch.float32)
    targets = torch.tensor([[pair.target[0] * sx, pair.target[1] * sy] for pair in request.points], dtype=torch.float32)
    editable = request.masks.get("edit")  # the area that may change: the GUI's and SDEdit's "edit" mask role
    editable = _default_editable(handles, targets, size) if editable is None else _mask(engine, editable, size)
    return TaskSetup(
        start=drag_start(bank.latent(0), handles, targets, size),
        terms=lambda q: drag_guidance(
            handles, targets, editable, q["w_edit"], q["w_content"], q["w_inpaint"], latent_size
        ),
        attention="concat",
        masks={"editable": editable},
        track=handles,
        wanted=targets,
    )


def _default_editable(handles: torch.Tensor, targets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """No editable-area mask: the box around all handles and targets, grown by an eighth of the image side."""
    points = torch.cat([handles, targets])
    margin = max(size) / 8
    (x0, y0), (x1, y1) = (points.min(0).values - margin).tolist(), (points.max(0).values + margin).tolist()
    ys, xs = torch.arange(size[0])[:, None] + 0.5, torch.arange(size[1])[None, :] + 0.5
    return (ys >= y0) & (ys <= y1) & (xs >= x0) & (xs <= x1)


TASKS = {
    "move": _move_setup,
    "resize": _move_setup,
    "appearance": _appearance_setup,
    "paste": _paste_setup,
    "drag": _drag_setup,
}
MERGE_UNTIL = ParamSpec("attention_until", "float", 0.7, "Merged visual cross-attention until here (35 of 50)", 0, 1)
DRAG_PARAMS = (
    *_common(4.0, 2.0, 4.0, 6.0),
    ParamSpec("w_inpaint", "float", 0.2, "Weight of 'the handle's old place no longer looks like it'", 0, 100),
    ParamSpec("attention_from", "float", 0.1, "Visual cross-attention from this part of the steps", 0, 1),
)
PROMPTS = ("source_prompt", "negative_prompt")
TWO_PROMPTS = ("source_prompt", "target_prompt", "negative_prompt")

# task: (title, what it does, inputs, optional inputs, parameters with the card's defaults)
METHODS = {
    "move": (
        "move object",
        "Move an object to where you dragged its region; its old place is filled in from the background.",
        ("image", "mask:object", "move"),
        ("mask:fill", *PROMPTS),
        MOVE_PARAMS,
    ),
    "resize": (
        "resize object",
        "Scale an object by the region's scale about its centre (and move it); shrinking fills in the rest.",
        ("image", "mask:object", "move"),
        ("mask:fill", *PROMPTS),
        MOVE_PARAMS,
    ),
    "appearance": (
        "replace appearance",
        "Give the masked object the appearance of the reference image's object; shape and place stay.",
        ("image", "mask:object", "reference"),
        TWO_PROMPTS,
        (*_common(5.0, 2.0, 3.5, 5.0), MERGE_UNTIL),
    ),
    "paste": (
        "paste object",
        "Paste the reference image's object where the reference layer sits, blended into the scene.",
        ("image", "reference"),
        TWO_PROMPTS,
        (*_common(4.0, 1.5, 4.0, 6.0), MERGE_UNTIL),
    ),
    "drag": (
        "drag points",
        "Drag image content from each handle point to its target; only the editable area changes.",
        ("image", "points"),
        ("mask:edit", *PROMPTS),
        DRAG_PARAMS,
    ),
}


def _register(task: str) -> None:
    """Register `dragon-<task>`: the shared loop `_run` with the task's setup (TASKS) and parameters."""
    title, description, inputs, optional_inputs, params = METHODS[task]

    def run(engine: Engine, request: EditRequest, report) -> MethodResult:
        return _run(engine, request, task)

    run.__name__ = run.__qualname__ = f"dragon_{task}"
    method(
        id=f"dragon-{task}",
        title=f"DragonDiffusion: {title}",
        description=description,
        families=FAMILIES,
        inputs=inputs,
        optional_inputs=optional_inputs,
        params=params,
    )(run)


for _task in METHODS:
    _register(_task)
