"""DragonDiffusion's relocations (move, resize, paste), their masks and start latents, and the move / drag methods
on the toy world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.methods.dragon import (
    MoveEdit,
    drag_start,
    move_guidance,
    move_relocation,
    paste_relocation,
    relocated_start,
)


def _box(top: int, left: int, height: int, width: int, side: int = 64) -> torch.Tensor:
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[top : top + height, left : left + width] = True
    return mask


def test_a_move_places_the_object_exactly_and_carries_its_features_with_it():
    obj = _box(4, 2, 8, 8)
    move = move_relocation(obj, 16, 24)  # down 16, right 24 pixels
    assert torch.equal(move.placed((64, 64)), _box(20, 26, 8, 8))
    features = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    moved = move.warp(features, (64, 64))
    torch.testing.assert_close(moved[..., 20:28, 26:34], features[..., 4:12, 2:10], atol=1e-4, rtol=0)
    assert moved[..., :16, :].abs().max() < 1e-4  # nothing comes in from outside the image: zeros
    coarse = move.placed((16, 16))  # the same map on every grid
    assert torch.equal(coarse, _box(5, 6, 2, 2, side=16) | coarse) and coarse.sum() >= 4
    with pytest.raises(ValueError, match="out of the image"):
        move_relocation(obj, 0, 64)
    with pytest.raises(ValueError, match="empty"):
        move_relocation(torch.zeros(8, 8, dtype=torch.bool), 1, 1)


def test_a_resize_scales_the_object_about_its_centre():
    obj = _box(20, 20, 20, 20)  # centre (29.5, 29.5)
    for gamma in (0.5, 1.5):
        placed = move_relocation(obj, 0, 0, gamma).placed((64, 64))
        assert placed.sum().item() == pytest.approx(400 * gamma**2, rel=0.12)
        ys, xs = torch.nonzero(placed, as_tuple=True)
        assert (ys.float().mean().item(), xs.float().mean().item()) == pytest.approx((29.5, 29.5), abs=0.6)
    edit = MoveEdit(move_relocation(obj, 0, 0, 0.5))
    masks = edit.masks((64, 64))
    # Shrinking vacates a ring: m_ipt is the old object minus the new one, m_share everything else.
    assert torch.equal(masks["inpaint"], obj & ~masks["gen"]) and masks["inpaint"].sum() > 250
    assert not (masks["share"] & obj).any() and torch.equal(masks["reference"], masks["share"])


def test_a_paste_maps_reference_pixels_onto_the_placement():
    reference_mask = _box(10, 10, 10, 10, side=40)  # pixels 10..19 of a 40 x 40 reference
    # Top-left of the reference at image pixel (5, 8), twice as large: its box lands on 25..44 x, 28..47 y.
    paste = paste_relocation(reference_mask, (5.0, 8.0, 2.0), (64, 64))
    ys, xs = torch.nonzero(paste.placed((64, 64)), as_tuple=True)
    assert (xs.min().item(), xs.max().item(), ys.min().item(), ys.max().item()) == (25, 44, 28, 47)
    with pytest.raises(ValueError, match="outside the image"):
        paste_relocation(reference_mask, (200.0, 0.0, 1.0), (64, 64))


def test_move_guidance_lets_the_edit_move_only_the_cells_the_object_touches():
    obj = torch.zeros(64, 64, dtype=torch.bool)
    obj[8:20, 8:20] = True  # latent cells 1..2 (partly)
    terms = move_guidance(MoveEdit(move_relocation(obj, 16, 0)), 4.0, 6.0, 1.0, (8, 8))
    (edit, edit_region), (content, content_region) = terms
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:5, 1:3] = True  # rows 1..2 (old place) and 3..4 (new place), columns 1..2
    assert torch.equal(edit_region, expected) and torch.equal(content_region, ~expected)
    features = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert edit(features, features).item() > 0 and content(features, features).item() > 0


def test_start_latents_copy_noise_cells_rather_than_blend_them():
    z_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    obj = torch.zeros(64, 64, dtype=torch.bool)
    obj[8:24, 8:24] = True  # latent cells 1..2
    start = relocated_start(z_T, move_relocation(obj, 16, 24))  # by (2, 3) cells
    torch.testing.assert_close(start[..., 3:5, 4:6], z_T[..., 1:3, 1:3])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[3:5, 4:6] = False
    assert torch.equal(start[..., outside], z_T[..., outside])
    # Enlarged noise is copied cell by cell (nearest): it keeps the variance of noise, which blending would lower.
    grown = relocated_start(z_T, move_relocation(obj, 0, 0, 2.0))
    assert set(grown.flatten().tolist()) <= set(z_T.flatten().tolist())
    # A drag copies the 3 x 3 patch under the handle onto the target.
    dragged = drag_start(z_T, torch.tensor([[20.0, 20.0]]), torch.tensor([[44.0, 36.0]]), (64, 64))
    torch.testing.assert_close(dragged[..., 3:6, 4:7], z_T[..., 1:4, 1:4])


@pytest.mark.parametrize("task", ["move", "drag"])
def test_dragon_moves_and_drags_objects_on_the_toy_world(toyworld_engine, task):
    """The first five cases of the suite (`python -m backend eval-dragon`), run through the registered method as the
    app runs it, with its defaults (50 steps): move needs the object >= 80 % of the way, its old place empty and the
    background at >= 25 dB; drag needs the distance to the target down by >= 60 %. On the suite's 20 cases: move
    17/20, drag 17/20 (see the issue note); here at least 4 of 5 must pass, and the same runs with no guidance and no
    visual cross-attention must not (the start latent alone does not make the edit)."""
    from backend.eval.dragon import cases, judge, run_case

    chosen = cases(task, 5)
    rows = [judge(case, run_case(toyworld_engine, case)[0]) for case in chosen]
    assert sum(row["success"] for row in rows) >= 4, rows
    plain = {"energy_scale": 0.0, "visual_attention": False}
    unguided = [judge(case, run_case(toyworld_engine, case, plain)[0]) for case in cases(task, 5)]
    assert sum(row["success"] for row in unguided) <= 2, unguided


@pytest.mark.parametrize(
    ("task", "chosen", "needed"),
    [("appearance", range(0, 4), 2), ("paste", range(4, 8), 2), ("resize", (1, 2, 4, 5), 3)],
)
def test_dragon_resizes_replaces_appearance_and_pastes_objects_on_the_toy_world(toyworld_engine, task, chosen, needed):
    """Fixed cases of the suite where the method is known to work (on all 20: appearance 11, paste 8, resize 12, see
    the issue note): at least `needed` of these 4 must pass (the object at the target takes the reference's colour
    and keeps its shape; the pasted object lands within 8 px, background >= 25 dB; the resized object's area is
    gamma^2 of its old one within 25 %), and with guidance and visual cross-attention off (the start latent and the
    prompts alone) at most 1 does."""
    from backend.eval.dragon import cases, judge, run_case

    suite = cases(task, max(chosen) + 1)
    rows = [judge(suite[i], run_case(toyworld_engine, suite[i])[0]) for i in chosen]
    assert sum(row["success"] for row in rows) >= needed, rows
    plain = {"energy_scale": 0.0, "visual_attention": False}
    unguided = [judge(suite[i], run_case(toyworld_engine, suite[i], plain)[0]) for i in chosen]
    assert sum(row["success"] for row in unguided) <= 1, unguided


def test_the_move_result_reports_its_masks_and_where_the_content_went(toyworld_engine):
    from backend.eval.dragon import cases, run_case
    from backend.protocol import check_insight, decode_array

    (case,) = cases("move", 1)
    _, metadata = run_case(toyworld_engine, case)
    masks = {name: decode_array(data) for name, data in metadata["masks"].items()}
    assert set(masks) == {"object", "destination", "vacated", "reference_region"}
    np.testing.assert_array_equal(masks["object"] > 0, case.object_mask)
    dx, dy = case.expect["vector"]
    ys, xs = np.nonzero(masks["destination"])
    oys, oxs = np.nonzero(case.object_mask)
    assert (xs.mean() - oxs.mean(), ys.mean() - oys.mean()) == pytest.approx((dx, dy), abs=1.0)
    matches = metadata["correspondence"]
    assert len(matches) == 16 and all(0 <= m["score"] <= 1 for m in matches)
    found = np.array([m["found"] for m in matches])
    wanted = np.array([m["target"] for m in matches])
    handles = np.array([m["handle"] for m in matches])
    # The tracked object points are nearer where they were sent than where they started.
    assert np.median(np.linalg.norm(found - wanted, axis=1)) < np.median(np.linalg.norm(found - handles, axis=1))
    checked = check_insight(metadata["insight"])
    assert checked["correspondences"]["source"].shape == (16, 2)


@pytest.mark.parametrize("method", ["dragon-move", "dragon-resize", "dragon-appearance", "dragon-paste", "dragon-drag"])
def test_every_dragon_task_runs_through_the_worker_and_reports_its_masks(run_job, scene, method):
    """On the tiny SD1 model (random weights: structure, not quality): each task validates, inverts with its memory
    bank, runs guided sampling with previews and returns an image of the input's size with the masks it used."""
    from backend.protocol import EditRequest, PointPair, decode_array

    square = np.zeros(scene.shape[:2], np.uint8)
    square[20:44, 6:30] = 255
    editable = np.zeros(scene.shape[:2], np.uint8)
    editable[10:54, 0:56] = 255
    fill = np.zeros(scene.shape[:2], np.uint8)
    fill[50:64, 0:20] = 255  # what the square's old place should look like: the background below it
    inputs = {
        "dragon-move": dict(masks={"object": square, "fill": fill}, move=(20.0, 0.0, 1.0)),
        "dragon-resize": dict(masks={"object": square}, move=(0.0, 0.0, 0.7)),
        "dragon-appearance": dict(
            masks={"object": square}, reference_image=scene[:, ::-1].copy(), reference_mask=square[:, ::-1].copy()
        ),
        "dragon-paste": dict(reference_image=scene, reference_mask=square, reference_placement=(24.0, 0.0, 0.8)),
        "dragon-drag": dict(points=[PointPair((18.0, 32.0), (40.0, 32.0))], masks={"edit": editable}),
    }[method]
    request = EditRequest(method, scene, params={"steps": 4}, source_prompt="a red square", model="tiny", **inputs)
    events = run_job(request)
    kinds = [event.kind for event in events]
    assert kinds[-1] == "result", events[-1]
    assert kinds.count("preview") == 4
    result = events[-1]
    assert result.image.shape == scene.shape
    masks = {name: decode_array(data) for name, data in result.metadata["masks"].items()}
    assert masks and all(mask.shape == scene.shape[:2] and mask.any() for mask in masks.values())
    assert "memory bank: 4 steps" in result.metadata["memory_bank"]
    assert len(result.metadata["energy"]) == round(0.6 * 4)  # guided in the first 60 % of the steps
    if method == "dragon-move":  # the user's region for the vacated place (m_ref), as painted on a "fill" mask
        np.testing.assert_array_equal(masks["reference_region"] > 0, fill > 0)
    if method == "dragon-drag":  # the user's area that may change, as painted on an "edit" mask
        np.testing.assert_array_equal(masks["editable"] > 0, editable > 0)


def test_dragon_refuses_a_move_that_leaves_the_image_and_models_it_cannot_run(run_job, scene):
    from backend.protocol import EditRequest

    square = np.zeros(scene.shape[:2], np.uint8)
    square[20:44, 6:30] = 255
    gone = EditRequest(
        "dragon-move", scene, params={"steps": 2}, masks={"object": square}, move=(80.0, 0.0, 1.0), model="tiny"
    )
    (*_, error) = run_job(gone)
    assert error.kind == "error" and error.error_kind == "bad-input" and "out of the image" in error.message
    xl = EditRequest(
        "dragon-move", scene, params={"steps": 2}, masks={"object": square}, move=(8.0, 0.0, 1.0), model="tiny-xl"
    )
    (*_, error) = run_job(xl)
    assert error.kind == "error" and "does not support sdxl" in error.message


def test_a_paste_lands_where_the_reference_layer_sits_even_when_the_shapes_differ(run_job, scene):
    """A 32 x 64 reference (wider than tall) over a 64 x 64 picture, its top-left at (8, 40), at 0.5: its object
    (reference pixels x 16..47, y 8..23) lands on x 16..31, y 44..51 of the picture, however both were resampled."""
    from backend.protocol import EditRequest, decode_array

    reference = np.full((32, 64, 3), 200, np.uint8)
    reference_mask = np.zeros((32, 64), np.uint8)
    reference_mask[8:24, 16:48] = 255
    request = EditRequest(
        "dragon-paste",
        scene,
        params={"steps": 2},
        reference_image=reference,
        reference_mask=reference_mask,
        reference_placement=(8.0, 40.0, 0.5),
        model="tiny",
    )
    result = run_job(request)[-1]
    assert result.kind == "result", result
    ys, xs = np.nonzero(decode_array(result.metadata["masks"]["pasted"]))
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (16, 31, 44, 51)
