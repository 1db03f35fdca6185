"""DragonDiffusion's object move, assembled from its parts (masks, start latent, guided sampling) on the toy world."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.methods.dragon import MoveMasks, move_guidance, moved_start, shift


def test_shift_fills_with_zeros_and_never_wraps_around():
    grid = torch.arange(1, 17, dtype=torch.float32).reshape(4, 4)
    moved = shift(grid, 1, -2)
    assert moved[0].eq(0).all() and moved[:, 2:].eq(0).all()
    assert torch.equal(moved[1:, :2], grid[:3, 2:])
    assert not shift(grid, 4, 0).any()


def test_move_masks_pair_the_object_with_its_new_place_and_split_the_rest():
    obj = torch.zeros(16, 16, dtype=torch.bool)
    obj[4:8, 2:6] = True
    masks = MoveMasks(obj, 2, 12)  # to the right edge: two columns leave the image
    assert masks.gen.sum() == masks.gud.sum() == 8  # 4 rows x the 2 columns that stay inside
    assert torch.equal(shift(masks.gud, 2, 12), masks.gen)
    assert not (masks.share & (obj | masks.gen)).any() and (masks.share | obj | masks.gen).all()
    assert torch.equal(masks.inpaint, obj & ~masks.gen) and torch.equal(masks.reference, masks.share)
    coarse = masks.at((8, 8))
    assert (coarse.dy, coarse.dx) == (1, 6) and torch.equal(shift(coarse.gud, 1, 6), coarse.gen)
    with pytest.raises(ValueError, match="out of the image"):
        MoveMasks(obj, 0, 16)
    with pytest.raises(ValueError, match="empty"):
        MoveMasks(torch.zeros(16, 16, dtype=torch.bool), 1, 1)


def test_move_guidance_lets_the_edit_move_only_the_cells_the_object_touches():
    obj = torch.zeros(64, 64, dtype=torch.bool)
    obj[8:20, 8:20] = True  # latent cells 1..2 (partly)
    (edit, edit_region), (content, content_region) = move_guidance(MoveMasks(obj, 16, 0), 4.0, 6.0, 1.0, (8, 8))
    expected = torch.zeros(8, 8, dtype=torch.bool)
    expected[1:5, 1:3] = True  # rows 1..2 (old place) and 3..4 (new place), columns 1..2
    assert torch.equal(edit_region, expected) and torch.equal(content_region, ~expected)
    features = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    assert edit(features, features).item() > 0 and content(features, features).item() > 0


def test_the_start_latent_carries_the_objects_noise_to_its_new_place():
    z_T = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    obj = torch.zeros(64, 64, dtype=torch.bool)
    obj[8:24, 8:24] = True  # latent cells 1..2
    start = moved_start(z_T, MoveMasks(obj, 16, 24))  # by (2, 3) cells
    torch.testing.assert_close(start[..., 3:5, 4:6], z_T[..., 1:3, 1:3])
    outside = torch.ones(8, 8, dtype=torch.bool)
    outside[3:5, 4:6] = False
    assert torch.equal(start[..., outside], z_T[..., outside])


def test_moving_a_circle_on_the_toy_world_model():
    """Invert a red circle and a blue square, move the circle down by a quarter of the image: with the energy
    guidance the circle arrives (the judge finds it there) and its old place is background; the same run without
    guidance leaves it where it was. The edit energies move only the cells the object touches, the content energy
    the rest (`move_guidance`). Step size 5e2, 20 steps, guidance in the first 12: on 12 random world moves it
    brought 9 objects >= 80 % of the way with background PSNR 26.8 dB on average (1e3: 10 objects, 24.9 dB and
    this scene's blue square broken up; 2e3: 18.8 dB; 1e4 wrecks the picture)."""
    from backend.engine.context import Engine
    from backend.engine.memory_bank import invert_with_memory
    from backend.eval.toyworld import detect_objects
    from backend.methods.dragon import guided_sampling
    from backend.models import load_model
    from backend.models.toyworld.world import Background, Scene, SceneObject, caption, render

    engine = Engine(load_model("toyworld", device="cpu"))
    scene = Scene(
        (
            SceneObject("circle", "red", "big", "solid", 0.3, 0.5),
            SceneObject("square", "blue", "small", "solid", 0.75, 0.25),
        ),
        Background("white"),
    )
    image, truth = render(scene, 128)
    dy = 32
    cond, uncond = engine.encode_prompts([caption(scene)]), engine.encode_prompts([""])
    bank = invert_with_memory(engine, engine.encode_image(image), cond, 20)
    masks = MoveMasks(torch.from_numpy(truth[0]), dy, 0)
    start = moved_start(bank.latent(0), masks)
    target_y = np.argwhere(masks.gen.numpy())[:, 0].mean()
    old_y = np.argwhere(truth[0])[:, 0].mean()

    def edit(step_size):
        terms = move_guidance(masks, w_edit=4.0, w_content=6.0, w_opt=1.0, latent_size=tuple(start.shape[-2:]))
        latents = guided_sampling(engine, bank, start, cond, uncond, 4.0, terms, step_size, 12, 5)
        found = detect_objects(engine.decode_latents(latents))
        circles = [d for d in found if (d.colour, d.shape) == ("red", "circle")]
        return circles, found

    circles, found = edit(5e2)
    assert len(circles) == 1, found
    assert circles[0].centroid[1] - old_y >= 0.8 * (target_y - old_y), (circles[0].centroid, old_y, target_y)
    vacated = masks.inpaint.numpy()
    assert not any((d.mask & vacated).sum() > 0.2 * vacated.sum() for d in found if d.colour == "red"), found
    assert any((d.colour, d.shape) == ("blue", "square") for d in found), found

    unguided, found = edit(0.0)
    assert not unguided or unguided[0].centroid[1] - old_y < 0.5 * (target_y - old_y), found
