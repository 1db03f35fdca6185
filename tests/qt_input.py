"""Synthetic Qt input for canvas tests: events a real mouse wheel would send."""

from __future__ import annotations

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QGraphicsView


def wheel(view: QGraphicsView, position: QPoint, notches: float) -> None:
    """`notches` wheel clicks (120 units each) at `position` in viewport coordinates."""
    event = QWheelEvent(
        QPointF(position),
        QPointF(view.viewport().mapToGlobal(position)),
        QPoint(0, 0),
        QPoint(0, round(120 * notches)),
        Qt.MouseButton.NoButton,
        Qt.KeyboardModifier.NoModifier,
        Qt.ScrollPhase.NoScrollPhase,
        False,
    )
    QApplication.sendEvent(view.viewport(), event)


def paint(window, points: list[tuple[float, float]], size: int = 6) -> None:
    """A brush stroke on the window's canvas through its viewport, as a mouse would make it."""
    canvas = window.canvas
    window.tool_state.tool, window.tool_state.size, window.tool_state.hardness = "brush", size, 1.0
    viewport = canvas.viewport()

    def at(x: float, y: float) -> QPoint:
        return canvas.mapFromScene(QPointF(x, y))

    left, none = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    QTest.mousePress(viewport, left, none, at(*points[0]))
    for point in points[1:]:
        QTest.mouseMove(viewport, at(*point))
    QTest.mouseRelease(viewport, left, none, at(*points[-1]))
