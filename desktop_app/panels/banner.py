"""A non-blocking message strip above the canvas: backend errors with their hint, file problems, "the backend
stopped — restarting". It never takes focus or stops the user; the × closes it, a new message replaces the old."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QVBoxLayout, QWidget

STYLES = {
    "error": "background: #5c2326; color: #ffe9e9; border: 1px solid #a4474c;",
    "warning": "background: #5a4a1c; color: #fff4d6; border: 1px solid #a88a33;",
    "info": "background: #1f3b57; color: #e6f1ff; border: 1px solid #3f6d99;",
}


class Banner(QFrame):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        self.level = "error"
        self.title_label = QLabel()
        self.title_label.setStyleSheet("font-weight: bold; border: none; background: transparent")
        self.message_label = QLabel(wordWrap=True, textInteractionFlags=Qt.TextInteractionFlag.TextSelectableByMouse)
        self.hint_label = QLabel(wordWrap=True)
        for label in (self.message_label, self.hint_label):
            label.setStyleSheet("border: none; background: transparent")
        self.close_button = QToolButton(text="×", toolTip="Dismiss", autoRaise=True)
        self.close_button.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        self.close_button.clicked.connect(self.hide)
        texts = QVBoxLayout()
        texts.setContentsMargins(0, 0, 0, 0)
        texts.setSpacing(2)
        texts.addWidget(self.title_label)
        texts.addWidget(self.message_label)
        texts.addWidget(self.hint_label)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 6, 6, 6)
        layout.addLayout(texts, 1)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, title: str, message: str, hint: str = "", level: str = "error") -> None:
        self.level = level if level in STYLES else "error"
        self.setStyleSheet(f"QFrame#banner {{ {STYLES[self.level]} border-radius: 4px; }}")
        self.title_label.setText(title)
        self.message_label.setText(message)
        self.hint_label.setText(hint)
        self.hint_label.setVisible(bool(hint))
        self.show()

    def text(self) -> str:
        return self.message_label.text()

    def hint(self) -> str:
        return self.hint_label.text()

    def title(self) -> str:
        return self.title_label.text()


__all__ = ["Banner"]
