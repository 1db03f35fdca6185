"""Content digests of images: the keys of the inversion cache and of the segmenters' per-image caches.

Torch-free (numpy and hashlib only), so the client's click-to-segment fast lane can key its cache too."""

from __future__ import annotations

import hashlib

import numpy as np


def image_digest(image: np.ndarray) -> str:
    """sha256 of an image's shape, dtype and pixels (the same pixels with another shape differ)."""
    pixels = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{pixels.shape}|{pixels.dtype.str}|".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()
