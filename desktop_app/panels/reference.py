"""The Reference panel: a side view of the reference image, where the user paints the reference's own mask (the part
of it to transfer or paste), and the commands that add a reference and paste it onto the picture.

It shows the active layer when that is a reference, else the topmost visible one (the one a run sends, see
edit_request._reference). The side view (reference_view.py) paints with the canvas's brush and eraser (B / E, the
same size and hardness; Alt erases), the size in picture pixels, so a stroke covers as much of the reference there
as it would on the canvas. Each stroke, clear, invert, add and paste is one command on the window's QUndoStack; the
panel redraws from document events only. Placing the reference on the picture is the canvas's Move tool
(canvas/reference_tool.py). `install_reference_tool(window)` puts all of this into a MainWindow.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from desktop_app.canvas.point_tools import free_name
from desktop_app.canvas.reference import fit_placement, pasted_pixels, stored_mask
from desktop_app.canvas.render import WeakListener
from desktop_app.canvas.tools import ToolState
from desktop_app.document import Document, DocumentEvent, RasterLayer, ReferenceLayer, to_rgba
from desktop_app.document.imagefile import ImageFileError, load_image
from desktop_app.files import IMAGE_FILTER
from desktop_app.history import AddLayer, SetProperty
from desktop_app.panels.reference_view import ReferenceView

if TYPE_CHECKING:
    from desktop_app.main_window import MainWindow

log = logging.getLogger(__name__)

PURPOSE = (
    "The region of the reference to transfer/paste; empty = the whole image. Paint it with the brush (B), erase "
    "with E or Alt. Place it on the canvas with Move (M): drag to move, a corner or the wheel to scale."
)
ERROR_MS = 10_000


class ReferencePanel(QWidget):
    """Bind with `set_document(document, undo_stack)`. `message` is for the status bar, `failed(title, text)` for
    errors the user must see (a file that cannot be read)."""

    message = Signal(str)
    failed = Signal(str, str)
    reference_added = Signal(object)

    def __init__(self, tool_state: ToolState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tool_state = tool_state
        self.document: Document | None = None
        self.undo_stack: QUndoStack | None = None
        self._listener: WeakListener | None = None
        # The file question, one method so tests (and the window, for its last folder) replace it.
        self.ask_open_path: Callable[[str, str], str] = lambda title, name_filter: QFileDialog.getOpenFileName(
            self, title, "", name_filter
        )[0]
        self.add_action = QAction("Add &Reference Image…", self)
        self.add_action.setToolTip("Load a picture as a reference: paint the part to use, place or paste it")
        self.add_action.triggered.connect(lambda _checked=False: self.choose_and_add())
        self.view = ReferenceView(tool_state, self)
        self.view.stroke_finished.connect(self._on_stroke)
        self._build()
        self._tool_listener = WeakListener(self, "_on_tool_event", [tool_state.events.tool, tool_state.events.size])
        self._refresh()

    def _build(self) -> None:
        self.title = QLabel(wordWrap=True)
        self.title.setStyleSheet("font-weight: bold")
        self.purpose = QLabel(PURPOSE, wordWrap=True)
        self.purpose.setStyleSheet("color: palette(mid)")
        self.placeholder = QLabel(alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self.view)
        self.mask_state = QLabel(wordWrap=True)

        def button(text: str, slot: Callable[[], object], tip: str) -> QPushButton:
            widget = QPushButton(text, self, toolTip=tip)
            widget.clicked.connect(lambda _checked=False: slot())
            return widget

        self.brush_button = button("Brush", lambda: self._set_tool("brush"), "Paint the reference's mask (B)")
        self.eraser_button = button("Eraser", lambda: self._set_tool("eraser"), "Erase from it (E, or Alt+drag)")
        for widget in (self.brush_button, self.eraser_button):
            widget.setCheckable(True)
        self.clear_button = button("Clear mask", self.clear_mask, "No mask: the whole reference is used")
        self.invert_button = button("Invert mask", self.invert_mask, "Use the part that is not painted instead")
        self.add_button = button("Add Reference…", self.choose_and_add, self.add_action.toolTip())
        self.paste_button = button(
            "Paste onto Picture",
            self.paste_onto_picture,
            "Put the reference (its masked part, where it is placed) into a new layer above the picture",
        )
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self.title)
        layout.addWidget(self.purpose)
        layout.addWidget(self.stack, 1)
        layout.addWidget(self.mask_state)
        for row_buttons in (
            (self.brush_button, self.eraser_button, self.clear_button, self.invert_button),
            (self.add_button, self.paste_button),
        ):
            row = QHBoxLayout()
            row.setSpacing(2)
            for widget in row_buttons:
                row.addWidget(widget)
            layout.addLayout(row)

    # --- binding --------------------------------------------------------------------------------------------

    def set_document(self, document: Document | None, undo_stack: QUndoStack | None) -> None:
        if document is self.document and undo_stack is self.undo_stack:
            self._follow()
            return
        if self._listener is not None:
            self._listener.detach()
            self._listener = None
        self.document, self.undo_stack = document, undo_stack
        if document is not None:
            events = document.events
            emitters = [events.layer_added, events.layer_removed, events.layer_moved, events.layer_changed]
            self._listener = WeakListener(self, "_on_event", [*emitters, events.active_changed])
        self._follow()

    @property
    def layer(self) -> ReferenceLayer | None:
        """The reference shown: the active layer if it is one, else the topmost visible one, else the topmost."""
        if self.document is None:
            return None
        active = self.document.active_layer
        if isinstance(active, ReferenceLayer):
            return active
        references = self.document.layers_of(ReferenceLayer)
        visible = [layer for layer in references if layer.visible]
        return (visible or references or [None])[-1]  # type: ignore[return-value]

    def _on_event(self, event: DocumentEvent) -> None:
        layer = self.layer
        if layer is self.view.layer and event.type == "layer_changed" and event.layer is layer:
            if event.attribute == "mask":
                self.view.cancel_stroke()
                self.view.show_mask(layer.mask)
            elif event.attribute == "scale":
                self.view.fit()  # the brush's size in reference pixels follows the scale
        self._follow()

    def _on_tool_event(self, _event: DocumentEvent) -> None:
        self.view.fit()
        self._refresh()

    def _follow(self) -> None:
        if self.layer is not self.view.layer:
            self.view.set_reference(self.layer)
        self._refresh()

    # --- commands -------------------------------------------------------------------------------------------

    def choose_and_add(self) -> ReferenceLayer | None:
        """Layer ▸ Add Reference Image…: ask for a file and add it."""
        if self.document is None:
            self.message.emit("Open a picture first, then add a reference image to it")
            return None
        path = self.ask_open_path("Add Reference Image", IMAGE_FILTER)
        return self.add_reference_file(path) if path else None

    def add_reference_file(self, path: str | Path) -> ReferenceLayer | None:
        """The picture at `path` as a new reference layer; a file that cannot be read is reported, nothing added."""
        path = Path(path)
        try:
            image = load_image(path)
        except ImageFileError as error:
            log.warning("could not add %s as a reference: %s", path, error)
            self.failed.emit("Could not add reference image", str(error))
            return None
        return self.add_reference_image(image, path.stem)

    def add_reference_image(self, image: np.ndarray, name: str = "Reference") -> ReferenceLayer | None:
        """`image` (uint8 grey, RGB or RGBA, any size) as a reference layer on top, fitted inside the picture (at most
        half its long side) and centred: one undo step."""
        document, stack = self.document, self.undo_stack
        if document is None or stack is None:
            self.message.emit("Open a picture first, then add a reference image to it")
            return None
        try:
            rgba = to_rgba(np.array(image))  # a copy: the caller's array stays the caller's
        except ValueError as error:
            self.failed.emit("Could not add reference image", f"The reference is not a usable picture: {error}")
            return None
        height, width = rgba.shape[:2]
        place = fit_placement((width, height), document.size)
        name = free_name(document, name.strip() or "Reference")
        layer = ReferenceLayer(name, image=rgba, x=place.x, y=place.y, scale=place.scale)
        stack.push(AddLayer(document, layer, text=f"Add reference image '{name}'"))
        self.message.emit(
            f"Added the reference '{name}' ({width}×{height}) at {place.scale:.0%}: paint the part to use in the "
            "Reference panel; the Move tool (M) places it on the picture"
        )
        self.reference_added.emit(layer)
        return layer

    def clear_mask(self) -> bool:
        layer = self.layer
        if layer is None or layer.mask is None:
            return False
        self.undo_stack.push(SetProperty(self.document, layer.id, "mask", None, "Clear reference mask"))
        return True

    def invert_mask(self) -> bool:
        layer = self.layer
        if layer is None or layer.mask is None:
            self.message.emit("The reference has no mask to invert: paint the part to use first")
            return False
        inverted = stored_mask(255 - layer.mask)
        self.undo_stack.push(SetProperty(self.document, layer.id, "mask", inverted, "Invert reference mask"))
        return True

    def paste_onto_picture(self) -> RasterLayer | None:
        """The reference inside its mask, where it is placed, into a new raster layer at the reference's place in
        the stack; the reference is hidden (it would cover the paste). One undo step."""
        layer, document = self.layer, self.document
        if layer is None or document is None or self.undo_stack is None:
            self.message.emit("Add a reference image first (Layer ▸ Add Reference Image…)")
            return None
        pixels = pasted_pixels(layer, document.size)
        if not pixels[..., 3].any():
            self.message.emit(f"Nothing to paste: '{layer.name}' lies outside the picture or its mask is empty")
            return None
        pasted = RasterLayer(free_name(document, f"{layer.name} (pasted)"), pixels=pixels, opacity=layer.opacity)
        index = document.index_of(layer.id)
        self.undo_stack.beginMacro("Paste reference onto picture")
        self.undo_stack.push(AddLayer(document, pasted, index))
        self.undo_stack.push(SetProperty(document, layer.id, "visible", False))
        self.undo_stack.endMacro()
        self.message.emit(f"Pasted '{layer.name}' as the layer '{pasted.name}'; the reference is now hidden")
        return pasted

    def _on_stroke(self, mask: np.ndarray, erased: bool) -> None:
        layer = self.view.layer
        if layer is None or self.document is None or self.undo_stack is None:
            return
        text = "Erase reference mask" if erased else "Paint reference mask"
        self.undo_stack.push(SetProperty(self.document, layer.id, "mask", stored_mask(mask), text))

    def _set_tool(self, name: str) -> None:
        self.tool_state.tool = name
        self._refresh()

    # --- document -> widgets ----------------------------------------------------------------------------------

    def _refresh(self) -> None:
        document, layer = self.document, self.layer
        self.add_action.setEnabled(document is not None)
        self.add_button.setEnabled(document is not None)
        self.paste_button.setEnabled(layer is not None)
        has_mask = layer is not None and layer.mask is not None
        self.clear_button.setEnabled(has_mask)
        self.invert_button.setEnabled(has_mask)
        erasing = self.tool_state.tool == "eraser"
        self.brush_button.setChecked(not erasing)
        self.eraser_button.setChecked(erasing)
        for widget in (self.brush_button, self.eraser_button):
            widget.setEnabled(layer is not None)
        if layer is None:
            self.title.setText("Reference")
            hint = "Open a picture first." if document is None else "Layer ▸ Add Reference Image… or Add Reference…"
            self.placeholder.setText(f"No reference image. {hint}")
            self.stack.setCurrentWidget(self.placeholder)
            self.mask_state.setText("")
            return
        height, width = layer.image.shape[:2]
        hidden = "" if layer.visible else " — hidden"
        self.title.setText(f"{layer.name} · {width}×{height} · shown at {layer.scale:.0%}{hidden}")
        self.stack.setCurrentWidget(self.view)
        if layer.mask is None:
            self.mask_state.setText("Mask: empty — the whole reference is used")
        else:
            share = float(np.count_nonzero(layer.mask >= 128)) / layer.mask.size
            self.mask_state.setText(f"Mask: {share:.0%} of the reference is used")


# --- the window -------------------------------------------------------------------------------------------------


def install_reference_tool(window: MainWindow) -> ReferencePanel:
    """The Reference dock (tabbed with History), Layer ▸ Add Reference Image…, and the panel following the window's
    document. Sets `window.reference_panel` and `window.reference_dock`."""
    panel = ReferencePanel(window.tool_state)
    dock = QDockWidget("Reference", window)
    dock.setObjectName("reference-dock")  # saveState() needs names
    dock.setWidget(panel)
    dock.setMinimumWidth(280)
    window.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, dock)
    window.tabifyDockWidget(window.history_dock, dock)
    window.layers_dock.raise_()
    window.restoreDockWidget(dock)  # where the last session left it (restore_layout ran before the dock existed)
    panel.ask_open_path = lambda title, name_filter: window.files.ask_open_path(title, name_filter)
    panel.message.connect(lambda text: window.show_status(text))
    panel.failed.connect(lambda title, text: _report(window, title, text))
    panel.reference_added.connect(lambda _layer: (dock.show(), dock.raise_()))
    _add_to_layer_menu(window, panel.add_action)
    view_menu = getattr(getattr(window, "window_actions", None), "view_menu", None)
    if view_menu is not None:
        view_menu.addAction(dock.toggleViewAction())

    def follow() -> None:
        panel.set_document(window.document, window.undo_stack if window.document is not None else None)

    # The Layers panel's model resets exactly when the window shows another document (MainWindow.set_document).
    window.layers_panel.model.modelReset.connect(follow)
    follow()
    window.reference_panel, window.reference_dock = panel, dock
    return panel


def _report(window: MainWindow, title: str, text: str) -> None:
    window.show_status(f"{title}: {text}", ERROR_MS)
    window.show_error(title, text)


def _add_to_layer_menu(window: MainWindow, action: QAction) -> None:
    """After '+ Object' in the Layer menu (found by the Layers panel's action it holds), else in a Layer menu."""
    anchor = window.layers_panel.add_object_action
    for menu_action in window.menuBar().actions():
        menu = menu_action.menu()
        actions = menu.actions() if menu is not None else []
        if anchor in actions:
            following = actions[actions.index(anchor) + 1 :]
            if following:
                menu.insertAction(following[0], action)
            else:
                menu.addAction(action)
            return
    window.menuBar().addMenu("&Layer").addAction(action)


__all__ = ["ReferencePanel", "ReferenceView", "install_reference_tool"]
