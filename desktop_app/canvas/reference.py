"""Reference images without Qt: where a new one goes, placing it (move, scale), painting its own mask, and pasting
it onto the picture.

A ReferenceLayer keeps its image at its own size and a placement (x, y, scale): reference pixel (col, row) covers
the document rectangle [x + col * scale, x + (col + 1) * scale) and likewise in y. Its mask has the reference's
size; no mask (None) means the whole image. The placement gesture is a generator like the other tools (tools.py,
drag.py): send document positions, then RELEASE; it returns the new Placement (None when nothing changed).
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from desktop_app.canvas.tools import Point, compose, started, swept_stamp
from desktop_app.document import ReferenceLayer

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in document pixels
Rect = tuple[int, int, int, int]  # x, y, width, height in reference pixels
FIT_FRACTION = 0.5  # a new reference's long side takes at most this much of the document's long side
MIN_SCALE, MAX_SCALE = 0.01, 20.0
WHEEL_SCALE = 1.1  # per wheel notch, as for region moves


@dataclass(frozen=True)
class Placement:
    """Where a reference sits on the picture: its top-left corner (document pixels) and its scale."""

    x: float
    y: float
    scale: float

    @classmethod
    def of(cls, layer: ReferenceLayer) -> Placement:
        return cls(layer.x, layer.y, layer.scale)


def fit_placement(image_size: tuple[int, int], document_size: tuple[int, int]) -> Placement:
    """Inside the document, its long side at most half the document's long side, centred; never enlarged."""
    (width, height), (doc_width, doc_height) = image_size, document_size
    scale = min(1.0, FIT_FRACTION * max(doc_width, doc_height) / max(width, height))
    scale = min(scale, doc_width / width, doc_height / height)
    return Placement((doc_width - width * scale) / 2.0, (doc_height - height * scale) / 2.0, scale)


def placed_box(placement: Placement, image_size: tuple[int, int]) -> Box:
    x, y, s = placement.x, placement.y, placement.scale
    return x, y, x + image_size[0] * s, y + image_size[1] * s


def contains(box: Box, point: Point) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def scaled(placement: Placement, image_size: tuple[int, int], factor: float) -> Placement:
    """The placement scaled by `factor` about the centre of its box (as region moves scale)."""
    x0, y0, x1, y1 = placed_box(placement, image_size)
    scale = min(MAX_SCALE, max(MIN_SCALE, placement.scale * factor))
    centre_x, centre_y = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    return Placement(centre_x - image_size[0] * scale / 2.0, centre_y - image_size[1] * scale / 2.0, scale)


@started
def placement_gesture(
    start: Placement, image_size: tuple[int, int], document_size: tuple[int, int], grab_radius: float
) -> Generator[Placement | None, Point | None, Placement | None]:
    """Drag inside the placed reference to move it, or one of its corners to scale it about its centre.

    Yields the placement as it would be (None after a press that grabbed nothing: the caller says why). The centre
    stays inside the document, so a reference cannot be dragged out of reach."""
    press = yield None
    if press is None:
        return None
    box = placed_box(start, image_size)
    corners = [(box[0], box[1]), (box[2], box[1]), (box[2], box[3]), (box[0], box[3])]
    on_corner = min(math.dist(corner, press) for corner in corners) <= grab_radius
    if not (on_corner or contains(box, press)):
        while (yield None) is not None:
            pass
        return None
    centre = ((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0)
    reach = max(math.dist(press, centre), 1e-6)
    current = start
    while (position := (yield current)) is not None:
        if on_corner:
            current = scaled(start, image_size, math.dist(position, centre) / reach)
        else:
            new_x = min(max(centre[0] + position[0] - press[0], 0.0), float(document_size[0]))
            new_y = min(max(centre[1] + position[1] - press[1], 0.0), float(document_size[1]))
            current = replace(start, x=start.x + new_x - centre[0], y=start.y + new_y - centre[1])
    return None if current == start else current


# --- the reference's own mask -----------------------------------------------------------------------------------


def stroke_base(mask: np.ndarray | None, shape: tuple[int, int], erase: bool) -> np.ndarray:
    """What a stroke starts from. No mask means the whole image, so erasing from it cuts a hole in the whole."""
    if mask is not None:
        return mask
    return np.full(shape, 255 if erase else 0, np.uint8)


@started
def mask_stroke(
    before: np.ndarray, after: np.ndarray, size: float, hardness: float, erase: bool = False
) -> Generator[Rect | None, Point | None, bool]:
    """Brush (or eraser) stroke from `before` into `after` (a copy the caller shows live), with the canvas brush's
    stamp and soft edge (tools.swept_stamp, tools.compose). Yields the rectangle each move changed; returns whether
    the stroke changed anything. `before` is never written: it may be the layer's own mask."""
    coverage = np.zeros(before.shape, np.uint8)  # the max of the stamps so far: going over a spot again adds nothing

    def sweep(start: Point, end: Point) -> Rect | None:
        stamp = swept_stamp(start, end, size, hardness, before.shape)
        if stamp is None:
            return None
        x, y, alpha = stamp
        region = np.s_[y : y + alpha.shape[0], x : x + alpha.shape[1]]
        np.maximum(coverage[region], alpha, out=coverage[region])
        after[region] = compose(before[region], coverage[region], erase)
        return x, y, alpha.shape[1], alpha.shape[0]

    last = yield None
    if last is None:
        return False
    changed = sweep(last, last)
    while (position := (yield changed)) is not None:
        changed = sweep(last, position) if position != last else None
        last = position
    return not np.array_equal(before, after)


def stored_mask(mask: np.ndarray) -> np.ndarray | None:
    """The mask as the layer keeps it: an all-zero mask selects nothing, which the user means as 'no mask'."""
    return mask if mask.any() else None


def masked_image(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The reference as it is pasted and shown on the canvas: its alpha times its mask (all of it without one)."""
    if mask is None:
        return image
    out = image.copy()
    out[..., 3] = (image[..., 3].astype(np.uint16) * mask + 127) // 255
    return out


def pasted_pixels(layer: ReferenceLayer, document_size: tuple[int, int]) -> np.ndarray:
    """The reference inside its mask, at its placement, as RGBA pixels of the document's size (clear elsewhere).

    Resampled premultiplied (Pillow's RGBa), so transparent pixels do not bleed dark fringes into the edges; a
    strong reduction is box-filtered first, since bilinear sampling alone would alias a photo shrunk 10 times."""
    image = Image.fromarray(masked_image(layer.image, layer.mask), "RGBA").convert("RGBa")
    scale = layer.scale
    factor = max(1, math.floor(1.0 / scale))
    if factor > 1:
        image = image.reduce(factor)
        scale *= factor
    # Pillow's affine map takes each output pixel to the input pixel it samples: input = (output - offset) / scale.
    inverse = (1.0 / scale, 0.0, -layer.x / scale, 0.0, 1.0 / scale, -layer.y / scale)
    placed = image.transform(document_size, Image.Transform.AFFINE, inverse, Image.Resampling.BILINEAR)
    return np.array(placed.convert("RGBA"), dtype=np.uint8)


__all__ = [
    "Placement",
    "fit_placement",
    "mask_stroke",
    "masked_image",
    "pasted_pixels",
    "placed_box",
    "placement_gesture",
    "scaled",
    "stored_mask",
    "stroke_base",
]
