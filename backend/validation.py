"""Check a request against what its method declares, before any model is loaded: bad input fails fast,
with a message that names the problem, and nothing is lost."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from backend.errors import InputError
from backend.protocol import EditRequest, MethodInfo, validate_params

MIN_SIDE, MAX_SIDE = 8, 8192


def validate_request(request: EditRequest, info: MethodInfo) -> EditRequest:
    """A copy of `request` with params filled in and validated, images normalised to uint8 RGB."""
    try:
        params = validate_params(info.params, request.params)
    except ValueError as error:
        raise InputError(str(error), hint=f"See `python -m backend describe {info.id}`.") from None
    image = _check_image(request.image, "image") if request.image is not None else None
    needed = set(info.inputs)
    if "image" in needed and image is None:
        raise InputError(f"method '{info.id}' needs an image")
    masks = _check_masks(request, info, image)
    _check_required_masks(info, masks)
    if "points" in needed:
        _check_points(request, image)
    reference, reference_mask = _check_reference(request, needed)
    _check_move(request, "move" in needed)
    for field_name in ("source_prompt", "target_prompt"):
        if field_name in needed and not getattr(request, field_name).strip():
            raise InputError(f"method '{info.id}' needs a {field_name.replace('_', ' ')}")
    if "object_prompts" in needed:
        _check_object_prompts(request, image)
    if not 0 <= int(request.seed) < 2**32:
        raise InputError(f"seed must be between 0 and 2^32 - 1, got {request.seed}")
    return dataclasses.replace(
        request, params=params, image=image, masks=masks, reference_image=reference, reference_mask=reference_mask
    )


def _check_image(array: object, what: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise InputError(f"{what} is not an image array (got {type(array).__name__})")
    if array.dtype != np.uint8:
        raise InputError(f"{what} must be 8-bit (uint8), got {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise InputError(f"{what} must be H x W x 3 (RGB) or H x W x 4 (RGBA), got shape {array.shape}")
    height, width = array.shape[:2]
    if min(height, width) < MIN_SIDE or max(height, width) > MAX_SIDE:
        raise InputError(f"{what} is {width}x{height}; sides must be between {MIN_SIDE} and {MAX_SIDE} pixels")
    return np.ascontiguousarray(array[..., :3])


def _check_mask(mask: object, what: str, size: tuple[int, int] | None) -> np.ndarray:
    if not isinstance(mask, np.ndarray) or mask.ndim != 2:
        shape = getattr(mask, "shape", None)
        raise InputError(f"{what} must be a 2-D array (H x W), got {type(mask).__name__} of shape {shape}")
    if size is not None and mask.shape != size:
        raise InputError(
            f"{what} is {mask.shape[1]}x{mask.shape[0]} but the image is {size[1]}x{size[0]}",
            hint="Masks must have the size of the image they belong to.",
        )
    if mask.dtype == bool:
        mask = mask.astype(np.uint8) * 255
    if mask.dtype != np.uint8:
        raise InputError(f"{what} must be uint8 (0-255) or bool, got {mask.dtype}")
    return mask


def _check_masks(request: EditRequest, info: MethodInfo, image: np.ndarray | None) -> dict[str, np.ndarray]:
    roles = {item.split(":", 1)[1] for item in (*info.inputs, *info.optional_inputs) if item.startswith("mask:")}
    unknown = sorted(set(request.masks) - roles)
    if unknown:
        uses = ", ".join(sorted(roles)) or "no masks"
        raise InputError(f"method '{info.id}' has no mask role {', '.join(map(repr, unknown))} (it uses: {uses})")
    size = image.shape[:2] if image is not None else None
    return {role: _check_mask(mask, f"mask '{role}'", size) for role, mask in request.masks.items()}


def _check_required_masks(info: MethodInfo, masks: dict[str, np.ndarray]) -> None:
    for item in info.inputs:
        if not item.startswith("mask:"):
            continue
        role = item.split(":", 1)[1]
        if role not in masks:
            raise InputError(f"method '{info.id}' needs a mask '{role}'", hint="Paint or segment the region first.")
        if not masks[role].any():
            raise InputError(f"mask '{role}' is empty", hint="Paint the region the method should work on.")


def _check_points(request: EditRequest, image: np.ndarray | None) -> None:
    if not request.points:
        raise InputError("this method needs at least one handle -> target point pair")
    if image is None:
        return
    height, width = image.shape[:2]
    for index, pair in enumerate(request.points):
        for name, (x, y) in (("handle", pair.handle), ("target", pair.target)):
            if not (0 <= x < width and 0 <= y < height):
                raise InputError(
                    f"point pair {index + 1}: {name} ({x:g}, {y:g}) lies outside the {width}x{height} image"
                )


def _check_reference(request: EditRequest, needed: set[str]) -> tuple[np.ndarray | None, np.ndarray | None]:
    reference = request.reference_image
    if reference is None:
        if "reference" in needed:
            raise InputError("this method needs a reference image")
        return None, None
    reference = _check_image(reference, "reference image")
    mask = request.reference_mask
    if mask is not None:
        mask = _check_mask(mask, "reference mask", reference.shape[:2])
    _check_placement(request.reference_placement)
    return reference, mask


def _check_placement(placement: Any) -> None:
    if placement is None:
        return
    try:
        x, y, scale = (float(value) for value in placement)
    except (TypeError, ValueError):
        raise InputError(f"reference placement must be (x, y, scale), got {placement!r}") from None
    if not all(math.isfinite(value) for value in (x, y, scale)) or scale <= 0:
        raise InputError(f"reference placement must be finite with a positive scale, got {placement!r}")


def _check_move(request: EditRequest, needed: bool) -> None:
    move = request.move
    if move is None:
        if needed:
            raise InputError(
                "this method needs a region move: how far to move (and scale) the object",
                hint="Drag the object's mask with the Move Region tool (CLI: --move DX,DY[,SCALE]).",
            )
        return
    try:
        dx, dy, scale = (float(value) for value in move)
    except (TypeError, ValueError):
        raise InputError(f"a region move must be (dx, dy, scale), got {move!r}") from None
    if not all(math.isfinite(value) for value in (dx, dy, scale)) or scale <= 0:
        raise InputError(f"a region move must be finite with a positive scale, got {move!r}")
    if needed and dx == 0 and dy == 0 and scale == 1:
        raise InputError("the region move is empty: the object would stay as it is", hint="Drag or scale the region.")


def _check_object_prompts(request: EditRequest, image: np.ndarray | None) -> None:
    if not request.object_prompts:
        raise InputError("this method needs at least one object (a mask with a prompt)")
    size = image.shape[:2] if image is not None else None
    for index, item in enumerate(request.object_prompts):
        mask = _check_mask(item.mask, f"object {index + 1}'s mask", size)
        if not mask.any():
            raise InputError(f"object {index + 1}'s mask is empty")
        if not item.prompt.strip():
            raise InputError(f"object {index + 1} has no prompt")
