"""The point tools on the canvas: drag points (D) and region move (M) here, click-to-segment (S) in
segment_tool.py, and what they share (the PointTool base, the drag layer they write to, macros).

Each turns the view's mouse and keys into calls of its Qt-free half (segment.py, drag.py), shows what is not in the
document yet (prompts, the segmenter's proposal, a pending handle, a region being dragged) and pushes one undo
command per finished gesture. The view owns one of each and hands it the events while its tool is selected.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QUndoCommand
from PySide6.QtWidgets import QGraphicsItem

from desktop_app.canvas import drag
from desktop_app.canvas.overlays import DOT_RADIUS, HANDLE_SIZE, DragOverlay
from desktop_app.canvas.tools import Point, finish
from desktop_app.document import Document, DragLayer, Layer, MaskLayer, ObjectLayer, RegionMove
from desktop_app.history import AddLayer, SetProperty

if TYPE_CHECKING:
    from desktop_app.canvas.view import CanvasView

Z_PROMPTS = 29_000.0  # prompt dots and a pending handle over everything but the brush cursor (30 000)
GRAB_RADIUS = DOT_RADIUS + 4.0  # device pixels around a drawn point that grab it
DRAG_LAYER_NAME = "Drag points"
Gesture = Generator[Any, "Point | None", Any]


class PointTool:
    """What the view calls while this tool is selected; `busy` while a press has not been released."""

    def __init__(self, view: CanvasView) -> None:
        self.view = view
        self.busy = False

    @property
    def document(self) -> Document | None:
        return self.view.document

    def press(self, point: Point, modifiers: Qt.KeyboardModifier) -> None: ...

    def move(self, point: Point) -> None: ...

    def release(self, point: Point) -> None: ...

    def cancel(self) -> bool:
        """Esc: drop what is not applied yet; False if there was nothing."""
        return False

    def can_cancel(self) -> bool:
        return self.busy

    def remove_last(self) -> bool:
        """Backspace: take back the last point; False if there was none."""
        return False

    def wheel(self, point: Point, notches: float) -> bool:
        """True if the tool used the wheel (else it zooms)."""
        return False

    def reset(self) -> None:
        """The document was replaced or another tool chosen: forget everything not applied."""
        self.cancel()

    def set_view_scale(self, scale: float) -> None: ...

    def _grab_radius(self) -> float:
        return GRAB_RADIUS / self.view.zoom()

    def _add_to_scene(self, item: QGraphicsItem, z: float) -> None:
        item.setZValue(z)
        item.setVisible(False)
        self.view.scene().addItem(item)


# --- drag points ----------------------------------------------------------------------------------------------


class DragPointTool(PointTool):
    """Clicks alternate handle (red) -> target (blue); each completed pair is one undo step on the drag layer (the
    active one, else the topmost, else a new 'Drag points' layer added in the same step). Dragging a point moves
    it; Backspace takes back the pending handle or the last pair."""

    def __init__(self, view: CanvasView) -> None:
        super().__init__(view)
        self.pending: Point | None = None
        self.pending_item = DragOverlay([])
        self._add_to_scene(self.pending_item, Z_PROMPTS)
        self._gesture: Gesture | None = None
        self._layer_id: str | None = None

    def press(self, point: Point, modifiers: Qt.KeyboardModifier) -> None:
        document = self.document
        if document is None:
            return
        layer = drag_layer(document)
        if layer is not None and not layer.visible:
            self.view.message.emit(f"'{layer.name}' is hidden: show it to edit its points")
            return
        self._layer_id = None if layer is None else layer.id
        pairs = [] if layer is None else layer.points
        self._gesture = drag.point_gesture(pairs, self.pending, document.size, self._grab_radius())
        self.busy = True
        self.move(point)

    def move(self, point: Point) -> None:
        if self._gesture is None:
            return
        preview = self._gesture.send(point)
        overlay = self._overlay()
        if preview is not None and overlay is not None:
            overlay.set_points(preview)

    def release(self, point: Point) -> None:
        if self._gesture is None:
            return
        self.move(point)
        gesture, self._gesture, self.busy = self._gesture, None, False
        edit: drag.PointsEdit = finish(gesture)
        self._restore_overlay()
        if edit.refused:
            self.view.message.emit(edit.refused)
        self._set_pending(edit.pending)
        if edit.pairs is not None:
            self._store(edit.pairs, edit.text)
            count = len(edit.pairs)
            if edit.text == "Add drag point":
                self.view.message.emit(f"Drag point {count} added: click the next handle")
        elif edit.pending is not None and not edit.refused:
            self.view.message.emit("Handle placed: now click where it should go (Backspace takes it back)")

    def cancel(self) -> bool:
        if self._gesture is not None:
            self._gesture.close()
            self._gesture, self.busy = None, False
            self._restore_overlay()
            return True
        if self.pending is not None:
            self._set_pending(None)
            return True
        return False

    def can_cancel(self) -> bool:
        return self.busy or self.pending is not None

    def remove_last(self) -> bool:
        """The pending handle if there is one, else the last pair (an undo step of its own)."""
        if self.pending is not None:
            self._set_pending(None)
            self.view.message.emit("Removed the handle")
            return True
        layer = drag_layer(self.document) if self.document is not None else None
        if layer is None or not layer.points:
            self.view.message.emit("No drag points to remove")
            return False
        command = SetProperty(self.document, layer.id, "points", layer.points[:-1], "Remove drag point")
        self.view.undo_stack.push(command)
        return True

    def clear(self) -> bool:
        """Clear drag points: every pair of the drag layer (one undo step) and the pending handle."""
        had_pending = self.pending is not None
        self._set_pending(None)
        layer = drag_layer(self.document) if self.document is not None else None
        if layer is None or not layer.points:
            return had_pending
        self.view.undo_stack.push(SetProperty(self.document, layer.id, "points", [], "Clear drag points"))
        return True

    def set_view_scale(self, scale: float) -> None:
        self.pending_item.set_view_scale(scale)

    def _store(self, pairs: list[drag.PointPair], text: str) -> None:
        document = self.document
        if self._layer_id is not None and any(layer.id == self._layer_id for layer in document.layers):
            self.view.undo_stack.push(SetProperty(document, self._layer_id, "points", pairs, text))
            return
        layer = DragLayer(free_name(document, DRAG_LAYER_NAME))
        push_macro(
            self.view, text, AddLayer(document, layer), lambda: SetProperty(document, layer.id, "points", pairs, text)
        )

    def _set_pending(self, pending: Point | None) -> None:
        self.pending = pending
        self.pending_item.set_pending(pending)
        self.pending_item.setVisible(pending is not None)

    def _overlay(self) -> DragOverlay | None:
        item = self.view.scene().item_for(self._layer_id) if self._layer_id else None
        return item if isinstance(item, DragOverlay) else None

    def _restore_overlay(self) -> None:
        overlay = self._overlay()
        if overlay is not None and self.document is not None:
            overlay.set_points(self.document.layer(self._layer_id).points)


# --- region move ------------------------------------------------------------------------------------------------


class RegionMoveTool(PointTool):
    """With a mask layer active: drag inside its region's box to move it, drag a corner or turn the wheel over it
    to scale it. Stored as a RegionMove on the drag layer (as for drag points); one undo step per gesture."""

    def __init__(self, view: CanvasView) -> None:
        super().__init__(view)
        self._gesture: Gesture | None = None
        self._start: RegionMove | None = None

    def region(self) -> tuple[Layer, drag.Box, RegionMove] | None:
        """The active mask layer, its region's box and its current move; None (and a message) if there is none."""
        document = self.document
        layer = document.active_layer if document is not None else None
        if not isinstance(layer, (MaskLayer, ObjectLayer)):
            self.view.message.emit("Select the mask layer of the region to move, or a reference image to place it")
            return None
        outline = self.view.scene().region_outline(layer.id)
        if outline is None:
            self.view.message.emit(f"'{layer.name}' is empty: paint or segment the region first")
            return None
        holder = drag_layer(document)
        if holder is not None and not holder.visible:
            self.view.message.emit(f"'{holder.name}' is hidden: show it to move regions")
            return None
        return layer, outline[1], drag.region_of(holder.regions if holder else [], layer.id)

    def press(self, point: Point, modifiers: Qt.KeyboardModifier) -> None:
        region = self.region()
        if region is None:
            return
        _, box, move = region
        self._start = move
        self._gesture = drag.region_gesture(move, box, self.document.size, HANDLE_SIZE / self.view.zoom() * 1.5)
        self.busy = True
        if self._gesture.send(point) is None:
            self.view.message.emit("Drag inside the region's box to move it, or a corner to scale it")

    def move(self, point: Point) -> None:
        if self._gesture is not None:
            preview = self._gesture.send(point)
            if preview is not None:
                self.view.scene().set_region_preview(preview)

    def release(self, point: Point) -> None:
        if self._gesture is None:
            return
        self.move(point)
        gesture, self._gesture, self.busy = self._gesture, None, False
        result: RegionMove | None = finish(gesture)
        self.view.scene().set_region_preview(None)
        if result is not None:
            scaling = self._start is not None and (result.dx, result.dy) == (self._start.dx, self._start.dy)
            self._store(result, "Scale region" if scaling else "Move region")

    def wheel(self, point: Point, notches: float) -> bool:
        if self.busy:
            return True
        layer = self.document.active_layer if self.document is not None else None
        outline = self.view.scene().region_outline(layer.id) if isinstance(layer, (MaskLayer, ObjectLayer)) else None
        if outline is None:
            return False
        move = drag.region_of(self._regions(), layer.id)
        x0, y0, x1, y1 = drag.moved_box(outline[1], move)
        if not (x0 <= point[0] <= x1 and y0 <= point[1] <= y1):
            return False
        self._store(drag.scaled(move, drag.WHEEL_SCALE**notches), "Scale region", merge_key=("wheel", layer.id))
        return True

    def cancel(self) -> bool:
        if self._gesture is None:
            return False
        self._gesture.close()
        self._gesture, self.busy = None, False
        self.view.scene().set_region_preview(None)
        return True

    def _regions(self) -> list[RegionMove]:
        holder = drag_layer(self.document) if self.document is not None else None
        return holder.regions if holder is not None else []

    def _store(self, move: RegionMove, text: str, merge_key: object = None) -> None:
        document, holder = self.document, drag_layer(self.document)
        if holder is not None:
            regions = drag.with_region(holder.regions, move)
            self.view.undo_stack.push(SetProperty(document, holder.id, "regions", regions, text, merge_key))
            return
        holder = DragLayer(free_name(document, DRAG_LAYER_NAME))
        push_macro(
            self.view, text, AddLayer(document, holder), lambda: SetProperty(document, holder.id, "regions", [move])
        )
        document.set_active(move.mask_layer_id)  # keep the region selected: the next drag moves it again


# --- helpers ----------------------------------------------------------------------------------------------------


def drag_layer(document: Document) -> DragLayer | None:
    """Where drag points and region moves go: the active drag layer, else the topmost one, else None."""
    active = document.active_layer
    if isinstance(active, DragLayer):
        return active
    layers = document.layers_of(DragLayer)
    return layers[-1] if layers else None  # type: ignore[return-value]


def push_macro(view: CanvasView, text: str, *commands: QUndoCommand | Callable[[], QUndoCommand]) -> None:
    """Several commands as one undo step. A callable is built only after the commands before it ran (a property
    command validates against a layer that an AddLayer before it has just added)."""
    view.undo_stack.beginMacro(text)
    try:
        for command in commands:
            view.undo_stack.push(command() if callable(command) else command)
    finally:
        view.undo_stack.endMacro()


def remove_added(document: Document, layer: Layer, previous_active: str | None) -> None:
    document.remove_layer(layer.id)
    if previous_active and any(existing.id == previous_active for existing in document.layers):
        document.set_active(previous_active)


def free_name(document: Document, base: str) -> str:
    names = {layer.name for layer in document.layers}
    return next(name for n in range(1, len(names) + 2) if (name := base if n == 1 else f"{base} {n}") not in names)
