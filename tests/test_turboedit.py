"""TurboEdit's few-step edit-friendly inversion (backend/engine/turbo.py) and the `turboedit` method."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.engine.context import Engine
from backend.engine.turbo import (
    CORA_TIMESTEPS,
    TURBO_TIMESTEPS,
    drawn_latents,
    noise_levels,
    posterior_mean,
    train_alphas,
    turbo_edit,
)
from backend.protocol import EditRequest


def test_the_schedules_are_the_papers_and_the_noise_is_shifted_one_step_down():
    assert TURBO_TIMESTEPS[4] == (799, 599, 399, 199) and TURBO_TIMESTEPS[3] == (799, 499, 199)
    assert CORA_TIMESTEPS[4] == (999, 799, 499, 199)
    assert noise_levels(TURBO_TIMESTEPS[4]) == (599, 399, 199, 0)
    assert noise_levels(CORA_TIMESTEPS[4]) == (799, 499, 199, 0)


def test_the_posterior_mean_is_ddpms_step_without_its_noise(tiny):
    """With the true noise as eps, the mean is q(x_prev | x_t, x_0)'s mean; to t = -1 it is x_0 itself."""
    engine = Engine(tiny)
    alphas = train_alphas(engine)
    x0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    t, t_prev = 599, 399
    x_t = alphas[t].sqrt() * x0 + (1 - alphas[t]).sqrt() * noise
    a_t, a_prev = alphas[t], alphas[t_prev]
    expected = (a_prev.sqrt() * (1 - a_t / a_prev) * x0 + (a_t / a_prev).sqrt() * (1 - a_prev) * x_t) / (1 - a_t)
    assert torch.allclose(posterior_mean(alphas, x_t, noise, t, t_prev), expected, atol=1e-5)
    assert torch.allclose(posterior_mean(alphas, x_t, noise, t, -1), x0, atol=1e-4)


def test_latents_are_drawn_independently_at_their_levels_and_end_at_x0(tiny):
    engine = Engine(tiny)
    alphas = train_alphas(engine)
    x0 = torch.zeros(1, 4, 16, 16)
    drawn = drawn_latents(engine, x0, (599, 399, 199, 0), alphas, seed=3)
    assert len(drawn) == 5 and torch.equal(drawn[3], x0) and torch.equal(drawn[4], x0)
    for latent, level in zip(drawn[:3], (599, 399, 199)):  # x0 = 0: pure noise scaled by sqrt(1 - a)
        assert abs(float(latent.std()) - float((1 - alphas[level]).sqrt())) < 0.1
    assert not torch.allclose(drawn[0] / drawn[0].std(), drawn[1] / drawn[1].std(), atol=0.5)


@pytest.mark.parametrize("steps", [3, 4, 5])
def test_with_the_same_prompt_the_edit_lands_exactly_on_the_picture(tiny_xl, steps):
    """The inversion is exact by construction: the stored corrections lead the edit branch through every drawn
    latent back to x_0 (on SDXL's two encoders, pooled embedding and size ids)."""
    engine = Engine(tiny_xl)
    x0 = torch.randn(1, 4, 8, 8)
    prompt = engine.encode_prompts(["a red square"], size=(64, 64))
    result = turbo_edit(engine, x0, prompt, prompt, TURBO_TIMESTEPS[steps], 1.5, seed=2, max_norm=0)
    assert len(result.corrections) == steps and torch.allclose(result.latents, x0, atol=1e-4)
    other = engine.encode_prompts(["a blue circle"], size=(64, 64))
    edited = turbo_edit(engine, x0, prompt, other, TURBO_TIMESTEPS[steps], 1.5, seed=2)
    assert not torch.allclose(edited.latents, x0, atol=1e-3)


def test_turboedit_streams_a_preview_per_step_and_refuses_an_unchanged_prompt(run_job, scene):
    request = EditRequest(
        "turboedit", image=scene, source_prompt="a red square", target_prompt="a red circle", model="tiny-xl"
    )
    events = run_job(request)
    assert events[-1].kind == "result", events[-1]
    assert [e.kind for e in events].count("preview") == 4 and events[-1].image.shape == scene.shape
    assert len(events[-1].metadata["correction_norms"]) == 4
    same = EditRequest(
        "turboedit", image=scene, source_prompt="a red square", target_prompt="a red square", model="tiny-xl"
    )
    events = run_job(same)
    assert events[-1].kind == "error" and "nothing to edit" in events[-1].message


def test_turboedit_turns_the_square_into_a_circle_in_four_steps_on_the_toy_world(toyworld_engine):
    from backend.eval.toyworld import detect_objects
    from backend.methods.registry import get_method
    from backend.models.toyworld.world import Background, Scene, SceneObject, caption, render
    from backend.validation import validate_request

    scene = Scene(
        (
            SceneObject("square", "red", "big", "solid", 0.35, 0.4),
            SceneObject("star", "blue", "small", "solid", 0.72, 0.7),
        ),
        Background("white", "plain"),
    )
    image = render(scene, 128)[0]
    source = caption(scene)
    method = get_method("turboedit")
    request = EditRequest(
        "turboedit", image=image, source_prompt=source, target_prompt=source.replace("square", "circle")
    )
    result = method.run(toyworld_engine, validate_request(request, method.info), toyworld_engine.report)
    found = {(o.colour, o.shape): o.centroid for o in detect_objects(result.image)}
    assert set(found) == {("red", "circle"), ("blue", "star")}, found
    before = {(o.colour, o.shape): o.centroid for o in detect_objects(image)}
    assert np.hypot(*np.subtract(found[("red", "circle")], before[("red", "square")])) < 4
    assert np.hypot(*np.subtract(found[("blue", "star")], before[("blue", "star")])) < 3
