"""Things drawn over the picture at a constant size on screen: drag arrows, the brush outline, a gesture outline,
segment prompts, region moves, the frame of a reference image being placed.

They paint in device pixels (the painter's transform reset after mapping their scene points), so a handle dot is
as big at 1/32 zoom as at 32x. Their bounding boxes still live in the scene, so they are told the view's scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import (
    QBitmap,
    QBrush,
    QColor,
    QImage,
    QPainter,
    QPainterPath,
    QPen,
    QPolygonF,
    QRegion,
    QTransform,
)
from PySide6.QtWidgets import QGraphicsItem, QGraphicsPathItem, QStyleOptionGraphicsItem, QWidget

from desktop_app.document import RegionMove

HANDLE_COLOUR = QColor(229, 57, 53)  # red: where a point is now (UX.md: handle red -> target blue)
TARGET_COLOUR = QColor(30, 136, 229)  # blue: where it should go
INCLUDE_COLOUR = QColor(67, 160, 71)  # green: segment include point
EXCLUDE_COLOUR = QColor(229, 57, 53)  # red: segment exclude point
DOT_RADIUS = 7.0  # device pixels
ARROW_HEAD = 11.0
SHADOW = QColor(0, 0, 0, 170)  # a dark rim under light strokes keeps them visible on light and dark images

Point = tuple[float, float]
PointPair = tuple[Point, Point]
HANDLE_SIZE = 8.0  # a region's corner handles, device pixels


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
    """Point pairs: a white arrow from each red handle to its blue target; a pending handle (its target not yet
    clicked) is a red dot alone."""

    def __init__(self, points: list[PointPair], pending: Point | None = None) -> None:
        super().__init__()
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self._points = list(points)
        self._pending = pending

    def set_points(self, points: list[PointPair]) -> None:
        self.prepareGeometryChange()
        self._points = list(points)

    def set_pending(self, pending: Point | None) -> None:
        self.prepareGeometryChange()
        self._pending = pending

    def points(self) -> list[PointPair]:
        return list(self._points)

    def pending(self) -> Point | None:
        return self._pending

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        spots = [spot for pair in self._points for spot in pair] + ([self._pending] if self._pending else [])
        if not spots:
            return QRectF()
        xs, ys = [x for x, _ in spots], [y for _, y in spots]
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
        if self._pending is not None:
            _dot(painter, transform.map(QPointF(*self._pending)), HANDLE_COLOUR)
        painter.restore()


class PromptOverlay(_ScreenSizedItem):
    """Click-to-segment prompts: green include dots (+), red exclude dots (-) and the box, dashed."""

    def __init__(self) -> None:
        super().__init__()
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self._include: list[Point] = []
        self._exclude: list[Point] = []
        self._box: tuple[float, float, float, float] | None = None

    def set_prompts(
        self, include: list[Point], exclude: list[Point], box: tuple[float, float, float, float] | None
    ) -> None:
        self.prepareGeometryChange()
        self._include, self._exclude, self._box = list(include), list(exclude), box

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        spots = self._include + self._exclude + ([self._box[:2], self._box[2:]] if self._box else [])
        if not spots:
            return QRectF()
        xs, ys = [x for x, _ in spots], [y for _, y in spots]
        m = self._scene_margin()
        return QRectF(min(xs) - m, min(ys) - m, max(xs) - min(xs) + 2 * m, max(ys) - min(ys) + 2 * m)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        transform = painter.worldTransform()
        painter.save()
        painter.resetTransform()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        if self._box is not None:
            x0, y0, x1, y1 = self._box
            _dashed(painter, _rect_path(QRectF(transform.map(QPointF(x0, y0)), transform.map(QPointF(x1, y1)))))
        for points, colour, plus in ((self._include, INCLUDE_COLOUR, True), (self._exclude, EXCLUDE_COLOUR, False)):
            for point in points:
                centre = transform.map(QPointF(*point))
                _dot(painter, centre, colour)
                _sign(painter, centre, plus)
        painter.restore()


@dataclass
class RegionShape:
    """One region move to draw: the mask's outline (scene path), its box and centre, and the move."""

    outline: QPainterPath
    box: tuple[float, float, float, float]
    move: RegionMove
    # The mask's tint: a faint fill of it shows where the region goes.
    colour: QColor = field(default_factory=lambda: QColor(255, 255, 255))

    def transform(self) -> QTransform:
        """Scale about the box's centre, then shift by (dx, dy): the same map as drag.move_point."""
        cx, cy = (self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2
        s = self.move.scale
        return QTransform(s, 0.0, 0.0, s, cx + self.move.dx - s * cx, cy + self.move.dy - s * cy)


class RegionOverlay(_ScreenSizedItem):
    """Region moves: each mask's outline where it will go (scaled, moved) and a dashed arrow from the old centre
    to the new one; the region being edited also gets its box and four corner handles."""

    margin = DOT_RADIUS + ARROW_HEAD

    def __init__(self) -> None:
        super().__init__()
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self._shapes: list[RegionShape] = []
        self._handles_for: str | None = None
        self._bounds = QRectF()

    def set_regions(self, shapes: list[RegionShape], handles_for: str | None = None) -> None:
        self.prepareGeometryChange()
        self._shapes, self._handles_for = list(shapes), handles_for
        bounds = QRectF()
        for shape in shapes:
            bounds = bounds.united(QRectF(QPointF(*shape.box[:2]), QPointF(*shape.box[2:])))
            bounds = bounds.united(shape.transform().mapRect(shape.outline.boundingRect()))
        self._bounds = bounds

    def shapes(self) -> list[RegionShape]:
        return list(self._shapes)

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        if self._bounds.isNull():
            return QRectF()
        m = self._scene_margin()
        return self._bounds.adjusted(-m, -m, m, m)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        world = painter.worldTransform()
        painter.save()
        painter.resetTransform()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        for shape in self._shapes:
            to_screen = shape.transform() * world
            moved_outline = to_screen.map(shape.outline)
            fill = QColor(shape.colour)
            fill.setAlpha(70)
            painter.fillPath(moved_outline, fill)
            _dashed(painter, moved_outline)
            box = QRectF(QPointF(*shape.box[:2]), QPointF(*shape.box[2:]))
            _arrow(painter, world.map(box.center()), to_screen.map(box.center()), dashed=True)
            if shape.move.mask_layer_id == self._handles_for:
                moved = to_screen.mapRect(box)
                _dashed(painter, _rect_path(moved))
                for corner in (moved.topLeft(), moved.topRight(), moved.bottomRight(), moved.bottomLeft()):
                    _square(painter, corner)
        painter.restore()


class ReferenceFrame(_ScreenSizedItem):
    """The box of the reference image the move tool places, with corner handles: drag inside to move, a corner to
    scale."""

    margin = HANDLE_SIZE

    def __init__(self) -> None:
        super().__init__()
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self._box = QRectF()

    def set_box(self, box: tuple[float, float, float, float] | None) -> None:
        self.prepareGeometryChange()
        self._box = QRectF() if box is None else QRectF(QPointF(*box[:2]), QPointF(*box[2:]))

    def box(self) -> tuple[float, float, float, float] | None:
        return None if self._box.isNull() else self._box.getCoords()

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        if self._box.isNull():
            return QRectF()
        m = self._scene_margin()
        return self._box.adjusted(-m, -m, m, m)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        if self._box.isNull():
            return
        shown = painter.worldTransform().mapRect(self._box)
        painter.save()
        painter.resetTransform()
        _dashed(painter, _rect_path(shown))
        for corner in (shown.topLeft(), shown.topRight(), shown.bottomRight(), shown.bottomLeft()):
            _square(painter, corner)
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
    """The rectangle or lasso being drawn: a dashed white line over a dark one ("marching ants" without march).
    `bold` widens both (a segment proposal's outline must hold its own over the busy picture it outlines)."""

    def __init__(self, bold: bool = False) -> None:
        super().__init__()
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self._widths = (3.0, 1.5) if bold else (1.0, 1.0)

    def set_points(self, points: list[tuple[float, float]] | None) -> None:
        path = QPainterPath()
        if points:
            path.addPolygon(QPolygonF([QPointF(x, y) for x, y in points]))
            path.closeSubpath()
        self.setPath(path)

    def set_mask(self, mask: np.ndarray | None) -> None:
        """Outline a mask (a segment proposal) instead of a polygon."""
        self.setPath(QPainterPath() if mask is None else mask_outline(mask))

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        dark, light = QPen(QColor(0, 0, 0, 200), self._widths[0]), QPen(QColor(255, 255, 255), self._widths[1])
        light.setDashPattern([4.0 / self._widths[1], 4.0 / self._widths[1]])  # dashes of 4 device pixels
        for pen in (dark, light):
            pen.setCosmetic(True)  # one device pixel wide at any zoom
            painter.setPen(pen)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.drawPath(self.path())


def mask_outline(mask: np.ndarray) -> QPainterPath:
    """The outline of the mask's inside (>= 128) along pixel edges, as closed polygons in image coordinates.
    QRegion traces the bitmap in C++ (a few ms for a smooth 2048x2048 mask; 0.15 s for a ragged one)."""
    bits = np.packbits(mask >= 128, axis=1, bitorder="little")
    height, width = mask.shape
    image = QImage(bits.data, width, height, bits.shape[1], QImage.Format.Format_MonoLSB)
    image.setColorTable([0xFFFFFFFF, 0xFF000000])  # bit 1 -> colour1, which a QBitmap's region includes
    path = QPainterPath()
    path.addRegion(QRegion(QBitmap.fromImage(image)))
    return path.simplified()  # the union of row runs -> outlines, so dashes run along the edge


def _arrow(painter: QPainter, start: QPointF, end: QPointF, dashed: bool = False) -> None:
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
        pen = QPen(colour, width, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap)
        if dashed:
            pen.setCapStyle(Qt.PenCapStyle.FlatCap)
            pen.setDashPattern([3.0, 2.0])  # in pen widths: the dark dash under the white one rims it
        painter.setPen(pen)
        painter.drawLine(start, base)
    painter.setPen(QPen(SHADOW, 1.5))
    painter.setBrush(QBrush(QColor(255, 255, 255)))
    painter.drawPolygon(head)


def _rect_path(rect: QRectF) -> QPainterPath:
    path = QPainterPath()
    path.addRect(rect)
    return path


def _dashed(painter: QPainter, path: QPainterPath) -> None:
    """A white dashed line over a dark solid one, in device pixels: visible on any picture."""
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.setPen(QPen(SHADOW, 3.0))
    painter.drawPath(path)
    light = QPen(QColor(255, 255, 255), 1.5)
    light.setDashPattern([4.0, 3.0])
    painter.setPen(light)
    painter.drawPath(path)


def _sign(painter: QPainter, centre: QPointF, plus: bool) -> None:
    """A white + (include) or - (exclude) on a prompt dot: colour alone fails the colour-blind."""
    reach = DOT_RADIUS * 0.5
    painter.setPen(QPen(QColor(255, 255, 255), 2.0, Qt.PenStyle.SolidLine, Qt.PenCapStyle.FlatCap))
    painter.drawLine(centre - QPointF(reach, 0), centre + QPointF(reach, 0))
    if plus:
        painter.drawLine(centre - QPointF(0, reach), centre + QPointF(0, reach))


def _square(painter: QPainter, centre: QPointF) -> None:
    """A region's corner handle: drag it to scale the region."""
    half = HANDLE_SIZE / 2
    painter.setPen(QPen(SHADOW, 1.5))
    painter.setBrush(QBrush(QColor(255, 255, 255)))
    painter.drawRect(QRectF(centre.x() - half, centre.y() - half, HANDLE_SIZE, HANDLE_SIZE))


def _dot(painter: QPainter, centre: QPointF, colour: QColor) -> None:
    """A filled dot in a white ring in a dark rim: visible on a red object as well as on white paper."""
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QBrush(SHADOW))
    painter.drawEllipse(centre, DOT_RADIUS + 1.5, DOT_RADIUS + 1.5)
    painter.setPen(QPen(QColor(255, 255, 255), 2.0))
    painter.setBrush(QBrush(colour))
    painter.drawEllipse(centre, DOT_RADIUS - 1.0, DOT_RADIUS - 1.0)
