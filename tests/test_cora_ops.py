"""Cora's correspondence-aware operations (backend/engine/cora_ops.py) on hand-made features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend.engine.cora_ops import (
    align_patches,
    movement_intensifier,
    patch_kernel,
    patch_matches,
    slerp,
    slerp_fixed_norm,
    smooth_features,
)


def _brute_force_matches(source: torch.Tensor, target: torch.Tensor, kernel: int) -> torch.Tensor:
    before, after = kernel // 2, kernel - 1 - kernel // 2
    pad = (before, after, before, after)

    def patches(features):
        return F.normalize(F.unfold(F.pad(features[None], pad), kernel)[0], dim=0)  # (C k^2, hw)

    return (patches(target).T @ patches(source)).argmax(dim=1)


@pytest.mark.parametrize("kernel", [3, 4, 5, 12])
def test_patch_matches_equal_the_brute_force_patch_cosine(kernel):
    generator = torch.Generator().manual_seed(kernel)
    source, target = torch.randn(6, 9, 11, generator=generator), torch.randn(6, 9, 11, generator=generator)
    assert torch.equal(patch_matches(source, target, kernel), _brute_force_matches(source, target, kernel))


def test_a_shifted_layout_is_found_and_the_correction_follows_it():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(8, 12, 12, generator=generator)
    target = torch.roll(source, shifts=(2, 3), dims=(1, 2))  # the same content, moved down 2 and right 3
    matches = patch_matches(source, target, 3)
    rows, cols = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    interior = (rows >= 4) & (rows < 11) & (cols >= 5) & (cols < 11)
    expected = ((rows - 2) * 12 + (cols - 3)).reshape(-1)
    assert torch.equal(matches[interior.reshape(-1)], expected[interior.reshape(-1)])
    z = torch.randn(1, 4, 12, 12, generator=generator)
    aligned = align_patches(z, matches, 3)
    shifted = torch.roll(z, shifts=(2, 3), dims=(2, 3))
    inner = interior & (rows >= 5) & (rows < 10) & (cols >= 6) & (cols < 10)  # whole patches inside the interior
    assert torch.allclose(aligned[..., inner], shifted[..., inner], atol=1e-6)


def test_identity_matches_leave_the_values_as_they_are():
    z = torch.randn(2, 4, 7, 9)
    for kernel in (3, 12):
        assert torch.allclose(align_patches(z, torch.arange(63), kernel), z, atol=1e-6)


def test_patch_kernels_follow_the_timestep():
    assert [patch_kernel(t) for t in (999, 799, 699, 599, 399, 299, 199)] == [12, 12, 7, 7, 5, 5, 3]


def test_slerp_ends_keep_norms_and_halves_the_angle():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    half = slerp(a, b, 0.5)
    assert torch.allclose(half.norm(), torch.tensor(2.0)) and torch.allclose(half[0, 0], half[0, 1])
    fixed = slerp_fixed_norm(a, b, 0.5)
    assert torch.allclose(fixed.norm(), torch.tensor(3.0)) and torch.allclose(fixed[0, 0], fixed[0, 1])
    assert torch.allclose(slerp_fixed_norm(a, 2 * a, 0.3), a)  # parallel: no NaN


def test_smoothing_keeps_flat_maps_and_spreads_an_impulse_without_losing_mass():
    flat = torch.full((1, 3, 5, 5), 2.0)
    assert torch.allclose(smooth_features(flat), flat)
    impulse = torch.zeros(1, 1, 7, 7)
    impulse[0, 0, 3, 3] = 1.0
    smoothed = smooth_features(impulse)
    assert torch.isclose(smoothed.sum(), torch.tensor(1.0)) and 0.1 < float(smoothed[0, 0, 3, 3]) < 0.5
    assert float(smoothed[0, 0, 3, 4]) > float(smoothed[0, 0, 4, 4]) > 0


def test_new_tokens_are_the_unmatched_far_ones():
    """Sources are targets 0..7 with small noise; targets 8 and 9 are far from everything: only they are new."""
    from backend.engine.cora_ops import new_tokens

    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(10, 16, generator=generator)
    targets[8:] = targets[8:] * 5 + 20
    sources = targets[:8] + 0.01 * torch.randn(8, 16, generator=generator)
    distances = torch.cdist(targets, sources)
    new = new_tokens(distances, k=2, quantile=0.7)
    assert new.tolist() == [False] * 8 + [True, True]
    assert not new_tokens(torch.cdist(sources, sources), k=2).any()  # the same picture: nothing is new


def test_aligned_source_and_interpolation_follow_the_features_and_alpha():
    from backend.engine.cora_ops import aligned_source, interpolate_kv

    generator = torch.Generator().manual_seed(2)
    features = torch.randn(6, 8, generator=generator)
    order = torch.tensor([3, 1, 0, 5, 2, 4])  # the target shows source token order[i] at token i
    tokens = torch.randn(1, 6, 4, generator=generator)
    aligned, distances = aligned_source(tokens, features, features[order])
    assert torch.equal(aligned, tokens[:, order]) and distances.shape == (6, 6)
    key, value = torch.randn(1, 6, 4, generator=generator), torch.randn(1, 6, 4, generator=generator)
    same_key, same_value = interpolate_kv(key, value, aligned, aligned, alpha=1.0, heads=2)
    assert torch.allclose(same_key, key, atol=1e-5) and torch.allclose(same_value, value, atol=1e-5)
    source_key, source_value = interpolate_kv(key, value, aligned, aligned, alpha=0.0, heads=2)
    per_head = lambda x: x.reshape(1, 6, 2, 2)  # noqa: E731
    # alpha 0: the source's directions, the target keys' norms (per head), the source values entirely
    assert torch.allclose(F.normalize(per_head(source_key), dim=-1), F.normalize(per_head(aligned), dim=-1), atol=1e-5)
    assert torch.allclose(per_head(source_key).norm(dim=-1), per_head(key).norm(dim=-1), atol=1e-5)
    assert torch.allclose(source_value, aligned, atol=1e-5)
    new = torch.tensor([False, False, True, False, False, False])
    kept_key, _ = interpolate_kv(key, value, aligned, aligned, alpha=0.0, heads=2, new=new)
    assert torch.equal(kept_key[:, 2], key[:, 2]) and torch.allclose(kept_key[:, 0], source_key[:, 0])


def test_structural_alignment_restores_the_source_order_or_keeps_the_targets_by_beta():
    from backend.engine.cora_ops import permute_queries, structural_permutation

    generator = torch.Generator().manual_seed(3)
    source = torch.randn(32, 16, generator=generator)  # 32 tokens, 2 heads of 8
    shuffle = torch.randperm(32, generator=generator)
    target = source[shuffle] + 0.05 * torch.randn(32, 16, generator=generator)
    full = structural_permutation(source, target, heads=2, beta=1.0)
    aligned = permute_queries(target, full, heads=2)
    assert torch.allclose(aligned, source, atol=0.2)  # every head put the source's structure back
    kept = structural_permutation(source, target, heads=2, beta=0.0)
    assert torch.equal(kept, torch.arange(32).expand(2, -1))  # only the token distance: identity
    assert sorted(full[0].tolist()) == list(range(32))  # a permutation: every target query used once


def test_the_movement_intensifier_loosens_only_the_masked_region_by_its_strength():
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 3
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 2:10] = 1
    inside = mask.bool().expand_as(latents)

    def run(strength):
        return movement_intensifier(latents, mask, strength, torch.Generator().manual_seed(1))

    assert torch.allclose(run(0.0), latents, atol=1e-5)  # strength 0: nothing changes
    loosened = run(0.2)
    assert torch.equal(loosened[~inside], latents[~inside])  # outside the mask: untouched
    # In effect (the reference's single-frame filter passes almost nothing as "low"): 0.8 x latents + 0.2 x noise
    # whose value range is the latents'.
    noise = (loosened - 0.8 * latents)[inside] / 0.2
    assert abs(float(noise.std()) - 1.0) > 0.1  # range-matched, not unit noise
    assert float(noise.max() - noise.min()) <= float(latents.max() - latents.min()) * 1.05
    assert abs(torch.corrcoef(torch.stack([noise, latents[inside]]))[0, 1]) < 0.1
    # Strength 1 keeps only the (tiny) low band and noise of its range: the region is all but wiped.
    assert float(run(1.0)[inside].std()) < 0.05 * float(latents[inside].std())
