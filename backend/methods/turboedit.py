"""TurboEdit (Deutch, Gal, Garibi, Patashnik, Cohen-Or; SIGGRAPH Asia 2024): text-based editing in 3-5 steps with
a distilled model (SDXL-Turbo), by edit-friendly inversion with a noise shift and pseudo-guidance
(backend/engine/turbo.py). Cora's baseline ("TurboEdit alone, no correspondence"). Card: shared/METHODS.md 2a.

1. Image -> x_0 (the VAE posterior's mode); prompts -> c_src, c_tgt.
2. Draw x_t independently at each (shifted) noise level; per step, in one batch of three: the inversion branch
   stores z_i = x_{i+1} - mu(x_i, c_src), and the edit moves by mu(x'_i, c_src) + z_i + w (mu(x'_i, c_tgt) -
   mu(x'_i, c_src)), z clamped to norm 15.5 on the last step.
3. Decode.
No classifier-free guidance. Defaults: 4 steps [799, 599, 399, 199], w = 1.5, seed 2 (the paper's run configs).
"""

from __future__ import annotations

import numpy as np
import torch

from backend.engine.blend import composite
from backend.engine.conditioning import Conditioning
from backend.engine.context import Engine
from backend.engine.turbo import LAST_STEP_MAX_NORM, TURBO_TIMESTEPS, turbo_edit
from backend.errors import InputError
from backend.methods.baselines import MAX_SIDE
from backend.methods.registry import MethodResult, method
from backend.protocol import EditRequest, ParamSpec

FEW_STEP_FAMILIES = ("sd1", "sdxl")  # eps-predicting models; SD 2.x's v-prediction is not handled


def prompt_edit_inputs(
    engine: Engine, request: EditRequest
) -> tuple[np.ndarray, torch.Tensor, Conditioning, Conditioning]:
    """A few-step prompt edit's start (TurboEdit, Cora): the working picture, its x_0 and both prompts' conditioning;
    the same prompt twice is refused first."""
    if request.source_prompt.strip() == request.target_prompt.strip():
        raise InputError("the source and target prompts are the same: there is nothing to edit")
    working, latents = engine.prepare_image(request.image, request.params["max_side"] or None)
    size = working.shape[:2]
    source = engine.encode_prompts([request.source_prompt], size=size)
    target = engine.encode_prompts([request.target_prompt], size=size)
    return working, latents, source, target


@method(
    id="turboedit",
    title="TurboEdit (few-step)",
    description="Edit by rewording in 3-5 steps: edit-friendly inversion with pseudo-guidance (SDXL-Turbo).",
    families=FEW_STEP_FAMILIES,
    inputs=("image", "source_prompt", "target_prompt"),
    params=(
        ParamSpec("steps", "choice", "4", "Steps (timesteps 799..199)", choices=("3", "4", "5"), label="Steps"),
        ParamSpec("pseudo_guidance", "float", 1.5, "w: how strongly the prompt difference is applied", 0.0, 10.0),
        ParamSpec(
            "max_norm", "float", LAST_STEP_MAX_NORM, "Last step's correction noise norm limit (0 = none)", 0, 1e3
        ),
        MAX_SIDE,
    ),
)
@torch.no_grad()
def turboedit(engine: Engine, request: EditRequest, report) -> MethodResult:
    p = request.params
    # 1. Image -> x_0; prompts
    _, latents, source, target = prompt_edit_inputs(engine, request)
    # 2. Invert and edit together
    result = turbo_edit(
        engine,
        latents,
        source,
        target,
        TURBO_TIMESTEPS[int(p["steps"])],
        p["pseudo_guidance"],
        request.seed,
        p["max_norm"],
    )
    # 3. Back to pixels
    image = composite(request.image, engine.decode_latents(result.latents), None)
    return MethodResult(image, {"correction_norms": [round(n, 2) for n in result.norms]})
