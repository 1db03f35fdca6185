"""The canvas: a QGraphicsView showing a Document, with zoom, pan, the mask tools and the point tools.

Input only turns into tool calls here; the mask tools (tools.py) paint the document live, the point tools
(point_tools.py: segment, drag points, region move) keep what is not applied yet, the scene (render.py) follows
the document's events, and each finished gesture becomes one command on the undo stack.

Click-to-segment asks a segmenter for each change of its prompts: `segment_requested(request_id, image, include,
exclude, box)` goes out, `show_segment_proposal(request_id, mask)` brings the answer back (a stale id is dropped);
or `set_segmenter(callable)` answers in-process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PySide6.QtCore import QEvent, QPointF, QRectF, Qt, Signal, Slot
from PySide6.QtGui import (
    QAction,
    QBrush,
    QColor,
    QEnterEvent,
    QKeyEvent,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPixmap,
    QResizeEvent,
    QTransform,
    QUndoStack,
    QWheelEvent,
)
from PySide6.QtWidgets import QFrame, QGraphicsView, QWidget

from desktop_app.canvas import tools
from desktop_app.canvas.overlays import BrushCursor, GestureOutline
from desktop_app.canvas.point_tools import DragPointTool, PointTool, RegionMoveTool, free_name
from desktop_app.canvas.reference_tool import ReferencePlaceTool
from desktop_app.canvas.render import DocumentScene, ImageItem, WeakListener
from desktop_app.canvas.segment import SegmentSession
from desktop_app.canvas.segment_tool import SegmentTool
from desktop_app.canvas.tools import ToolGenerator, ToolState, UndoRecord, paintable_layer
from desktop_app.document import Document, DocumentEvent, Layer, MaskLayer, ObjectLayer, RasterLayer, ReferenceLayer
from desktop_app.history import AddedLayer, PaintPatch

MIN_ZOOM, MAX_ZOOM = 1 / 32, 32.0
WHEEL_STEP = 1.25  # zoom factor per wheel notch (120 eighths of a degree)
FIT_MARGIN = 12  # device pixels left around the image by fit()
TOOL_KEYS = {Qt.Key.Key_B: "brush", Qt.Key.Key_E: "eraser", Qt.Key.Key_R: "rectangle", Qt.Key.Key_L: "lasso"}
TOOL_KEYS[Qt.Key.Key_G] = "fill"  # G: the bucket in Photoshop
TOOL_KEYS |= {Qt.Key.Key_S: "segment", Qt.Key.Key_D: "drag", Qt.Key.Key_M: "move"}
ENTER_KEYS = (Qt.Key.Key_Return, Qt.Key.Key_Enter)
NO_KEYS, ALT = Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.AltModifier
Z_OUTLINES = 30_000.0


@dataclass
class _Gesture:
    """One press-to-release with a tool; `created` is an edit mask the gesture added that is not yet undoable."""

    generator: ToolGenerator
    layer_id: str
    created: Layer | None = None
    previous_active: str | None = None


class CanvasView(QGraphicsView):
    """Shows a Document; wheel zoom, Space/middle-drag pan, B/E/R/L/G mask tools, [ ] brush size, S segment
    (Enter applies), D drag points, M region move, Backspace takes back the last point, Esc cancels."""

    zoom_changed = Signal(float)
    cursor_moved = Signal(int, int)  # the image pixel under the pointer (may lie outside the image)
    message = Signal(str)
    # request id, RGB uint8 image, include points, exclude points, box (x0, y0, x1, y1) or None; answer with
    # show_segment_proposal(request id, mask). Points are (x, y) in image pixels.
    segment_requested = Signal(int, object, object, object, object)

    def __init__(
        self,
        document: Document | None = None,
        undo_stack: QUndoStack | None = None,
        tool_state: ToolState | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.undo_stack = undo_stack if undo_stack is not None else QUndoStack(self)
        self.tool_state = tool_state if tool_state is not None else ToolState()
        self._scene = DocumentScene(self)
        self.setScene(self._scene)
        self._brush_cursor = BrushCursor(self.tool_state.size)
        self._outline = GestureOutline()
        for z, item in enumerate((self._brush_cursor, self._outline)):
            item.setZValue(Z_OUTLINES + z)
            item.setVisible(False)
            self._scene.addItem(item)
        self._gesture: _Gesture | None = None
        self.segment_tool = SegmentTool(self)
        self.drag_tool = DragPointTool(self)
        self.region_tool = RegionMoveTool(self)
        self.reference_tool = ReferencePlaceTool(self)
        self._point_tools: dict[str, PointTool] = {
            "segment": self.segment_tool,
            "drag": self.drag_tool,
            "move": self.region_tool,
            "reference": self.reference_tool,  # no tool of that name: Move drives it (see _point_tool)
        }
        self._document_listener: WeakListener | None = None
        self._pan_from: QPointF | None = None
        self._space_held = False
        self._fit_mode = True  # refit on resize until the user zooms or pans
        self._checker = _checker_brush()
        self._configure()
        self.fit_action = self._action("Fit to Window", "Ctrl+0", self.fit)
        self.actual_size_action = self._action("Actual Pixels", "Ctrl+1", self.actual_size)
        state = self.tool_state.events
        self._tool_listener = WeakListener(self, "_on_tool_event", [state.tool, state.size])
        self.set_document(document)

    def _configure(self) -> None:
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # We anchor zoom ourselves at the wheel event's position: AnchorUnderMouse reads QCursor::pos(), which
        # synthetic events (tests, tablets) do not move.
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.NoAnchor)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setViewportUpdateMode(QGraphicsView.ViewportUpdateMode.MinimalViewportUpdate)
        self.setOptimizationFlag(QGraphicsView.OptimizationFlag.DontSavePainterState)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMouseTracking(True)
        self.viewport().setCursor(Qt.CursorShape.CrossCursor)

    def _action(self, text: str, shortcut: str, slot: object) -> QAction:
        """Not added to the view: the window puts it in its View menu; keyPressEvent covers the bare canvas."""
        action = QAction(text, self)
        action.setShortcut(QKeySequence(shortcut))
        action.triggered.connect(slot)
        return action

    # --- document -----------------------------------------------------------------------------------------------

    @property
    def document(self) -> Document | None:
        return self._scene.document

    def set_document(self, document: Document | None) -> None:
        self.cancel_gesture()
        for tool in self._point_tools.values():
            tool.reset()
        if self._document_listener is not None:
            self._document_listener.detach()
            self._document_listener = None
        self._scene.set_document(document)
        if document is not None:
            events = document.events
            emitters = [events.layer_added, events.layer_removed, events.layer_moved, events.layer_changed]
            emitters += [events.pixels_changed, events.active_changed]
            self._document_listener = WeakListener(self, "_on_document_event", emitters)
        self._update_region_handles()
        self.fit()

    def _on_document_event(self, event: DocumentEvent) -> None:
        if event.type == "active_changed":
            self._update_region_handles()
            return
        if isinstance(event.layer, ReferenceLayer):
            self.reference_tool.refresh()
        if not isinstance(event.layer, RasterLayer):
            return
        if event.type != "layer_changed" or event.attribute in ("visible", "opacity"):
            self.segment_tool.invalidate_image()  # the picture the segmenter sees has changed

    def layer_item(self, layer_id: str) -> ImageItem | None:
        """The item showing a layer (its `pixels` / `image()` are what is on screen); None for drag layers."""
        item = self._scene.item_for(layer_id)
        return item if isinstance(item, ImageItem) else None

    # --- zoom and pan ---------------------------------------------------------------------------------------

    def zoom(self) -> float:
        return self.transform().m11()

    def fit(self) -> None:
        """Ctrl+0: the whole image in the window, centred."""
        self._fit_mode = True
        if self.document is None:
            return
        width, height = self.document.size
        viewport = self.viewport().size()
        scale = min((viewport.width() - 2 * FIT_MARGIN) / width, (viewport.height() - 2 * FIT_MARGIN) / height)
        self._set_zoom(scale)
        self.centerOn(width / 2, height / 2)

    def actual_size(self) -> None:
        """Ctrl+1: one image pixel per screen pixel, keeping the point in the middle of the window."""
        self._fit_mode = False
        centre = self._centre()
        self._set_zoom(1.0)
        self.centerOn(centre)

    def zoom_at(self, factor: float, anchor: QPointF) -> None:
        """Multiply the zoom by `factor`, keeping the image point under `anchor` (viewport pixels) in place."""
        self._fit_mode = False
        fixed = self._to_scene(anchor)
        self._set_zoom(self.zoom() * factor)
        moved = self.mapFromScene(fixed) - anchor.toPoint()
        self._scroll_by(moved.x(), moved.y())

    def _set_zoom(self, scale: float) -> None:
        scale = min(MAX_ZOOM, max(MIN_ZOOM, scale))
        if scale != self.zoom():
            self.setTransform(QTransform.fromScale(scale, scale))
        self._update_scene_rect()
        self._scene.set_view_scale(scale)
        self._brush_cursor.set_view_scale(scale)
        for tool in self._point_tools.values():
            tool.set_view_scale(scale)
        self.zoom_changed.emit(scale)

    def _update_scene_rect(self) -> None:
        """The image plus a window's worth of margin on every side, at the current zoom: the user can pan any
        edge of the image to the middle of the window, however small the image or the zoom."""
        if self.document is None:
            return
        centre = self._centre()
        width, height = self.document.size
        margin_x, margin_y = self.viewport().width() / self.zoom(), self.viewport().height() / self.zoom()
        self.setSceneRect(QRectF(-margin_x, -margin_y, width + 2 * margin_x, height + 2 * margin_y))
        self.centerOn(centre)

    def _centre(self) -> QPointF:
        """The scene point centerOn() puts at the middle of the viewport (read exactly, so no drift)."""
        inverse, _ = self.viewportTransform().inverted()
        return inverse.map(QPointF(self.viewport().width() / 2, self.viewport().height() / 2))

    def _scroll_by(self, dx: float, dy: float) -> None:
        self.horizontalScrollBar().setValue(self.horizontalScrollBar().value() + round(dx))
        self.verticalScrollBar().setValue(self.verticalScrollBar().value() + round(dy))

    def _to_scene(self, position: QPointF) -> QPointF:
        """Viewport position -> scene point at full precision (mapToScene takes whole pixels only); the half
        pixel puts the point at the middle of the screen pixel under the pointer's hotspot."""
        inverse, _ = self.viewportTransform().inverted()
        return inverse.map(position + QPointF(0.5, 0.5))

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        if self._fit_mode:
            self.fit()
        else:
            self._update_scene_rect()

    def drawBackground(self, painter: QPainter, rect: QRectF) -> None:  # noqa: N802 - Qt's name
        painter.fillRect(rect, QColor(48, 48, 50))
        if self.document is not None:
            # Transparent pixels show a checkerboard of fixed on-screen size, whatever the zoom.
            self._checker.setTransform(QTransform.fromScale(1 / self.zoom(), 1 / self.zoom()))
            painter.fillRect(QRectF(0, 0, *self.document.size).intersected(rect), self._checker)

    # --- keys -----------------------------------------------------------------------------------------------

    def event(self, event: QEvent) -> bool:
        # While a gesture runs or a tool holds unapplied points, Esc is ours even if the window binds Esc (cancel
        # job) as a shortcut: the first Esc clears the tool, the next one reaches the window.
        overriding = event.type() == QEvent.Type.ShortcutOverride and self._can_cancel()
        if overriding and isinstance(event, QKeyEvent) and event.key() == Qt.Key.Key_Escape:
            event.accept()
            return True
        return super().event(event)

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt's name
        key, modifiers = event.key(), event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        if key == Qt.Key.Key_Space:
            if not event.isAutoRepeat():
                self._space_held = True
                self._update_cursor()
        elif modifiers == Qt.KeyboardModifier.ControlModifier and key in (Qt.Key.Key_0, Qt.Key.Key_1):
            self.fit() if key == Qt.Key.Key_0 else self.actual_size()
        elif key == Qt.Key.Key_Escape and self._can_cancel():
            self.cancel_gesture()
            self.message.emit("Cancelled")
        elif key in ENTER_KEYS and self.tool_state.tool == "segment" and modifiers in (NO_KEYS, ALT):
            self.apply_segment(subtract=modifiers == ALT)
        elif key == Qt.Key.Key_Backspace and modifiers == NO_KEYS:
            self.remove_last_point()
        elif modifiers == Qt.KeyboardModifier.NoModifier and key in TOOL_KEYS:
            self.tool_state.tool = TOOL_KEYS[key]
        elif event.text() in ("[", "]"):  # by text: on many layouts [ and ] need AltGr or Shift
            self.tool_state.shrink() if event.text() == "[" else self.tool_state.grow()
        else:
            super().keyPressEvent(event)
            return
        event.accept()

    def keyReleaseEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt's name
        if event.key() == Qt.Key.Key_Space and not event.isAutoRepeat():
            self._space_held = False
            self._update_cursor()
            event.accept()
            return
        super().keyReleaseEvent(event)

    def focusOutEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        self._space_held = False  # the Space release goes to another widget
        self._update_cursor()
        super().focusOutEvent(event)

    # --- mouse ------------------------------------------------------------------------------------------------

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        button = event.button()
        if button == Qt.MouseButton.MiddleButton or (button == Qt.MouseButton.LeftButton and self._space_held):
            self._pan_from = event.position()
            self._update_cursor()
        elif button == Qt.MouseButton.LeftButton and self._gesture is None and self._busy_tool() is None:
            point = self._to_scene(event.position())
            tool = self._point_tool()
            if tool is not None:
                tool.press((point.x(), point.y()), event.modifiers())
            else:
                self._begin_gesture(point, event.modifiers())
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        point = self._to_scene(event.position())
        self._brush_cursor.setPos(point)
        self._brush_cursor.setVisible(self._shows_brush())
        self.cursor_moved.emit(math.floor(point.x()), math.floor(point.y()))
        if self._pan_from is not None:
            delta = event.position() - self._pan_from
            self._pan_from = event.position()
            self._fit_mode = False
            self._scroll_by(-delta.x(), -delta.y())
        elif self._gesture is not None:
            self._send(point)
        elif (tool := self._busy_tool()) is not None:
            tool.move((point.x(), point.y()))
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if self._pan_from is not None and event.button() in (Qt.MouseButton.MiddleButton, Qt.MouseButton.LeftButton):
            self._pan_from = None
            self._update_cursor()
        elif event.button() == Qt.MouseButton.LeftButton and self._gesture is not None:
            self._send(self._to_scene(event.position()))
            self._end_gesture()
        elif event.button() == Qt.MouseButton.LeftButton and (tool := self._busy_tool()) is not None:
            point = self._to_scene(event.position())
            tool.release((point.x(), point.y()))
        event.accept()

    def wheelEvent(self, event: QWheelEvent) -> None:  # noqa: N802 - Qt's name
        notches = event.angleDelta().y() / 120.0
        point = self._to_scene(event.position())
        if notches and self.tool_state.tool == "move" and self._point_tool().wheel((point.x(), point.y()), notches):
            pass  # the wheel over a region (or the active reference image) scales it
        elif notches:
            self.zoom_at(WHEEL_STEP**notches, event.position())
        event.accept()

    def viewportEvent(self, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.Enter and isinstance(event, QEnterEvent):
            self._brush_cursor.setPos(self._to_scene(event.position()))
            self._brush_cursor.setVisible(self._shows_brush())
        elif event.type() == QEvent.Type.Leave:
            self._brush_cursor.setVisible(False)
        return super().viewportEvent(event)

    # --- gestures -----------------------------------------------------------------------------------------------

    def _begin_gesture(self, point: QPointF, modifiers: Qt.KeyboardModifier) -> None:
        document = self.document
        if document is None:
            return
        tool = self.tool_state.tool
        subtract = tool == "eraser" or bool(modifiers & Qt.KeyboardModifier.AltModifier)
        layer, created, previous_active = paintable_layer(document), None, document.active_id
        if layer is None:
            if subtract:
                self.message.emit("Select a mask layer to erase from")
                return
            # Friendlier than refusing: paint on a new edit mask, undone together with the first gesture.
            layer = created = MaskLayer(free_name(document, "Edit mask"), mask=np.zeros(document.size[::-1], np.uint8))
            document.add_layer(created)
            self.message.emit("Painting on a new edit mask")
        elif not layer.visible:
            self.message.emit(f"'{layer.name}' is hidden: show it to paint on it")
            return
        generator = self._start_tool(tool, document, layer.id, subtract)
        self._gesture = _Gesture(generator, layer.id, created, previous_active)
        self._send(point)

    def _start_tool(self, tool: str, document: Document, layer_id: str, subtract: bool) -> ToolGenerator:
        if tool in ("brush", "eraser"):
            state = self.tool_state
            return tools.stroke(document, layer_id, state.size, state.hardness, erase=tool == "eraser")
        factory = {"rectangle": tools.rectangle, "lasso": tools.lasso, "fill": tools.fill}[tool]
        return factory(document, layer_id, subtract)

    def _send(self, point: QPointF) -> None:
        assert self._gesture is not None
        outline = self._gesture.generator.send((point.x(), point.y()))
        self._outline.set_points(outline)
        self._outline.setVisible(bool(outline))

    def _end_gesture(self) -> None:
        gesture, self._gesture = self._gesture, None
        if gesture is None:
            return
        self._outline.setVisible(False)
        record = tools.finish(gesture.generator)
        if gesture.created is None:
            if record is not None:
                self.undo_stack.push(self._patch(record))
            return
        if record is None:  # a new mask that got nothing painted on it is not worth a layer
            self._drop_created(gesture)
            return
        self.undo_stack.beginMacro(record.text)
        self.undo_stack.push(AddedLayer(self.document, gesture.created, gesture.previous_active))
        self.undo_stack.push(self._patch(record))
        self.undo_stack.endMacro()

    def cancel_gesture(self) -> None:
        """Esc: undo what the running gesture painted, without leaving anything on the undo stack; a point tool
        drops what it has not applied (segment prompts and proposal, a pending handle, a region being dragged)."""
        tool = self._busy_tool() or self._point_tool()
        if tool is not None:
            tool.cancel()
        gesture, self._gesture = self._gesture, None
        if gesture is None:
            return
        self._outline.setVisible(False)
        record = tools.finish(gesture.generator)
        if record is not None:
            record.revert(self.document)
        if gesture.created is not None:
            self._drop_created(gesture)

    def _drop_created(self, gesture: _Gesture) -> None:
        document = self.document
        document.remove_layer(gesture.created.id)
        if gesture.previous_active and any(layer.id == gesture.previous_active for layer in document.layers):
            document.set_active(gesture.previous_active)

    def _patch(self, record: UndoRecord) -> PaintPatch:
        return PaintPatch(self.document, record.layer_id, record.origin, record.before, record.after, record.text)

    # --- whole-mask commands (for menu actions) -----------------------------------------------------------------

    def fill_mask(self) -> None:
        self._whole_mask(tools.fill_mask)

    def invert_mask(self) -> None:
        self._whole_mask(tools.invert_mask)

    def clear_mask(self) -> None:
        self._whole_mask(tools.clear_mask)

    def _whole_mask(self, operation: object) -> None:
        layer = paintable_layer(self.document) if self.document is not None else None
        if layer is None:
            self.message.emit("Select a mask layer first")
            return
        record = operation(self.document, layer.id)
        if record is not None:
            self.undo_stack.push(self._patch(record))

    # --- point tools: segment, drag points, region move ---------------------------------------------------------

    def set_segmenter(self, segmenter: Callable[..., np.ndarray] | None) -> None:
        """An in-process segmenter `(image_rgb, include, exclude, box) -> mask` that answers every request at once
        (segment_requested is still emitted). None: answers come through show_segment_proposal only."""
        self.segment_tool.segmenter = segmenter

    @Slot(int, object)
    def show_segment_proposal(self, request_id: int, mask: np.ndarray | None) -> bool:
        """The segmenter's mask for request `request_id`, shown as the proposal; a stale id is ignored (False)."""
        return self.segment_tool.show_proposal(request_id, mask)

    @property
    def segment_session(self) -> SegmentSession | None:
        return self.segment_tool.session

    def apply_segment(self, subtract: bool = False) -> bool:
        """Enter (Alt+Enter subtracts): the proposal into the active mask as one undo step."""
        if self.tool_state.tool != "segment":
            return False
        return self.segment_tool.apply(subtract)

    def remove_last_point(self) -> bool:
        """Backspace: the segment tool's last prompt, or the drag tool's pending handle or last pair."""
        tool = self.tool_state.tool
        if self.document is None or tool not in ("segment", "drag"):
            self.message.emit("Backspace takes back points of the Segment and Drag Points tools")
            return False
        return self._point_tools[tool].remove_last()

    def clear_drag_points(self) -> bool:
        """Every pair of the drag layer, one undo step."""
        if self.document is None:
            return False
        return self.drag_tool.clear()

    def _busy_tool(self) -> PointTool | None:
        return next((tool for tool in self._point_tools.values() if tool.busy), None)

    def _can_cancel(self) -> bool:
        tool = self._busy_tool() or self._point_tool()
        return self._gesture is not None or (tool is not None and tool.can_cancel())

    def _point_tool(self) -> PointTool | None:
        """The point tool the selected tool drives: Move places the active layer when that is a reference image."""
        layer = self.document.active_layer if self.document is not None else None
        if self.tool_state.tool == "move" and isinstance(layer, ReferenceLayer):
            return self.reference_tool
        return self._point_tools.get(self.tool_state.tool)

    def _update_region_handles(self) -> None:
        layer = self.document.active_layer if self.document is not None else None
        selected = self.tool_state.tool == "move" and isinstance(layer, (MaskLayer, ObjectLayer))
        self._scene.set_region_handles(layer.id if selected else None)
        self.reference_tool.refresh()

    # --- tool state ---------------------------------------------------------------------------------------------

    def set_tool(self, name: str) -> None:
        self.tool_state.tool = name

    def _on_tool_event(self, event: DocumentEvent) -> None:
        if event.type == "tool":
            for name, tool in self._point_tools.items():
                if name != event.value:
                    tool.reset()  # prompts and a pending handle belong to their tool
            self._update_region_handles()
        self._brush_cursor.set_size(self.tool_state.size)
        self._update_cursor()

    def _shows_brush(self) -> bool:
        return self.tool_state.tool in ("brush", "eraser") and self._pan_from is None and not self._space_held

    def _update_cursor(self) -> None:
        if self._pan_from is not None:
            shape = Qt.CursorShape.ClosedHandCursor
        else:
            shape = Qt.CursorShape.OpenHandCursor if self._space_held else Qt.CursorShape.CrossCursor
        self.viewport().setCursor(shape)
        self._brush_cursor.setVisible(self._shows_brush() and self.viewport().underMouse())


def _checker_brush() -> QBrush:
    tile = QPixmap(16, 16)
    tile.fill(QColor(200, 200, 200))
    painter = QPainter(tile)
    for x, y in ((0, 0), (8, 8)):
        painter.fillRect(x, y, 8, 8, QColor(150, 150, 150))
    painter.end()
    return QBrush(tile)
