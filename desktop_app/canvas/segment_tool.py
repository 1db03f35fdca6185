"""Click-to-segment on the canvas (S): prompts in, the segmenter's proposal shown, Enter applies it.

The Qt-free half is segment.py (SegmentSession); this part asks the segmenter, shows prompts and proposal, and
pushes the one undo step. The view re-emits requests as its `segment_requested` signal and takes answers in
`show_segment_proposal`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt

from desktop_app.canvas.overlays import GestureOutline, PromptOverlay
from desktop_app.canvas.point_tools import Z_PROMPTS, PointTool, free_name, push_macro, remove_added
from desktop_app.canvas.render import Z_ANNOTATIONS, ImageItem, mask_pixels
from desktop_app.canvas.segment import SegmentRequest, SegmentSession
from desktop_app.canvas.tools import Point, paintable_layer
from desktop_app.document import MaskLayer
from desktop_app.history import AddedLayer, PaintPatch

if TYPE_CHECKING:
    from desktop_app.canvas.view import CanvasView

log = logging.getLogger(__name__)

Segmenter = Callable[[np.ndarray, list[Point], list[Point], "tuple[float, float, float, float] | None"], np.ndarray]
Z_PROPOSAL = Z_ANNOTATIONS - 10  # the proposal over every mask tint, under region outlines and drag arrows
PROPOSAL_COLOUR = (120, 220, 255, 90)  # a light cyan: not a role's colour, the proposal is in no layer yet
CLICK_SLOP = 4.0  # device pixels a click may wander before it becomes a box drag


class SegmentTool(PointTool):
    """Click = include point, Shift+click = exclude point, drag = box. Each change asks the segmenter for a mask
    (the view's segment_requested signal, or an in-process callable); its answer is shown as a proposal (light tint,
    dashed outline) that Enter adds to the active mask (Alt+Enter subtracts) as one undo step. Esc starts over."""

    def __init__(self, view: CanvasView) -> None:
        super().__init__(view)
        self.segmenter: Segmenter | None = None
        self.session: SegmentSession | None = None
        self._image: np.ndarray | None = None  # the composite the segmenter sees, until a raster changes
        self._press: Point | None = None
        self._include = True
        self._boxing = False
        self.prompts = PromptOverlay()
        self.outline = GestureOutline(bold=True)
        self.tint: ImageItem | None = None
        self._add_to_scene(self.prompts, Z_PROMPTS)
        self._add_to_scene(self.outline, Z_PROPOSAL + 1)

    def invalidate_image(self) -> None:
        self._image = None

    def image(self) -> np.ndarray:
        """The picture to segment: the visible rasters flattened (cached: SAM caches its embedding by image)."""
        if self._image is None:
            self._image = self.document.composite_rgb()
            self._image.flags.writeable = False  # shared with every request: receivers read it, never write
        return self._image

    def press(self, point: Point, modifiers: Qt.KeyboardModifier) -> None:
        if self.document is None:
            return
        self.busy, self._press, self._boxing = True, point, False
        self._include = not modifiers & Qt.KeyboardModifier.ShiftModifier

    def move(self, point: Point) -> None:
        if self._press is None:
            return
        if not self._boxing and math.dist(point, self._press) * self.view.zoom() < CLICK_SLOP:
            return
        self._boxing = True
        session = self._session()
        box = (*self._press, *point)
        self.prompts.set_prompts(session.include, session.exclude, box)
        self.prompts.setVisible(True)

    def release(self, point: Point) -> None:
        self.move(point)
        press, self._press, self.busy = self._press, None, False
        if press is None or self.document is None:
            return
        session = self._session()
        if self._boxing:
            request = session.set_box(press, point)
        else:
            request = session.add_point(press, self._include)
            if request is None:
                self.view.message.emit("Click inside the image to segment")
        self._show_prompts()
        if request is not None:
            self.ask(request)

    def ask(self, request: SegmentRequest) -> None:
        image = self.image()
        self.view.segment_requested.emit(request.request_id, image, request.include, request.exclude, request.box)
        if self.segmenter is None:
            return
        try:
            mask = self.segmenter(image, request.include, request.exclude, request.box)
        except Exception as error:  # a segmenter's failure is the user's message, not the canvas's crash
            log.exception("segmenter failed")
            self.view.message.emit(f"Segmentation failed: {error}")
            return
        self.show_proposal(request.request_id, mask)

    def show_proposal(self, request_id: int, mask: np.ndarray | None) -> bool:
        """The segmenter's answer; False (nothing shown) when it is stale or does not fit the image."""
        if self.session is None:
            return False
        try:
            accepted = self.session.accept(request_id, mask)
        except ValueError as error:
            self.view.message.emit(f"Segmentation failed: {error}")
            return False
        if accepted:
            self._show_proposal()
        return accepted

    def apply(self, subtract: bool = False) -> bool:
        """Enter: the proposal into the active mask (a new object mask if none is active), one undo step."""
        session, document = self.session, self.document
        if session is None or document is None or session.is_empty():
            self.view.message.emit("Click the object to segment first")
            return False
        if not session.is_current():
            self.view.message.emit("Still segmenting: press Enter again when the outline appears")
            return False
        layer, created, previous_active = paintable_layer(document), None, document.active_id
        if layer is None:
            if subtract:
                self.view.message.emit("Select a mask layer to subtract from")
                return False
            shape = (document.height, document.width)
            name = free_name(document, "Object mask")
            layer = created = MaskLayer(name, mask=np.zeros(shape, np.uint8), role="object")
            document.add_layer(created)
        elif not layer.visible:
            self.view.message.emit(f"'{layer.name}' is hidden: show it to add to it")
            return False
        record = session.apply(document, layer.id, subtract)
        self._show_prompts()
        self._show_proposal()
        if record is None:
            if created is not None:
                remove_added(document, created, previous_active)
            self.view.message.emit(f"The segment changes nothing in '{layer.name}'")
            return False
        patch = PaintPatch(document, record.layer_id, record.origin, record.before, record.after, record.text)
        if created is None:
            self.view.undo_stack.push(patch)
        else:
            push_macro(self.view, record.text, AddedLayer(document, created, previous_active), patch)
        done = "Subtracted the segment from" if subtract else "Added the segment to"
        self.view.message.emit(f"{done} '{layer.name}'")
        return True

    def cancel(self) -> bool:
        had = self.busy or (self.session is not None and not self.session.is_empty())
        self._press, self.busy = None, False
        if self.session is not None:
            self.session.clear()
        self._show_prompts()
        self._show_proposal()
        return had

    def can_cancel(self) -> bool:
        return self.busy or (self.session is not None and not self.session.is_empty())

    def remove_last(self) -> bool:
        if self.session is None or self.session.is_empty():
            return False
        request = self.session.remove_last()
        self._show_prompts()
        self._show_proposal()
        if request is not None:
            self.ask(request)
        return True

    def reset(self) -> None:
        self.cancel()
        self.session = None
        self._image = None

    def set_view_scale(self, scale: float) -> None:
        self.prompts.set_view_scale(scale)

    def _session(self) -> SegmentSession:
        size = self.document.size
        if self.session is None or self.session.size != size:
            self.session = SegmentSession(size)
        return self.session

    def _show_prompts(self) -> None:
        session = self.session
        if session is None or session.is_empty():
            self.prompts.setVisible(False)
            return
        self.prompts.set_prompts(session.include, session.exclude, session.box)
        self.prompts.setVisible(True)

    def _show_proposal(self) -> None:
        proposal = None if self.session is None else self.session.proposal
        self.outline.set_mask(proposal)
        self.outline.setVisible(proposal is not None)
        if proposal is None:
            if self.tint is not None:
                self.tint.setVisible(False)
            return
        height, width = proposal.shape
        if self.tint is None or self.tint.pixels.shape[:2] != (height, width):
            if self.tint is not None:
                self.view.scene().removeItem(self.tint)
            self.tint = ImageItem(width, height)
            self._add_to_scene(self.tint, Z_PROPOSAL)
        self.tint.write(0, 0, mask_pixels(proposal, PROPOSAL_COLOUR))
        self.tint.setVisible(True)
