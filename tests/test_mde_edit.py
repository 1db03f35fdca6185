"""MDE-Edit: the Object Alignment and Color Consistency losses, word binding, the latent optimisation, and the
method through the worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.errors import InputError
from backend.methods.mde_edit import EditTarget, ccl_loss, oal_loss
from backend.protocol import EditRequest, ObjectPrompt


def _mask(side: int = 8) -> torch.Tensor:
    mask = torch.zeros(side, side)
    mask[2:5, 2:6] = 1.0
    return mask


def _maps(word_map: torch.Tensor, tokens: int = 6) -> torch.Tensor:
    """(tokens, h, w) attention: `word_map` on token 2, the rest of each pixel's attention on token 1."""
    maps = torch.zeros(tokens, *word_map.shape)
    maps[2] = word_map
    maps[1] = 1 - word_map
    return maps


def test_the_object_alignment_loss_is_smallest_when_the_words_attention_matches_its_mask():
    mask = _mask()
    target = [EditTarget(mask, object_tokens=[2], attribute_tokens=[], words=["dog"])]
    aligned = oal_loss(_maps(0.9 * mask + 0.05), target)
    shifted = oal_loss(_maps(0.9 * torch.roll(mask, 3, dims=1) + 0.05), target)
    diffuse = oal_loss(_maps(torch.full_like(mask, 0.3)), target)
    assert aligned < shifted and aligned < diffuse
    assert oal_loss(_maps(0.9 * mask + 0.05), target, "quartic") < oal_loss(
        _maps(torch.full_like(mask, 0.3)), target, "quartic"
    )


def test_the_color_consistency_loss_rewards_the_attribute_word_winning_inside_its_mask():
    mask = _mask()
    target = [EditTarget(mask, object_tokens=[], attribute_tokens=[2], words=["red"])]
    strong, weak = _maps(0.9 * mask), _maps(0.2 * mask)
    assert ccl_loss(strong, target, shared=[1]) < ccl_loss(weak, target, shared=[1])
    leaking = _maps(0.9 * torch.ones_like(mask))  # as strong inside, but all over the picture
    assert ccl_loss(strong, target, [1], "code") < ccl_loss(leaking, target, [1], "code")
    assert ccl_loss(strong, target, [1]) == pytest.approx(ccl_loss(leaking, target, [1]).item())  # Eq. 6: inside only


def _request(scene, words: list[str], target_prompt: str = "a blue square and a red square") -> EditRequest:
    left = np.zeros(scene.shape[:2], np.uint8)
    left[20:44, 6:30] = 255
    right = np.zeros(scene.shape[:2], np.uint8)
    right[22:42, 36:56] = 255
    return EditRequest(
        "mde-edit",
        scene,
        params={"steps": 3, "iterations": 2, "nti_inner_steps": 2},
        source_prompt="a red square and a blue circle",
        target_prompt=target_prompt,
        object_prompts=[ObjectPrompt(left, words[0]), ObjectPrompt(right, words[1])],
        model="tiny",
    )


def test_words_bind_to_their_own_occurrence_and_split_into_object_and_attribute_words(tiny, scene):
    from backend.engine.context import Engine
    from backend.methods.mde_edit import edit_targets

    engine = Engine(tiny)
    targets = edit_targets(engine, _request(scene, ["blue square", "red square"]), (8, 8), (64, 64))
    assert [t.attribute_tokens for t in targets] == [[2], [6]]
    assert [t.object_tokens for t in targets] == [[3], [7]]  # "square" twice: each object its own
    assert targets[0].mask.sum() > 0 and targets[0].mask.shape == (8, 8)
    with pytest.raises(InputError, match="'s word\\(s\\) green are not in the target prompt"):
        edit_targets(engine, _request(scene, ["green", "red"]), (8, 8), (64, 64))


def test_mde_edit_runs_through_the_worker_with_two_objects(run_job, scene):
    from backend.protocol import decode_array

    events = run_job(_request(scene, ["blue square", "red square"]))
    assert events[-1].kind == "result", events[-1]
    result = events[-1]
    assert result.image.shape == scene.shape and [e.kind for e in events].count("preview") == 3
    assert len(result.metadata["losses"]) == round(0.4 * 3)  # optimised in the first 40 % of the steps
    assert [o["words"] for o in result.metadata["objects"]] == [["blue", "square"], ["red", "square"]]
    region = decode_array(result.metadata["masks"]["edit_region"])
    assert region[30, 15] and region[30, 45] and not region[5, 5]


def test_the_latent_optimisation_lowers_the_color_consistency_loss_on_the_toy_world(toyworld_engine):
    """On a toy-world recolour of two objects (20 steps), each step's iterations bring the CCL down."""
    from backend.eval.mde import cases
    from backend.methods.registry import get_method
    from backend.validation import validate_request

    case = next(c for c in cases(8) if c.kinds == ["recolour", "recolour"])
    method = get_method("mde-edit")
    request = validate_request(
        EditRequest(**{**case.request.__dict__, "params": {"steps": 20, "nti_inner_steps": 3}}), method.info
    )
    result = method.run(toyworld_engine, request, toyworld_engine.report)
    first_step = result.metadata["losses"][0]
    assert first_step["last"]["ccl"] < 0.8 * first_step["first"]["ccl"], result.metadata["losses"]


def test_the_suite_judges_a_perfect_edit_a_success_and_the_untouched_picture_a_failure():
    """The judge of `python -m backend eval-mde`: the edited scene rendered by the world passes every criterion, the
    input picture (nothing edited) fails on the edits and keeps everything else."""
    from backend.eval.mde import cases, judge
    from backend.models.toyworld.world import render

    suite = cases(6)
    assert {tuple(c.kinds) for c in suite} >= {("recolour", "replace")} or len({tuple(c.kinds) for c in suite}) >= 2
    assert any(c.overlapping for c in suite) and any(not c.overlapping for c in suite)
    for case in suite:
        perfect, _ = render(case.edited_scene, 128)
        row = judge(case, perfect)
        assert row["success"] and row["edited"] == 2 and row["bg_psnr"] >= 40 and row["bg_ssim"] > 0.999, row
        untouched = judge(case, case.image)
        assert not untouched["success"] and untouched["edited"] < 2 and untouched["kept"] == untouched["others"]


def test_mde_edit_makes_both_edits_where_its_losses_are_needed_on_the_toy_world(toyworld_engine):
    """Two cases of the suite (`python -m backend eval-mde`, 50 steps, defaults) where MDE-Edit makes both edits
    and the same run without OAL and CCL (attention injection, null-text inversion and final merge alone) does
    not: a shape replaced and a colour changed at once. On all 20 cases: edits made 19/40 with the losses, 16/40
    without (see the issue note)."""
    from backend.eval.mde import cases, judge, run_case

    suite = cases(10)
    chosen = [case for case in suite if case.index in (2, 9)]
    assert [c.kinds for c in chosen] == [["replace", "recolour"], ["replace", "recolour"]]
    with_losses = [judge(case, run_case(toyworld_engine, case, "mde-edit")[0]) for case in chosen]
    assert all(row["edited"] == 2 for row in with_losses), with_losses
    without = [judge(case, run_case(toyworld_engine, case, "mde-no-losses")[0]) for case in chosen]
    assert sum(row["edited"] == 2 for row in without) <= 1, without


def test_mde_edit_optimises_in_fp32_on_a_half_precision_model_and_gives_the_model_back_as_it_was(scene):
    """bf16 stands in for a GPU's fp16 (the CPU has no fp16 convolutions): null-text inversion and MDE-Edit's latent
    optimisation lift the UNet to fp32 (they do not converge in half precision) and put it back."""
    from backend.engine.context import Engine
    from backend.methods.registry import get_method
    from backend.models import load_model
    from backend.validation import validate_request

    bundle = load_model("tiny", device="cpu", dtype="bf16")
    engine = Engine(bundle)
    request = _request(scene, ["blue square", "red square"])
    method = get_method("mde-edit")
    result = method.run(engine, validate_request(request, method.info), engine.report)
    assert result.image.shape == scene.shape and result.metadata["losses"]
    assert next(bundle.unet.parameters()).dtype == torch.bfloat16


def test_a_word_missing_from_the_target_prompt_is_refused_before_the_slow_inversion(run_job, scene):
    events = run_job(_request(scene, ["green", "red"]))
    assert events[-1].kind == "error" and "green are not in the target prompt" in events[-1].message
    assert not [e for e in events if e.kind == "progress" and "inversion" in (e.stage or "")]
