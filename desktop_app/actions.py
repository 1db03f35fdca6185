"""The main window's menus, toolbar and shortcuts (UX.md's conventions table), in one place.

Shortcuts are window-wide so tools switch while the Layers panel or the method panel has focus. Single keys (B, E,
R, L, G, S, D, M, [, ]) do not fire while the user types: a line edit claims the keys it would type (Qt's
ShortcutOverride) before any shortcut sees them, and the same holds for Backspace, Ctrl+Z, Ctrl+V and
Ctrl+Backspace, which edit the text there. Enter applies a segment only on the canvas (dialogs and forms need it).
The Layer menu reuses the Layers panel's own actions, so its Del shortcut stays scoped to the panel.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import QSpinBox, QStyle, QToolBar

from desktop_app.canvas.tools import MAX_SIZE, MIN_SIZE, TOOLS
from desktop_app.document import DocumentEvent
from desktop_app.resources import sample_images

if TYPE_CHECKING:
    from desktop_app.main_window import MainWindow

ZOOM_STEP = 1.25
TOOL_KEYS = {"brush": "B", "eraser": "E", "rectangle": "R", "lasso": "L", "fill": "G"}
TOOL_KEYS |= {"segment": "S", "drag": "D", "move": "M"}
TOOL_TITLES = {"drag": "Drag Points", "move": "Move Region"}
TOOL_TIPS = {
    "brush": "Paint the active mask",
    "eraser": "Erase from the active mask",
    "rectangle": "Fill a rectangle of the mask (Alt: subtract)",
    "lasso": "Fill a free-hand outline (Alt: subtract)",
    "fill": "Flood-fill the unpainted region under the click (Alt: clear)",
    "segment": "Select an object: click to include, Shift+click to exclude, drag a box; Enter adds it to the mask",
    "drag": "Drag points: click a handle (red), then where it should go (blue); drag a point to move it",
    "move": "Move the active mask's region: drag inside it to move, drag a corner or turn the wheel to scale",
}


class WindowActions:
    """Builds the menus and toolbar of `window` and keeps the checkable tool actions in step with its ToolState."""

    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self._needs_document: list[QAction] = []
        self.tool_actions: dict[str, QAction] = {}
        self._file_menu()
        self._edit_menu()
        self._view_menu()
        self._tools_menu()
        self._layer_menu()
        self._job_menu()
        self._toolbar()
        window.tool_state.events.tool.connect(self._on_tool)
        window.tool_state.events.size.connect(self._on_size)
        self.set_running(False)

    def _action(
        self, text: str, slot: Callable[[], object], *shortcuts: str | QKeySequence.StandardKey, **options: object
    ) -> QAction:
        """A window-wide action; `needs_document=True` disables it while no document is open."""
        action = QAction(text, self.window)
        action.setShortcuts([QKeySequence(shortcut) for shortcut in shortcuts])
        action.triggered.connect(lambda _checked=False: slot())
        if options.get("tip"):
            action.setToolTip(f"{options['tip']} ({action.shortcut().toString()})" if shortcuts else options["tip"])
        if options.get("icon") is not None:
            action.setIcon(self.window.style().standardIcon(options["icon"]))
        if options.get("needs_document"):
            self._needs_document.append(action)
        self.window.addAction(action)  # active even while the menu bar is hidden
        return action

    # --- menus --------------------------------------------------------------------------------------------

    def _file_menu(self) -> None:
        files, pixmap = self.window.files, QStyle.StandardPixmap
        menu = self.window.menuBar().addMenu("&File")
        menu.addAction(self._action("&New from Image…", files.choose_new_from_image))
        self.open_action = self._action("&Open…", files.choose_and_open, "Ctrl+O", icon=pixmap.SP_DialogOpenButton)
        self.open_action.setToolTip("Open a picture or an Atelier project (Ctrl+O)")
        menu.addAction(self.open_action)
        self.samples_menu = menu.addMenu("Open &Sample")
        for path in sample_images():
            # `triggered` passes `checked`; the keyword-only default keeps it away from the path.
            self.samples_menu.addAction(path.stem.replace("_", " "), lambda *_, p=path: files.open(p))
        self.samples_menu.setEnabled(not self.samples_menu.isEmpty())
        self.recent_menu = menu.addMenu("Open &Recent")
        self.recent_menu.aboutToShow.connect(self._fill_recent_menu)
        self._fill_recent_menu()
        menu.addSeparator()
        self.save_action = self._action("&Save", files.save, "Ctrl+S", needs_document=True)
        self.save_action.setIcon(self.window.style().standardIcon(pixmap.SP_DialogSaveButton))
        self.save_action.setToolTip("Save the project as .ora (Ctrl+S)")
        self.save_as_action = self._action("Save &As…", files.save_as, "Ctrl+Shift+S", needs_document=True)
        self.export_action = self._action("&Export PNG…", files.export_png, "Ctrl+E", needs_document=True)
        menu.addActions([self.save_action, self.save_as_action, self.export_action])
        menu.addSeparator()
        self.quit_action = self._action("&Quit", self.window.close, "Ctrl+Q")
        menu.addAction(self.quit_action)

    def _fill_recent_menu(self) -> None:
        menu, recent = self.recent_menu, self.window.settings.recent_files
        menu.clear()
        for text in recent:
            menu.addAction(Path(text).name, lambda *_, p=text: self.window.files.open_recent(p)).setToolTip(text)
        menu.setEnabled(bool(recent))

    def _edit_menu(self) -> None:
        window, canvas = self.window, self.window.canvas
        menu = window.menuBar().addMenu("&Edit")
        self.undo_action = window.undo_stack.createUndoAction(window, "&Undo")
        self.undo_action.setShortcut(QKeySequence("Ctrl+Z"))
        self.redo_action = window.undo_stack.createRedoAction(window, "&Redo")
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])  # GIMP users: Ctrl+Y
        self.undo_action.setIcon(window.style().standardIcon(QStyle.StandardPixmap.SP_ArrowBack))
        self.redo_action.setIcon(window.style().standardIcon(QStyle.StandardPixmap.SP_ArrowForward))
        window.addActions([self.undo_action, self.redo_action])
        menu.addActions([self.undo_action, self.redo_action])
        menu.addSeparator()
        self.paste_action = self._action("&Paste", window.files.paste, "Ctrl+V")
        self.paste_action.setToolTip("Paste a picture: a new layer if it has the document's size, else a new document")
        menu.addAction(self.paste_action)
        menu.addSeparator()
        self.fill_mask_action = self._action("&Fill Mask", canvas.fill_mask, needs_document=True)
        self.invert_mask_action = self._action("&Invert Mask", canvas.invert_mask, "Ctrl+I", needs_document=True)
        # Not Del: the Layers panel uses Del (while it has focus) to delete the layer.
        self.clear_mask_action = self._action("&Clear Mask", canvas.clear_mask, "Ctrl+Backspace", needs_document=True)
        menu.addActions([self.fill_mask_action, self.invert_mask_action, self.clear_mask_action])
        menu.addSeparator()
        self.preferences_action = self._action("Pre&ferences…", window.preferences.open, "Ctrl+,")
        self.preferences_action.setMenuRole(QAction.MenuRole.PreferencesRole)  # macOS: Atelier ▸ Settings…
        menu.addAction(self.preferences_action)

    def _view_menu(self) -> None:
        window, canvas = self.window, self.window.canvas
        menu = window.menuBar().addMenu("&View")
        self.fit_action, self.actual_size_action = canvas.fit_action, canvas.actual_size_action  # Ctrl+0, Ctrl+1
        self.zoom_in_action = self._action("Zoom &In", lambda: self._zoom(ZOOM_STEP), "Ctrl+=", "Ctrl++")
        self.zoom_out_action = self._action("Zoom &Out", lambda: self._zoom(1 / ZOOM_STEP), "Ctrl+-")
        view_actions = [self.fit_action, self.actual_size_action, self.zoom_in_action, self.zoom_out_action]
        window.addActions(view_actions)
        self._needs_document += view_actions
        menu.addActions(view_actions)
        menu.addSeparator()
        for dock in (window.method_dock, window.layers_dock, window.history_dock):
            menu.addAction(dock.toggleViewAction())
        self.view_menu = menu

    def _zoom(self, factor: float) -> None:
        viewport = self.window.canvas.viewport()
        self.window.canvas.zoom_at(factor, QPointF(viewport.width() / 2, viewport.height() / 2))

    def _tools_menu(self) -> None:
        menu = self.window.menuBar().addMenu("&Tools")
        group = QActionGroup(self.window)
        group.setExclusive(True)
        for name in TOOLS:
            title = TOOL_TITLES.get(name, name.capitalize())
            action = self._action(title, lambda name=name: self._set_tool(name), TOOL_KEYS[name])
            action.setToolTip(f"{TOOL_TIPS[name]} ({TOOL_KEYS[name]})")
            action.setCheckable(True)
            group.addAction(action)
            self.tool_actions[name] = action
        self.tool_actions[self.window.tool_state.tool].setChecked(True)
        menu.addActions(list(self.tool_actions.values()))
        menu.addSeparator()
        canvas = self.window.canvas
        self.apply_segment_action = self._action("&Apply Segment", canvas.apply_segment, needs_document=True)
        self.apply_segment_action.setToolTip("Add the segment proposal to the active mask (Enter on the canvas)")
        self.remove_point_action = self._action(
            "Remove &Last Point", canvas.remove_last_point, "Backspace", needs_document=True
        )
        self.remove_point_action.setToolTip("Take back the last segment prompt or drag point (Backspace)")
        self.clear_points_action = self._action("Clear &Drag Points", canvas.clear_drag_points, needs_document=True)
        self.clear_points_action.setToolTip("Remove every handle -> target pair of the drag layer")
        menu.addActions([self.apply_segment_action, self.remove_point_action, self.clear_points_action])
        menu.addSeparator()
        self.grow_action = self._action("&Bigger Brush", self.window.tool_state.grow, "]")
        self.shrink_action = self._action("&Smaller Brush", self.window.tool_state.shrink, "[")
        menu.addActions([self.grow_action, self.shrink_action])

    def _set_tool(self, name: str) -> None:
        self.window.tool_state.tool = name

    def _on_tool(self, event: DocumentEvent) -> None:
        self.tool_actions[event.value].setChecked(True)

    def _on_size(self, event: DocumentEvent) -> None:
        if self.size_box.value() != event.value:
            self.size_box.setValue(event.value)

    def _layer_menu(self) -> None:
        panel = self.window.layers_panel
        menu = self.window.menuBar().addMenu("&Layer")
        menu.addAction(panel.add_raster_action)
        masks = menu.addMenu("Add &Mask")
        masks.addActions(list(panel.add_mask_actions.values()))
        menu.addAction(panel.add_object_action)
        menu.addSeparator()
        menu.addActions([panel.move_up_action, panel.move_down_action, panel.delete_action])

    def _job_menu(self) -> None:
        window = self.window
        menu = window.menuBar().addMenu("&Job")
        pixmap = QStyle.StandardPixmap
        self.run_action = self._action("&Run", window.run_edit, "Ctrl+Return", "Ctrl+Enter", icon=pixmap.SP_MediaPlay)
        self.run_action.setToolTip("Run the method on the document; while an edit runs, queue it (Ctrl+Enter)")
        self.run_next_action = self._action(
            "Run &Next", lambda: window.run_edit(first=True), "Ctrl+Shift+Return", "Ctrl+Shift+Enter"
        )
        self.run_next_action.setToolTip("Queue the edit ahead of the waiting ones (Ctrl+Shift+Enter)")
        self.cancel_action = self._action("&Cancel", window.cancel_edit, "Esc", icon=pixmap.SP_MediaStop)
        self.cancel_action.setToolTip("Cancel the running edit (Esc)")
        menu.addActions([self.run_action, self.run_next_action, self.cancel_action])

    def _toolbar(self) -> None:
        bar = QToolBar("Main", self.window)
        bar.setObjectName("main-toolbar")
        bar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        bar.addActions([self.open_action, self.save_action])
        bar.addSeparator()
        bar.addActions([self.undo_action, self.redo_action])
        bar.addSeparator()
        bar.addActions(list(self.tool_actions.values()))
        self.size_box = QSpinBox(bar, minimum=MIN_SIZE, maximum=MAX_SIZE, suffix=" px")
        self.size_box.setToolTip("Brush size ([ smaller, ] bigger)")
        self.size_box.setValue(self.window.tool_state.size)
        self.size_box.valueChanged.connect(lambda value: setattr(self.window.tool_state, "size", value))
        bar.addWidget(self.size_box)
        bar.addSeparator()
        bar.addActions([self.fit_action, self.actual_size_action])
        bar.addSeparator()
        bar.addActions([self.run_action, self.cancel_action])
        for action in (self.undo_action, self.redo_action):
            # Their text names the command ('Undo Accept SDEdit result'): as a label it would make the bar jump.
            bar.widgetForAction(action).setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self.window.addToolBar(bar)
        self.view_menu.addAction(bar.toggleViewAction())
        self.toolbar = bar

    # --- state --------------------------------------------------------------------------------------------

    def document_replaced(self, has_document: bool) -> None:
        for action in self._needs_document:
            action.setEnabled(has_document)

    def set_running(self, running: bool) -> None:
        # A disabled action gives its shortcut up: Esc only cancels while a job runs (else a tool or dialog has it).
        # Run stays on: while an edit runs it queues the next one.
        self.cancel_action.setEnabled(running)


__all__ = ["WindowActions"]
