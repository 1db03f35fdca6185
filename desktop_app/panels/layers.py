"""The Layers panel: the document's layers top first, buttons to add/delete/reorder, and the active layer's
opacity, mask role and object prompt.

Every change is an undo command on the window's QUndoStack; the panel redraws only from document events, so
undo/redo, the canvas and this panel always agree.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QItemSelectionModel, QModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QMenu,
    QSlider,
    QStyle,
    QToolButton,
    QToolTip,
    QVBoxLayout,
    QWidget,
)

from desktop_app.document import MASK_ROLES, Document, DocumentEvent, Layer, MaskLayer, ObjectLayer, RasterLayer
from desktop_app.history import AddLayer, MoveLayer, RemoveLayer
from desktop_app.panels.layer_list import LAYER_ID_ROLE, LayerDelegate, LayerListModel
from desktop_app.panels.thumbnails import THUMBNAIL_SIZE

MESSAGE_MS = 6000  # how long a refusal stays in the panel's status line


class LayersPanel(QWidget):
    """Bind with `set_document(document, undo_stack)`; `message` carries text for the window's status bar."""

    message = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.document: Document | None = None
        self.undo_stack: QUndoStack | None = None
        self._syncing = False  # True while widgets are set from the document: their signals must not push
        self.model = LayerListModel(self)
        self.model.refused.connect(self._show_refusal)
        self.view = self._make_view()
        self._make_actions()
        self._make_properties()
        self.status = QLabel(wordWrap=True)
        self.status.setStyleSheet("color: #d04040")
        self._status_timer = QTimer(self, singleShot=True, interval=MESSAGE_MS)
        self._status_timer.timeout.connect(lambda: self.status.setVisible(False))
        self.status.setVisible(False)  # an empty line would only push the list up
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(self._make_buttons())
        layout.addWidget(self.view, 1)
        layout.addLayout(self.properties)
        layout.addWidget(self.status)
        self._refresh()

    # --- construction -----------------------------------------------------------------------------------

    def _make_view(self) -> QListView:
        view = QListView(self)
        view.setModel(self.model)
        view.setItemDelegate(LayerDelegate(view))
        view.setIconSize(QSize(THUMBNAIL_SIZE, THUMBNAIL_SIZE))
        view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        view.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked | QAbstractItemView.EditTrigger.EditKeyPressed)
        # DragDrop, not InternalMove: InternalMove ignores drops whose source is not a live QDrag of this view,
        # which also shuts out tests. The model accepts only its own layer-id mime type, and moves, never copies.
        view.setDragDropMode(QAbstractItemView.DragDropMode.DragDrop)
        view.setDragDropOverwriteMode(False)
        view.setDefaultDropAction(Qt.DropAction.MoveAction)
        view.setDropIndicatorShown(True)
        view.setUniformItemSizes(True)
        view.selectionModel().currentChanged.connect(self._on_current_changed)
        # Ctrl+click can deselect the only row; the document still has an active layer, so show it again.
        view.selectionModel().selectionChanged.connect(
            lambda: self.model.syncing or view.selectedIndexes() or self._refresh()
        )
        return view

    def _make_actions(self) -> None:
        icon = self.style().standardIcon
        self.add_raster_action = QAction("+ Layer", self, toolTip="Add an empty raster layer above the active one")
        self.add_raster_action.triggered.connect(self.add_raster_layer)
        self.add_mask_actions: dict[str, QAction] = {}
        for role in MASK_ROLES:
            action = QAction(f"{role.capitalize()} mask", self, toolTip=f"Add an empty mask with the role '{role}'")
            action.triggered.connect(lambda _=False, role=role: self.add_mask_layer(role))
            self.add_mask_actions[role] = action
        self.add_object_action = QAction("+ Object", self, toolTip="Add an object (its mask and prompt)")
        self.add_object_action.triggered.connect(self.add_object_layer)
        self.delete_action = QAction(icon(QStyle.StandardPixmap.SP_TrashIcon), "Delete", self)
        self.delete_action.setToolTip("Delete the active layer (Del)")
        self.delete_action.setShortcut(QKeySequence.StandardKey.Delete)
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        self.delete_action.triggered.connect(self.delete_active_layer)
        self.move_up_action = QAction(icon(QStyle.StandardPixmap.SP_ArrowUp), "Move up", self)
        self.move_up_action.triggered.connect(lambda: self.move_active_layer(+1))
        self.move_down_action = QAction(icon(QStyle.StandardPixmap.SP_ArrowDown), "Move down", self)
        self.move_down_action.triggered.connect(lambda: self.move_active_layer(-1))
        self.addActions([self.delete_action])  # so its shortcut works while the panel has focus

    def _make_buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.setSpacing(2)
        mask_button = QToolButton(self, text="+ Mask", toolTip="Add an edit mask; the arrow chooses the role")
        mask_button.setPopupMode(QToolButton.ToolButtonPopupMode.MenuButtonPopup)
        mask_menu = QMenu(mask_button)
        mask_menu.addActions(list(self.add_mask_actions.values()))
        mask_button.setMenu(mask_menu)
        mask_button.clicked.connect(lambda: self.add_mask_layer("edit"))
        self.mask_button = mask_button
        for action in (self.add_raster_action, None, self.add_object_action):
            button = mask_button if action is None else QToolButton(self)
            if action is not None:
                button.setDefaultAction(action)
            row.addWidget(button)
        row.addStretch(1)
        for action in (self.move_up_action, self.move_down_action, self.delete_action):
            button = QToolButton(self)
            button.setDefaultAction(action)
            button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
            row.addWidget(button)
        return row

    def _make_properties(self) -> None:
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal, self, minimum=0, maximum=100)
        self.opacity_slider.setToolTip("Opacity of the active layer (one undo step per drag)")
        self.opacity_label = QLabel("100%", self)
        self.opacity_label.setMinimumWidth(self.opacity_label.fontMetrics().horizontalAdvance("100%") + 4)
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        self._opacity_drag: object = None  # a fresh key per drag: its steps merge into one undo step, drags don't
        self.opacity_slider.sliderPressed.connect(lambda: setattr(self, "_opacity_drag", object()))
        self.opacity_slider.sliderReleased.connect(lambda: setattr(self, "_opacity_drag", None))
        opacity_row = QHBoxLayout()
        opacity_row.addWidget(self.opacity_slider, 1)
        opacity_row.addWidget(self.opacity_label)
        self.role_combo = QComboBox(self, toolTip="What the method uses this mask for")
        for role in MASK_ROLES:
            self.role_combo.addItem(role, role)
        self.role_combo.currentIndexChanged.connect(self._on_role)
        self.source_edit = QLineEdit(self, placeholderText="what it is now, e.g. cat")
        self.source_edit.editingFinished.connect(lambda: self._on_text("source", self.source_edit))
        self.prompt_edit = QLineEdit(self, placeholderText="what it should become, e.g. a dog")
        self.prompt_edit.editingFinished.connect(lambda: self._on_text("prompt", self.prompt_edit))
        self.properties = QFormLayout()
        self.properties.addRow("Opacity", opacity_row)
        self.properties.addRow("Role", self.role_combo)
        self.properties.addRow("Object", self.source_edit)
        self.properties.addRow("Prompt", self.prompt_edit)

    # --- binding ----------------------------------------------------------------------------------------

    def set_document(self, document: Document | None, undo_stack: QUndoStack | None) -> None:
        if self.document is not None:
            for name, callback in self._handlers().items():
                getattr(self.document.events, name).disconnect(callback)
        self.document, self.undo_stack = document, undo_stack
        self.model.set_document(document, undo_stack)
        if document is not None:
            for name, callback in self._handlers().items():
                getattr(document.events, name).connect(callback)
        self._refresh()

    def _handlers(self) -> dict[str, object]:
        # The model keeps the rows; the panel follows what decides its selection, buttons and property fields.
        return {
            "active_changed": self._refresh,
            "layer_changed": self._on_layer_changed,
            "layer_added": self._refresh,
            "layer_removed": self._refresh,
            "layer_moved": self._refresh,
        }

    @property
    def active_layer(self) -> Layer | None:
        return self.document.active_layer if self.document is not None else None

    # --- commands -----------------------------------------------------------------------------------------

    def add_raster_layer(self) -> Layer | None:
        if self.document is None:
            return None
        pixels = np.zeros((self.document.height, self.document.width, 4), np.uint8)
        return self._add(RasterLayer(name=self._fresh_name("Layer"), pixels=pixels))

    def add_mask_layer(self, role: str = "edit") -> Layer | None:
        if self.document is None:
            return None
        mask = np.zeros((self.document.height, self.document.width), np.uint8)
        return self._add(MaskLayer(name=self._fresh_name(f"{role.capitalize()} mask"), mask=mask, role=role))

    def add_object_layer(self) -> Layer | None:
        if self.document is None:
            return None
        mask = np.zeros((self.document.height, self.document.width), np.uint8)
        return self._add(ObjectLayer(name=self._fresh_name("Object"), mask=mask))

    def delete_active_layer(self) -> None:
        layer = self.active_layer
        if layer is not None and self.undo_stack is not None:
            self.undo_stack.push(RemoveLayer(self.document, layer.id))

    def move_active_layer(self, step: int) -> None:
        """+1 moves the active layer up (towards the top of the list), -1 down."""
        layer = self.active_layer
        if layer is None or self.document is None or self.undo_stack is None:
            return
        index = self.document.index_of(layer.id) + step
        if 0 <= index < len(self.document.layers):
            self.undo_stack.push(MoveLayer(self.document, layer.id, index))

    def _add(self, layer: Layer) -> Layer:
        assert self.document is not None and self.undo_stack is not None
        active = self.document.active_layer
        # New layers go right above the active one, as in GIMP and Krita, so a mask lands next to its image.
        index = self.document.index_of(active.id) + 1 if active is not None else None
        self.undo_stack.push(AddLayer(self.document, layer, index))
        return layer

    def _fresh_name(self, base: str) -> str:
        assert self.document is not None
        names = {layer.name for layer in self.document.layers}
        number = 1
        while f"{base} {number}" in names:
            number += 1
        return f"{base} {number}"

    # --- widgets -> commands ------------------------------------------------------------------------------

    def _on_current_changed(self, current: QModelIndex, _previous: QModelIndex) -> None:
        # While the model applies a document event, Qt moves the current row on its own (a removed row's
        # neighbour); the document decides the active layer then, not the view.
        if self._syncing or self.model.syncing or self.document is None or not current.isValid():
            return
        self.document.set_active(current.data(LAYER_ID_ROLE))

    def _on_opacity(self, value: int) -> None:
        self.opacity_label.setText(f"{value}%")
        layer = self.active_layer
        if not self._syncing and layer is not None:
            # Every step of a drag is a SetProperty; the stack merges those of one drag into one undo step.
            self.model.push_property(layer.id, "opacity", value / 100, merge_key=self._opacity_drag)

    def _on_role(self, _index: int) -> None:
        layer = self.active_layer
        if not self._syncing and isinstance(layer, MaskLayer):
            self.model.push_property(layer.id, "role", self.role_combo.currentData())

    def _on_text(self, name: str, edit: QLineEdit) -> None:
        layer = self.active_layer
        if not self._syncing and isinstance(layer, ObjectLayer):
            self.model.push_property(layer.id, name, edit.text())

    def _show_refusal(self, text: str) -> None:
        self.status.setText(text)
        self.status.setVisible(True)
        self._status_timer.start()
        index = self.view.currentIndex()
        anchor = self.view.visualRect(index).bottomLeft() if index.isValid() else self.view.rect().center()
        QToolTip.showText(self.view.viewport().mapToGlobal(anchor), text, self.view)
        self.message.emit(text)

    # --- document -> widgets ------------------------------------------------------------------------------

    def _on_layer_changed(self, event: DocumentEvent) -> None:
        if event.layer is self.active_layer:
            self._refresh()

    def _refresh(self, _event: DocumentEvent | None = None) -> None:
        """Selection, buttons and property fields from the document (never the other way round)."""
        self._syncing = True
        try:
            self._select_active()
            self._refresh_actions()
            self._refresh_properties()
        finally:
            self._syncing = False

    def _select_active(self) -> None:
        row = self.model.row_of(self.document.active_id) if self.document is not None else None
        selection = self.view.selectionModel()
        if row is None:
            selection.clear()
            return
        index = self.model.index(row)
        flags = QItemSelectionModel.SelectionFlag.ClearAndSelect
        selection.setCurrentIndex(index, flags)
        self.view.scrollTo(index)

    def _refresh_actions(self) -> None:
        document, layer = self.document, self.active_layer
        for action in (self.add_raster_action, self.add_object_action, *self.add_mask_actions.values()):
            action.setEnabled(document is not None)
        self.mask_button.setEnabled(document is not None)
        index = document.index_of(layer.id) if document is not None and layer is not None else -1
        self.delete_action.setEnabled(layer is not None)
        self.move_up_action.setEnabled(layer is not None and index < len(document.layers) - 1)
        self.move_down_action.setEnabled(layer is not None and index > 0)

    def _refresh_properties(self) -> None:
        layer = self.active_layer
        self.opacity_slider.setEnabled(layer is not None)
        self.opacity_slider.setValue(round(layer.opacity * 100) if layer is not None else 100)
        self.opacity_label.setText(f"{self.opacity_slider.value()}%")
        is_mask, is_object = isinstance(layer, MaskLayer), isinstance(layer, ObjectLayer)
        self.properties.setRowVisible(self.role_combo, is_mask)
        self.properties.setRowVisible(self.source_edit, is_object)
        self.properties.setRowVisible(self.prompt_edit, is_object)
        if is_mask:
            self.role_combo.setCurrentIndex(self.role_combo.findData(layer.role))
        if is_object:
            for edit, text in ((self.source_edit, layer.source), (self.prompt_edit, layer.prompt)):
                if edit.text() != text:
                    edit.setText(text)
