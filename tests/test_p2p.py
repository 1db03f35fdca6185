"""Prompt-to-Prompt: word alignment, map injection (batched and separate branches), LocalBlend, and the
NTI + P2P method."""

from __future__ import annotations

import pytest
import torch

from backend.engine.attention import AttentionCall
from backend.engine.p2p import (
    LocalBlend,
    P2PInject,
    _align,
    blend_layers,
    coarse_self_layers,
    p2p_control,
    refinement_mapper,
    replacement_mapper,
)
from backend.errors import InputError


def test_word_alignment_pairs_equal_words_and_leaves_changes_unpaired():
    assert _align(["a", "red", "circle"], ["a", "blue", "circle"]) == [0, None, 2]
    assert _align(["a", "circle"], ["a", "big", "striped", "circle"]) == [0, None, None, 1]
    assert _align(["a", "big", "circle"], ["a", "circle"]) == [0, 2]


def test_a_swapped_word_takes_the_old_words_attention_split_over_its_tokens(tiny):
    tokenizer = tiny.tokenizers[0]
    assert len(tokenizer("blueish", add_special_tokens=False).input_ids) == 2  # the case worth testing
    mapper = replacement_mapper(tiny, "a red circle", "a blueish circle")
    # positions: 0 start, 1 "a", 2 "red" -> 2-3 "blue" "ish", 3 "circle" -> 4, end/padding shifted by one
    assert mapper[1, 1] == 1 and mapper[2, 2] == mapper[2, 3] == 0.5 and mapper[3, 4] == 1 and mapper[4, 5] == 1
    source_maps = torch.softmax(torch.randn(6, 77), dim=-1)
    target_maps = source_maps @ mapper
    # every source token's attention arrives once (the swapped word's in halves); the last padding token drops out
    torch.testing.assert_close(target_maps.sum(-1), source_maps[:, :76].sum(-1))
    with pytest.raises(InputError, match="same number of words"):
        replacement_mapper(tiny, "a red circle", "a big red circle")


def test_refine_keeps_the_new_words_own_attention_and_realigns_the_rest(tiny):
    index, alpha = refinement_mapper(tiny, "a red circle", "a red striped circle")
    assert alpha[3] == 0  # "striped" (new): its own map
    assert alpha[:3].eq(1).all() and alpha[4:].eq(1).all()
    assert index[4] == 3 and index[5] == 4  # "circle" and the end token: one place earlier in the source


def _maps(batch: int, seed: int, queries: int = 4) -> torch.Tensor:
    return torch.softmax(torch.randn(batch, 2, queries, 77, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_batched_injection_edits_only_the_conditional_target_and_only_in_its_steps(tiny):
    control = p2p_control(tiny, "a red circle", "a blue circle", steps=10, cross_fraction=0.5, self_fraction=(0.2, 0.4))
    cross, self_rule = P2PInject(control, True), P2PInject(control, False)
    probs = _maps(4, 0)  # [uncond source, uncond target, cond source, cond target]
    out = cross.edit_probs(AttentionCall("x.attn2", 3, True), probs)
    torch.testing.assert_close(out[3], torch.einsum("hqi,ij->hqj", probs[2], control.mapper))
    assert torch.equal(out[:3], probs[:3])
    assert torch.equal(cross.edit_probs(AttentionCall("x.attn2", 5, True), probs), probs)  # cross until step 5
    selfs = _maps(4, 1, queries=4)[..., :4]
    assert torch.equal(self_rule.edit_probs(AttentionCall("x.attn1", 1, False), selfs), selfs)  # self from step 2
    assert torch.equal(self_rule.edit_probs(AttentionCall("x.attn1", 2, False), selfs)[3], selfs[2])


def test_separate_branches_record_the_source_call_and_inject_into_the_target_call(tiny):
    control = p2p_control(tiny, "a circle", "a striped circle", steps=10, layout="separate")
    assert control.mode == "refine"
    rule = P2PInject(control, True)
    source = _maps(1, 2)
    control.branch = "source"
    assert torch.equal(rule.edit_probs(AttentionCall("x.attn2", 0, True), source), source)
    control.branch = "target"
    target = _maps(1, 3).requires_grad_(True)
    out = rule.edit_probs(AttentionCall("x.attn2", 0, True), target)
    assert torch.equal(out[0, :, :, 1], source[0, :, :, 1])  # "a": from the source
    assert torch.equal(out[0, :, :, 2], target[0, :, :, 2].detach())  # "striped": its own
    out[0, :, :, 2].sum().backward()
    assert target.grad is not None and target.grad[0, :, :, 2].abs().sum() > 0  # the new word keeps its gradient


def test_coarse_layers_are_the_p2p_ones_on_sd_and_their_counterparts_on_the_toy_model(toyworld_engine):
    unet = toyworld_engine.unet
    assert blend_layers(unet, (16, 16)) == [
        "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.1.transformer_blocks.0.attn2",
    ]
    assert coarse_self_layers(unet, (16, 16)) == ["mid_block.attentions.0.transformer_blocks.0.attn1"]  # side / 4
    half = coarse_self_layers(unet, (16, 16), 0.5)  # MDE-Edit: the 8 x 8 layers too, never the 16 x 16 ones
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn1" in half and not any("blocks.2." in n for n in half)
    assert not any(n.startswith("down_blocks.0") for n in half)


def test_local_blend_keeps_the_source_outside_the_words_attention():
    blend = LocalBlend(source_tokens=[2], target_tokens=[2], latent_size=(4, 4), start=1)
    maps = torch.zeros(2, 4, 77)  # a 2 x 2 grid: the word attends to the top-left cell only
    maps[:, 0, 2] = 1.0
    maps[:, 1:, 0] = 1.0
    blend.maps[1] = [maps]
    latents = torch.stack([torch.zeros(4, 4, 4), torch.ones(4, 4, 4)])
    out = blend.apply(1, latents)
    assert torch.equal(out[0], latents[0])
    # the 3 x 3 max-pool grows the top-left cell over the whole 2 x 2 grid; on a 4 x 4 grid it would not
    assert out[1].mean() == 1.0
    blend.maps[1] = [torch.zeros(2, 16, 77)]
    blend.maps[1][0][:, 0, 2] = 1.0
    out = blend.apply(1, latents)
    kept = out[1, 0] == 1
    assert kept[:2, :2].all() and not kept[2:, 2:].any()


def test_nti_p2p_runs_through_the_worker_and_reports_its_reconstruction(run_job, scene):
    from backend.protocol import EditRequest, decode_array

    request = EditRequest(
        "nti-p2p",
        scene,
        params={"steps": 3, "nti_inner_steps": 2},
        source_prompt="a red square",
        target_prompt="a green square",
        model="tiny",
    )
    events = run_job(request)
    assert events[-1].kind == "result", events[-1]
    result = events[-1]
    assert result.image.shape == scene.shape and [e.kind for e in events].count("preview") == 3
    assert result.metadata["mode"] == "replace" and len(result.metadata["nti_loss"]) == 3
    assert result.metadata["blend_words"] == {"source": ["red"], "target": ["green"]}
    assert decode_array(result.metadata["masks"]["blend"]).shape == scene.shape[:2]
    same = EditRequest(
        "nti-p2p", scene, params={"steps": 2}, source_prompt="a cat", target_prompt="a cat", model="tiny"
    )
    error = run_job(same)[-1]
    assert error.kind == "error" and "nothing to edit" in error.message


def test_nti_p2p_recolours_an_object_on_the_toy_world_and_regenerates_the_rest(toyworld_engine):
    """Colour swaps on toy-world scenes (20 steps): the object takes the new colour, the other object stays where
    and what it was, and the source branch regenerates the picture (null-text inversion)."""
    from backend.eval.toyworld import detect_objects
    from backend.methods.registry import get_method
    from backend.models.toyworld.world import caption, render, scene_for_seed
    from backend.protocol import EditRequest
    from backend.validation import validate_request

    method = get_method("nti-p2p")
    successes = 0
    for index in range(3):
        scene = scene_for_seed(707, index, n_objects=2)
        image, _ = render(scene, 128)
        first, second = scene.objects
        colour = "blue" if first.colour not in ("blue", "cyan", "purple") else "orange"
        source = caption(scene)
        target = source.replace(f" {first.colour} ", f" {colour} ", 1)
        assert target != source
        request = EditRequest("nti-p2p", image, params={"steps": 20}, source_prompt=source, target_prompt=target)
        result = method.run(toyworld_engine, validate_request(request, method.info), toyworld_engine.report)
        assert result.metadata["reconstruction_psnr"] >= 25.0
        found = detect_objects(result.image)
        recoloured = any(d.colour == colour and d.shape == first.shape for d in found)
        kept = any(d.colour == second.colour and d.shape == second.shape for d in found)
        successes += recoloured and kept
    assert successes >= 2
