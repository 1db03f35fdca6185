"""MDE-Edit (Zhu, Liu, Fu, Wang 2025, arXiv 2505.05101): multi-object editing by a Masked Dual-Edit of the latent.
Paper: shared/papers/003_b3bd140217c02e83.txt; card: shared/METHODS.md section 5c.

A source prompt p describes the picture, a target prompt p* the result, and every object to change comes with its
mask S_i and the target words it binds to (`ObjectPrompt`: mask, words). Words naming a colour or pattern go to the
Color Consistency Loss with that mask, the others (the object's noun) to the Object Alignment Loss.

1. Null-text inversion of the picture with p (backend/engine/null_text.py).
2. Two branches from z_T: reconstruction (p) and edit (p*). Attention injection (Eq. 3): the edit branch takes the
   reconstruction's cross-attention for tokens shared by p and p*, and keeps its own for new tokens (P2P refine,
   cross in the first 80 % of the steps, coarse self-attention in the first 50 %; backend/engine/p2p.py).
3. In the first 20 of 50 steps, 15 iterations of latent optimisation of the edit branch z*_t, each one pass of the
   UNet on z*_t with p* (no CFG) with gradients:
   - OAL (Eq. 4-5): S^_i = the object words' cross-attention, softmax over tokens, averaged over heads and the
     coarse down/up layers (P2P's 16 x 16 ones at 512 px), resized to twice that grid; BCE(S^_i, S_i) +
     BCE(S^_i / max S^_i, S_i), summed over objects;
   - CCL (Eq. 6): inside the mask, the attribute word's share of the attention against the tokens shared with p,
     r = A*_i / (A*_i + sum_j A_j): mean of (1 - r)^2;
   - L = lambda1 OAL + lambda2 CCL (1, 1.25), and the update z*_t <- z*_t - sigma_t grad L inside the union of the
     masks (dilated one latent cell), sigma_t = sqrt((1 - a_t) / a_t) as the released code (Eq. 8).
4. Every step: CFG 7.5 with the step's null-text embedding for both branches, injection, DDIM. In the last 15 steps
   the edit branch keeps the reconstruction outside the masks (the final masked merge).

The released code's variants are options: `oal_loss = quartic` ((S^ - S)^4 where |S^ - S| >= 0.1) and
`ccl_weight = 1.5`. Unlike the released code (one object), any number of objects; the softmax is over tokens (the
code's runs over heads, which the card flags as a bug).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.engine.attention import AttentionCall, AttentionController, AttentionRule, layer_resolution
from backend.engine.blend import composite, mask_array
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.features import FeatureTap
from backend.engine.inversion import alpha_at
from backend.engine.null_text import as_fp32, fp32_unet
from backend.engine.p2p import MDE_SELF_FRACTION, P2PControl, _words, blend_layers, p2p_rules
from backend.engine.sampling import make_scheduler
from backend.errors import InputError
from backend.methods.baselines import GUIDANCE, MAX_SIDE
from backend.methods.p2p import NTI_PARAMS, SD1_FAMILIES, prepare_prompt_edit, two_branch_step
from backend.methods.registry import MethodResult, method
from backend.models.toyworld.world import COLOURS, FILLS, TEXTURES
from backend.protocol import EditRequest, ParamSpec

# Words the Color Consistency Loss binds (colours, patterns); every other object word goes to the OAL.
ATTRIBUTE_WORDS = frozenset(
    {*COLOURS, *FILLS, *TEXTURES}
    | set(
        [
            "red",
            "green",
            "blue",
            "yellow",
            "orange",
            "purple",
            "pink",
            "brown",
            "black",
            "white",
            "grey",
            "gray",
            "cyan",
            "magenta",
            "violet",
            "gold",
            "golden",
            "silver",
            "beige",
            "turquoise",
            "striped",
            "dotted",
            "spotted",
            "checkered",
            "plaid",
            "wooden",
            "metallic",
            "glass",
            "furry",
        ]
    )
)
STOP_WORDS = frozenset({"a", "an", "the", "of", "with", "and", "on", "in", "at"})  # not bound: they name nothing
BCE_CLIP = 1e-6


@dataclass
class EditTarget:
    """One object's share of the losses: its mask on the loss grid and the token positions of its words."""

    mask: torch.Tensor  # (h, w) float in [0, 1] on the OAL grid (area-downsampled)
    object_tokens: list[int]
    attribute_tokens: list[int]
    words: list[str]


class CaptureMaps(AttentionRule):
    """Keeps the conditional cross-attention maps (heads averaged) of the current call, with their graph."""

    needs_probs = True

    def __init__(self) -> None:
        super().__init__()
        self.maps: list[torch.Tensor] = []
        self.on = False

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        if self.on:
            self.maps.append(probs[-1:].mean(dim=1))  # (1, Lq, L)
        return probs


def averaged_maps(maps: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
    """(L, h, w): the captured layers' maps resized to `grid` and averaged (Eq. 4)."""
    resized = []
    for item in maps:
        side = int(round(item.shape[1] ** 0.5))
        square = item[0].T.reshape(item.shape[-1], 1, side, item.shape[1] // side)
        resized.append(F.interpolate(square, size=grid, mode="bilinear", align_corners=False)[:, 0])
    return torch.stack(resized).mean(dim=0)


def oal_loss(maps: torch.Tensor, targets: list[EditTarget], variant: str = "bce") -> torch.Tensor:
    """Eq. 5 summed over objects (or the released code's quartic loss)."""
    total = maps.new_zeros(())
    for target in targets:
        if not target.object_tokens:
            continue
        predicted = maps[target.object_tokens].sum(dim=0)
        if variant == "quartic":
            difference = predicted - target.mask
            total = total + (difference.abs() >= 0.1).float().mul(difference**4).mean()
            continue
        normalised = predicted / predicted.amax().clamp_min(BCE_CLIP)
        total = total + F.binary_cross_entropy(predicted.clamp(BCE_CLIP, 1 - BCE_CLIP), target.mask)
        total = total + F.binary_cross_entropy(normalised.clamp(BCE_CLIP, 1 - BCE_CLIP), target.mask)
    return total


def ccl_loss(maps: torch.Tensor, targets: list[EditTarget], shared: list[int], variant: str = "paper") -> torch.Tensor:
    """Eq. 6: inside each mask, (1 - A*_i / (A*_i + sum_j A_j))^2 for its attribute words (mean over pixels, words).
    variant "code" (the released code): 3 - 4 x the share of the word's attention that falls inside its mask."""
    terms = []
    if variant == "code":
        for target in targets:
            for token in target.attribute_tokens:
                inside = (maps[token] * target.mask).sum() / maps[token].sum().clamp_min(BCE_CLIP)
                terms.append(3 - 4 * inside)
        return torch.stack(terms).mean() if terms else maps.new_zeros(())
    background = maps[shared].sum(dim=0) if shared else maps.new_zeros(maps.shape[1:])
    for target in targets:
        inside = target.mask > 0.5
        if not inside.any():
            continue
        for token in target.attribute_tokens:
            share = maps[token] / (maps[token] + background).clamp_min(BCE_CLIP)
            terms.append((1 - share[inside]).square().mean())
    return torch.stack(terms).mean() if terms else maps.new_zeros(())


def edit_targets(
    engine: Engine, request: EditRequest, grid: tuple[int, int], size: tuple[int, int]
) -> list[EditTarget]:
    """Each object's words located in the target prompt and split into object / attribute words."""
    occurrences: dict[str, list[list[int]]] = {}
    for word, tokens in _words(engine.bundle, request.target_prompt):
        occurrences.setdefault(word, []).append(tokens)
    claimed: set[tuple[int, ...]] = set()
    targets = []
    for index, item in enumerate(request.object_prompts):
        words = [word for word in item.prompt.split() if word.lower() not in STOP_WORDS]
        if not words:
            raise InputError(
                f"object {index + 1} has no words to bind ('{item.prompt}')",
                hint="Give each object the words of the target prompt it becomes, e.g. 'blue square'.",
            )
        missing = [word for word in words if word not in occurrences]
        if missing:
            raise InputError(
                f"object {index + 1}'s word(s) {', '.join(missing)} are not in the target prompt "
                f"'{request.target_prompt}'",
                hint="An object binds to words of the target prompt, e.g. 'blue square'.",
            )
        positions = {}
        for word in words:  # a word the prompt says twice: the first occurrence no earlier object took
            free = [tuple(t) for t in occurrences[word] if tuple(t) not in claimed] or [tuple(occurrences[word][0])]
            positions[word] = list(free[0])
            claimed.add(free[0])
        mask = torch.from_numpy((item.mask >= 128).astype(np.float32))[None, None]
        mask = F.interpolate(F.interpolate(mask, size=size, mode="nearest"), size=grid, mode="area")[0, 0]
        attributes = [w for w in words if w.lower() in ATTRIBUTE_WORDS]
        objects = [w for w in words if w.lower() not in ATTRIBUTE_WORDS]
        targets.append(
            EditTarget(
                mask.to(engine.device),
                [t for w in objects for t in positions[w]],
                [t for w in attributes for t in positions[w]],
                words,
            )
        )
    return targets


def union_mask(request: EditRequest, latent_size: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(1, 1, h, w): the union of the object masks on the latent grid, grown by one cell (3 x 3 max-pool)."""
    union = np.zeros(request.image.shape[:2], bool)
    for item in request.object_prompts:
        union |= item.mask >= 128
    mask = torch.from_numpy(union.astype(np.float32))[None, None]
    mask = F.adaptive_max_pool2d(F.interpolate(mask, size=size, mode="nearest"), latent_size)
    return F.max_pool2d(mask, 3, stride=1, padding=1)


def shared_tokens(control: P2PControl, target_count: int) -> list[int]:
    """Content tokens of p* that take the source's attention (shared with p): not start, end or padding."""
    return [j for j in range(1, target_count - 1) if control.alpha[j] > 0]


@method(
    id="mde-edit",
    title="MDE-Edit: multi-object edit",
    description="Change several objects at once: each object layer's prompt names its words of the target prompt "
    "(e.g. 'blue square'); colours and patterns follow its mask, nouns take its shape.",
    families=SD1_FAMILIES,
    inputs=("image", "source_prompt", "target_prompt", "object_prompts"),
    optional_inputs=("negative_prompt",),
    params=(
        ParamSpec("steps", "int", 50, "DDIM steps (inversion and editing)", 2, 1000, label="Steps"),
        GUIDANCE,
        ParamSpec("optimise_until", "float", 0.4, "Latent optimisation in this part of the steps (20 of 50)", 0, 1),
        ParamSpec("iterations", "int", 15, "Optimisation iterations per step", 0, 100),
        ParamSpec("oal_weight", "float", 1.0, "lambda1: Object Alignment Loss weight (0 = without OAL)", 0, 100),
        ParamSpec("ccl_weight", "float", 1.25, "lambda2: Color Consistency Loss weight (0 = without CCL)", 0, 100),
        ParamSpec(
            "oal_loss", "choice", "bce", "bce (paper, Eq. 5) or quartic (released code)", choices=("bce", "quartic")
        ),
        ParamSpec(
            "ccl_loss",
            "choice",
            "paper",
            "paper (Eq. 6) or code (share of the word's attention inside its mask)",
            choices=("paper", "code"),
        ),
        ParamSpec("step_scale", "float", 1.0, "Multiplier of the update step sigma_t", 0, 1000),
        ParamSpec("cross_replace", "float", 0.8, "Shared tokens' cross-attention from the source, part of steps", 0, 1),
        ParamSpec("self_replace", "float", 0.5, "Self-attention from the source in this part of the steps", 0, 1),
        ParamSpec("blend_last", "float", 0.3, "Keep the source outside the masks in this last part (15 of 50)", 0, 1),
        *NTI_PARAMS,
        MAX_SIDE,
    ),
)
def mde_edit(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    steps = p["steps"]
    found: dict[str, Any] = {}

    def bind(size: tuple[int, int], latent_size: tuple[int, int]) -> None:  # word errors before the inversion
        layers = blend_layers(engine.unet, latent_size)
        coarse = layer_resolution(engine.unet, layers[0], latent_size)
        found.update(layers=layers, grid=(coarse[0] * 2, coarse[1] * 2))  # OAL grid: twice the coarse layers'
        found["targets"] = edit_targets(engine, request, found["grid"], size)

    edit = prepare_prompt_edit(engine, request, "refine", bind)  # Eq. 3: shared tokens from the source, new own
    control, inversion, latent_size = edit.control, edit.inversion, edit.latent_size
    loss_layers, grid, targets = found["layers"], found["grid"], found["targets"]
    shared = shared_tokens(control, len(engine.bundle.tokenizers[0](request.target_prompt).input_ids))
    region = union_mask(request, latent_size, edit.working.shape[:2]).to(engine.device, torch.float32)
    capture = CaptureMaps()
    injection = p2p_rules(engine.unet, control, latent_size, MDE_SELF_FRACTION)
    rules: dict = {layer: [rule] for layer, rule in injection.items()}
    for layer in loss_layers:
        rules[layer].append(capture)  # after the injection: the maps the edit branch attends with
    scheduler = make_scheduler(engine, steps)
    optimise_until = round(p["optimise_until"] * steps)
    blend_from = steps - round(p["blend_last"] * steps)
    # fp32 throughout, as the released code: the latent optimisation does not work in half precision.
    source, target, uncond = as_fp32(edit.source), as_fp32(edit.target), as_fp32(edit.uncond)
    conds = Conditioning.cat([source, target])
    pair = torch.cat([inversion.z_T, inversion.z_T]).to(engine.device, torch.float32)
    losses: list[dict[str, float]] = []
    controller = AttentionController(engine.unet)
    with fp32_unet(engine), controller.installed(rules):
        for step, t in enumerate(scheduler.timesteps):
            engine.report.check_cancel()
            controller.step = step
            if step < optimise_until and p["iterations"] and (p["oal_weight"] or p["ccl_weight"]):
                alpha = alpha_at(scheduler, int(t)).to(engine.device, torch.float32)
                sigma = ((1 - alpha) / alpha).sqrt() * p["step_scale"]
                edited, record = optimise_latent(
                    engine,
                    control,
                    capture,
                    pair,
                    t,
                    source,
                    target,
                    targets,
                    shared,
                    region,
                    grid,
                    sigma,
                    loss_layers,
                    p,
                )
                pair = torch.cat([pair[:1], edited])
                losses.append(record)
            control.layout = "batched"
            with torch.no_grad():
                eps = two_branch_step(engine, pair, t, conds, inversion.conditioning(step, uncond), p["guidance"])
                output = scheduler.step(eps, t, pair)
            pair = output.prev_sample
            if step >= blend_from:
                pair = torch.cat([pair[:1], pair[:1] + region * (pair[1:] - pair[:1])])
            engine.report.progress(step + 1, steps, "editing")
            engine.preview(step + 1, steps, output.pred_original_sample[1:])
    image = composite(request.image, engine.decode_latents(pair[1:]), None)
    metadata = {
        "objects": [
            {"words": t.words, "oal_tokens": t.object_tokens, "ccl_tokens": t.attribute_tokens} for t in targets
        ],
        "losses": losses,
        "nti_loss": [round(v, 7) for v in inversion.losses],
        "masks": {"edit_region": mask_array(region[0, 0] > 0.5, request.image.shape[:2])},
    }
    return MethodResult(image, metadata)


def optimise_latent(
    engine: Engine,
    control: P2PControl,
    capture: CaptureMaps,
    pair: torch.Tensor,
    t: torch.Tensor,
    source: Conditioning,
    target: Conditioning,
    targets: list[EditTarget],
    shared: list[int],
    region: torch.Tensor,
    grid: tuple[int, int],
    sigma: torch.Tensor,
    loss_layers: list[str],
    p: dict,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sec. 4.3: `iterations` gradient steps on the edit branch's latent at this step, inside `region` (Eq. 8)."""
    # The losses read the coarse layers only: both passes stop after the up block holding the last of them (the
    # finer up blocks, the costliest part of the UNet, cannot change the loss).
    stop = max(int(layer.split(".")[1]) for layer in loss_layers if layer.startswith("up_blocks."))
    control.layout = "separate"
    control.branch = "source"
    with torch.no_grad():
        FeatureTap(engine.unet, (stop,), truncate=True).run(pair[:1], t, **source.unet_kwargs())
    latent = pair[1:].detach().float()
    control.branch = "target"
    first = last = None
    for _ in range(p["iterations"]):
        engine.report.check_cancel()
        latent = latent.detach().requires_grad_(True)
        capture.maps, capture.on = [], True
        with torch.enable_grad():
            FeatureTap(engine.unet, (stop,), truncate=True, detach=False).run(latent, t, **target.unet_kwargs())
            capture.on = False
            maps = averaged_maps(capture.maps, grid).float()
            oal = oal_loss(maps, targets, p["oal_loss"]) if p["oal_weight"] else maps.new_zeros(())
            ccl = ccl_loss(maps, targets, shared, p["ccl_loss"]) if p["ccl_weight"] else maps.new_zeros(())
            loss = p["oal_weight"] * oal + p["ccl_weight"] * ccl
        record = {"oal": round(float(oal.detach()), 5), "ccl": round(float(ccl.detach()), 5)}
        first = first or record
        last = record
        if not loss.requires_grad:
            break
        (gradient,) = torch.autograd.grad(loss, latent)
        latent = latent.detach() - sigma * region.float() * gradient
    capture.maps = []
    return latent.detach(), {"first": first, "last": last}
