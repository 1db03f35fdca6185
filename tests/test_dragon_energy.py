"""DragonDiffusion's energies (Eq. 3-7, 9) and its guided DDIM update, on feature maps whose answer is known."""

from __future__ import annotations

import pytest
import torch

from backend.methods.dragon import energy, guided_ddim_step, move_inpaint_energy, s_global, s_local


def _features(seed: int = 0, channels: int = 8, side: int = 12) -> torch.Tensor:
    return torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(seed))


def _box(top: int, left: int, size: int = 4, side: int = 12) -> torch.Tensor:
    mask = torch.zeros(side, side, dtype=torch.bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_local_similarity_pairs_each_point_with_its_origin():
    features = _features()
    moved = torch.roll(features, shifts=(3, 5), dims=(2, 3))  # content translated by (3, 5)
    old, new = _box(2, 1), _box(5, 6)
    assert s_local(moved, new, features, old).item() == pytest.approx(1.0)
    assert s_local(-features, old, features, old).item() == pytest.approx(0.0, abs=1e-6)
    assert s_local(moved, old, features, old).item() < 0.8  # the content is no longer there
    with pytest.raises(ValueError, match="pair up"):
        s_local(features, _box(0, 0, 3), features, old)
    with pytest.raises(ValueError, match="empty mask"):
        s_local(features, torch.zeros(12, 12, dtype=torch.bool), features, old)


def test_global_similarity_compares_regions_by_their_mean_appearance():
    features = _features()
    region = _box(2, 2)
    shuffled = features.clone()
    inside = shuffled[..., region]
    shuffled[..., region] = inside[..., torch.randperm(inside.shape[-1], generator=torch.Generator().manual_seed(1))]
    assert s_global(shuffled, region, features, region).item() == pytest.approx(1.0)  # same pixels, other places
    assert s_local(shuffled, region, features, region).item() < 0.9


def test_guidance_features_get_no_gradient_and_the_energy_falls_as_similarity_rises():
    gen = _features(0).requires_grad_()
    gud = _features(1).requires_grad_()
    region = _box(3, 3)
    energy(s_local(gen, region, gud, region)).backward()
    assert gud.grad is None and gen.grad is not None  # sg(F_gud)
    assert gen.grad[..., ~region].abs().max() == 0  # only the masked points are pulled
    assert energy(torch.tensor(1.0)).item() == pytest.approx(0.2)  # 1 / (alpha + beta) with 1 and 4
    assert energy(torch.tensor(0.0)).item() == pytest.approx(1.0)


def test_descending_the_move_energy_moves_the_object_and_keeps_the_rest():
    """Eq. 7 for a move: gradient steps on F_gen alone carry the object's features from m_gud to m_gen, keep
    m_share as it was, and (Eq. 9) make the vacated place resemble the reference region, not the object."""
    original = _features(2)
    old, new = _box(1, 1), _box(6, 6)
    share = ~(old | new)
    reference = _box(8, 0, 4)
    vacated = old & ~new
    gen = original.clone().requires_grad_()
    optimiser = torch.optim.SGD([gen], lr=20.0)
    for _ in range(200):
        optimiser.zero_grad()
        total = (
            4.0 * energy(s_local(gen, new, original, old))
            + 6.0 * energy(s_local(gen, share, original, share))
            + 1.0 * move_inpaint_energy(gen, original, vacated, reference)
        )
        total.backward()
        optimiser.step()
    with torch.no_grad():
        assert s_local(gen, new, original, old) > 0.95  # the object's features now sit at the new place
        assert s_local(gen, share, original, share) > 0.95  # the rest is unchanged
        assert s_global(gen, vacated, original, reference) > 0.9  # the old place looks like the reference
        assert s_local(gen, vacated, original, vacated) < 0.5  # and no longer like the object


def test_move_inpaint_energy_is_zero_when_nothing_is_vacated():
    features = _features()
    assert move_inpaint_energy(features, features, torch.zeros(12, 12, dtype=torch.bool), _box(0, 0)).item() == 0


def test_the_guided_update_moves_only_the_clean_image_estimate():
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", clip_sample=False)
    scheduler.set_timesteps(50)
    t, t_prev = int(scheduler.timesteps[10]), int(scheduler.timesteps[11])
    latents, eps, push = (torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in range(3))
    plain = guided_ddim_step(scheduler, latents, eps, eps, t, t_prev)
    torch.testing.assert_close(plain, scheduler.step(eps, t, latents, eta=0.0).prev_sample)
    guided = guided_ddim_step(scheduler, latents, eps, eps + push, t, t_prev)
    a, a_prev = scheduler.alphas_cumprod[t], scheduler.alphas_cumprod[t_prev]
    # x0 moved by -sqrt(1 - a) / sqrt(a) * push; the update carries that through sqrt(a_prev) and nothing else.
    expected = plain - a_prev.sqrt() * (1 - a).sqrt() / a.sqrt() * push
    torch.testing.assert_close(guided, expected, rtol=1e-4, atol=1e-5)


def test_content_guidance_alone_restores_the_image_from_random_noise_on_the_toy_world_model():
    """The paper's Fig. 4 experiment: start from random z_T, set m_share to the whole image and guide only by
    content consistency (Eq. 6) on the 2nd and 3rd decoder blocks against the memory bank: the picture comes back.
    Measured while writing this (one scene, 20 steps, guidance in the first 12): PSNR to the original 10.7 dB
    unguided; 10.9 / 22.5 / 20.5 / 14.2 dB at step sizes 3e3 / 1e4 / 3e4 / 1e5."""
    import numpy as np

    from backend.engine.context import Engine
    from backend.engine.memory_bank import invert_with_memory
    from backend.engine.sampling import make_scheduler, predict_noise
    from backend.methods.dragon import guidance_gradient
    from backend.models import load_model
    from backend.models.toyworld.world import Background, Scene, SceneObject, caption, render

    engine = Engine(load_model("toyworld", device="cpu"))
    scene = Scene(
        (
            SceneObject("circle", "red", "big", "solid", 0.3, 0.5),
            SceneObject("square", "blue", "big", "striped", 0.72, 0.5),
        ),
        Background("beige", "checkered"),
    )
    image, _ = render(scene, 128)
    steps = 20
    cond, uncond = engine.encode_prompts([caption(scene)]), engine.encode_prompts([""])
    bank = invert_with_memory(engine, engine.encode_image(image), cond, steps)
    parameters_before = [p.grad for p in engine.unet.parameters()]

    def content(gen, gud):
        everywhere = torch.ones(gen.shape[-2:], dtype=torch.bool)
        return energy(s_local(gen, everywhere, gud, everywhere))

    def generate(step_size):
        scheduler = make_scheduler(engine, steps)
        ratio = scheduler.config.num_train_timesteps // steps
        latents = engine.randn(bank.latent(0).shape, 7)
        energies = []
        for index, t in enumerate(scheduler.timesteps):
            with torch.no_grad():
                eps = predict_noise(engine, latents, t, cond, uncond, 5.0)
            push = torch.zeros_like(eps)
            if step_size and index < 12:
                gradient, value = guidance_gradient(engine, latents, bank.latent(index), t, cond, content)
                push = step_size * gradient
                energies.append(value)
            latents = guided_ddim_step(scheduler, latents, eps, eps + push, int(t), int(t) - ratio)
        error = engine.decode_latents(latents).astype(np.float64) - image.astype(np.float64)
        return 10 * np.log10(255.0**2 / np.mean(error**2)), energies

    unguided, _ = generate(0.0)
    guided, energies = generate(1e4)
    assert guided > unguided + 6.0, (unguided, guided)
    assert energies[-1] < energies[0]  # the content energy falls as the picture comes back
    assert all(p is None for p in parameters_before) and all(p.grad is None for p in engine.unet.parameters())


def test_without_gradient_regions_the_guidance_follows_the_summed_energy_everywhere(tiny):
    """gradient_regions off is Eq. 7 as the paper writes it: the gradient of the sum of the terms, not each term's
    gradient kept to its region (the official code)."""
    from backend.engine.context import Engine
    from backend.methods.dragon import _summed, guidance_gradient

    engine = Engine(tiny)
    cond = engine.encode_prompts(["a red square"])
    latents, guide = engine.randn((1, 4, 8, 8), 1), engine.randn((1, 4, 8, 8), 2)
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :4] = True

    def everywhere(features):
        return torch.ones(features.shape[-2:], dtype=torch.bool)

    def first(gen, gud):
        return energy(s_local(gen, everywhere(gen), gud, everywhere(gud)))

    def second(gen, gud):
        return 3 * energy(s_global(gen, everywhere(gen), gud, everywhere(gud)))

    terms = [(first, left), (second, ~left)]
    each = [guidance_gradient(engine, latents, guide, 500, cond, term)[0] for term in (first, second)]
    summed, value = guidance_gradient(engine, latents, guide, 500, cond, [(_summed(terms), None)])
    regions, _ = guidance_gradient(engine, latents, guide, 500, cond, terms)
    torch.testing.assert_close(summed, each[0] + each[1], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(regions, torch.where(left, each[0], each[1]), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(summed, regions, rtol=1e-3, atol=1e-7) and value > 0
