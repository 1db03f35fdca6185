"""Putting a result back into the user's picture: original size, and untouched pixels outside the edit mask."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def feathered(mask: np.ndarray, radius: float) -> np.ndarray:
    """float32 [0, 1] mask with its edge softened by a Gaussian of `radius` px (no seams at mask borders)."""
    alpha = mask.astype(np.float32)
    if alpha.max() > 1.0:
        alpha = alpha / 255.0
    if radius <= 0:
        return alpha
    blurred = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius))
    return np.asarray(blurred, dtype=np.float32) / 255.0


def restore_size(edited: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if edited.shape[:2] == size:
        return edited
    return np.asarray(Image.fromarray(edited).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def composite(original: np.ndarray, edited: np.ndarray, mask: np.ndarray | None, feather: float = 2.0) -> np.ndarray:
    """`edited` inside `mask`, `original` outside; both at the original's size. No mask: the edit everywhere."""
    edited = restore_size(edited, original.shape[:2])
    if mask is None:
        return edited
    alpha = feathered(mask, feather)[..., None]
    # Pixels the mask does not touch at all are copied exactly: unedited areas stay bit-identical.
    blended = original.astype(np.float32) * (1 - alpha) + edited.astype(np.float32) * alpha
    return np.where(alpha > 0, np.clip(blended.round(), 0, 255), original).astype(np.uint8)


def mask_array(mask, size: tuple[int, int]) -> dict:
    """A bool mask (tensor or array, any grid) as the protocol's encoded uint8 array (255 = in) at `size`
    (nearest), for result metadata: the recipe keeps it and the GUI shows it."""
    from backend.protocol import encode_array

    values = mask.detach().cpu().numpy() if hasattr(mask, "detach") else np.asarray(mask)
    pixels = Image.fromarray(values.astype(np.uint8) * 255).resize((size[1], size[0]), Image.Resampling.NEAREST)
    return encode_array(np.asarray(pixels))
