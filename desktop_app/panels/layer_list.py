"""The layers list: a Qt item model over a Document (top layer first) and the delegate that draws its rows.

The model reads the document and changes it only by pushing undo commands; it learns about every change —
its own, undo/redo, the canvas's — from the document's events, so the list can never drift from the document.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from PySide6.QtCore import (
    QAbstractListModel,
    QByteArray,
    QMimeData,
    QModelIndex,
    QPersistentModelIndex,
    QRect,
    QSize,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QFont, QIcon, QPainter, QPalette, QUndoStack
from PySide6.QtWidgets import QApplication, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QWidget

from desktop_app.document import Document, DocumentEvent, Layer
from desktop_app.document.layers import DragLayer, MaskLayer, ObjectLayer, RasterLayer, ReferenceLayer
from desktop_app.history import MoveLayer, SetProperty
from desktop_app.panels.thumbnails import THUMBNAIL_SIZE, layer_icon

LAYER_ID_ROLE = Qt.ItemDataRole.UserRole + 1
BADGE_ROLE = Qt.ItemDataRole.UserRole + 2
MIME_TYPE = "application/x-atelier-layer-id"
# Painting emits pixels_changed per dab; refreshing the thumbnail at most this often keeps strokes smooth.
THUMBNAIL_DELAY_MS = 150
_ICON_ATTRIBUTES = {"role", "points", "regions", "mask"}  # layer_changed attributes a thumbnail shows

AnyIndex = QModelIndex | QPersistentModelIndex


def layer_badge(layer: Layer) -> str:
    """The second line of a row: what kind of layer this is, in the user's words."""
    if isinstance(layer, MaskLayer):
        badge = f"mask · {layer.role}"
    elif isinstance(layer, ObjectLayer):
        prompt = f"'{layer.prompt}'" if layer.prompt else "(no prompt)"
        badge = f"object: '{layer.source}' → {prompt}" if layer.source else f"object: {prompt}"
    elif isinstance(layer, DragLayer):
        count = len(layer.points)
        badge = f"drag · {count} point{'s' if count != 1 else ''}"
        badge += f" · {len(layer.regions)} region move(s)" if layer.regions else ""
    elif isinstance(layer, ReferenceLayer):
        badge = f"reference · {layer.image.shape[1]}×{layer.image.shape[0]}"
    elif isinstance(layer, RasterLayer) and layer.recipe:
        badge = f"result · {layer.recipe.get('method', '?')}"
    else:
        badge = layer.kind
    return badge if layer.opacity >= 1.0 else f"{badge} · {round(layer.opacity * 100)}%"


def _is_checked(value: Any) -> bool:
    # The check-box delegate hands over an int in Qt 6; code may hand over the enum.
    return value in (Qt.CheckState.Checked, Qt.CheckState.Checked.value)


class LayerListModel(QAbstractListModel):
    """Rows are the document's layers, top first (document.layers is bottom -> top)."""

    refused = Signal(str)  # the document refused a change (its ValueError's message)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document: Document | None = None
        self.undo_stack: QUndoStack | None = None
        self.icon_size = THUMBNAIL_SIZE
        # Our own copy of the order: an event arrives after the document changed, but begin*Rows must describe
        # the list as the view last saw it.
        self._ids: list[str] = []
        self._icons: dict[str, QIcon] = {}
        self._timers: dict[str, QTimer] = {}
        self.syncing = False  # True while applying a document event (views must not write back meanwhile)

    # --- binding ----------------------------------------------------------------------------------------

    def set_document(self, document: Document | None, undo_stack: QUndoStack | None) -> None:
        self.beginResetModel()
        if self.document is not None:
            for name, callback in self._handlers().items():
                getattr(self.document.events, name).disconnect(callback)
        for timer in self._timers.values():
            timer.stop()
        self.document, self.undo_stack = document, undo_stack
        self._ids = [layer.id for layer in reversed(document.layers)] if document else []
        self._icons.clear()
        if document is not None:
            for name, callback in self._handlers().items():
                getattr(document.events, name).connect(callback)
        self.endResetModel()

    def _handlers(self) -> dict[str, Any]:
        return {
            "layer_added": self._on_added,
            "layer_removed": self._on_removed,
            "layer_moved": self._on_moved,
            "layer_changed": self._on_changed,
            "pixels_changed": self._on_pixels,
        }

    def layer_at(self, row: int) -> Layer:
        assert self.document is not None
        return self.document.layer(self._ids[row])

    def row_of(self, layer_id: str | None) -> int | None:
        return self._ids.index(layer_id) if layer_id in self._ids else None

    # --- reading ----------------------------------------------------------------------------------------

    def rowCount(self, parent: AnyIndex = QModelIndex()) -> int:  # noqa: B008, N802 - Qt's signature
        return 0 if parent.isValid() else len(self._ids)

    def data(self, index: AnyIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or self.document is None:
            return None
        layer = self.layer_at(index.row())
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return layer.name
        if role == Qt.ItemDataRole.CheckStateRole:
            return Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked
        if role == Qt.ItemDataRole.DecorationRole:
            return self._icon(layer)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{layer.name} — {layer_badge(layer)}\nDouble-click to rename; the box shows or hides it."
        if role == BADGE_ROLE:
            return layer_badge(layer)
        if role == LAYER_ID_ROLE:
            return layer.id
        return None

    def flags(self, index: AnyIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.ItemIsDropEnabled  # drops land between rows, never onto a layer
        return (
            Qt.ItemFlag.ItemIsEnabled
            | Qt.ItemFlag.ItemIsSelectable
            | Qt.ItemFlag.ItemIsEditable
            | Qt.ItemFlag.ItemIsUserCheckable
            | Qt.ItemFlag.ItemIsDragEnabled
        )

    def _icon(self, layer: Layer) -> QIcon:
        icon = self._icons.get(layer.id)
        if icon is None:
            assert self.document is not None
            icon = self._icons[layer.id] = layer_icon(layer, self.document.size, self.icon_size)
        return icon

    # --- writing: always through the undo stack ----------------------------------------------------------

    def setData(self, index: AnyIndex, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:  # noqa: N802
        if not index.isValid():
            return False
        layer = self.layer_at(index.row())
        if role == Qt.ItemDataRole.CheckStateRole:
            return self.push_property(layer.id, "visible", _is_checked(value))
        if role == Qt.ItemDataRole.EditRole:
            pushed = self.push_property(layer.id, "name", value)
            if not pushed:  # the editor showed the refused text; make the view read the kept name back
                self.dataChanged.emit(index, index)
            return pushed
        return False

    def push_property(self, layer_id: str, name: str, value: Any, merge_key: object = None) -> bool:
        """Push SetProperty unless the document refuses the value (then emit `refused`) or nothing changes."""
        if self.document is None or self.undo_stack is None:
            return False
        text = _command_text(self.document, layer_id, name)
        try:
            command = SetProperty(self.document, layer_id, name, value, text, merge_key)
        except ValueError as error:
            self.refused.emit(str(error))
            return False
        if not _same(command.value, command.old):
            self.undo_stack.push(command)
        return True

    def move_to_row(self, layer_id: str, destination: int) -> bool:
        """Move a layer so it lands before row `destination` (rows as they are now): one MoveLayer."""
        if self.document is None or self.undo_stack is None or layer_id not in self._ids:
            return False
        source = self._ids.index(layer_id)
        final_row = destination - 1 if destination > source else destination
        index = len(self._ids) - 1 - max(0, min(final_row, len(self._ids) - 1))
        if index != self.document.index_of(layer_id):
            self.undo_stack.push(MoveLayer(self.document, layer_id, index))
        return True

    # Drag and drop. QListView moves rows of its own with moveRow(); other drops come as mime data.

    def moveRows(self, source_parent: AnyIndex, source_row: int, count: int, parent: AnyIndex, child: int) -> bool:  # noqa: N802
        if count != 1 or source_parent.isValid() or parent.isValid() or not 0 <= source_row < len(self._ids):
            return False
        return self.move_to_row(self._ids[source_row], child)

    def supportedDropActions(self) -> Qt.DropAction:  # noqa: N802
        return Qt.DropAction.MoveAction

    def supportedDragActions(self) -> Qt.DropAction:  # noqa: N802
        return Qt.DropAction.MoveAction

    def mimeTypes(self) -> list[str]:  # noqa: N802
        return [MIME_TYPE]

    def mimeData(self, indexes: Sequence[QModelIndex]) -> QMimeData:  # noqa: N802
        mime = QMimeData()
        if indexes:  # one layer at a time: the list is single-selection
            mime.setData(MIME_TYPE, QByteArray(self._ids[indexes[0].row()].encode()))
        return mime

    def dropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int, parent: AnyIndex) -> bool:  # noqa: N802
        if action != Qt.DropAction.MoveAction or not data.hasFormat(MIME_TYPE):
            return False
        if parent.isValid():
            row = parent.row()
        destination = len(self._ids) if row < 0 else row
        return self.move_to_row(bytes(data.data(MIME_TYPE).data()).decode(), destination)

    # --- document events -> rows --------------------------------------------------------------------------

    @contextmanager
    def _syncing(self) -> Iterator[None]:
        self.syncing = True
        try:
            yield
        finally:
            self.syncing = False

    def _on_added(self, event: DocumentEvent) -> None:
        row = len(self._ids) - event.index
        with self._syncing():
            self.beginInsertRows(QModelIndex(), row, row)
            self._ids.insert(row, event.layer.id)
            self.endInsertRows()

    def _on_removed(self, event: DocumentEvent) -> None:
        row = self._ids.index(event.layer.id)
        with self._syncing():
            self.beginRemoveRows(QModelIndex(), row, row)
            del self._ids[row]
            self.endRemoveRows()
        self._icons.pop(event.layer.id, None)
        timer = self._timers.pop(event.layer.id, None)
        if timer is not None:
            timer.stop()
            timer.deleteLater()

    def _on_moved(self, event: DocumentEvent) -> None:
        source, final_row = self._ids.index(event.layer.id), len(self._ids) - 1 - event.index
        destination = final_row + 1 if final_row > source else final_row  # Qt counts before the move
        with self._syncing():
            self.beginMoveRows(QModelIndex(), source, source, QModelIndex(), destination)
            self._ids.insert(final_row, self._ids.pop(source))
            self.endMoveRows()

    def _on_changed(self, event: DocumentEvent) -> None:
        if event.attribute in _ICON_ATTRIBUTES:
            self._icons.pop(event.layer.id, None)
        self._row_changed(event.layer.id)

    def _on_pixels(self, event: DocumentEvent) -> None:
        layer_id = event.layer.id
        timer = self._timers.get(layer_id)
        if timer is None:
            timer = self._timers[layer_id] = QTimer(self)
            timer.setSingleShot(True)
            timer.setInterval(THUMBNAIL_DELAY_MS)
            timer.timeout.connect(lambda: self._refresh_icon(layer_id))
        if not timer.isActive():  # throttle, not debounce: a long stroke still refreshes every interval
            timer.start()

    def _refresh_icon(self, layer_id: str) -> None:
        self._icons.pop(layer_id, None)
        self._row_changed(layer_id, [Qt.ItemDataRole.DecorationRole])

    def _row_changed(self, layer_id: str, roles: list[int] | None = None) -> None:
        row = self.row_of(layer_id)
        if row is not None:
            index = self.index(row)
            self.dataChanged.emit(index, index, roles or [])


def _command_text(document: Document, layer_id: str, name: str) -> str:
    layer = document.layer(layer_id)
    if name == "visible":
        return f"{'Hide' if layer.visible else 'Show'} '{layer.name}'"
    return {"name": f"Rename '{layer.name}'"}.get(name, f"Change {name} of '{layer.name}'")


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except ValueError:  # numpy arrays (a reference mask) have no single truth value; treat as changed
        return False


class LayerDelegate(QStyledItemDelegate):
    """A row: eye check box, thumbnail, and two lines — the name, then a smaller badge (kind, role, prompt)."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: AnyIndex) -> None:
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        name, opt.text = opt.text, ""  # the style draws check box, icon and selection; we draw the two lines
        widget = opt.widget
        style = widget.style() if widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, widget)
        text_rect = style.subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, widget).adjusted(4, 0, -4, 0)
        selected = bool(opt.state & QStyle.StateFlag.State_Selected)
        colour = opt.palette.color(QPalette.ColorRole.HighlightedText if selected else QPalette.ColorRole.Text)
        if index.data(Qt.ItemDataRole.CheckStateRole) != Qt.CheckState.Checked:
            colour.setAlphaF(0.45)  # a hidden layer reads as hidden at a glance
        small = QFont(opt.font)
        small.setPointSizeF(max(6.0, opt.font.pointSizeF() * 0.85))
        half = text_rect.height() // 2
        name_rect = QRect(text_rect.left(), text_rect.top(), text_rect.width(), half)
        badge_rect = QRect(text_rect.left(), text_rect.top() + half, text_rect.width(), text_rect.height() - half)
        painter.save()
        painter.setPen(colour)
        painter.setFont(opt.font)
        elided = opt.fontMetrics.elidedText(name, Qt.TextElideMode.ElideRight, name_rect.width())
        painter.drawText(name_rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignBottom, elided)
        colour.setAlphaF(colour.alphaF() * 0.7)
        painter.setPen(colour)
        painter.setFont(small)
        badge = painter.fontMetrics().elidedText(
            str(index.data(BADGE_ROLE) or ""), Qt.TextElideMode.ElideRight, badge_rect.width()
        )
        painter.drawText(badge_rect, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, badge)
        painter.restore()

    def sizeHint(self, option: QStyleOptionViewItem, index: AnyIndex) -> QSize:  # noqa: N802
        size = super().sizeHint(option, index)
        return QSize(size.width(), max(size.height(), option.fontMetrics.height() * 2 + 10, THUMBNAIL_SIZE + 8))

    def updateEditorGeometry(self, editor: QWidget, option: QStyleOptionViewItem, index: AnyIndex) -> None:  # noqa: N802
        super().updateEditorGeometry(editor, option, index)
        # Rename over the name line only, so the badge stays readable while typing.
        rect = editor.geometry()
        height = min(rect.height(), option.fontMetrics.height() + 8)
        editor.setGeometry(rect.left(), rect.center().y() - height + 2, rect.width(), height)
