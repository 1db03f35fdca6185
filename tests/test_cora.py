"""The Cora method: its layers, and a run through the worker on the tiny SDXL model."""

from __future__ import annotations

import dataclasses

import numpy as np

from backend.protocol import EditRequest


def test_the_layers_are_the_papers_26_self_attention_blocks_on_an_sdxl_shaped_unet():
    """SDXL's decoder (10 + 10 + 10 transformer blocks at 1/4 of the latent side, 2 + 2 + 2 at 1/2) at 512 px:
    Cora edits blocks 44-69, i.e. all but up_blocks.0.attentions.0."""
    from diffusers import UNet2DConditionModel

    from backend.methods.cora import cora_layers

    unet = UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=8,
        cross_attention_dim=16,
        layers_per_block=2,
        norm_num_groups=8,
    )
    layers = cora_layers(unet, (64, 64), "sdxl")
    assert len(layers) == 26 and all(name.endswith(".attn1") for name in layers)
    assert sum(name.startswith("up_blocks.0.attentions.1.") for name in layers) == 10
    assert not any(name.startswith(("up_blocks.0.attentions.0.", "up_blocks.2")) for name in layers)
    assert sum(name.startswith("up_blocks.1.") for name in layers) == 6
    assert len(cora_layers(unet, (64, 64), "sd1")) == 36  # other families: every block at those two sides


def test_cora_runs_in_four_steps_with_a_mask_and_keeps_the_outside(run_job, scene):
    mask = np.zeros(scene.shape[:2], np.uint8)
    mask[16:48, 0:32] = 255
    request = EditRequest(
        "cora",
        image=scene,
        source_prompt="a red square and a blue disc",
        target_prompt="a red star and a blue disc",
        masks={"edit": mask},
        model="tiny-xl",
    )
    events = run_job(request)
    assert events[-1].kind == "result", events[-1]
    result = events[-1]
    assert [e.kind for e in events].count("preview") == 4 and result.metadata["layers"] == 2
    assert 0.0 <= result.metadata["new_token_fraction"] <= 1.0 and len(result.metadata["correction_norms"]) == 4
    outside = mask == 0
    outside[8:56, 0:40] = False  # the composite's feather
    assert np.array_equal(result.image[outside], scene[outside])
    same = EditRequest("cora", image=scene, source_prompt="a cat", target_prompt="a cat", model="tiny-xl")
    assert run_job(same)[-1].kind == "error"


def test_cora_moves_the_square_by_prompt_where_turboedit_leaves_it_behind(toyworld_engine):
    """Case 45 of `python -m backend eval-cora` ("at the left" -> "at the right", 4 steps, defaults): TurboEdit
    keeps the object at its old place; Cora moves it to the right third, its look kept, nothing left behind."""
    from backend.eval.cora import cases, judge, run_case

    case = next(c for c in cases(30) if c.index == 45)
    assert case.kind == "move"
    turbo = judge(case, run_case(toyworld_engine, case, "turboedit", {}))
    moved = judge(case, run_case(toyworld_engine, case, "cora", {}))
    assert turbo["left_behind"] and not turbo["edit_ok"], turbo
    assert moved["success"] and moved["appearance_kept"] and not moved["left_behind"], moved


def test_the_movement_intensifier_works_inside_the_mask_only_and_is_seeded(toyworld_engine):
    """With a mask, the intensifier (FlexiEdit, m = 0.2 by default) loosens the masked region on the first step:
    the result changes there, stays the input outside, and the same seed gives the same picture."""
    from backend.eval.cora import cases, edit_mask, run_case

    case = next(c for c in cases(12, kinds=("move",)) if c.index == 55)
    mask = edit_mask(case) > 0
    plain = run_case(toyworld_engine, case, "cora", {"movement_intensifier": 0.0}, masked=True)
    loosened = run_case(toyworld_engine, case, "cora", {}, masked=True)
    again = run_case(toyworld_engine, case, "cora", {}, masked=True)
    assert np.array_equal(loosened, again)
    changed = np.abs(plain.astype(int) - loosened.astype(int)).max(axis=-1) > 8
    assert changed[mask].mean() > 0.02  # the region is redrawn differently
    assert changed[~mask].mean() < 0.005  # outside: the same (but for the composite's feather at the edge)


def test_the_suite_judges_the_ground_truth_right_and_reads_how_far_an_edit_went():
    """The edited scene itself passes; an added circle on the wrong side of the object fails (the caption says
    "<object> left of <circle>"); toward_prompt reads 0 for the source picture and ~1 for the edited scene."""
    from backend.eval.cora import cases, judge
    from backend.models.toyworld.world import Scene, render

    drawn = cases(8, kinds=("add", "colour", "move"))
    for case in drawn:
        truth = judge(case, render(case.edited_scene, 128)[0])
        assert truth["success"], (case.kind, truth)
        if case.kind in ("colour", "move"):
            assert abs(truth["toward_prompt"] - 1) < 0.15, truth
            assert abs(judge(case, case.image)["toward_prompt"]) < 0.15
    add = next(c for c in drawn if c.kind == "add")
    first, circle = add.edited_scene.objects
    wrong_side = Scene(
        (first, dataclasses.replace(circle, x=first.x, y=min(first.y + 0.4, 0.85))), add.scene.background
    )
    assert not judge(add, render(wrong_side, 128)[0])["edit_ok"]
