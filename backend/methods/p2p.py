"""Null-text inversion + Prompt-to-Prompt (Mokady et al. CVPR 2023; Hertz et al. ICLR 2023): the baseline of
MDE-Edit's Table 1, and a prompt editor in its own right.

1. Null-text inversion of the picture with the source prompt (backend/engine/null_text.py): z_T and one optimised
   unconditional embedding per step, so that CFG sampling (w = 7.5) with the source prompt gives the picture back.
2. Two branches from z_T, one batch: the source prompt (the reconstruction) and the target prompt, both guided with
   the step's null-text embedding. The target's cross-attention maps come from the source (replace: same word count;
   refine: words added/removed) in the first 80 % of the steps; the coarse self-attention maps in the first 40 %
   (backend/engine/p2p.py).
3. LocalBlend (optional, on by default): from 20 % of the steps on, the target latent keeps the source's outside the
   attention of the changed words (both prompts' words).
Card: shared/METHODS.md section 5a-5b; defaults from the reference notebooks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from backend.engine.attention import AttentionController
from backend.engine.blend import composite, mask_array
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.null_text import NTI_EPSILON, NTI_INNER_STEPS, NullTextInversion, cached_null_text_inversion
from backend.engine.p2p import LocalBlend, P2PControl, _align, _words, p2p_control, p2p_rules, word_tokens
from backend.engine.sampling import make_scheduler
from backend.errors import InputError
from backend.methods.baselines import GUIDANCE, MAX_SIDE
from backend.methods.registry import MethodResult, method
from backend.protocol import EditRequest, ParamSpec

SD1_FAMILIES = ("sd1",)  # sd2's 768-v models predict v; the null-text step here assumes eps

NTI_PARAMS = (
    ParamSpec("nti_inner_steps", "int", NTI_INNER_STEPS, "Null-text optimisation iterations per step (most)", 1, 100),
    ParamSpec("nti_epsilon", "float", NTI_EPSILON, "Null-text early stop: loss below this + 2e-5 x step", 0, 1),
)


def changed_word_pairs(engine: Engine, source: str, target: str) -> tuple[list[str], list[str]]:
    """Words of each prompt the alignment leaves unpaired: what the edit changes (LocalBlend's default words)."""
    source_words = [w for w, _ in _words(engine.bundle, source)]
    target_words = [w for w, _ in _words(engine.bundle, target)]
    paired = _align(source_words, target_words)
    kept = {index for index in paired if index is not None}
    return (
        [word for index, word in enumerate(source_words) if index not in kept],
        [word for word, match in zip(target_words, paired) if match is None],
    )


def two_branch_step(
    engine: Engine,
    latents: torch.Tensor,
    t: torch.Tensor,
    conds: Conditioning,
    uncond: Conditioning,
    guidance: float,
) -> torch.Tensor:
    """eps for latents (2, ...) = [source, target] with CFG in one batch [u_s, u_t, c_s, c_t]."""
    both = Conditioning.cat([uncond.repeat(2) if len(uncond) == 1 else uncond, conds])
    eps = engine.unet(torch.cat([latents, latents]), t, **both.unet_kwargs()).sample
    eps_uncond, eps_cond = eps.chunk(2)
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def p2p_sample(
    engine: Engine,
    inversion: NullTextInversion,
    source: Conditioning,
    target: Conditioning,
    uncond: Conditioning,
    guidance: float,
    rules: dict,
    blend: LocalBlend | None = None,
    stage: str = "editing",
) -> torch.Tensor:
    """Both branches from the inversion's z_T; returns the final latents (2, ...) = [source, target]."""
    steps = inversion.steps
    scheduler = make_scheduler(engine, steps)
    controller = AttentionController(engine.unet)
    latents = torch.cat([inversion.z_T, inversion.z_T]).to(engine.device, engine.dtype)
    conds = Conditioning.cat([source, target])
    with controller.installed(rules), torch.no_grad():
        for step, t in enumerate(scheduler.timesteps):
            engine.report.check_cancel()
            controller.step = step
            eps = two_branch_step(engine, latents, t, conds, inversion.conditioning(step, uncond), guidance)
            output = scheduler.step(eps, t, latents)
            latents = output.prev_sample
            if blend is not None:
                latents = blend.apply(step, latents)
            engine.report.progress(step + 1, steps, stage)
            engine.preview(step + 1, steps, output.pred_original_sample[1:])
    return latents


@dataclass
class PromptEdit:
    """What a prompt edit (NTI + P2P, MDE-Edit) starts from: the working picture's latents, the three prompts'
    conditioning, the P2P controller and the null-text inversion with the source prompt."""

    working: np.ndarray
    latent_size: tuple[int, int]
    source: Conditioning
    target: Conditioning
    uncond: Conditioning
    control: P2PControl
    inversion: NullTextInversion


def prepare_prompt_edit(
    engine: Engine, request: EditRequest, mode: str, check: Callable[[tuple[int, int], tuple[int, int]], None] = None
) -> PromptEdit:
    """Prompts encoded, the controller built and `check(working size, latent size)` run - their errors come before
    the slow part - then the inversion (cached)."""
    p = request.params
    working, latents = engine.prepare_image(request.image, p["max_side"] or None)
    size = working.shape[:2]
    source = engine.encode_prompts([request.source_prompt], size=size)
    target = engine.encode_prompts([request.target_prompt], size=size)
    uncond = engine.encode_prompts([request.negative_prompt], size=size)
    control = p2p_control(
        engine.bundle,
        request.source_prompt,
        request.target_prompt,
        p["steps"],
        mode,
        p["cross_replace"],
        (0.0, p["self_replace"]),
    )
    if check is not None:
        check(size, tuple(latents.shape[-2:]))
    inversion = cached_null_text_inversion(
        engine,
        working,
        latents,
        request.source_prompt,
        source,
        uncond,
        p["steps"],
        p["guidance"],
        p["nti_inner_steps"],
        p["nti_epsilon"],
        request.negative_prompt,
    )
    return PromptEdit(working, tuple(latents.shape[-2:]), source, target, uncond, control, inversion)


@method(
    id="nti-p2p",
    title="Null-text inversion + Prompt-to-Prompt",
    description="Edit by rewording: the edited prompt's attention follows the original's, so layout stays.",
    families=SD1_FAMILIES,
    inputs=("image", "source_prompt", "target_prompt"),
    optional_inputs=("negative_prompt",),
    params=(
        ParamSpec("steps", "int", 50, "DDIM steps (inversion and editing)", 2, 1000, label="Steps"),
        GUIDANCE,
        ParamSpec(
            "mode",
            "choice",
            "auto",
            "replace (words swapped), refine (words added), auto",
            choices=(
                "auto",
                "replace",
                "refine",
            ),
        ),
        ParamSpec("cross_replace", "float", 0.8, "Cross-attention maps from the source in this part of steps", 0, 1),
        ParamSpec("self_replace", "float", 0.4, "Self-attention maps from the source in this part of steps", 0, 1),
        ParamSpec("local_blend", "bool", True, "Keep everything outside the changed words' attention (LocalBlend)"),
        ParamSpec(
            "blend_words",
            "str",
            "",
            "LocalBlend words, 'source words > target words' (default: the words the prompts differ in)",
        ),
        ParamSpec("blend_threshold", "float", 0.3, "LocalBlend mask threshold (of the map's maximum)", 0, 1),
        *NTI_PARAMS,
        MAX_SIDE,
    ),
)
def nti_p2p(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    edit = prepare_prompt_edit(engine, request, p["mode"])
    control, inversion, latent_size = edit.control, edit.inversion, edit.latent_size
    source, target, uncond = edit.source, edit.target, edit.uncond
    rules: dict = {layer: [rule] for layer, rule in p2p_rules(engine.unet, control, latent_size).items()}
    blend = None
    metadata: dict = {"mode": control.mode, "nti_loss": [round(v, 7) for v in inversion.losses]}
    if p["local_blend"]:
        source_words, target_words = _blend_words(engine, request, p["blend_words"])
        blend = LocalBlend(
            word_tokens(engine.bundle, request.source_prompt, source_words),
            word_tokens(engine.bundle, request.target_prompt, target_words),
            latent_size,
            start=round(0.2 * p["steps"]),
            threshold=p["blend_threshold"],
        )
        for layer, rule in blend.rules(engine.unet).items():
            rules.setdefault(layer, []).insert(0, rule)  # records the maps before they are replaced (as P2P)
        metadata["blend_words"] = {"source": source_words, "target": target_words}
    final = p2p_sample(engine, inversion, source, target, uncond, p["guidance"], rules, blend)
    image = composite(request.image, engine.decode_latents(final[1:]), None)
    reconstruction = composite(request.image, engine.decode_latents(final[:1]), None)
    metadata["reconstruction_psnr"] = round(_psnr(reconstruction, request.image), 2)
    if blend is not None and blend.last_mask is not None:
        metadata["masks"] = {"blend": mask_array(blend.last_mask[0, 0] > 0.5, request.image.shape[:2])}
    return MethodResult(image, metadata)


def _blend_words(engine: Engine, request: EditRequest, text: str) -> tuple[list[str], list[str]]:
    if text.strip():
        left, sep, right = text.partition(">")
        if not sep:
            raise InputError(
                f"blend_words {text!r} needs the form 'source words > target words'", hint="e.g. 'red > blue'"
            )
        return left.split(), right.split()
    source_words, target_words = changed_word_pairs(engine, request.source_prompt, request.target_prompt)
    if not source_words and not target_words:
        raise InputError(
            "the source and target prompts are the same: there is nothing to edit",
            hint="Change a word of the target prompt.",
        )
    return source_words, target_words


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    error = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))
