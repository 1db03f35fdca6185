"""Click-to-segment without Qt: the prompts (include points, exclude points, one box), the mask a segmenter last
proposed for them, and applying that proposal to a mask layer as one undo record.

Every prompt change makes a new request with a new `request_id` (unique in the process, so an answer meant for a
session since replaced cannot pass for a new one); the segmenter answers with the id it was asked under, and an
answer to an older id is stale (the user clicked again while it ran) and is dropped. The prompts
follow SAM's conventions: points are (x, y) in image pixels, labels 1 = include and 0 = exclude, the box is
(x0, y0, x1, y1).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from desktop_app.canvas.tools import Point, UndoRecord, compose, replace_mask
from desktop_app.document import Document

Box = tuple[float, float, float, float]
INCLUDE, EXCLUDE = 1, 0
_request_ids = itertools.count(1)


@dataclass
class SegmentRequest:
    """What the segmenter is asked: `segment(image, include, exclude, box) -> mask`, answered under `request_id`."""

    request_id: int
    include: list[Point]
    exclude: list[Point]
    box: Box | None


@dataclass
class SegmentSession:
    """The prompts for the object being selected and the segmenter's latest proposal (not yet in the document).

    `size` is the image's (width, height): prompts outside it are refused, a box is clipped to it."""

    size: tuple[int, int]
    points: list[Point] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    box: Box | None = None
    proposal: np.ndarray | None = None  # uint8 H x W, 0..255
    request_id: int = 0
    proposal_id: int = -1  # the request the proposal answers

    @property
    def include(self) -> list[Point]:
        return [p for p, label in zip(self.points, self.labels, strict=True) if label == INCLUDE]

    @property
    def exclude(self) -> list[Point]:
        return [p for p, label in zip(self.points, self.labels, strict=True) if label == EXCLUDE]

    def is_empty(self) -> bool:
        return not self.points and self.box is None

    def is_current(self) -> bool:
        """The proposal answers the prompts as they are now (no newer request still out)."""
        return self.proposal is not None and self.proposal_id == self.request_id

    # --- prompts ------------------------------------------------------------------------------------------------

    def add_point(self, point: Point, include: bool = True) -> SegmentRequest | None:
        """Click (include) or Shift+click (exclude); None for a point outside the image."""
        if not _inside(point, self.size):
            return None
        self.points.append((float(point[0]), float(point[1])))
        self.labels.append(INCLUDE if include else EXCLUDE)
        return self.request()

    def set_box(self, a: Point, b: Point) -> SegmentRequest | None:
        """Drag: the box from `a` to `b` (clipped to the image) replaces the previous one; None if it is empty."""
        width, height = self.size
        x0, x1 = (min(max(v, 0.0), float(width)) for v in sorted((a[0], b[0])))
        y0, y1 = (min(max(v, 0.0), float(height)) for v in sorted((a[1], b[1])))
        if x1 - x0 < 1.0 or y1 - y0 < 1.0:
            return None
        self.box = (x0, y0, x1, y1)
        return self.request()

    def remove_last(self) -> SegmentRequest | None:
        """Backspace: drop the last point (or the box when no point is left); a new request if prompts remain."""
        if self.points:
            self.points.pop()
            self.labels.pop()
        elif self.box is not None:
            self.box = None
        else:
            return None
        if self.is_empty():
            self.clear()
            return None
        return self.request()

    def clear(self) -> None:
        """Esc: no prompts, no proposal; answers still on their way become stale."""
        self.points, self.labels, self.box = [], [], None
        self.proposal, self.proposal_id = None, -1
        self.request_id = next(_request_ids)

    def request(self) -> SegmentRequest:
        """A new request for the current prompts. The old proposal stays on screen until the answer comes."""
        self.request_id = next(_request_ids)
        return SegmentRequest(self.request_id, self.include, self.exclude, self.box)

    # --- answers ------------------------------------------------------------------------------------------------

    def accept(self, request_id: int, mask: np.ndarray | None) -> bool:
        """Take the segmenter's answer if it is for the latest request; False (and nothing changes) if stale."""
        if request_id != self.request_id or self.is_empty():
            return False
        self.proposal = None if mask is None else as_mask(mask, self.size)
        self.proposal_id = request_id
        return True

    def apply(self, document: Document, layer_id: str, subtract: bool = False) -> UndoRecord | None:
        """Enter: add the proposal to the mask (union), or with `subtract` cut it out; then start afresh.

        One record covering the changed box, so the canvas pushes one PaintPatch; None if nothing changed."""
        if self.proposal is None:
            return None
        mask = document.layer(layer_id).pixel_array()
        if mask is None or mask.shape != self.proposal.shape:
            raise ValueError("the segment proposal does not fit this layer")
        new = compose(mask, self.proposal, erase=True) if subtract else np.maximum(mask, self.proposal)
        record = replace_mask(document, layer_id, new, "Subtract segment" if subtract else "Add segment")
        self.clear()
        return record


def as_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A segmenter's answer -> uint8 0..255 of the image's shape; bool, 0..1 float and 0/1 integer masks too."""
    array = np.asarray(mask)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    width, height = size
    if array.shape != (height, width):
        raise ValueError(f"a segment mask must be {height}x{width}; got {array.shape}")
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        return (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if array.size and array.max() <= 1:  # 0/1 labels, as some segmenters return them
        return array.astype(np.uint8) * 255
    return np.clip(array, 0, 255).astype(np.uint8)


def _inside(point: Point, size: tuple[int, int]) -> bool:
    return 0.0 <= point[0] < size[0] and 0.0 <= point[1] < size[1]
