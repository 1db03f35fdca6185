"""Semantic correspondence on diffusion features: cosine nearest neighbour and Hungarian matching.

DIFT, DragonDiffusion, Cora and Eye-for-an-eye all match feature vectors by cosine similarity. The official
Eye-for-an-eye matcher loops over pixels in Python; here it is one chunked matmul + argmax, so memory stays
bounded (`chunk` source rows at a time) without a per-pixel loop. One-to-one matching (Cora's
correspondence-aware alignment) uses `scipy.optimize.linear_sum_assignment`.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

logger = logging.getLogger(__name__)


def _as_rows(features: torch.Tensor) -> torch.Tensor:
    """(C, H, W) feature map or (N, C) rows -> (N, C) rows in row-major pixel order."""
    if features.ndim == 3:
        return features.flatten(1).T
    if features.ndim == 2:
        return features
    raise ValueError(f"features must be (C, H, W) or (N, C), got shape {tuple(features.shape)}")


def _flat_mask(mask: torch.Tensor | np.ndarray | None, count: int, device: torch.device) -> torch.Tensor | None:
    if mask is None:
        return None
    flat = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).reshape(-1)
    if flat.numel() != count:
        raise ValueError(f"mask has {flat.numel()} entries, features have {count} locations")
    return flat.to(device=device).bool()


def nearest_neighbours(
    source: torch.Tensor,
    target: torch.Tensor,
    source_mask: torch.Tensor | np.ndarray | None = None,
    chunk: int = 4096,
    target_mask: torch.Tensor | np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each source location, the target location of highest cosine similarity.

    `source` / `target`: (C, H, W) maps or (N, C) rows. Returns (indices, similarities), both (N,), where
    indices are flat (row-major) positions in the full target grid. With `source_mask` only the masked source
    locations are matched (in row-major order); `target_mask` restricts the candidates.
    """
    source_rows = F.normalize(_as_rows(source).float(), dim=1)
    target_rows = F.normalize(_as_rows(target).float(), dim=1)
    keep = _flat_mask(source_mask, source_rows.shape[0], source_rows.device)
    if keep is not None:
        source_rows = source_rows[keep]
    allowed = _flat_mask(target_mask, target_rows.shape[0], target_rows.device)
    if allowed is not None and not allowed.any():
        raise ValueError("target_mask selects no locations")
    indices, similarities = [], []
    for start in range(0, source_rows.shape[0], chunk):
        similarity = source_rows[start : start + chunk] @ target_rows.T
        if allowed is not None:
            similarity = similarity.masked_fill(~allowed, float("-inf"))
        best, index = similarity.max(dim=1)
        indices.append(index)
        similarities.append(best)
    if not indices:
        empty = torch.empty(0, device=source_rows.device)
        return empty.long(), empty
    return torch.cat(indices), torch.cat(similarities)


def cosine_similarity_map(query: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of one feature vector (C,) with every location of a (C, H, W) map -> (H, W)."""
    return torch.einsum("c,chw->hw", F.normalize(query.float(), dim=0), F.normalize(features.float(), dim=0))


def match_points(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    points_xy_in_a: torch.Tensor | np.ndarray,
    image_size: tuple[int, int],
    image_size_b: tuple[int, int] | None = None,
) -> torch.Tensor:
    """DIFT point transfer: pixel points (x, y) in image a -> matching pixel points in image b.

    `features_*` are (C, h, w) maps of images of `image_size` / `image_size_b` = (height, width). The query
    feature is sampled bilinearly at the point's sub-pixel position in a (DIFT upsamples the whole map; one
    sample per point is the same value at a fraction of the memory); the answer is the centre of the best
    cell of b, in b's pixel coordinates. Returns (N, 2) float xy.
    """
    height_a, width_a = image_size
    height_b, width_b = image_size_b or image_size
    points = torch.as_tensor(np.asarray(points_xy_in_a, dtype=np.float32)).reshape(-1, 2).to(features_a.device)
    # grid_sample's align_corners=False grid: -1 and 1 are the outer edges of the image, as pixel coords are.
    grid = torch.stack([points[:, 0] / width_a * 2 - 1, points[:, 1] / height_a * 2 - 1], dim=1)
    queries = F.grid_sample(features_a[None].float(), grid[None, None], mode="bilinear", align_corners=False)
    indices, _ = nearest_neighbours(queries[0, :, 0].T, features_b)
    grid_h, grid_w = features_b.shape[-2:]
    rows, cols = indices // grid_w, indices % grid_w
    x = (cols.float() + 0.5) * width_b / grid_w
    y = (rows.float() + 0.5) * height_b / grid_h
    return torch.stack([x, y], dim=1)


def hungarian_match(matrix: torch.Tensor | np.ndarray, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment minimising total cost (or maximising total similarity with `maximize=True`).

    Returns (rows, cols) index arrays as `linear_sum_assignment` does; rectangular matrices match
    min(rows, cols) pairs.
    """
    values = matrix.detach().float().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    rows, cols = linear_sum_assignment(values, maximize=maximize)
    return rows, cols
