"""Cora's correspondence-aware operations (Almohammadi, Mikaeili et al., SIGGRAPH 2025; card: shared/METHODS.md 2b),
as plain tensor functions the method composes:

- `smooth_features`: DIFT features of the editing UNet (a decoder block's output), Gaussian-smoothed 3 x 3, sigma 1;
- `patch_matches` / `align_patches`: correspondence-aware latent correction. The correction noise z_t stored for
  the source layout is re-arranged into the target's: every target patch takes the z patch of its most similar
  source patch (cosine of the patch's concatenated features), and overlapping patches are averaged back;
- `patch_kernel`: the patch size by timestep (>= 799: 12, >= 599: 7, >= 299: 5, else 3);
- `slerp_fixed_norm` / `slerp`: the attention interpolation's spherical blends of target and aligned source keys
  (keeping the target key's norm) and values (norm interpolated linearly);
- `aligned_source`, `new_tokens`, `interpolate_kv`: correspondence-aware attention interpolation - source K/V
  re-ordered to the target's layout by DIFT nearest neighbours, blended per head by alpha, except on tokens the
  two-sided "new region" rule finds nothing for (mutual top-k, then a percentile of nearest distances);
- `movement_intensifier`: FlexiEdit's frequency trick the reference code applies inside the edit mask on the first
  step, so a non-rigid change (a pose) can leave the source's layout.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F


def patch_kernel(t: int) -> int:
    if t >= 799:
        return 12
    if t >= 599:
        return 7
    if t >= 299:
        return 5
    return 3


def smooth_features(features: torch.Tensor, sigma: float = 1.0, size: int = 3) -> torch.Tensor:
    """(B, C, h, w) -> the same, each channel blurred by a normalised size x size Gaussian (replicated edges)."""
    offsets = torch.arange(size, dtype=torch.float32, device=features.device) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (weights[:, None] * weights[None, :]) / weights.sum() ** 2
    channels = features.shape[1]
    kernel = kernel.to(features.dtype).expand(channels, 1, size, size)
    padded = F.pad(features, (size // 2,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=channels)


def _pad_for(kernel: int) -> tuple[int, int, int, int]:
    """Padding (left, right, top, bottom) so a stride-1 window of `kernel` starts a patch at every cell; an even
    kernel reaches one cell further before its anchor than after it."""
    before, after = kernel // 2, kernel - 1 - kernel // 2
    return (before, after, before, after)


def patch_matches(source: torch.Tensor, target: torch.Tensor, kernel: int) -> torch.Tensor:
    """For every cell of `target` (C, h, w), the flat index of the `source` cell (C, h, w) whose kernel x kernel
    patch is most similar (cosine of the concatenated patch features, zeros outside the map).

    Patch similarity is a sum over the patch's offsets of cell similarities, so it is built from one (hw x hw)
    cell-similarity matrix shifted kernel^2 times, never from (C k^2)-long patch vectors."""
    channels, height, width = target.shape
    cells = height * width
    dots = (target.reshape(channels, cells).T.float() @ source.reshape(channels, cells).float()).reshape(
        height, width, height, width
    )
    left, right, top, bottom = _pad_for(kernel)
    padded = F.pad(dots, (left, right, top, bottom, left, right, top, bottom))
    patch_dots = torch.zeros_like(dots)
    for dy in range(kernel):
        for dx in range(kernel):
            patch_dots += padded[dy : dy + height, dx : dx + width, dy : dy + height, dx : dx + width]
    norms = []
    for features in (target, source):
        energy = features.float().square().sum(0)[None, None]
        box = F.avg_pool2d(F.pad(energy, (left, right, top, bottom)), kernel, stride=1) * kernel**2
        norms.append(box.reshape(cells).clamp_min(1e-12).sqrt())
    cosine = patch_dots.reshape(cells, cells) / (norms[0][:, None] * norms[1][None, :])
    return cosine.argmax(dim=1)


def align_patches(values: torch.Tensor, matches: torch.Tensor, kernel: int) -> torch.Tensor:
    """(B, C, h, w) re-arranged: each cell's kernel x kernel patch is taken from its matched cell's patch, and the
    overlapping patches are averaged (fold / fold of ones)."""
    batch, channels, height, width = values.shape
    left, right, top, bottom = _pad_for(kernel)
    patches = F.unfold(F.pad(values.float(), (left, right, top, bottom)), kernel)  # (B, C k^2, hw)
    moved = patches[:, :, matches]
    padded_size = (height + top + bottom, width + left + right)
    summed = F.fold(moved, padded_size, kernel)
    counts = F.fold(torch.ones_like(moved), padded_size, kernel)
    aligned = (summed / counts.clamp_min(1e-12))[:, :, top : top + height, left : left + width]
    return aligned.to(values.dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation of directions from a (weight 0) to b (weight 1) along the last axis, with the norm
    interpolated linearly."""
    norm_a, norm_b = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    direction = _slerp_directions(a / norm_a.clamp_min(1e-12), b / norm_b.clamp_min(1e-12), weight)
    return direction * ((1 - weight) * norm_a + weight * norm_b)


def slerp_fixed_norm(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """As `slerp`, keeping a's norm (Cora blends keys so, so attention logits keep their scale)."""
    norm_a = a.norm(dim=-1, keepdim=True)
    direction = _slerp_directions(
        a / norm_a.clamp_min(1e-12), b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12), weight
    )
    return direction * norm_a


def _slerp_directions(u: torch.Tensor, v: torch.Tensor, weight: float) -> torch.Tensor:
    cosine = (u * v).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    angle = torch.acos(cosine)
    sine = torch.sin(angle)
    near = sine < 1e-4  # (anti)parallel: fall back to a normalised linear blend
    blended = (torch.sin((1 - weight) * angle) * u + torch.sin(weight * angle) * v) / sine.clamp_min(1e-4)
    linear = (1 - weight) * u + weight * v
    result = torch.where(near, linear, blended)
    return result / result.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def new_tokens(distances: torch.Tensor, k: int = 4, quantile: float = 0.97) -> torch.Tensor:
    """Cora's "new region" rule over a (target, source) distance matrix: a target token is new when no source token
    is in a mutual top-k relation with it (neither lists the other among its k nearest) *and* its nearest source
    token is farther than the `quantile` of all targets' nearest distances, matched targets counted as 0 (they
    pull the threshold down, so a mostly matched picture still finds its few new tokens). Returns bool (target,)."""
    k = min(k, *distances.shape)
    targets_nearest = distances.topk(k, dim=1, largest=False).indices  # (T, k) sources
    sources_nearest = distances.topk(k, dim=0, largest=False).indices  # (k, S) targets
    listed_by_target = torch.zeros_like(distances, dtype=torch.bool).scatter_(1, targets_nearest, True)
    listed_by_source = torch.zeros_like(distances, dtype=torch.bool).scatter_(0, sources_nearest, True)
    matched = (listed_by_target & listed_by_source).any(dim=1)
    nearest = torch.where(matched, torch.zeros_like(distances[:, 0]), distances.min(dim=1).values)
    threshold = torch.quantile(nearest.float(), quantile)
    return ~matched & (nearest > threshold)


def aligned_source(
    source: torch.Tensor, source_features: torch.Tensor, target_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Source tokens (B, N, C) re-ordered to the target's layout: target token i takes the source token whose
    feature (N, F) is nearest by cosine. Also returns the (target, source) cosine-distance matrix."""
    distances = 1 - F.normalize(target_features.float(), dim=-1) @ F.normalize(source_features.float(), dim=-1).T
    return source[:, distances.argmin(dim=1)], distances


def interpolate_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    source_key: torch.Tensor,
    source_value: torch.Tensor,
    alpha: float,
    heads: int,
    new: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cora's attention interpolation for one branch's K/V (B, N, C), per head: keys K' = SLERP keeping |K_t| from
    the target towards the aligned source by 1 - alpha, values likewise with their norm interpolated; tokens marked
    `new` (N,) keep the target's K/V (nothing in the source corresponds to them). alpha = 1: the target alone."""

    def per_head(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)

    weight = 1.0 - alpha
    blended_key = slerp_fixed_norm(per_head(key.float()), per_head(source_key.float()), weight).flatten(-2)
    blended_value = slerp(per_head(value.float()), per_head(source_value.float()), weight).flatten(-2)
    if new is not None:
        keep = new.to(key.device)[None, :, None]
        blended_key = torch.where(keep, key.float(), blended_key)
        blended_value = torch.where(keep, value.float(), blended_value)
    return blended_key.to(key.dtype), blended_value.to(value.dtype)


def structural_permutation(
    source_query: torch.Tensor, target_query: torch.Tensor, heads: int, beta: float
) -> torch.Tensor:
    """Cora's structural alignment: per head, the one-to-one assignment of target queries to source positions
    minimising beta * C_SA + (1 - beta) * C_TC, each cost standardised (zero mean, unit std) - C_SA = -cos(q_src_i,
    q_tgt_j) pulls the target into the source's structure, C_TC = sqrt(|i - j|) keeps each query near its own
    place. Queries (N, C); returns (heads, N): position i takes target query [h, i]. The costs of all heads are
    built in one batched product; each head's assignment is scipy's linear_sum_assignment."""
    from scipy.optimize import linear_sum_assignment

    count = source_query.shape[0]

    def per_head(query: torch.Tensor) -> torch.Tensor:
        return F.normalize(query.float().reshape(count, heads, -1).transpose(0, 1), dim=-1)  # (H, N, d)

    semantic = -(per_head(source_query) @ per_head(target_query).transpose(1, 2))  # (H, N, N)
    index = torch.arange(count, device=source_query.device, dtype=torch.float32)
    distance = (index[:, None] - index[None, :]).abs().sqrt()[None]

    def standardised(cost: torch.Tensor) -> torch.Tensor:
        mean = cost.mean(dim=(-2, -1), keepdim=True)
        return (cost - mean) / cost.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)

    costs = (beta * standardised(semantic) + (1 - beta) * standardised(distance)).cpu().numpy()
    workers = min(len(costs), os.cpu_count() or 1)
    if workers > 1:  # scipy's solver releases the GIL: the heads' assignments run side by side
        with ThreadPoolExecutor(workers) as pool:
            columns = list(pool.map(lambda cost: linear_sum_assignment(cost)[1], costs))
    else:
        columns = [linear_sum_assignment(cost)[1] for cost in costs]
    return torch.as_tensor(np.stack(columns), device=source_query.device)


def sdxl_alignment_seconds(device: str | torch.device = "cpu", repeat: int = 1) -> float:
    """Time of structural alignment over Cora's 26 SDXL layers at 512 px (20 layers of 20 heads x 256 tokens, 6 of
    10 heads x 1024; 64-dim heads), random queries: the solver's work depends on the sizes, not on the weights."""
    generator = torch.Generator().manual_seed(0)
    layers = [(256, 20)] * 20 + [(1024, 10)] * 6
    queries = [
        (torch.randn(n, heads * 64, generator=generator), torch.randn(n, heads * 64, generator=generator), heads)
        for n, heads in layers
    ]
    queries = [(a.to(device), b.to(device), heads) for a, b, heads in queries]
    best = float("inf")
    for _ in range(max(repeat, 1)):
        started = time.perf_counter()
        for source, target, heads in queries:
            structural_permutation(source, target, heads, 0.96)
        best = min(best, time.perf_counter() - started)
    return best


def permute_queries(query: torch.Tensor, permutation: torch.Tensor, heads: int) -> torch.Tensor:
    """Target queries (N, C) re-ordered per head by `structural_permutation`'s (heads, N) indices."""
    count = query.shape[0]
    split = query.reshape(count, heads, -1).transpose(0, 1)  # (H, N, d)
    moved = torch.gather(split, 1, permutation[..., None].expand(-1, -1, split.shape[-1]))
    return moved.transpose(0, 1).reshape(count, -1)


def movement_intensifier(
    latents: torch.Tensor, mask: torch.Tensor, strength: float, generator: torch.Generator, spread: float = 0.3
) -> torch.Tensor:
    """FlexiEdit's intensifier as Cora's code runs it: inside `mask` (1, 1, h, w) each channel of `latents`
    (B, C, h, w) keeps its low frequencies and (1 - strength) of the rest, plus `strength` x Gaussian noise scaled to
    the filtered latents' value range; outside it nothing changes.

    The low-pass is a Gaussian exp(-d^2 / (2 spread^2)) of the centred spectrum with d^2 = 1 + r^2, r the radius
    normalised to 1 at the spectrum's edge: the reference (written for video latents, frames x h x w) reads a
    single picture as one frame, and the frame axis adds the 1. So the filter peaks at exp(-1 / (2 * 0.3^2)) ~ 0.004
    and in effect the region becomes (1 - strength) x latents + strength x noise. Kept so, as the published results
    were made with it."""
    height, width = latents.shape[-2:]
    rows = 2 * torch.arange(height, dtype=torch.float64, device=latents.device) / height - 1
    columns = 2 * torch.arange(width, dtype=torch.float64, device=latents.device) / width - 1
    distance = 1 + rows[:, None] ** 2 + columns[None, :] ** 2
    low_pass = torch.exp(-distance / (2 * spread**2))
    spectrum = torch.fft.fftshift(torch.fft.fft2(latents.double()), dim=(-2, -1))
    kept = spectrum * (low_pass + (1 - strength) * (1 - low_pass))
    filtered = torch.fft.ifft2(torch.fft.ifftshift(kept, dim=(-2, -1))).real
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float64, device=generator.device)
    noise = noise.to(latents.device) * (filtered.max() - filtered.min()) / (noise.max() - noise.min())
    intensified = (filtered + strength * noise).to(latents.dtype)
    return latents * (1 - mask) + intensified * mask
