"""Baselines the papers compare against, and the simplest edits Atelier offers.

- reconstruct — DDIM inversion then regeneration with the same prompt (Song et al. 2021): shows what inversion
  alone costs; every inversion-based method starts from this.
- sdedit — SDEdit (Meng et al., ICLR 2022): noise the image to t0 = strength * T, denoise towards the target
  prompt. With an `edit` mask, pixels outside it are kept (known latents are re-noised to the current t at each
  step, then composited back in pixel space).
- ddim-word-swap — DDIM-invert with the source prompt, regenerate with the target prompt: the "DDIM + word swap"
  baseline of pix2pix-zero and Prompt-to-Prompt. Its insight is the target prompt's word-level cross-attention
  during regeneration (where each word "went").

Symbols: z_0 image latents (`latents`), z_t noisy latents, t0 start step (`strength`), w guidance (`guidance`).
"""

from __future__ import annotations

import numpy as np
import torch

from backend.engine.attention import controlled
from backend.engine.blend import composite
from backend.engine.context import Engine
from backend.engine.insight import attention_insight, cross_attention_recorder, prompt_words
from backend.engine.inversion import cached_ddim_inversion
from backend.engine.sampling import denoise, guided_predictor, make_scheduler
from backend.methods.registry import MethodResult, method
from backend.protocol import INSIGHT_KEY, EditRequest, ParamSpec

SD_FAMILIES = ("sd1", "sd2", "sdxl")

STEPS = ParamSpec("steps", "int", 50, "DDIM steps", minimum=1, maximum=1000, label="Steps")
GUIDANCE = ParamSpec("guidance", "float", 7.5, "Classifier-free guidance scale w", 1.0, 30.0, label="Guidance")
MAX_SIDE = ParamSpec(
    "max_side", "int", 0, "Long side the model works at, in pixels (0 = the model's native size)", 0, 4096
)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


@method(
    id="reconstruct",
    title="Reconstruct (DDIM inversion)",
    description="Invert the image with DDIM and regenerate it: shows how faithful inversion is on this model.",
    families=SD_FAMILIES,
    inputs=("image",),
    optional_inputs=("source_prompt",),
    params=(STEPS, MAX_SIDE),
)
@torch.no_grad()
def reconstruct(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    # 1. Image -> z_0; prompt -> c
    working, latents = engine.prepare_image(request.image, p["max_side"] or None)
    cond = engine.encode_prompts([request.source_prompt], size=working.shape[:2])
    # 2. z_0 -> z_T by DDIM inversion (w = 1: no guidance, so the ODE is the same both ways)
    trajectory = cached_ddim_inversion(engine, working, latents, request.source_prompt, cond, p["steps"])
    # 3. z_T -> z_0 with the same prompt
    scheduler = make_scheduler(engine, p["steps"])
    predict = guided_predictor(engine, cond, None, 1.0)
    result_latents = denoise(engine, trajectory[-1], scheduler, scheduler.timesteps, predict, stage="regenerating")
    image = composite(request.image, engine.decode_latents(result_latents), None)
    return MethodResult(image, {"psnr_to_input": round(psnr(image, request.image), 2)})


@method(
    id="sdedit",
    title="SDEdit",
    description="Noise the image part-way and denoise it towards the prompt; with a mask, only inside it.",
    families=SD_FAMILIES,
    inputs=("image", "target_prompt"),
    optional_inputs=("mask:edit", "negative_prompt"),
    params=(
        ParamSpec(
            "strength", "float", 0.6, "How far to noise: t0 = strength x T (0 keeps, 1 ignores the image)", 0.0, 1.0
        ),
        STEPS,
        GUIDANCE,
        ParamSpec("feather", "float", 4.0, "Mask edge softness in pixels", 0.0, 64.0),
        MAX_SIDE,
    ),
)
@torch.no_grad()
def sdedit(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    mask = request.masks.get("edit")
    # 1. Image -> z_0; prompts -> c, c_neg
    working, latents = engine.prepare_image(request.image, p["max_side"] or None)
    size = working.shape[:2]
    cond = engine.encode_prompts([request.target_prompt], size=size)
    uncond = engine.encode_prompts([request.negative_prompt], size=size)
    # 2. Start at t0 = strength * T: z_t0 = sqrt(a) z_0 + sqrt(1 - a) eps (pure eps at strength 1)
    scheduler = make_scheduler(engine, p["steps"])
    first = min(int(round(p["steps"] * (1.0 - p["strength"]))), p["steps"])
    timesteps = scheduler.timesteps[first:]
    if len(timesteps) == 0:
        return MethodResult(request.image.copy(), {"note": "strength 0 keeps the image unchanged"})
    noise = engine.randn(tuple(latents.shape), request.seed)
    # At strength 1 start from pure noise, as generation does: the first DDIM timestep (951 of 1000 at 20 steps)
    # still carries sqrt(a) ~ 0.09 of z_0, enough for the model to keep a flat region's colour.
    start = noise * scheduler.init_noise_sigma if first == 0 else scheduler.add_noise(latents, noise, timesteps[:1])
    # 3. Denoise towards the prompt; outside the mask, put back z_0 noised to the current level each step
    hook = None
    if mask is not None:
        latent_mask = engine.mask_to_latent(engine.resize_mask(mask, size))
        hook = _keep_outside(scheduler, timesteps, latents, noise, latent_mask)
    predict = guided_predictor(engine, cond, uncond, p["guidance"])
    result_latents = denoise(engine, start, scheduler, timesteps, predict, hook, stage="sdedit")
    # 4. Back to pixels, the user's size, untouched pixels outside the mask
    image = composite(request.image, engine.decode_latents(result_latents), mask, p["feather"])
    return MethodResult(image, {"start_step": first, "denoising_steps": len(timesteps)})


def _keep_outside(scheduler, timesteps, latents0: torch.Tensor, noise: torch.Tensor, latent_mask: torch.Tensor):
    """Step hook: known region <- z_0 noised to the next timestep (the noise level the new latents are at)."""

    def hook(step: int, t, latents: torch.Tensor, x0_pred: torch.Tensor) -> torch.Tensor:
        if step + 1 < len(timesteps):
            known = scheduler.add_noise(latents0, noise, timesteps[step + 1 : step + 2])
        else:
            known = latents0
        return latent_mask * latents + (1 - latent_mask) * known

    return hook


@method(
    id="ddim-word-swap",
    title="DDIM + word swap",
    description="Invert with the source prompt, regenerate with the target prompt (the papers' plain baseline).",
    families=SD_FAMILIES,
    inputs=("image", "source_prompt", "target_prompt"),
    optional_inputs=("negative_prompt",),
    params=(STEPS, GUIDANCE, MAX_SIDE),
)
@torch.no_grad()
def ddim_word_swap(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    # 1. Image -> z_0; prompts
    working, latents = engine.prepare_image(request.image, p["max_side"] or None)
    size = working.shape[:2]
    source = engine.encode_prompts([request.source_prompt], size=size)
    target = engine.encode_prompts([request.target_prompt], size=size)
    uncond = engine.encode_prompts([request.negative_prompt], size=size)
    # 2. z_0 -> z_T with the source prompt (w = 1)
    trajectory = cached_ddim_inversion(engine, working, latents, request.source_prompt, source, p["steps"])
    # 3. z_T -> z_0 with the target prompt and guidance w, recording the target prompt's cross-attention
    scheduler = make_scheduler(engine, p["steps"])
    predict = guided_predictor(engine, target, uncond, p["guidance"])
    store, record = cross_attention_recorder(engine.unet)
    with controlled(engine.unet, record):
        result_latents = denoise(engine, trajectory[-1], scheduler, scheduler.timesteps, predict, stage="regenerating")
    # 4. Back to pixels; the insight: one heat map per word of the target prompt
    image = composite(request.image, engine.decode_latents(result_latents), None)
    words = prompt_words(engine.bundle, request.target_prompt)
    note = "cross-attention of each target-prompt word while regenerating, averaged over steps and layers"
    insight = attention_insight(store, words, tuple(latents.shape[-2:]), note)
    return MethodResult(image, {INSIGHT_KEY: insight})
