"""The staging pane: previews of a running edit and its result, shown beside the canvas, never over the user's
pixels (UX.md, complaint 4); a result waits here until the user accepts it as a new layer or discards it.

A result can be compared with the picture it was made from (a split the mouse or the slider moves; the Before
button or `\\` shows the whole picture as it was) and, when the method explains itself, its insight can be
shown instead: a word's cross-attention over the result, or matched points between before and after.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from PySide6.QtCore import QPoint, QRect, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QKeySequence,
    QMouseEvent,
    QPainter,
    QPaintEvent,
    QPen,
    QPixmap,
    QResizeEvent,
    QShortcut,
)
from PySide6.QtWidgets import (
    QComboBox,
    QFrame,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    QVBoxLayout,
    QWidget,
)

from backend.protocol import INSIGHT_KEY, check_insight
from desktop_app.canvas.render import to_qimage
from desktop_app.panels import insight as insight_views

logger = logging.getLogger(__name__)

SPLIT_STEPS = 1000  # slider resolution: finer than any pane is wide
BEFORE_SHORTCUT = "\\"


class ImageView(QFrame):
    """One image scaled to fit, keeping its aspect ratio; a placeholder text when there is none.

    With a `before` image it compares: left of the split the before picture, right of it the image, a thin line
    at the split that a mouse press or drag moves; `set_showing_before(True)` shows only the before picture.
    """

    split_moved = Signal(float)

    def __init__(self, placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._placeholder = placeholder
        self._array: np.ndarray | None = None
        self._pixmap: QPixmap | None = None
        self._before: QPixmap | None = None
        self._scaled: tuple[QPixmap | None, QPixmap | None] = (None, None)
        self.split = 0.5
        self.showing_before = False
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setMinimumSize(160, 160)

    def array(self) -> np.ndarray | None:
        """The image shown (a result, a preview or an insight picture)."""
        return self._array

    def set_array(self, array: np.ndarray | None) -> None:
        self._array = array
        self._pixmap = None if array is None else QPixmap.fromImage(to_qimage(array))
        self._rescale()

    def set_before(self, array: np.ndarray | None) -> None:
        """The picture to compare with (drawn at the image's size whatever its own); None ends comparing."""
        self._before = None if array is None else QPixmap.fromImage(to_qimage(array))
        self._rescale()

    @property
    def comparing(self) -> bool:
        return self._pixmap is not None and self._before is not None

    def set_split(self, fraction: float) -> None:
        self.split = min(1.0, max(0.0, float(fraction)))
        self.update()

    def set_showing_before(self, showing: bool) -> None:
        self.showing_before = showing
        self.update()

    def image_rect(self) -> QRect:
        """Where the image is drawn, in widget coordinates (empty when there is none)."""
        scaled = self._scaled[0]
        if scaled is None:
            return QRect()
        area = self.contentsRect()
        corner = area.topLeft() + QPoint((area.width() - scaled.width()) // 2, (area.height() - scaled.height()) // 2)
        return QRect(corner, scaled.size())

    def split_x(self) -> int:
        """The split's x in widget coordinates: columns left of it show the before picture."""
        rect = self.image_rect()
        return rect.left() + round(self.split * rect.width())

    # --- Qt events ---------------------------------------------------------------------------------------

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._rescale()

    def paintEvent(self, event: QPaintEvent) -> None:  # noqa: N802 - Qt's name
        super().paintEvent(event)  # the frame
        painter = QPainter(self)
        image, before = self._scaled
        if image is None:
            flags = Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap
            painter.drawText(self.contentsRect().adjusted(8, 8, -8, -8), flags, self._placeholder)
            return
        rect = self.image_rect()
        if before is not None and self.showing_before:
            painter.drawPixmap(rect.topLeft(), before)
            return
        painter.drawPixmap(rect.topLeft(), image)
        if before is not None:
            x = self.split_x()
            if x > rect.left():  # an empty source rectangle would mean the whole pixmap to Qt
                painter.drawPixmap(rect.topLeft(), before, QRect(0, 0, x - rect.left(), rect.height()))
            self._draw_split_line(painter, x, rect)

    @staticmethod
    def _draw_split_line(painter: QPainter, x: int, rect: QRect) -> None:
        # A light line with dark edges stays visible on any picture.
        painter.setPen(QPen(QColor(0, 0, 0, 140), 3))
        painter.drawLine(x, rect.top(), x, rect.bottom())
        painter.setPen(QPen(QColor(255, 255, 255), 1))
        painter.drawLine(x, rect.top(), x, rect.bottom())

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if not self._drag_split(event):
            super().mousePressEvent(event)

    def mouseMoveEvent(self, event: QMouseEvent) -> None:  # noqa: N802 - Qt's name
        if not self._drag_split(event):
            super().mouseMoveEvent(event)

    def _drag_split(self, event: QMouseEvent) -> bool:
        rect = self.image_rect()
        if not self.comparing or self.showing_before or not event.buttons() & Qt.MouseButton.LeftButton:
            return False
        self.set_split((event.position().x() - rect.left()) / max(1, rect.width()))
        self.split_moved.emit(self.split)
        return True

    def _rescale(self) -> None:
        if self._pixmap is None:
            self._scaled = (None, None)
        else:
            area = self.contentsRect().size()
            image = self._pixmap.scaled(area, Qt.AspectRatioMode.KeepAspectRatio, _filter(self._pixmap, area))
            before = None
            if self._before is not None:
                before = self._before.scaled(
                    image.size(), Qt.AspectRatioMode.IgnoreAspectRatio, _filter(self._before, image.size())
                )
            self._scaled = (image, before)
        self.setCursor(Qt.CursorShape.SplitHCursor if self.comparing else Qt.CursorShape.ArrowCursor)
        self.update()


def _filter(pixmap: QPixmap, size: QSize) -> Qt.TransformationMode:
    """Nearest neighbour when enlarging a lot (small previews stay crisp), smooth otherwise."""
    enlarging = pixmap.width() * 2 < size.width() and pixmap.height() * 2 < size.height()
    return Qt.TransformationMode.FastTransformation if enlarging else Qt.TransformationMode.SmoothTransformation


class StagingPanel(QWidget):
    """A preview (no metadata: nothing to accept) or a result (with its metadata) and the Accept/Discard buttons;
    a result can be compared with the picture before and its insight shown."""

    accept_requested = Signal()
    discard_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.metadata: dict[str, Any] | None = None
        self.insight: dict[str, Any] | None = None
        self._result: np.ndarray | None = None
        self._input: np.ndarray | None = None  # the picture before, as given: correspondences are in its pixels
        self._before: np.ndarray | None = None  # ... and at the result's size, for comparing
        self.label = QLabel("Staging")
        self.view = ImageView("Previews of a running edit and its result appear here.")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.label)
        layout.addWidget(self._build_insight_bar())
        layout.addWidget(self.view, 1)
        layout.addWidget(self._build_compare_bar())
        layout.addLayout(self._build_buttons())
        self.before_shortcut = QShortcut(QKeySequence(BEFORE_SHORTCUT), self)
        self.before_shortcut.setAutoRepeat(False)  # holding the key must not flicker
        self.before_shortcut.activated.connect(self._toggle_before)
        self.clear()

    def _build_insight_bar(self) -> QWidget:
        self.insight_combo = QComboBox()
        self.insight_combo.setToolTip("Why the result looks as it does: what the method attended to or matched")
        self.insight_combo.currentIndexChanged.connect(self._show_choice)
        self.insight_note = QLabel()
        self.insight_note.setWordWrap(True)
        self.insight_bar = QWidget()
        layout = QVBoxLayout(self.insight_bar)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Insight"))
        row.addWidget(self.insight_combo, 1)
        layout.addLayout(row)
        layout.addWidget(self.insight_note)
        return self.insight_bar

    def _build_compare_bar(self) -> QWidget:
        self.compare_slider = QSlider(Qt.Orientation.Horizontal)
        self.compare_slider.setRange(0, SPLIT_STEPS)
        self.compare_slider.setValue(round(self.view.split * SPLIT_STEPS))
        self.compare_slider.setToolTip("Left of the line: the picture before; right: the result (drag on it too)")
        self.compare_slider.valueChanged.connect(lambda value: self.view.set_split(value / SPLIT_STEPS))
        self.view.split_moved.connect(lambda split: self.compare_slider.setValue(round(split * SPLIT_STEPS)))
        self.before_button = QPushButton("Before")
        self.before_button.setCheckable(True)
        self.before_button.setToolTip(f"Show the picture the result was made from ({BEFORE_SHORTCUT})")
        self.before_button.toggled.connect(self.view.set_showing_before)
        self.compare_bar = QWidget()
        layout = QHBoxLayout(self.compare_bar)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel("Compare"))
        layout.addWidget(self.compare_slider, 1)
        layout.addWidget(self.before_button)
        return self.compare_bar

    def _build_buttons(self) -> QHBoxLayout:
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Add the result as a new layer above the picture (Ctrl+Z undoes)")
        self.discard_button = QPushButton("Discard")
        self.accept_button.clicked.connect(self.accept_requested)
        self.discard_button.clicked.connect(self.discard_requested)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.accept_button)
        buttons.addWidget(self.discard_button)
        return buttons

    def array(self) -> np.ndarray | None:
        """The staged preview or result itself: never a comparison or insight picture."""
        return self._result

    def show_preview(self, image: np.ndarray, step: int) -> None:
        self._show(image, None, f"Preview — step {step}")

    def show_result(
        self, image: np.ndarray, metadata: dict[str, Any], label: str, before: np.ndarray | None = None
    ) -> None:
        """Stage a result; `before` (the picture it was made from, any size) enables comparing."""
        self._show(image, metadata, label, before)

    def clear(self) -> None:
        self._show(None, None, "Staging")

    def _show(
        self, image: np.ndarray | None, metadata: dict[str, Any] | None, label: str, before: np.ndarray | None = None
    ) -> None:
        self._result, self.metadata = image, metadata
        self._input = None if image is None else before
        self._before = None if before is None or image is None else _fit(before, image)
        self.insight = _insight(metadata)
        self.label.setText(label)
        self.accept_button.setEnabled(metadata is not None)
        self.discard_button.setEnabled(metadata is not None)
        self.before_button.setChecked(False)
        self.compare_bar.setVisible(self._before is not None)
        self.insight_bar.setVisible(self.insight is not None)
        self.insight_note.setText((self.insight or {}).get("note", ""))
        self.insight_note.setVisible(bool(self.insight_note.text()))
        self.insight_combo.blockSignals(True)
        self.insight_combo.clear()
        for text, key in insight_views.choices(self.insight):
            self.insight_combo.addItem(text, key)
        self.insight_combo.blockSignals(False)
        self._show_choice()

    def _show_choice(self, _index: int = 0) -> None:
        """Show the result (comparable with the picture before) or the insight picture the combo names."""
        key = self.insight_combo.currentData() or insight_views.RESULT
        if key == insight_views.RESULT or self._result is None or self.insight is None:
            self.view.set_array(self._result)
            self.view.set_before(self._before)
            self.compare_bar.setEnabled(True)
            return
        self.before_button.setChecked(False)
        self.compare_bar.setEnabled(False)
        self.view.set_before(None)
        try:
            self.view.set_array(insight_views.render(key, self._result, self.insight, self._input))
        except (KeyError, IndexError, ValueError):
            logger.exception("cannot draw the insight view %r", key)
            self.view.set_array(self._result)

    def _toggle_before(self) -> None:
        if self.compare_bar.isVisible() and self.compare_bar.isEnabled():
            self.before_button.toggle()


def _fit(before: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The picture before at the result's size (for display only; the result is what gets accepted)."""
    before = insight_views.as_rgb(before)
    return np.ascontiguousarray(insight_views.resize(before, *image.shape[:2]))


def _insight(metadata: dict[str, Any] | None) -> dict[str, Any] | None:
    """The result's insight if it has any worth a selector; a malformed one is logged and ignored."""
    raw = (metadata or {}).get(INSIGHT_KEY)
    if raw is None:
        return None
    try:
        checked = check_insight(raw)
    except ValueError:
        logger.exception("the result's insight does not follow the contract; not shown")
        return None
    return checked if len(insight_views.choices(checked)) > 1 or checked.get("note") else None


__all__ = ["ImageView", "StagingPanel"]
