"""The staging pane: previews of a running edit and its result, shown beside the canvas, never over the user's
pixels (UX.md, complaint 4); a result waits here until the user accepts it as a new layer or discards it."""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QPixmap, QResizeEvent
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from desktop_app.canvas.render import to_qimage


class ImageView(QLabel):
    """Shows one image scaled to fit, keeping its aspect ratio; a placeholder text when there is none."""

    def __init__(self, placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(placeholder, parent)
        self._placeholder = placeholder
        self._array: np.ndarray | None = None
        self._pixmap: QPixmap | None = None
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.setMinimumSize(160, 160)
        self.setWordWrap(True)

    def array(self) -> np.ndarray | None:
        return self._array

    def set_array(self, array: np.ndarray | None) -> None:
        self._array = array
        self._pixmap = None if array is None else QPixmap.fromImage(to_qimage(array))
        self._rescale()

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        if self._pixmap is None:
            self.clear()
            self.setText(self._placeholder)
            return
        size = self.contentsRect().size()
        self.setPixmap(self._pixmap.scaled(size, Qt.AspectRatioMode.KeepAspectRatio, _filter(self._pixmap, size)))


def _filter(pixmap: QPixmap, size: QSize) -> Qt.TransformationMode:
    """Nearest neighbour when enlarging a lot (small previews stay crisp), smooth otherwise."""
    enlarging = pixmap.width() * 2 < size.width() and pixmap.height() * 2 < size.height()
    return Qt.TransformationMode.FastTransformation if enlarging else Qt.TransformationMode.SmoothTransformation


class StagingPanel(QWidget):
    """A preview (no metadata: nothing to accept) or a result (with its metadata) and the Accept/Discard buttons."""

    accept_requested = Signal()
    discard_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.metadata: dict[str, Any] | None = None
        self.label = QLabel("Staging")
        self.view = ImageView("Previews of a running edit and its result appear here.")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Add the result as a new layer above the picture (Ctrl+Z undoes)")
        self.discard_button = QPushButton("Discard")
        self.accept_button.clicked.connect(self.accept_requested)
        self.discard_button.clicked.connect(self.discard_requested)
        buttons = QHBoxLayout()
        buttons.setContentsMargins(0, 0, 0, 0)
        buttons.addWidget(self.accept_button)
        buttons.addWidget(self.discard_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.label)
        layout.addWidget(self.view, 1)
        layout.addLayout(buttons)
        self.clear()

    def array(self) -> np.ndarray | None:
        return self.view.array()

    def show_preview(self, image: np.ndarray, step: int) -> None:
        self._show(image, None, f"Preview — step {step}")

    def show_result(self, image: np.ndarray, metadata: dict[str, Any], label: str) -> None:
        self._show(image, metadata, label)

    def clear(self) -> None:
        self._show(None, None, "Staging")

    def _show(self, image: np.ndarray | None, metadata: dict[str, Any] | None, label: str) -> None:
        self.view.set_array(image)
        self.metadata = metadata
        self.label.setText(label)
        self.accept_button.setEnabled(metadata is not None)
        self.discard_button.setEnabled(metadata is not None)


__all__ = ["ImageView", "StagingPanel"]
