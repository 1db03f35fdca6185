"""Feature taps (DIFT), correspondence, the inversion cache and latent previews."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backend.engine.cache import LRUBytesCache, inversion_key, value_nbytes
from backend.engine.correspondence import (
    cosine_similarity_map,
    hungarian_match,
    match_points,
    nearest_neighbours,
)
from backend.engine.features import FeatureTap, dift_features
from backend.engine.previews import (
    LATENT_RGB_FACTORS,
    default_factors,
    fit_latent_rgb_factors,
    latent_to_rgb,
)


def unet_inputs(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return torch.randn(batch, 4, 8, 8, generator=generator), torch.randn(batch, 5, 32, generator=generator)


# ------------------------------------------------------------------------------------------ features


def test_feature_tap_captures_block_outputs_and_unhooks(unet):
    latents, context = unet_inputs()
    with FeatureTap(unet, blocks=(0, 1)) as tap, torch.no_grad():
        unet(latents, 10, encoder_hidden_states=context)
    # Each up block output has passed its upsampler: 2x2 -> 4x4, 4x4 -> 8x8.
    assert tap.features[0].shape == (2, 64, 4, 4)
    assert tap.features[1].shape == (2, 64, 8, 8)
    assert all(not block._forward_hooks for block in unet.up_blocks)


def test_feature_tap_unhooks_after_an_exception(unet):
    latents, context = unet_inputs()
    with pytest.raises(RuntimeError, match="boom"), FeatureTap(unet, blocks=(1, 2)):
        unet(latents, 10, encoder_hidden_states=context)
        raise RuntimeError("boom")
    assert all(not block._forward_hooks for block in unet.up_blocks)


def test_feature_tap_keeps_graph_and_batch_items_when_asked(unet):
    latents, context = unet_inputs()
    latents.requires_grad_(True)
    tap = FeatureTap(unet, blocks=(1,), detach=False, batch=slice(1, 2))
    features = tap.run(latents, 10, encoder_hidden_states=context)
    assert features[1].shape[0] == 1
    features[1].sum().backward()
    assert latents.grad[1].abs().sum() > 0 and latents.grad[0].abs().sum() == 0


def test_truncated_tap_equals_full_forward(unet):
    latents, context = unet_inputs()
    with torch.no_grad():
        full = FeatureTap(unet, blocks=(1,)).run(latents, 10, encoder_hidden_states=context)[1]
        truncated = FeatureTap(unet, blocks=(1,), truncate=True).run(latents, 10, encoder_hidden_states=context)[1]
    assert torch.equal(full, truncated)
    assert all(not block._forward_hooks for block in unet.up_blocks)


def test_dift_features_noise_then_average_the_ensemble(unet):
    latents, context = unet_inputs(batch=1)
    scheduler = DDIMScheduler(num_train_timesteps=1000)
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    features = dift_features(unet, latents, 261, context, blocks=(1,), noise=noise, scheduler=scheduler, ensemble=3)
    assert features[1].shape == (1, 64, 8, 8) and not features[1].requires_grad
    # Same as noising by hand and averaging the three block outputs.
    noisy = scheduler.add_noise(latents.expand(3, -1, -1, -1), noise, torch.full((3,), 261))
    by_hand = FeatureTap(unet, blocks=(1,))
    with torch.no_grad():
        expected = by_hand.run(noisy, 261, encoder_hidden_states=context.expand(3, -1, -1))[1].mean(0, keepdim=True)
    torch.testing.assert_close(features[1], expected)


def test_feature_tap_refuses_missing_blocks(unet):
    with pytest.raises(ValueError, match="0..2"):
        FeatureTap(unet, blocks=(3,))


# ------------------------------------------------------------------------------------ correspondence


def test_nearest_neighbour_recovers_a_permutation():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(16, 6, 5, generator=generator)
    permutation = torch.randperm(30, generator=generator)
    # target location permutation[i] holds source location i (scaled: cosine ignores the norm).
    target_rows = torch.empty(30, 16)
    target_rows[permutation] = source.flatten(1).T * 3.0
    target = target_rows.T.reshape(16, 6, 5)
    indices, similarity = nearest_neighbours(source, target)
    assert torch.equal(indices, permutation)
    torch.testing.assert_close(similarity, torch.ones(30))


def test_nearest_neighbour_recovers_a_shift_inside_a_mask():
    generator = torch.Generator().manual_seed(1)
    source = torch.randn(8, 10, 10, generator=generator)
    target = torch.roll(source, shifts=(2, 3), dims=(1, 2))
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[2:5, 1:7] = True
    indices, _ = nearest_neighbours(source, target, source_mask=mask)
    rows, cols = torch.nonzero(mask, as_tuple=True)
    assert torch.equal(indices, ((rows + 2) % 10) * 10 + (cols + 3) % 10)


def test_chunked_matching_equals_unchunked_and_target_mask_restricts():
    generator = torch.Generator().manual_seed(2)
    source, target = torch.randn(50, 8, generator=generator), torch.randn(40, 8, generator=generator)
    whole = nearest_neighbours(source, target, chunk=10_000)
    for chunk in (1, 7, 50):
        chunked = nearest_neighbours(source, target, chunk=chunk)
        assert torch.equal(chunked[0], whole[0])
        torch.testing.assert_close(chunked[1], whole[1])  # BLAS may round another matmul shape differently
    allowed = torch.arange(40) % 3 == 0
    indices, _ = nearest_neighbours(source, target, target_mask=allowed)
    assert bool(allowed[indices].all())


def test_cosine_similarity_map_peaks_at_the_query_location():
    features = torch.randn(16, 5, 7, generator=torch.Generator().manual_seed(3))
    similarity = cosine_similarity_map(features[:, 3, 4], features)
    assert similarity.shape == (5, 7)
    assert divmod(int(similarity.argmax()), 7) == (3, 4)
    assert similarity[3, 4].item() == pytest.approx(1.0)


def test_match_points_follows_a_shift_between_images():
    generator = torch.Generator().manual_seed(4)
    features_a = torch.randn(32, 8, 8, generator=generator)
    features_b = torch.roll(features_a, shifts=(1, 2), dims=(1, 2))  # b = a moved down 1 and right 2 cells
    # Images 64x64 -> 8-pixel cells; query at the centre of cell (row 3, col 2).
    points = match_points(features_a, features_b, np.array([[20.0, 28.0]]), image_size=(64, 64))
    torch.testing.assert_close(points, torch.tensor([[36.0, 36.0]]))
    # Different image size for b: the same cell maps to b's pixels.
    points = match_points(features_a, features_b, [[20.0, 28.0]], image_size=(64, 64), image_size_b=(128, 32))
    torch.testing.assert_close(points, torch.tensor([[18.0, 72.0]]))


@settings(max_examples=30, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.floats(-10, 10)), st.booleans())
def test_hungarian_equals_brute_force(matrix, maximize):
    rows, cols = hungarian_match(matrix, maximize=maximize)
    n_rows, n_cols = matrix.shape
    totals = [
        matrix[list(range(n_rows)), list(perm)].sum()
        if n_rows <= n_cols
        else matrix[list(perm), list(range(n_cols))].sum()
        for perm in itertools.permutations(range(max(n_rows, n_cols)), min(n_rows, n_cols))
    ]
    best = max(totals) if maximize else min(totals)
    assert len(rows) == min(n_rows, n_cols)
    assert matrix[rows, cols].sum() == pytest.approx(best, abs=1e-9)


def test_hungarian_accepts_tensors():
    rows, cols = hungarian_match(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), maximize=True)
    assert cols.tolist() == [1, 0] and rows.tolist() == [0, 1]


# --------------------------------------------------------------------------------------------- cache


def test_cache_counts_bytes_of_nested_tensors_and_arrays():
    value = {"latents": [torch.zeros(10, dtype=torch.float32), torch.zeros(4, dtype=torch.float16)], "x": np.zeros(3)}
    assert value_nbytes(value) == 40 + 8 + 24
    cache = LRUBytesCache(max_bytes=1000)
    assert cache.put("a", value) and cache.nbytes == 72
    assert cache.put("a", torch.zeros(5)) and cache.nbytes == 20 and len(cache) == 1
    cache.clear()
    assert cache.nbytes == 0 and len(cache) == 0


def test_cache_evicts_least_recently_used_and_get_refreshes():
    cache = LRUBytesCache(max_bytes=100)
    for key in "abc":
        cache.put(key, torch.zeros(8))  # 32 bytes each: 96 in all
    assert cache.get("a") is not None  # a is now the most recent; b is the oldest
    assert "b" in cache  # membership does not refresh recency
    cache.put("d", torch.zeros(8))
    assert cache.keys() == ["c", "a", "d"] and cache.nbytes == 96
    cache.put("e", torch.zeros(16))  # 64 bytes: c and a must go
    assert cache.keys() == ["d", "e"] and cache.nbytes == 96


def test_cache_refuses_an_item_larger_than_the_bound():
    cache = LRUBytesCache(max_bytes=16)
    cache.put("small", torch.zeros(2))
    assert cache.put("huge", torch.zeros(100)) is False
    assert "huge" not in cache and "small" in cache and cache.nbytes == 8


def test_inversion_key_depends_on_pixels_and_settings():
    image = np.zeros((4, 4, 3), dtype=np.uint8)
    key = inversion_key(image, "toy", "a cat", 50, "ddim")
    assert key == inversion_key(image.copy(), "toy", "a cat", 50, "ddim")
    changed = image.copy()
    changed[0, 0, 0] = 1
    others = [
        inversion_key(changed, "toy", "a cat", 50, "ddim"),
        inversion_key(image.reshape(2, 8, 3), "toy", "a cat", 50, "ddim"),
        inversion_key(image, "sd15", "a cat", 50, "ddim"),
        inversion_key(image, "toy", "a dog", 50, "ddim"),
        inversion_key(image, "toy", "a cat", 20, "ddim"),
        inversion_key(image, "toy", "a cat", 50, "null-text"),
        inversion_key(image, "toy", "a cat", 50, "ddim", guidance=7.5),
    ]
    assert len({key, *others}) == 1 + len(others)


# ------------------------------------------------------------------------------------------ previews


def test_fit_recovers_an_exact_linear_map():
    generator = torch.Generator().manual_seed(5)
    weights = torch.randn(4, 3, generator=generator) * 0.2
    bias = torch.tensor([0.5, 0.4, 0.6])
    latents = torch.randn(3, 4, 6, 5, generator=generator)
    rgb = torch.einsum("nchw,ck->nkhw", latents, weights) + bias[:, None, None]
    images = rgb.repeat_interleave(8, dim=2).repeat_interleave(8, dim=3)  # a "decode" at 8x the latent size
    fitted = fit_latent_rgb_factors(latents, images)
    torch.testing.assert_close(fitted.weights, weights, atol=1e-5, rtol=0)
    torch.testing.assert_close(fitted.bias, bias, atol=1e-5, rtol=0)


def test_latent_to_rgb_shape_dtype_and_range():
    latents = torch.randn(1, 4, 6, 5, generator=torch.Generator().manual_seed(6)) * 5
    factors = default_factors("sd1")
    preview = latent_to_rgb(latents, factors, scale=8)
    assert preview.dtype == np.uint8 and preview.shape == (48, 40, 3)
    assert preview.min() == 0 and preview.max() == 255  # saturated, not wrapped around
    resized = latent_to_rgb(latents[0], factors, size=(30, 70))
    assert resized.shape == (30, 70, 3)
    # Nearest upscaling repeats latent pixels exactly.
    assert np.array_equal(preview[::8, ::8], latent_to_rgb(latents, factors))


def test_default_factors_prefer_fitted_ones():
    fitted = (torch.ones(4, 3), torch.zeros(3))
    chosen = default_factors("sd1", fitted)
    assert torch.equal(chosen.weights, fitted[0]) and torch.equal(chosen.bias, fitted[1])
    assert set(LATENT_RGB_FACTORS) >= {"sd1", "sd2", "sdxl"}
    assert default_factors("unknown").weights.shape == (4, 3)
    with pytest.raises(ValueError):
        latent_to_rgb(torch.zeros(2, 4, 3, 3), default_factors("sd1"))
