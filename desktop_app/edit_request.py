"""From the document to one EditRequest (data path hop 2): what the chosen method asks for, taken from the layers.

No Qt here, so the rules are tested without a window. A method names its inputs in `MethodInfo.inputs` (required)
and `optional_inputs`: `mask:<role>`, `object_prompts`, `points`, `reference`, prompts. Only what it declares is
sent (the backend refuses mask roles a method does not use), and a required input the document lacks is refused
here with a message that says what to add, before anything reaches the backend's queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.protocol import EditRequest, MethodInfo, ObjectPrompt, PointPair
from desktop_app.document import Document, DragLayer, MaskLayer, ObjectLayer, ReferenceLayer


class MissingInput(ValueError):
    """The document lacks something the method needs; the message tells the user what to add."""


@dataclass
class MethodInputs:
    """What the user typed or reused for one run: prompts, parameter values (empty = the method's defaults), seed."""

    target_prompt: str = ""
    source_prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0


def mask_roles(method: MethodInfo) -> tuple[list[str], list[str]]:
    """The mask roles `method` requires and the ones it can use, in its own order."""
    required = [item.split(":", 1)[1] for item in method.inputs if item.startswith("mask:")]
    optional = [item.split(":", 1)[1] for item in method.optional_inputs if item.startswith("mask:")]
    return required, optional


def takes(method: MethodInfo, name: str) -> bool:
    return name in method.inputs or name in method.optional_inputs


def build_request(document: Document, method: MethodInfo, inputs: MethodInputs, model: str) -> EditRequest:
    """The EditRequest for `method` on `document`; MissingInput when a required input is not in the document."""
    move, moved_mask = _move(document, method)
    return EditRequest(
        method=method.id,
        image=document.composite_rgb(),
        params=dict(inputs.params),
        masks=_masks(document, method, {} if moved_mask is None else {"object": moved_mask}),
        points=_points(document, method),
        move=move,
        object_prompts=_objects(document, method),
        **_reference(document, method),
        target_prompt=inputs.target_prompt.strip(),
        source_prompt=inputs.source_prompt.strip(),
        negative_prompt=inputs.negative_prompt.strip(),
        seed=int(inputs.seed),
        model=model,
    )


def _masks(document: Document, method: MethodInfo, given: dict[str, np.ndarray]) -> dict:
    required, optional = mask_roles(method)
    # visible, non-empty masks merged per role; a region move's own mask is the object it moves
    available = {**document.masks_by_role(), **given}
    for role in required:
        if role not in available:
            raise MissingInput(f"{method.title} needs {_mask_problem(document, role)}")
    return {role: available[role] for role in (*required, *optional) if role in available}


def _mask_problem(document: Document, role: str) -> str:
    """Why there is no usable mask of `role`, phrased as what to do about it."""
    layers = [layer for layer in document.layers_of(MaskLayer) if layer.role == role]
    if not layers:
        return f"a '{role}' mask: add one (Layer ▸ Add Mask ▸ {role.capitalize()}) and paint the region."
    if not any(layer.visible for layer in layers):
        return f"the '{role}' mask, which is hidden: show it in the Layers panel."
    return f"a painted '{role}' mask: '{layers[0].name}' is empty, paint the region on it."


def _objects(document: Document, method: MethodInfo) -> list[ObjectPrompt]:
    if not takes(method, "object_prompts"):
        return []
    objects = [
        ObjectPrompt(mask=layer.mask.copy(), prompt=layer.prompt, source=layer.source)
        for layer in document.layers_of(ObjectLayer)
        if layer.visible and layer.mask.any()
    ]
    if not objects and "object_prompts" in method.inputs:
        raise MissingInput(f"{method.title} needs an object: Layer ▸ Add Object, paint it and give it a prompt.")
    return objects


def _points(document: Document, method: MethodInfo) -> list[PointPair]:
    if not takes(method, "points"):
        return []
    pairs = [
        PointPair(handle=handle, target=target)
        for layer in document.layers_of(DragLayer)
        if layer.visible
        for handle, target in layer.points
    ]
    if not pairs and "points" in method.inputs:
        raise MissingInput(f"{method.title} needs at least one handle → target point pair on a drag layer.")
    return pairs


def _move(document: Document, method: MethodInfo) -> tuple[tuple[float, float, float] | None, np.ndarray | None]:
    """The region move the method asks for: (dx, dy, scale) and the mask of the region it moves."""
    if not takes(method, "move"):
        return None, None
    moves = []
    for holder in document.layers_of(DragLayer):
        if not holder.visible:
            continue
        for region in holder.regions:
            if (region.dx, region.dy, region.scale) == (0.0, 0.0, 1.0):
                continue
            try:
                layer = document.layer(region.mask_layer_id)
            except KeyError:
                continue  # its mask layer was deleted: nothing to move
            if layer.visible and isinstance(layer, (MaskLayer, ObjectLayer)) and layer.mask.any():
                moves.append((region, layer))
    if len(moves) > 1:
        names = ", ".join(f"'{layer.name}'" for _, layer in moves)
        raise MissingInput(
            f"{method.title} moves one region at a time, and {names} are all moved: hide or reset all but one."
        )
    if not moves:
        if "move" in method.inputs:
            raise MissingInput(
                f"{method.title} needs a region move: select the object's mask layer, pick the Move Region tool "
                "(M) and drag the region to where it should go (drag a corner to scale it)."
            )
        return None, None
    region, layer = moves[0]
    return (float(region.dx), float(region.dy), float(region.scale)), layer.mask.copy()


def _reference(document: Document, method: MethodInfo) -> dict:
    if not takes(method, "reference"):
        return {}
    visible = [layer for layer in document.layers_of(ReferenceLayer) if layer.visible]
    if not visible:
        if "reference" in method.inputs:
            raise MissingInput(f"{method.title} needs a reference image: add one with Layer ▸ Add Reference Image…")
        return {}
    top = visible[-1]  # the one the user sees: the topmost
    return {
        "reference_image": top.image.copy(),
        "reference_mask": None if top.mask is None else top.mask.copy(),
        "reference_placement": (float(top.x), float(top.y), float(top.scale)),
    }


__all__ = ["MethodInputs", "MissingInput", "build_request", "mask_roles", "takes"]
