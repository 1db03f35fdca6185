"""Placing a reference image on the canvas with the move tool (M) while a reference layer is active: drag inside it
to move it, drag a corner or turn the wheel over it to scale it. Esc cancels a drag; one undo step per gesture.

The Qt-free half is canvas/reference.py; the view hands this tool its mouse events instead of the region-move tool
whenever the active layer is a reference (CanvasView._point_tool).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import Qt

from desktop_app.canvas import reference
from desktop_app.canvas.overlays import HANDLE_SIZE, ReferenceFrame
from desktop_app.canvas.point_tools import Gesture, PointTool
from desktop_app.canvas.reference import Placement
from desktop_app.canvas.tools import Point, finish
from desktop_app.document import ReferenceLayer
from desktop_app.history import SetPlacement

if TYPE_CHECKING:
    from desktop_app.canvas.view import CanvasView

Z_FRAME = 28_000.0  # over masks and drag arrows, under prompt dots and the brush cursor


class ReferencePlaceTool(PointTool):
    """Moves and scales the active reference layer; shows its box and corner handles while the move tool is on."""

    def __init__(self, view: CanvasView) -> None:
        super().__init__(view)
        self.frame = ReferenceFrame()
        self._add_to_scene(self.frame, Z_FRAME)
        self._gesture: Gesture | None = None
        self._layer: ReferenceLayer | None = None

    def active_reference(self) -> ReferenceLayer | None:
        layer = self.document.active_layer if self.document is not None else None
        return layer if isinstance(layer, ReferenceLayer) else None

    def press(self, point: Point, modifiers: Qt.KeyboardModifier) -> None:
        layer = self.active_reference()
        if layer is None:
            return
        if not layer.visible:
            self.view.message.emit(f"'{layer.name}' is hidden: show it to place it")
            return
        grab = HANDLE_SIZE / self.view.zoom() * 1.5
        self._layer = layer
        self._gesture = reference.placement_gesture(Placement.of(layer), _size(layer), self.document.size, grab)
        self.busy = True
        if self._gesture.send(point) is None:
            self.view.message.emit("Drag inside the reference image to move it, or a corner to scale it")

    def move(self, point: Point) -> None:
        if self._gesture is not None and (preview := self._gesture.send(point)) is not None:
            self._show(preview)

    def release(self, point: Point) -> None:
        if self._gesture is None:
            return
        self.move(point)
        gesture, layer = self._gesture, self._layer
        self._gesture, self._layer, self.busy = None, None, False
        result: Placement | None = finish(gesture)
        if result is None or layer is None:
            self.refresh()
            return
        text = "Scale reference" if result.scale != layer.scale else "Move reference"
        self.view.undo_stack.push(SetPlacement(self.document, layer.id, (result.x, result.y, result.scale), text))
        self.refresh()

    def wheel(self, point: Point, notches: float) -> bool:
        if self.busy:
            return True
        layer = self.active_reference()
        if layer is None or not layer.visible:
            return False
        placement = Placement.of(layer)
        if not reference.contains(reference.placed_box(placement, _size(layer)), point):
            return False
        new = reference.scaled(placement, _size(layer), reference.WHEEL_SCALE**notches)
        merge_key = ("wheel", layer.id)  # a burst of notches is one undo step
        command = SetPlacement(self.document, layer.id, (new.x, new.y, new.scale), "Scale reference", merge_key)
        self.view.undo_stack.push(command)
        return True

    def cancel(self) -> bool:
        if self._gesture is None:
            return False
        self._gesture.close()
        self._gesture, self._layer, self.busy = None, None, False
        self.refresh()
        return True

    def set_view_scale(self, scale: float) -> None:
        self.frame.set_view_scale(scale)

    def refresh(self) -> None:
        """Show the stored placement (the frame only while the move tool is on and a visible reference is active)."""
        layer = self.active_reference()
        shown = layer is not None and layer.visible and self.view.tool_state.tool == "move"
        if layer is not None and self._gesture is None:
            self._show(Placement.of(layer), layer)
        self.frame.setVisible(shown)
        if not shown:
            self.frame.set_box(None)

    def _show(self, placement: Placement, layer: ReferenceLayer | None = None) -> None:
        """Put the reference's item and frame at `placement` (a drag's live preview, not stored yet)."""
        layer = layer or self._layer
        if layer is None:
            return
        item = self.view.scene().item_for(layer.id)
        if item is not None:
            item.setPos(placement.x, placement.y)
            item.setScale(placement.scale)
        self.frame.set_box(reference.placed_box(placement, _size(layer)))


def _size(layer: ReferenceLayer) -> tuple[int, int]:
    return layer.image.shape[1], layer.image.shape[0]
