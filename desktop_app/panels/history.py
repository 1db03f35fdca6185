"""The History panel: the undo stack ("Edits") above the list of results ("Results", document.history).

A result can hand its recipe back to the method panel ("Reuse parameters") or bring its layer forward
("Show layer"), because "reuse the parameters of a past result" is one of the things users ask for most (UX.md).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QToolButton,
    QUndoView,
    QVBoxLayout,
    QWidget,
)

from desktop_app.document import Document, DocumentEvent, HistoryEntry
from desktop_app.panels.thumbnails import THUMBNAIL_SIZE, layer_icon

ENTRY_ROLE = Qt.ItemDataRole.UserRole + 1  # the entry's position in document.history


def entry_details(entry: HistoryEntry) -> str:
    """'method · seed 7 · 14:02:11 · 3.2 s' from whatever the recipe and metadata hold."""
    recipe, meta = entry.recipe, entry.metadata
    parts = [str(meta.get("method_title") or recipe.get("method") or meta.get("method") or "?")]
    seed = recipe.get("seed", meta.get("seed"))
    if seed is not None:
        parts.append(f"seed {seed}")
    when = meta.get("time", meta.get("created"))
    if isinstance(when, (int, float)):
        parts.append(dt.datetime.fromtimestamp(when).strftime("%H:%M:%S"))
    elif when:
        parts.append(str(when))
    if isinstance(meta.get("seconds"), (int, float)):
        parts.append(f"{meta['seconds']:.1f} s")
    return " · ".join(parts)


class HistoryPanel(QWidget):
    """Bind with `set_document(document, undo_stack)`; `reuse_requested(recipe)` goes to the method panel."""

    reuse_requested = Signal(dict)
    message = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document: Document | None = None
        self.undo_view = QUndoView(self)
        self.undo_view.setEmptyLabel("Opened")
        self.results = QListWidget(self)
        self.results.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        self.results.currentRowChanged.connect(self._refresh_actions)
        self.results.itemDoubleClicked.connect(self.show_selected_layer)
        self.reuse_action = QAction("Reuse parameters", self, toolTip="Load this result's recipe into the method")
        self.reuse_action.triggered.connect(self.reuse_selected)
        self.show_layer_action = QAction("Show layer", self, toolTip="Make this result's layer the active one")
        self.show_layer_action.triggered.connect(self.show_selected_layer)
        self.results.setContextMenuPolicy(Qt.ContextMenuPolicy.ActionsContextMenu)
        self.results.addActions([self.reuse_action, self.show_layer_action])
        splitter = QSplitter(Qt.Orientation.Vertical, self)
        splitter.addWidget(_titled("Edits", self.undo_view))
        splitter.addWidget(_titled("Results", self.results, self._buttons()))
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(splitter)
        self._refresh_actions()

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        for action in (self.reuse_action, self.show_layer_action):
            button = QToolButton(self)
            button.setDefaultAction(action)
            row.addWidget(button)
        row.addStretch(1)
        return row

    # --- binding ----------------------------------------------------------------------------------------

    def set_document(self, document: Document | None, undo_stack: QUndoStack | None) -> None:
        if self.document is not None:
            for name, callback in self._handlers().items():
                getattr(self.document.events, name).disconnect(callback)
        self.document = document
        self.undo_view.setStack(undo_stack)
        if document is not None:
            for name, callback in self._handlers().items():
                getattr(document.events, name).connect(callback)
        self._rebuild()

    def _handlers(self) -> dict[str, Any]:
        # Layers coming and going change whether "Show layer" can work and which rows have a thumbnail.
        return {"history_changed": self._on_history, "layer_added": self._rebuild, "layer_removed": self._rebuild}

    def _on_history(self, _event: DocumentEvent) -> None:
        self._rebuild()
        self.results.setCurrentRow(0)  # the newest result, so its actions are one click away

    # --- actions ------------------------------------------------------------------------------------------

    def selected_entry(self) -> HistoryEntry | None:
        item = self.results.currentItem()
        if item is None or self.document is None:
            return None
        return self.document.history[item.data(ENTRY_ROLE)]

    def reuse_selected(self) -> None:
        entry = self.selected_entry()
        if entry is not None:
            self.reuse_requested.emit(dict(entry.recipe))

    def show_selected_layer(self) -> None:
        entry = self.selected_entry()
        if entry is None or self.document is None:
            return
        if self._layer_exists(entry):
            self.document.set_active(entry.layer_id)
        else:
            self.message.emit(f"The layer of '{entry.title}' was deleted; undo the deletion to get it back.")

    def _layer_exists(self, entry: HistoryEntry) -> bool:
        return self.document is not None and any(layer.id == entry.layer_id for layer in self.document.layers)

    # --- document -> widgets ------------------------------------------------------------------------------

    def _rebuild(self, _event: DocumentEvent | None = None) -> None:
        """Rebuild the (short) results list, newest first, keeping the selected entry selected."""
        selected = self.results.currentItem().data(ENTRY_ROLE) if self.results.currentItem() else None
        self.results.clear()
        history = self.document.history if self.document is not None else []
        for position in reversed(range(len(history))):
            entry = history[position]
            item = QListWidgetItem(f"{entry.title}\n{entry_details(entry)}")
            item.setData(ENTRY_ROLE, position)
            if self._layer_exists(entry):
                assert self.document is not None
                item.setIcon(layer_icon(self.document.layer(entry.layer_id), self.document.size))
            else:
                item.setToolTip("Its layer was deleted")
            self.results.addItem(item)
            if position == selected:
                self.results.setCurrentItem(item)
        self._refresh_actions()

    def _refresh_actions(self, _row: int = -1) -> None:
        entry = self.selected_entry()
        self.reuse_action.setEnabled(entry is not None and bool(entry.recipe))
        self.show_layer_action.setEnabled(entry is not None and self._layer_exists(entry))


def _titled(title: str, widget: QWidget, footer: QHBoxLayout | None = None) -> QWidget:
    box = QWidget()
    layout = QVBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    label = QLabel(f"<b>{title}</b>")
    layout.addWidget(label)
    layout.addWidget(widget, 1)
    if footer is not None:
        layout.addLayout(footer)
    return box
