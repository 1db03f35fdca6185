"""The Reference panel's side view: the reference image with its own mask tinted over it, painted with the canvas's
brush and eraser (tools.swept_stamp through canvas/reference.mask_stroke) into a copy that is shown live; the finished
stroke goes to the panel, which makes it one undo step."""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QKeyEvent, QMouseEvent, QResizeEvent
from PySide6.QtWidgets import QFrame, QGraphicsScene, QGraphicsView, QWidget

from desktop_app.canvas.overlays import BrushCursor
from desktop_app.canvas.reference import mask_stroke, stroke_base
from desktop_app.canvas.render import ImageItem, mask_edge, mask_pixels, raster_pixels
from desktop_app.canvas.tools import ToolGenerator, ToolState, finish
from desktop_app.document import ReferenceLayer

TINT = (255, 150, 40, 120)  # orange: not a mask role's colour, this mask belongs to the reference


class ReferenceView(QGraphicsView):
    """The reference image with its mask tinted over it; a left drag paints the mask, live, and `stroke_finished`
    hands over the new mask on release (the panel makes it an undo step). Esc drops the stroke."""

    stroke_finished = Signal(object, bool)  # the new mask (H x W uint8), whether it was erased

    def __init__(self, tool_state: ToolState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tool_state = tool_state
        self.layer: ReferenceLayer | None = None
        self.setScene(QGraphicsScene(self))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(Qt.GlobalColor.darkGray)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setMouseTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.viewport().setCursor(Qt.CursorShape.CrossCursor)
        self.image_item: ImageItem | None = None
        self.mask_item: ImageItem | None = None
        self.cursor_item = BrushCursor(1.0)
        self.cursor_item.setZValue(10)
        self.cursor_item.setVisible(False)
        self.scene().addItem(self.cursor_item)
        self._stroke: ToolGenerator | None = None
        self._after: np.ndarray | None = None  # the mask the running stroke paints into
        self._erase = False

    def set_reference(self, layer: ReferenceLayer | None) -> None:
        self.cancel_stroke()
        for item in (self.image_item, self.mask_item):
            if item is not None:
                self.scene().removeItem(item)
        self.image_item = self.mask_item = None
        self.layer = layer
        if layer is not None:
            height, width = layer.image.shape[:2]
            self.image_item, self.mask_item = ImageItem(width, height), ImageItem(width, height)
            self.image_item.write(0, 0, raster_pixels(layer.image))
            self.mask_item.setZValue(1)
            for item in (self.image_item, self.mask_item):
                self.scene().addItem(item)
            self.show_mask(layer.mask)
        self.fit()

    def show_mask(self, mask: np.ndarray | None) -> None:
        """The tint of `mask` over the image; none for no mask (the whole image is used)."""
        if self.mask_item is None:
            return
        if mask is None:
            self.mask_item.write(0, 0, np.zeros_like(self.mask_item.pixels))
        else:
            self._show_mask_rect(mask, 0, 0, mask.shape[1], mask.shape[0])

    def fit(self) -> None:
        if self.layer is not None:
            height, width = self.layer.image.shape[:2]
            self.setSceneRect(QRectF(0, 0, width, height))
            self.fitInView(self.sceneRect(), Qt.AspectRatioMode.KeepAspectRatio)
        self.cursor_item.set_view_scale(self.transform().m11())
        self.cursor_item.set_size(self.brush_size())

    def brush_size(self) -> float:
        """The canvas brush's size in reference pixels: the reference is shown at `scale` on the picture."""
        scale = self.layer.scale if self.layer is not None else 1.0
        return self.tool_state.size / scale

    def painted_mask(self) -> np.ndarray | None:
        """The mask of the stroke being painted (None between strokes)."""
        return self._after

    # --- strokes ----------------------------------------------------------------------------------------------

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if event.button() != Qt.MouseButton.LeftButton or self.layer is None or self._stroke is not None:
            event.accept()
            return
        self._erase = self.tool_state.tool == "eraser" or bool(event.modifiers() & Qt.KeyboardModifier.AltModifier)
        before = stroke_base(self.layer.mask, self.layer.image.shape[:2], self._erase)
        self._after = before.copy()
        size, hardness = self.brush_size(), self.tool_state.hardness
        self._stroke = mask_stroke(before, self._after, size, hardness, self._erase)
        self._send(event.position())
        event.accept()

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        self.cursor_item.setPos(self._to_scene(event.position()))
        self.cursor_item.setVisible(self.layer is not None)
        if self._stroke is not None:
            self._send(event.position())
        event.accept()

    def mouseReleaseEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if event.button() != Qt.MouseButton.LeftButton or self._stroke is None:
            event.accept()
            return
        self._send(event.position())
        stroke, after, self._stroke, self._after = self._stroke, self._after, None, None
        if finish(stroke):
            self.stroke_finished.emit(after, self._erase)
        elif self.layer is not None:
            self.show_mask(self.layer.mask)
        event.accept()

    def keyPressEvent(self, event: QKeyEvent) -> None:  # noqa: N802 - Qt's name
        if event.key() == Qt.Key.Key_Escape and self.cancel_stroke():
            event.accept()
            return
        super().keyPressEvent(event)

    def cancel_stroke(self) -> bool:
        if self._stroke is None:
            return False
        self._stroke.close()
        self._stroke = self._after = None
        if self.layer is not None:
            self.show_mask(self.layer.mask)
        return True

    def _send(self, position: QPointF) -> None:
        point = self._to_scene(position)
        rect = self._stroke.send((point.x(), point.y()))
        if rect is not None:
            self._show_mask_rect(self._after, *rect)

    def _show_mask_rect(self, mask: np.ndarray, x: int, y: int, width: int, height: int) -> None:
        # One pixel around the change: the outline drawn at the mask's edge can move by one pixel.
        right, bottom = min(mask.shape[1], x + width + 1), min(mask.shape[0], y + height + 1)
        x, y = max(0, x - 1), max(0, y - 1)
        width, height = right - x, bottom - y
        edge = mask_edge(mask, x, y, width, height)
        self.mask_item.write(x, y, mask_pixels(mask[y : y + height, x : x + width], TINT, edge))

    def _to_scene(self, position: QPointF) -> QPointF:
        inverse, _ = self.viewportTransform().inverted()
        return inverse.map(position + QPointF(0.5, 0.5))

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self.fit()

    def leaveEvent(self, event: object) -> None:  # noqa: N802 - Qt's name
        self.cursor_item.setVisible(False)
        super().leaveEvent(event)


__all__ = ["ReferenceView"]
