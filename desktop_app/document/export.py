"""PNG export with the recipe inside, in the same two chunks the backend writes (backend/imageio.py).

`parameters` is the A1111 text many tools read (line 1 prompt, line 2 `Negative prompt: ...`, line 3 the
settings); `atelier` is the JSON of the result's metadata with the full recipe (an EditRequest dict) under
`recipe`, so a PNG shared on its own can still be reproduced. The GUI may not import the backend's writer,
so the format is repeated here; tests pin both to the same lines.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from backend.protocol import a1111_parameters
from desktop_app.document.atomic import atomic_write
from desktop_app.document.imagefile import ImageFileError, check_file

log = logging.getLogger(__name__)

PARAMETERS_KEY = "parameters"
ATELIER_KEY = "atelier"


def export_png(
    path: str | Path,
    image: np.ndarray,
    recipe: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write `image` (H x W x 3 or 4 uint8) as PNG with the recipe chunks, atomically; returns the path."""
    image = _checked_image(image)
    info = _png_info(image, recipe, metadata)
    return atomic_write(path, lambda temporary: Image.fromarray(image).save(temporary, format="PNG", pnginfo=info))


def _checked_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
        got = f"{image.shape} {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"a PNG export needs an H x W x 3 or 4 uint8 image; got {got}")
    return np.ascontiguousarray(image)


def _png_info(
    image: np.ndarray, recipe: dict[str, Any] | None, metadata: dict[str, Any] | None
) -> PngImagePlugin.PngInfo:
    """Chunks only when there is something to say: a plain picture export carries no empty recipe."""
    info = PngImagePlugin.PngInfo()
    if recipe is None and metadata is None:
        return info
    merged: dict[str, Any] = {**(metadata or {}), "height": image.shape[0], "width": image.shape[1]}
    if recipe is not None:
        merged["recipe"] = recipe
    if merged.get("recipe"):
        info.add_text(PARAMETERS_KEY, a1111_parameters(merged))
    # Plain tEXt, as the backend writes it: Pillow refuses compressed text chunks over 1 MB when reading.
    info.add_text(ATELIER_KEY, json.dumps(merged, default=str))
    return info


def read_png_metadata(path: str | Path) -> dict[str, Any] | None:
    """The `atelier` JSON chunk of a PNG (ours or the backend's), or None when it has none or it is damaged."""
    path = Path(path)
    label = f"'{path}'"
    check_file(path, label)
    text = _text_chunk(path, label, ATELIER_KEY)
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        log.warning("the atelier chunk of %s is not valid JSON (%s); ignoring it", label, error)
        return None
    return data if isinstance(data, dict) else None


def read_png_recipe(path: str | Path) -> dict[str, Any] | None:
    """The recipe (EditRequest dict) stored in a PNG, or None: "reuse the parameters of this picture"."""
    metadata = read_png_metadata(path)
    recipe = metadata.get("recipe") if metadata else None
    return recipe if isinstance(recipe, dict) else None


def read_png_parameters(path: str | Path) -> str | None:
    """The A1111 `parameters` text, if the PNG has one (ours, A1111's, ComfyUI's...)."""
    path = Path(path)
    label = f"'{path}'"
    check_file(path, label)
    return _text_chunk(path, label, PARAMETERS_KEY)


def _text_chunk(path: Path, label: str, key: str) -> str | None:
    try:
        with Image.open(path, formats=("PNG",)) as image:
            value = image.info.get(key)  # chunks before the pixels: no decoding needed
            if value is None:
                value = image.text.get(key)  # chunks after the pixels: Pillow reads on to find them
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageFileError(f"{label} is not a PNG Atelier can read ({error})") from None
    return value if isinstance(value, str) else None


__all__ = ["a1111_parameters", "export_png", "read_png_metadata", "read_png_parameters", "read_png_recipe"]
