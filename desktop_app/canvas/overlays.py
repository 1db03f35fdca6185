"""Things drawn over the picture at a constant size on screen: drag arrows, the brush outline, a gesture outline.

They paint in device pixels (the painter's transform reset after mapping their scene points), so a handle dot is
as big at 1/32 zoom as at 32x. Their bounding boxes still live in the scene, so they are told the view's scale.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPainterPath, QPen, QPolygonF
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem, QStyleOptionGraphicsItem, QWidget

HANDLE_COLOUR = QColor(229, 57, 53)  # red: where a point is now (UX.md: handle red -> target blue)
TARGET_COLOUR = QColor(30, 136, 229)  # blue: where it should go
DOT_RADIUS = 7.0  # device pixels
ARROW_HEAD = 11.0
SHADOW = QColor(0, 0, 0, 170)  # a dark rim under light strokes keeps them visible on light and dark images

PointPair = tuple[tuple[float, float], tuple[float, float]]


class _ScreenSizedItem(QGraphicsItem):
    """Base: knows the view scale, so `margin` (device pixels) converts to scene units for the bounding box."""

    margin = DOT_RADIUS + 4.0

    def __init__(self) -> None:
        super().__init__()
        self._scale = 1.0

    def set_view_scale(self, scale: float) -> None:
        self.prepareGeometryChange()
        self._scale = max(scale, 1e-6)

    def _scene_margin(self) -> float:
        return self.margin / self._scale


class DragOverlay(_ScreenSizedItem):
    """One drag layer's point pairs: a white arrow from each red handle to its blue target."""

    def __init__(self, points: list[PointPair]) -> None:
        super().__init__()
        self._points = list(points)

    def set_points(self, points: list[PointPair]) -> None:
        self.prepareGeometryChange()
        self._points = list(points)

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        if not self._points:
            return QRectF()
        xs = [x for pair in self._points for x, _ in pair]
        ys = [y for pair in self._points for _, y in pair]
        m = self._scene_margin() + ARROW_HEAD / self._scale
        return QRectF(min(xs) - m, min(ys) - m, max(xs) - min(xs) + 2 * m, max(ys) - min(ys) + 2 * m)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        transform = painter.worldTransform()
        painter.save()
        painter.resetTransform()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for handle, target in self._points:
            start, end = transform.map(QPointF(*handle)), transform.map(QPointF(*target))
            _arrow(painter, start, end)
            _dot(painter, start, HANDLE_COLOUR)
            _dot(painter, end, TARGET_COLOUR)
        painter.restore()


class BrushCursor(_ScreenSizedItem):
    """The brush's footprint: a circle of its diameter in image pixels (a small cross when that is tiny)."""

    margin = 6.0

    def __init__(self, size: float) -> None:
        super().__init__()
        self._radius = size / 2.0
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    def set_size(self, size: float) -> None:
        self.prepareGeometryChange()
        self._radius = size / 2.0

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        r = self._radius + self._scene_margin()
        return QRectF(-r, -r, 2 * r, 2 * r)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        transform = painter.worldTransform()
        centre = transform.map(QPointF(0, 0))
        radius = self._radius * math.hypot(transform.m11(), transform.m12())
        painter.save()
        painter.resetTransform()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setBrush(Qt.BrushStyle.NoBrush)
        for pen in (QPen(SHADOW, 3.0), QPen(QColor(255, 255, 255), 1.0)):
            painter.setPen(pen)
            if radius >= 4.0:
                painter.drawEllipse(centre, radius, radius)
            else:  # too small to see as a circle: mark the spot instead
                painter.drawLine(centre - QPointF(4, 0), centre + QPointF(4, 0))
                painter.drawLine(centre - QPointF(0, 4), centre + QPointF(0, 4))
        painter.restore()


class GestureOutline(QGraphicsPathItem):
    """The rectangle or lasso being drawn: a dashed white line over a dark one ("marching ants" without march)."""

    def __init__(self) -> None:
        super().__init__()
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    def set_points(self, points: list[tuple[float, float]] | None) -> None:
        path = QPainterPath()
        if points:
            path.addPolygon(QPolygonF([QPointF(x, y) for x, y in points]))
            path.closeSubpath()
        self.setPath(path)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        dark, light = QPen(QColor(0, 0, 0, 200), 1.0), QPen(QColor(255, 255, 255), 1.0)
        light.setDashPattern([4.0, 4.0])
        for pen in (dark, light):
            pen.setCosmetic(True)  # one device pixel wide at any zoom
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(self.path())


def _arrow(painter: QPainter, start: QPointF, end: QPointF) -> None:
    """A white shaft stopping at the target dot, with a filled head touching it."""
    dx, dy = end.x() - start.x(), end.y() - start.y()
    length = math.hypot(dx, dy)
    if length < DOT_RADIUS * 2:
        return  # handle and target overlap on screen: the two dots say enough
    ux, uy = dx / length, dy / length
    tip = QPointF(end.x() - ux * DOT_RADIUS, end.y() - uy * DOT_RADIUS)
    base = QPointF(tip.x() - ux * ARROW_HEAD, tip.y() - uy * ARROW_HEAD)
    side = QPointF(-uy * ARROW_HEAD * 0.45, ux * ARROW_HEAD * 0.45)
    head = QPolygonF([tip, base + side, base - side])
    for colour, width in ((SHADOW, 5.0), (QColor(255, 255, 255), 2.5)):
        painter.setPen(QPen(colour, width, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap))
        painter.drawLine(start, base)
    painter.setPen(QPen(SHADOW, 1.5))
    painter.setBrush(QBrush(QColor(255, 255, 255)))
    painter.drawPolygon(head)


def _dot(painter: QPainter, centre: QPointF, colour: QColor) -> None:
    """A filled dot in a white ring in a dark rim: visible on a red object as well as on white paper."""
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QBrush(SHADOW))
    painter.drawEllipse(centre, DOT_RADIUS + 1.5, DOT_RADIUS + 1.5)
    painter.setPen(QPen(QColor(255, 255, 255), 2.0))
    painter.setBrush(QBrush(colour))
    painter.drawEllipse(centre, DOT_RADIUS - 1.0, DOT_RADIUS - 1.0)
