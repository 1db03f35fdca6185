"""Cora: correspondence-aware image editing with few-step diffusion (Almohammadi, Mikaeili et al., SIGGRAPH 2025).
Card: shared/METHODS.md section 2b; the operations are in backend/engine/cora_ops.py, the few-step inversion in
backend/engine/turbo.py.

TurboEdit edits in four steps, but where the edit moves or reshapes things the source's appearance (kept through
the stored correction noise and the source-prompt branch) lands on the wrong places: texture-misalignment
artifacts. Cora aligns before it blends. Per step, one batch of three - [inversion with c_src, edit with c_src,
edit with c_tgt] - through the UNet:

1. DIFT features of the editing UNet itself: the output of decoder block 1, smoothed (3 x 3 Gaussian, sigma 1), of
   the inversion branch (source) and the target branch.
2. Structural alignment, first step only: on the chosen self-attention layers, the target branch's queries are
   permuted per head by a Hungarian assignment on beta' * C_SA + (1 - beta') * C_TC (beta' = 1 - beta: beta = 0
   keeps the source's layout, beta = 1 switches the alignment off).
3. Correspondence-aware attention interpolation, later steps: the target branch's keys and values become
   SLERP(target, source aligned by DIFT nearest neighbours, 1 - alpha) per head (keys keep their norm), except on
   tokens the two-sided "new region" rule finds no source for, which keep the target's (the features are the
   previous step's: decoder block 1 runs after these layers). alpha = 0 takes the source's K/V unaligned, as the
   reference code does.
4. Correspondence-aware latent correction, below timestep 400: the correction noise z is re-arranged patch by
   patch to the target's layout (kernel by timestep), and x' = mu(x', c_tgt) + k * Align(z); above it TurboEdit's
   pseudo-guided update (w = 1.9). k clamps z's norm to 15.5 on the last step.
5. Optional `edit` mask: above timestep 300 the target mean is kept only inside it (the inversion's outside); on
   steps above timestep 900 FlexiEdit's movement intensifier first loosens the region (`movement_intensifier` m:
   (1 - m) of its high frequencies kept, m x range-matched noise added - see cora_ops), which helps pose changes.

Layers (2, 3): self-attention of the decoder at 1/4 and 1/2 of the latent's side - for SDXL at 512 px exactly the
paper's transformer blocks 44-69 (up_blocks.0.attentions.1-2 and up_blocks.1), leaving out up_blocks.0.attentions.0.
Defaults: 4 steps [999, 799, 499, 199] with noise levels [799, 499, 199, 0]; alpha 0.7 (the code's default);
beta 0.04 (the demo's default); w 1.9; movement intensifier 0.2; seed as the request's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from backend.engine.attention import (
    AttentionCall,
    AttentionController,
    AttentionRule,
    attention_layers,
    layer_resolution,
)
from backend.engine.blend import composite
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.cora_ops import (
    align_patches,
    aligned_source,
    interpolate_kv,
    movement_intensifier,
    new_tokens,
    patch_kernel,
    patch_matches,
    permute_queries,
    smooth_features,
    structural_permutation,
)
from backend.engine.features import FeatureTap
from backend.engine.turbo import (
    CORA_TIMESTEPS,
    LAST_STEP_MAX_NORM,
    drawn_latents,
    noise_levels,
    posterior_mean,
    preview_estimate,
    train_alphas,
)
from backend.methods.baselines import MAX_SIDE
from backend.methods.registry import MethodResult, method
from backend.methods.turboedit import FEW_STEP_FAMILIES, prompt_edit_inputs
from backend.protocol import EditRequest, ParamSpec

DIFT_BLOCK = 1
CLC_BELOW = 400  # dift_timestep: latent correction on steps with t below this
MASK_ABOVE = 300  # the edit mask holds on steps with t above this
INTENSIFY_ABOVE = 900  # the movement intensifier acts on steps with t above this (with a mask)
SOURCE, TARGET = 0, 2  # batch items: inversion branch, target-prompt edit branch


def cora_layers(unet, latent_size: tuple[int, int], family: str) -> list[str]:
    """Decoder self-attention at 1/4 and 1/2 of the latent side (SDXL: without up_blocks.0.attentions.0)."""
    wanted = {(-(-latent_size[0] // f), -(-latent_size[1] // f)) for f in (4, 2)}
    layers = [
        name
        for name in attention_layers(unet, "self", blocks=("up",))
        if layer_resolution(unet, name, latent_size) in wanted
    ]
    if family == "sdxl":
        layers = [name for name in layers if not name.startswith("up_blocks.0.attentions.0.")]
    return layers


@dataclass
class CoraState:
    """What the attention rules read: the settings and the previous step's DIFT features (source, target)."""

    alpha: float
    beta: float
    features: tuple[torch.Tensor, torch.Tensor] | None = None
    new_fraction: list[float] = field(default_factory=list)
    alignment_seconds: float = 0.0


class CoraAttention(AttentionRule):
    """Steps 2-3 of the module docstring on one self-attention layer of `heads` heads and a `grid` of tokens."""

    def __init__(self, state: CoraState, heads: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.state, self.heads, self.grid = state, heads, grid

    def edit_query(self, call: AttentionCall, query: torch.Tensor) -> torch.Tensor:
        structure = 1.0 - self.state.beta
        if call.step != 0 or structure <= 0:
            return query
        started = time.perf_counter()
        permutation = structural_permutation(query[SOURCE], query[TARGET], self.heads, structure)
        self.state.alignment_seconds += time.perf_counter() - started
        aligned = query.clone()
        aligned[TARGET] = permute_queries(query[TARGET], permutation, self.heads)
        return aligned

    def edit_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if call.step == 0 or self.state.features is None:
            return key, value  # no features yet: plain target attention (as the reference code)
        if self.state.alpha <= 0:
            blended_key, blended_value = key[SOURCE : SOURCE + 1], value[SOURCE : SOURCE + 1]
        else:
            source_features, target_features = (self._tokens(f) for f in self.state.features)
            both = torch.cat([key[SOURCE : SOURCE + 1], value[SOURCE : SOURCE + 1]], dim=-1)
            aligned, distances = aligned_source(both, source_features, target_features)
            new = new_tokens(distances)
            self.state.new_fraction.append(float(new.float().mean()))
            source_key, source_value = aligned.split(key.shape[-1], dim=-1)
            blended_key, blended_value = interpolate_kv(
                key[TARGET : TARGET + 1],
                value[TARGET : TARGET + 1],
                source_key,
                source_value,
                self.state.alpha,
                self.heads,
                new,
            )
        return (
            torch.cat([key[:TARGET], blended_key, key[TARGET + 1 :]]),
            torch.cat([value[:TARGET], blended_value, value[TARGET + 1 :]]),
        )

    def _tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(1, C, h, w) features -> (tokens, C) on this layer's grid."""
        resized = F.interpolate(features.float(), size=self.grid, mode="bilinear", align_corners=False)
        return resized[0].flatten(1).T


@method(
    id="cora",
    title="Cora (few-step, correspondence-aware)",
    description="Edit by rewording in 4 steps; appearance follows the source by correspondence, not by position.",
    families=FEW_STEP_FAMILIES,
    inputs=("image", "source_prompt", "target_prompt"),
    optional_inputs=("mask:edit",),
    params=(
        ParamSpec("steps", "choice", "4", "Steps", choices=("3", "4", "5"), label="Steps"),
        ParamSpec(
            "alpha",
            "float",
            0.7,
            "Appearance from the source (0) ... from the prompt (1)",
            0,
            1,
            label="α  appearance",
            slider=True,
        ),
        ParamSpec(
            "beta",
            "float",
            0.04,
            "Layout of the source (0) ... new layout (1 = no alignment)",
            0,
            1,
            label="β  layout",
            slider=True,
        ),
        ParamSpec("pseudo_guidance", "float", 1.9, "w: TurboEdit's pseudo-guidance before the correction", 0, 10),
        ParamSpec("latent_correction", "bool", True, "Re-arrange the correction noise by correspondence"),
        ParamSpec(
            "movement_intensifier",
            "float",
            0.2,
            "With a mask: loosen the masked region on the first step so the shape or pose can change more (FlexiEdit)",
            0,
            1,
            slider=True,
        ),
        ParamSpec("max_norm", "float", LAST_STEP_MAX_NORM, "Last step's correction norm limit (0 = none)", 0, 1e3),
        MAX_SIDE,
    ),
)
@torch.no_grad()
def cora(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    # Image -> x_0; prompts; the mask on the latent grid
    working, latents, source, target = prompt_edit_inputs(engine, request)
    size, latent_size = working.shape[:2], tuple(latents.shape[-2:])
    mask = request.masks.get("edit")
    latent_mask = None if mask is None else engine.mask_to_latent(engine.resize_mask(mask, size))
    # The attention rules on the chosen layers, sharing one state
    state = CoraState(p["alpha"], p["beta"])
    modules = dict(engine.unet.named_modules())
    rules = {
        name: CoraAttention(state, modules[name].heads, layer_resolution(engine.unet, name, latent_size))
        for name in cora_layers(engine.unet, latent_size, engine.bundle.family)
    }
    final, norms = _edit(
        engine, latents, source, target, CORA_TIMESTEPS[int(p["steps"])], p, request.seed, state, rules, latent_mask
    )
    image = composite(request.image, engine.decode_latents(final), mask)
    metadata = {
        "layers": len(rules),
        "correction_norms": [round(n, 2) for n in norms],
        "new_token_fraction": round(float(np.mean(state.new_fraction)), 4) if state.new_fraction else 0.0,
        "alignment_seconds": round(state.alignment_seconds, 3),
    }
    return MethodResult(image, metadata)


def _edit(engine, x0, source, target, timesteps, p, seed, state, rules, latent_mask):
    alphas = train_alphas(engine)
    levels = noise_levels(timesteps)
    drawn = drawn_latents(engine, x0, levels, alphas, seed)
    conditioning = Conditioning.cat([source, source, target])
    controller = AttentionController(engine.unet)
    edited, norms, total = drawn[0], [], len(timesteps)
    with controller.installed(rules):
        for step, t in enumerate(timesteps):
            engine.report.check_cancel()
            controller.step = step
            t_prev = timesteps[step + 1] if step + 1 < total else -1
            batch = torch.cat([drawn[step], edited, edited])
            with FeatureTap(engine.unet, (DIFT_BLOCK,)) as tap:
                eps = engine.unet(batch, torch.tensor(t, device=engine.device), **conditioning.unet_kwargs()).sample
            features = smooth_features(tap.features[DIFT_BLOCK].float())
            state.features = (features[SOURCE : SOURCE + 1], features[TARGET : TARGET + 1])
            inverted, edit_source, edit_target = posterior_mean(alphas, batch, eps, t, t_prev).chunk(3)
            if latent_mask is not None and t > MASK_ABOVE:
                if t > INTENSIFY_ABOVE and p["movement_intensifier"] > 0:
                    generator = torch.Generator().manual_seed(seed + 1)
                    edit_target = movement_intensifier(edit_target, latent_mask, p["movement_intensifier"], generator)
                edit_target = latent_mask * edit_target + (1 - latent_mask) * inverted
            correction = drawn[step + 1] - inverted
            norm = float(correction.float().norm())
            k = min(1.0, p["max_norm"] / norm) if step == total - 1 and p["max_norm"] > 0 and norm > 0 else 1.0
            if p["latent_correction"] and t < CLC_BELOW:
                grid = tuple(x0.shape[-2:])
                source_map, target_map = (
                    F.interpolate(f, size=grid, mode="bilinear", align_corners=False)[0] for f in state.features
                )
                kernel = patch_kernel(t)
                correction = align_patches(correction, patch_matches(source_map, target_map, kernel), kernel)
                edited = edit_target + k * correction
            else:
                edited = edit_source + k * correction + p["pseudo_guidance"] * (edit_target - edit_source)
            norms.append(norm)
            engine.report.progress(step + 1, total, "editing")
            engine.preview(
                step + 1, total, preview_estimate(alphas, edited, levels[step + 1] if step + 1 < total else 0)
            )
    return edited, norms
