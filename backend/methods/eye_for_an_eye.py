"""Eye-for-an-eye: appearance transfer with semantic correspondence (Go, Choi, Shin, Uh; arXiv 2406.07008).
Card: shared/METHODS.md section 3; reference code `sooyeon-go/eye_for_an_eye` (built on Cross-Image Attention).

The target (structure) image is repainted with the reference's colours and patterns, part to matching part. Cross-
Image Attention lets the target's queries find the reference's keys and hopes attention matches the right parts;
Eye-for-an-eye matches explicitly and moves the reference's features into place *before* self-attention:

1. Both images are inverted with edit-friendly DDPM inversion (100 steps, eta 1, CFG 3.5 on "a photo of a
   <domain>"), keeping each step's noise z (backend/engine/ddpm_inversion.py).
2. Sampling skips the first 32 steps and runs a batch of three - [out, reference, structure] - from the
   structure's latent at step 32 (out) and each image's own (reference, structure); every branch takes its image's
   stored z (out the structure's), so reference and structure re-trace their inversions exactly.
3. In the decoder's self-attention layers at 1/2 and 1/1 of the latent side (SD 1.5 at 512 px: the 32 x 32 and
   64 x 64 ones, up_blocks.2-3, six layers), during steps 10-70 of the 68 that remain, the *input* features of the
   out branch are rewritten before Q, K and V are projected from them:
   - every 5th step below step 40 ("structure refresh"): the out features become the structure branch's;
   - otherwise ("feature injection"): every out position inside the target mask takes the reference feature (inside
     the reference mask) of highest cosine similarity with it - a dense DIFT-style nearest neighbour recomputed at
     each step and layer, here one matrix product + argmax instead of the reference code's per-pixel loop.
4. Masked AdaIN: from step 49 on (of the remaining 68), the out latent's per-channel mean and standard deviation
   inside the target mask are set to the reference latent's inside the reference mask.
5. Decode; with a target mask, the pixels outside it are the input's.

Modes: `features` (the paper), `values` (the paper's ablation: only V rearranged by the same matches) and `kv-swap`
(the Cross-Image-Attention baseline: out's keys and values are the reference's, no explicit correspondence).
Every step setting is on the paper's 100-step schedule and scales with `steps` (at 20 steps: skip 6, correspondence
steps 2-14, refresh every 5th step below 8, AdaIN from step 9); the refresh period is not scaled.
One departure: the transfer's CFG scale defaults to the inversion's (3.5) where the code's is 1. Edit-friendly z
reproduce a trajectory only under the predictor that computed them; at 1 the reference and structure branches drift
from their own pictures (measured on the toy world: a red square comes back orange, blue turns cyan). With
guidance, as in the code, only the conditional half of the batch is matched.
The step counter of the rules is the reference code's: during step i it reads i - 1 (its callback sets it after
each step), 0 on the first. Not built: the reference's FreeU modification of the UNet (its backbone/skip scaling
is a quality tweak of the base model, not part of the method), SAM-HQ box masks (Atelier's masks come from the
brush or click-to-segment).
"""

from __future__ import annotations

from dataclasses import dataclass

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
from backend.engine.cache import inversion_key
from backend.engine.context import Engine
from backend.engine.correspondence import nearest_neighbours
from backend.engine.ddpm_inversion import (
    DDPMTrajectory,
    ddpm_invert,
    ddpm_step,
    ddpm_timesteps,
    previous_timestep,
)
from backend.engine.sampling import predict_noise
from backend.engine.turbo import train_alphas
from backend.errors import InputError
from backend.methods.baselines import MAX_SIDE
from backend.methods.registry import MethodResult, method
from backend.protocol import EditRequest, ParamSpec

OUT, REFERENCE, STRUCTURE = 0, 1, 2  # batch items (per guidance half)
MODES = ("features", "values", "kv-swap")


def transfer_layers(unet, latent_size: tuple[int, int]) -> list[str]:
    """Decoder self-attention at 1/2 and 1/1 of the latent side (SD 1.5 at 512 px: 32 x 32 and 64 x 64 tokens)."""
    wanted = {(-(-latent_size[0] // f), -(-latent_size[1] // f)) for f in (2, 1)}
    return [
        name
        for name in attention_layers(unet, "self", blocks=("up",))
        if layer_resolution(unet, name, latent_size) in wanted
    ]


def grid_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(H, W) float mask -> (h * w,) bool: where the bilinearly downsampled mask is above zero (the code's test)."""
    small = F.interpolate(mask[None, None].float(), size=grid, mode="bilinear", align_corners=False)
    return (small[0, 0] > 0).flatten()


def masked_adain(
    content: torch.Tensor, style: torch.Tensor, content_mask: torch.Tensor, style_mask: torch.Tensor
) -> torch.Tensor:
    """(C, h, w) content with its per-channel mean / std inside content_mask (h, w; soft) set to the style's inside
    style_mask, blended in by the mask. Statistics over the cells fully inside each mask (all cells if none is)."""

    def stats(features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat, inside = features.flatten(1).float(), mask.flatten() >= 1 - 1e-6
        chosen = flat[:, inside] if int(inside.sum()) > 1 else flat
        return chosen.mean(dim=1)[:, None, None], (chosen.var(dim=1) + 1e-5).sqrt()[:, None, None]

    content_mean, content_std = stats(content, content_mask)
    style_mean, style_std = stats(style, style_mask)
    restyled = (content.float() - content_mean) / content_std * style_std + style_mean
    blended = content.float() * (1 - content_mask) + restyled * content_mask
    return blended.to(content.dtype)


@dataclass(frozen=True)
class Schedule:
    """The paper's step settings (on its 100-step schedule) scaled to the chosen step count."""

    skip: int
    features: range
    refresh_every: int
    refresh_until: int
    adain_from: int  # the reference code's callback applies AdaIN from one step before adain_start

    @classmethod
    def scaled(cls, p: dict) -> Schedule:
        factor = p["steps"] / 100

        def at(value: int) -> int:
            return int(round(value * factor))

        return cls(
            min(at(p["skip_steps"]), p["steps"] - 1),
            range(at(p["feature_start"]), at(p["feature_end"])),
            p["refresh_every"],  # a period: every 5th step stays every 5th step
            at(p["refresh_until"]),
            at(p["adain_start"]) - 1,
        )


@dataclass
class TransferState:
    """What the rules share: the step counter and the settings."""

    mode: str
    feature_steps: range
    refresh_every: int
    refresh_until: int
    counter: int = 0
    matched: int = 0  # out positions rewritten (all layers, all steps): for the metadata

    def active(self) -> bool:
        return self.counter in self.feature_steps

    def refreshing(self) -> bool:
        return self.refresh_every > 0 and self.counter % self.refresh_every == 0 and self.counter < self.refresh_until


class CorrespondenceRule(AttentionRule):
    """Steps 3 of the module docstring on one layer: `features` rewrites the out branch's input features,
    `values` only its V (by the same matches), `kv-swap` gives it the reference's K and V."""

    def __init__(self, state: TransferState, out_mask: torch.Tensor, reference_mask: torch.Tensor) -> None:
        super().__init__()
        self.state, self.out_mask, self.reference_mask = state, out_mask, reference_mask
        self._matches: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (first item, out positions, matches)

    def _halves(self, batch: int) -> list[int]:
        """First index of each [out, reference, structure] triple this rule acts on: with guidance the batch is
        [unconditional x 3, conditional x 3] and, as in the reference code, only the conditional half is matched."""
        return [3] if batch == 6 else [0]

    def edit_input(self, call: AttentionCall, hidden_states: torch.Tensor) -> torch.Tensor:
        self._matches = []
        if not self.state.active() or self.state.mode == "kv-swap":
            return hidden_states
        edited = hidden_states.clone() if self.state.mode == "features" else hidden_states
        for first in self._halves(hidden_states.shape[0]):
            out, reference = first + OUT, first + REFERENCE
            if self.state.mode == "features" and self.state.refreshing():
                edited[out] = hidden_states[first + STRUCTURE]
                continue
            positions = self.out_mask.nonzero().flatten()
            indices, _ = nearest_neighbours(
                hidden_states[out], hidden_states[reference], self.out_mask, target_mask=self.reference_mask
            )
            if self.state.mode == "features":
                edited[out, positions] = hidden_states[reference, indices]
            self._matches.append((first, positions, indices))
            self.state.matched += len(positions)
        return edited

    def edit_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.state.active():
            return key, value
        if self.state.mode == "kv-swap":
            key, value = key.clone(), value.clone()
            for first in self._halves(key.shape[0]):
                key[first + OUT], value[first + OUT] = key[first + REFERENCE], value[first + REFERENCE]
            return key, value
        if self.state.mode == "values" and self._matches:
            value = value.clone()
            for first, positions, indices in self._matches:
                value[first + OUT, positions] = value[first + REFERENCE, indices]
        return key, value


def _inverted(engine: Engine, image: np.ndarray, latents, prompt, cond, uncond, timesteps, p, seed) -> DDPMTrajectory:
    """One image's DDPM inversion from the skip on, through the engine's inversion cache."""
    start = Schedule.scaled(p).skip
    key = inversion_key(
        image,
        engine.bundle.model_id,
        prompt,
        len(timesteps),
        "ddpm",
        guidance=float(p["inversion_guidance"]),
        start=start,
        seed=int(seed),
    )
    cached = engine.inversion_cache.get(key)
    if cached is not None:
        engine.report.log("inversion reused from cache")
        return DDPMTrajectory(
            cached.timesteps,
            [x.to(engine.device) for x in cached.latents],
            [z.to(engine.device) for z in cached.noises],
        )
    (trajectory,) = ddpm_invert(engine, latents, cond, uncond, timesteps, p["inversion_guidance"], seed, start=start)
    stored = DDPMTrajectory(
        trajectory.timesteps, [x.cpu() for x in trajectory.latents], [z.cpu() for z in trajectory.noises]
    )
    engine.inversion_cache.put(key, stored)
    return trajectory


@method(
    id="eye-for-an-eye",
    title="Eye-for-an-eye (appearance transfer)",
    description="Repaint the picture's object with the reference's colours and patterns, part to matching part.",
    families=("sd1",),
    inputs=("image", "reference"),
    optional_inputs=("mask:edit", "source_prompt"),
    params=(
        ParamSpec("steps", "int", 100, "DDPM steps of inversion and sampling", 2, 1000),
        ParamSpec("domain", "str", "object", "What the pictures show: the prompt is 'a photo of a <domain>'"),
        ParamSpec(
            "mode", "choice", "features", "features (paper), values (ablation), kv-swap (baseline)", choices=MODES
        ),
        # The schedule, in steps of the paper's 100 (scaled to `steps`):
        ParamSpec(
            "skip_steps",
            "int",
            32,
            "Steps skipped at the start (of 100; the edit starts from the inverted latent)",
            0,
            99,
        ),
        ParamSpec("feature_start", "int", 10, "First step after the skip with the correspondence (of 100)", 0, 100),
        ParamSpec("feature_end", "int", 70, "Step after the skip the correspondence ends before (of 100)", 0, 100),
        ParamSpec(
            "refresh_every",
            "int",
            5,
            "Structure refresh: every n-th step the out features are the target's (not scaled)",
            0,
            100,
        ),
        ParamSpec("refresh_until", "int", 40, "Structure refresh only below this step after the skip (of 100)", 0, 100),
        ParamSpec("adain", "bool", True, "Masked AdaIN of the latent towards the reference's statistics, late"),
        ParamSpec(
            "adain_start",
            "int",
            50,
            "Step after the skip the AdaIN starts at (of 100; the code applies it 1 early)",
            0,
            100,
        ),
        ParamSpec("inversion_guidance", "float", 3.5, "CFG scale of the inversion", 1, 30),
        ParamSpec(
            "guidance",
            "float",
            3.5,
            "CFG scale of the transfer; the inversion's by default, so the branches re-trace their inversions",
            1,
            30,
        ),
        MAX_SIDE,
    ),
)
@torch.no_grad()
def eye_for_an_eye(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    if request.reference_image is None:
        raise InputError("Eye-for-an-eye needs a reference image: the appearance to transfer")
    plan = Schedule.scaled(p)
    working, structure_latents = engine.prepare_image(request.image, p["max_side"] or None)
    size = working.shape[:2]
    reference = engine.to_working(request.reference_image[..., :3], size)
    reference_latents = engine.encode_image(reference)
    prompt = request.source_prompt or f"a photo of a {p['domain']}"
    cond, uncond = engine.encode_prompts([prompt], size=size), engine.encode_prompts([""], size=size)
    timesteps = ddpm_timesteps(engine, p["steps"])
    seed = request.seed
    structure = _inverted(engine, working, structure_latents, prompt, cond, uncond, timesteps, p, seed)
    appearance = _inverted(engine, reference, reference_latents, prompt, cond, uncond, timesteps, p, seed + 7919)
    # Masks: full pictures where none is given
    target_mask = request.masks.get("edit")
    pixels_out = _pixel_mask(target_mask, size)
    pixels_reference = _pixel_mask(request.reference_mask, size)
    latent_size = tuple(structure_latents.shape[-2:])
    state = TransferState(p["mode"], plan.features, plan.refresh_every, plan.refresh_until)
    rules = {}
    for name in transfer_layers(engine.unet, latent_size):
        grid = layer_resolution(engine.unet, name, latent_size)
        masks = (grid_mask(m, grid).to(engine.device) for m in (pixels_out, pixels_reference))
        rules[name] = CorrespondenceRule(state, *masks)
    latent_out, latent_reference = (_latent_grid(m, latent_size) for m in (pixels_out, pixels_reference))
    final = _transfer(engine, structure, appearance, cond, uncond, p, state, rules, latent_out, latent_reference)
    image = composite(request.image, engine.decode_latents(final), target_mask)
    metadata = {"layers": len(rules), "prompt": prompt, "matched_positions": state.matched}
    return MethodResult(image, metadata)


def _pixel_mask(mask: np.ndarray | None, size: tuple[int, int]) -> torch.Tensor:
    if mask is None:
        return torch.ones(size)
    values = Engine.resize_mask(mask, size)
    return torch.from_numpy(np.asarray(values, np.float32) / (255.0 if values.dtype == np.uint8 else 1.0))


def _latent_grid(mask: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """The pixel mask bilinearly downsampled to the latent grid (soft), as the code's AdaIN masks."""
    return F.interpolate(mask[None, None], size=latent_size, mode="bilinear", align_corners=False)[0, 0]


def _transfer(engine, structure, appearance, cond, uncond, p, state, rules, latent_out, latent_reference):
    alphas = train_alphas(engine)
    timesteps = structure.timesteps
    total = len(timesteps)
    latents = torch.cat([structure.latents[0], appearance.latents[0], structure.latents[0]])
    batch_cond, batch_uncond = cond.repeat(3), uncond.repeat(3)
    controller = AttentionController(engine.unet)
    adain_from = Schedule.scaled(p).adain_from
    mask_out, mask_reference = latent_out.to(engine.device), latent_reference.to(engine.device)
    with controller.installed(rules):
        for step, t in enumerate(timesteps):
            engine.report.check_cancel()
            state.counter = max(step - 1, 0)
            controller.step = step
            eps = predict_noise(
                engine, latents, torch.tensor(t, device=engine.device), batch_cond, batch_uncond, p["guidance"]
            )
            t_prev = previous_timestep(timesteps, step)
            noises = torch.cat([structure.noises[step], appearance.noises[step], structure.noises[step]])
            latents = ddpm_step(alphas, latents, eps, t, t_prev, noises)
            if p["adain"] and step >= adain_from:
                out = masked_adain(latents[OUT], latents[REFERENCE], mask_out, mask_reference)
                latents = torch.cat([out[None], latents[1:]])
            engine.report.progress(step + 1, total, "transferring")
            level = t_prev if t_prev > 0 else 0
            estimate = latents[OUT : OUT + 1] / alphas[level].sqrt().to(latents.dtype) if level else latents[:1]
            engine.preview(step + 1, total, estimate)
    return latents[OUT : OUT + 1]
