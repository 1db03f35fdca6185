"""pix2pix-zero (Parmar et al., SIGGRAPH 2023), and with step-injection reconstruction guidance ("SIRG", paper
shared/papers/002_1c69e14b3aa064ca.txt, Algorithm 1). Card: shared/METHODS.md section 4.

Prompt-free single-aspect editing ("cat -> dog", "circle -> square"): the picture's caption c is moved along an edit
direction delta_c in text-embedding space (backend/engine/directions.py), and the layout is held by making the
edit's cross-attention maps follow those of a reconstruction.

1. Caption c: the user's source prompt, or BLIP's caption (the toy world: the judge's reading of the picture).
2. z_0 -> z_T by DDIM inversion with c (w = 1), each predicted noise regularised towards white noise
   (auto-correlation pyramid + KL, lambda = 20, 5 rounds: backend/engine/noise_reg.py). Both lambdas are for SD
   1.x's 64 x 64 latents and scale with the latent's size like the reconstruction weight below (unscaled, the
   toy world's 16 x 16 latents are pushed 16x harder per cell, and the inverted noise no longer regenerates the
   picture's layout: objects come back doubled).
3. Reference pass: z_T -> z_0 with c, keeping every step's latent x_ori^{t-1} and every cross-attention (attn2)
   probability map M_ori^t of all heads.
4. Edit pass from z_T with c_edit = c + s delta_c as the positive and c as the negative prompt (CFG w = 5). Per step:
   a. cross-attention guidance: x_in = [x_t, x_t] (the CFG batch) is a leaf; L_c = sum over all attn2 layers of
      |M_edit - M_ori|^2 summed over (query, token), averaged over (batch, heads); one SGD step of lr 0.1 on x_in
      (the official code: each half moves by its own gradient, and the unconditional half becomes the latent);
   b. SIRG, in the first T - beta steps only (Eq. 10): L_r = MSE(x_edit^{t-1}, x_ori^{t-1}), x_edit^{t-1} computed
      from the updated x_in through the DDIM step (differentiable), one gradient step of lr 0.15 x weight 5e4 on
      x_in. The weight is the paper's for SD 1.x's 4 x 64 x 64 latents; other latent sizes scale it so one step
      pulls as hard (2 x 0.15 x 5e4 / 16384 = 0.92 of the way: the step *injects* the reconstruction);
   c. eps from the updated x_in with CFG, and the DDIM step from its first half.
   With `fused_guidance`, L_r is taken from the forward pass of (a) and both losses share one backward pass
   (cheaper; the paper's Algorithm 1 takes them one after the other).
5. Decode. Plain pix2pix-zero is the same with the reconstruction weight 0 (method `pix2pix-zero`).

Departures from the reference code, on purpose: z_0 is the VAE posterior mean (deterministic; the code samples it);
inversion visits all 50 timesteps (the code's loop skips the first and last); only latents get gradients, never
attn2 weights (the code sets requires_grad on them, a memory waste: issue #29); the edit pass runs in fp32 (fp16
gradients are fragile). sd1 only: the differentiable DDIM step assumes an eps-predicting model (for v-prediction
the diffusers port warns the guidance explodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.engine.attention import (
    AttentionCall,
    AttentionController,
    AttentionRule,
    AttentionStore,
    RecordMaps,
    attention_layers,
)
from backend.engine.blend import composite
from backend.engine.cache import inversion_key
from backend.engine.captions import caption_image
from backend.engine.conditioning import Conditioning, check_prompt
from backend.engine.context import Engine
from backend.engine.directions import BANK_SIZE, edit_direction
from backend.engine.inversion import cached_ddim_inversion, ddim_step_between
from backend.engine.noise_reg import LAMBDA_AC, LAMBDA_KL, ROUNDS, NoiseRegularisation
from backend.engine.null_text import as_fp32, fp32_unet
from backend.engine.sampling import make_scheduler
from backend.errors import InputError
from backend.methods.baselines import MAX_SIDE, psnr
from backend.methods.registry import MethodResult, method
from backend.protocol import EditRequest, ParamSpec

SD1_FAMILIES = ("sd1",)
REFERENCE_CELLS = 4 * 64 * 64  # SD 1.x latents at 512 px: the size the paper's reconstruction weight was set for
SIRG_WEIGHT = 5e4
SIRG_LR = 0.15
FREE_STEPS = 25  # beta: last steps left without reconstruction guidance (the paper gives no value; see the sweep)


def _params(reconstruction_weight: float) -> tuple[ParamSpec, ...]:
    return (
        ParamSpec("source_word", "str", "", "What to change: a word the picture shows (e.g. cat, circle, red)"),
        ParamSpec("target_word", "str", "", "What it becomes (e.g. dog, square, blue)"),
        ParamSpec(
            "direction",
            "choice",
            "paper",
            "paper: the banks' mean difference at every position; aligned: laid down where the caption has the word",
            choices=("paper", "aligned"),
        ),
        ParamSpec("edit_strength", "float", 1.0, "s: how far along the edit direction (c + s delta_c)", 0.0, 3.0),
        ParamSpec("steps", "int", 50, "DDIM steps (inversion, reconstruction and edit)", 2, 1000, label="Steps"),
        ParamSpec("guidance", "float", 5.0, "Classifier-free guidance of the edit (negative = the caption)", 1, 30),
        ParamSpec("xa_guidance", "float", 0.1, "Cross-attention guidance step size (lr; 0 = off)", 0.0, 1.0),
        ParamSpec("xa_weight", "float", 1.0, "Cross-attention guidance loss weight", 0.0, 100.0),
        ParamSpec(
            "reconstruction_weight",
            "float",
            reconstruction_weight,
            "Step-injection reconstruction guidance weight lambda_r (0 = plain pix2pix-zero)",
            0.0,
            1e7,
        ),
        ParamSpec("reconstruction_lr", "float", SIRG_LR, "Reconstruction guidance step size", 0.0, 10.0),
        ParamSpec("free_steps", "int", FREE_STEPS, "beta: last steps without reconstruction guidance", 0, 1000),
        ParamSpec("fused_guidance", "bool", False, "Both guidance losses from one forward/backward pass (faster)"),
        ParamSpec("noise_regularisation", "bool", True, "Regularise the inverted noise (auto-correlation + KL)"),
        ParamSpec("lambda_ac", "float", LAMBDA_AC, "Noise regularisation: auto-correlation weight", 0.0, 1000.0),
        ParamSpec("lambda_kl", "float", LAMBDA_KL, "Noise regularisation: KL weight", 0.0, 1000.0),
        ParamSpec("regularisation_rounds", "int", ROUNDS, "Noise regularisation rounds per step", 0, 50),
        ParamSpec("source_bank", "str", "", "Sentence bank file for the source word (one sentence per line)"),
        ParamSpec("target_bank", "str", "", "Sentence bank file for the target word"),
        ParamSpec("bank_size", "int", BANK_SIZE, "Sentences per generated bank", 1, 5000),
        MAX_SIDE,
    )


# --------------------------------------------------------------------------------------- the two passes


@dataclass
class Reference:
    """The reconstruction pass: latents x_ori (index i = after step i - 1, [0] = z_T) and attn2 maps per step."""

    latents: list[torch.Tensor]
    maps: dict[str, dict[int, torch.Tensor]]

    @property
    def nbytes(self) -> int:
        tensors = [*self.latents, *(m for steps in self.maps.values() for m in steps.values())]
        return sum(t.numel() * t.element_size() for t in tensors)


class CrossAttentionGuidance(AttentionRule):
    """Accumulates L_c over the attn2 layers of one forward pass while `enabled` (then the maps are materialised)."""

    needs_probs = True

    def __init__(self, reference: Reference) -> None:
        super().__init__()
        self.reference = reference
        self.enabled = False
        self.loss: torch.Tensor | None = None

    def active(self, step: int) -> bool:
        return self.enabled

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        target = self.reference.maps[call.layer][call.step].to(probs.device, torch.float32)
        term = (probs.float() - target).square().sum(dim=(-2, -1)).mean()  # sum (query, token); mean (batch, head)
        self.loss = term if self.loss is None else self.loss + term
        return probs


@torch.no_grad()
def reference_pass(engine: Engine, z_T: torch.Tensor, cond: Conditioning, steps: int) -> Reference:
    """Denoise z_T with the caption (w = 1: the paper's CFG with the caption on both sides is exactly this),
    recording every attn2 map (all heads, on the CPU) and every latent."""
    scheduler = make_scheduler(engine, steps)
    store = AttentionStore(average_heads=False, kind="cross", device="cpu")
    layers = attention_layers(engine.unet, "cross")
    controller = AttentionController(engine.unet)
    latents, trajectory = z_T, [z_T]
    with controller.installed({layer: RecordMaps(store) for layer in layers}):
        for step, t in enumerate(scheduler.timesteps):
            engine.report.check_cancel()
            controller.step = step
            eps = engine.unet(latents, t, **cond.unet_kwargs()).sample
            output = scheduler.step(eps, t, latents)
            latents = output.prev_sample
            trajectory.append(latents)
            engine.report.progress(step + 1, steps, "reconstructing")
    return Reference(trajectory, store.maps)


def cached_reference(engine: Engine, key: str, z_T: torch.Tensor, cond: Conditioning, steps: int) -> Reference:
    cached = engine.inversion_cache.get(key)
    if cached is not None:
        engine.report.log("reconstruction pass reused from cache")
        return cached
    reference = reference_pass(engine, z_T, cond, steps)
    engine.inversion_cache.put(key, reference)
    return reference


@dataclass
class Guidance:
    xa_lr: float
    xa_weight: float
    reconstruction_scale: float  # lr x weight x (cells / REFERENCE_CELLS), applied to the MSE
    reconstruction_steps: int  # the first T - beta steps
    fused: bool


def edit_pass(
    engine: Engine,
    z_T: torch.Tensor,
    caption: Conditioning,
    edit: Conditioning,
    guidance_scale: float,
    reference: Reference,
    guidance: Guidance,
    steps: int,
) -> torch.Tensor:
    """Step 4 of the module docstring; returns the final latents (1, ...)."""
    scheduler = make_scheduler(engine, steps)
    ratio = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    both = Conditioning.cat([as_fp32(caption), as_fp32(edit)])
    rule = CrossAttentionGuidance(reference)
    controller = AttentionController(engine.unet)
    layers = attention_layers(engine.unet, "cross")
    latents = z_T.float()

    def guided_eps(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps_uncond, eps_cond = engine.unet(x_in, t, **both.unet_kwargs()).sample.chunk(2)
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def reconstruction_loss(x_in: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, step: int) -> torch.Tensor:
        previous = ddim_step_between(scheduler, x_in[:1], eps, int(t), int(t) - ratio)
        target = reference.latents[step + 1].to(previous.device, torch.float32)
        return (previous - target).square().sum() / previous.numel()

    with fp32_unet(engine), controller.installed({layer: rule for layer in layers}):
        for step, t in enumerate(scheduler.timesteps):
            engine.report.check_cancel()
            controller.step = step
            x_in = torch.cat([latents, latents])
            inject = step < guidance.reconstruction_steps and guidance.reconstruction_scale > 0
            if guidance.xa_lr > 0 or (inject and guidance.fused):
                # a. cross-attention guidance (and, fused, the reconstruction loss from the same pass)
                leaf = x_in.detach().requires_grad_(True)
                rule.enabled, rule.loss = guidance.xa_lr > 0, None
                with torch.enable_grad():
                    eps = guided_eps(leaf, t)
                    total = leaf.new_zeros(())
                    if rule.loss is not None:
                        total = total + guidance.xa_lr * guidance.xa_weight * rule.loss
                    if inject and guidance.fused:
                        total = total + guidance.reconstruction_scale * reconstruction_loss(leaf, eps, t, step)
                    (gradient,) = torch.autograd.grad(total, leaf)
                rule.enabled = False
                x_in = (leaf - gradient).detach()
            if inject and not guidance.fused:
                # b. step-injection reconstruction guidance on the updated latents
                leaf = x_in.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = guidance.reconstruction_scale * reconstruction_loss(leaf, guided_eps(leaf, t), t, step)
                    (gradient,) = torch.autograd.grad(loss, leaf)
                x_in = (leaf - gradient).detach()
            # c. the step itself, from the updated latents
            with torch.no_grad():
                output = scheduler.step(guided_eps(x_in, t), t, x_in[:1])
            latents = output.prev_sample
            engine.report.progress(step + 1, steps, "editing")
            engine.preview(step + 1, steps, output.pred_original_sample)
    return latents.to(engine.dtype)


# ------------------------------------------------------------------------------------------- the method


def _run(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    if p["source_word"].strip() and p["source_word"].strip() == p["target_word"].strip() and not p["target_bank"]:
        raise InputError("the source and target words are the same: there is nothing to edit")
    # 1. Working picture, caption, edit direction (errors here come before anything slow)
    working, latents = engine.prepare_image(request.image, p["max_side"] or None)
    size = working.shape[:2]
    source_prompt, author = request.source_prompt.strip(), "user"
    if source_prompt:
        check_prompt(engine.bundle, source_prompt, "source prompt")
    else:
        source_prompt, author = caption_image(engine.bundle, working)
        engine.report.log(f"caption ({author}): {source_prompt}")
    direction = edit_direction(
        engine.bundle,
        p["source_word"],
        p["target_word"],
        p["source_bank"],
        p["target_bank"],
        p["bank_size"],
        caption=source_prompt if p["direction"] == "aligned" else None,
    )
    caption = engine.encode_prompts([source_prompt], size=size)
    edit = Conditioning(
        caption.hidden + p["edit_strength"] * direction.delta.to(caption.hidden), token_ids=caption.token_ids
    )
    # 2. Inversion with noise regularisation
    noise_reg = None
    if p["noise_regularisation"] and p["regularisation_rounds"] > 0:
        # The lambdas are the paper's for SD 1.x's 64 x 64 latents; both losses are means over the cells, so their
        # gradient on one cell grows as the latent shrinks: scaled by the size, a step moves each cell as far.
        scale = latents.numel() / REFERENCE_CELLS
        noise_reg = NoiseRegularisation(
            p["lambda_ac"] * scale, p["lambda_kl"] * scale, p["regularisation_rounds"], request.seed
        )
    trajectory = cached_ddim_inversion(
        engine, working, latents, source_prompt, caption, p["steps"], noise_reg=noise_reg
    )
    z_T = trajectory[-1]
    # 3. Reference pass (cached with the inversion's key: it depends on nothing else)
    key = inversion_key(
        working, engine.bundle.model_id, source_prompt, p["steps"], "pix2pix-zero-reference", noise_reg=repr(noise_reg)
    )
    reference = cached_reference(engine, key, z_T, caption, p["steps"])
    # 4. Edit pass
    cells = latents.numel()
    guidance = Guidance(
        xa_lr=p["xa_guidance"],
        xa_weight=p["xa_weight"],
        reconstruction_scale=p["reconstruction_lr"] * p["reconstruction_weight"] * cells / REFERENCE_CELLS,
        reconstruction_steps=max(p["steps"] - p["free_steps"], 0),
        fused=p["fused_guidance"],
    )
    final = edit_pass(engine, z_T, caption, edit, p["guidance"], reference, guidance, p["steps"])
    # 5. Back to pixels
    image = composite(request.image, engine.decode_latents(final), None)
    reconstruction = composite(request.image, engine.decode_latents(reference.latents[-1]), None)
    metadata = {
        "caption": source_prompt,
        "caption_by": author,
        "edit": f"{direction.source} -> {direction.target}",
        "bank_sentences": list(direction.sentences),
        "reconstruction_steps": guidance.reconstruction_steps if guidance.reconstruction_scale > 0 else 0,
        "reconstruction_psnr": round(psnr(reconstruction, request.image), 2),
    }
    return MethodResult(image, metadata)


@method(
    id="pix2pix-zero-sirg",
    title="pix2pix-zero + reconstruction guidance",
    description="Change one thing by name (cat to dog): pix2pix-zero with step-injection reconstruction guidance.",
    families=SD1_FAMILIES,
    inputs=("image",),
    optional_inputs=("source_prompt",),
    params=_params(SIRG_WEIGHT),
)
def pix2pix_zero_sirg(engine: Engine, request: EditRequest, report) -> MethodResult:
    return _run(engine, request, report)


@method(
    id="pix2pix-zero",
    title="pix2pix-zero",
    description="Change one thing by name (cat to dog) along a text-embedding direction, layout kept by attention.",
    families=SD1_FAMILIES,
    inputs=("image",),
    optional_inputs=("source_prompt",),
    params=_params(0.0),
)
def pix2pix_zero(engine: Engine, request: EditRequest, report) -> MethodResult:
    return _run(engine, request, report)
