"""Atelier's main window: the canvas with the document, the staging pane beside it, and the Method, Layers and
History docks, wired to the backend link.

What it settles: a run builds one `EditRequest` from the document (edit_request.py); previews and the result go to
the staging pane, never over the user's pixels; accepting a result is one undo step that adds a layer and a history
entry. Runs queue (jobs.py keeps the window's picture of the client's queue): Run while an edit runs puts the new one
in line, Run next puts it first. A staged result nobody has accepted yet is parked, not lost, while the next edit
shows its previews, and comes back after that one's result is accepted or discarded. Errors appear in a banner over
the canvas that never blocks; if the backend process dies the banner says so and a new one is started at once.
Menus and shortcuts live in actions.py, opening/saving/autosave in files.py, Edit ▸ Preferences in
preferences.py.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import logging
import time

import numpy as np
from PIL import Image
from PySide6.QtCore import QByteArray, Qt
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QUndoStack
from PySide6.QtWidgets import QDockWidget, QLabel, QMainWindow, QSplitter, QStackedWidget, QVBoxLayout, QWidget

from backend.protocol import EditRequest, MethodInfo
from desktop_app.actions import WindowActions
from desktop_app.backend_link import BackendLink
from desktop_app.canvas import CanvasView, ToolState
from desktop_app.canvas.tools import MAX_SIZE, MIN_SIZE
from desktop_app.document import Document, DocumentEvent, HistoryEntry, MaskLayer, ObjectLayer, RasterLayer, to_rgba
from desktop_app.edit_request import MissingInput, build_request
from desktop_app.files import DocumentFiles, local_files
from desktop_app.history import AddHistoryEntry, AddLayer
from desktop_app.jobs import JobBook
from desktop_app.panels import HistoryPanel, LayersPanel, MethodPanel, StagingPanel
from desktop_app.panels.banner import Banner
from desktop_app.panels.method import model_name
from desktop_app.panels.reference import install_reference_tool
from desktop_app.preferences import Preferences
from desktop_app.settings import Settings, load_settings

logger = logging.getLogger(__name__)

MESSAGE_MS = 5000
DIED = "Backend: stopped — restarting…"
WELCOME = "Open a picture or a project (File ▸ Open, Ctrl+O), drop one here, or try File ▸ Open Sample."


class MainWindow(QMainWindow):
    """One document at a time; see the module docstring."""

    def __init__(
        self,
        link: BackendLink,
        model: str | None = None,
        settings: Settings | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.link = link
        self.settings = settings if settings is not None else load_settings()
        self.model = model or self.settings.model
        self.document: Document | None = None
        self.document_name = ""
        self.undo_stack = QUndoStack(self)
        self.undo_stack.cleanChanged.connect(self._on_clean_changed)
        size = min(MAX_SIZE, max(MIN_SIZE, self.settings.brush_size))
        self.tool_state = ToolState(size=size, hardness=self.settings.brush_hardness)
        self.jobs = JobBook()  # the edits this window submitted and has not seen end
        self.parked_results: list[tuple[np.ndarray, dict, EditRequest | None]] = []  # staged, then set aside
        self.staged_request: EditRequest | None = None  # what made the staged result
        self.backend_restarting = False  # from a restart with new settings until the new backend lists its methods
        self.setWindowTitle("Atelier")
        self.resize(1400, 900)
        self.setAcceptDrops(True)
        self.setCentralWidget(self._build_central())
        self._build_docks()
        self.files = DocumentFiles(self)
        self.preferences = Preferences(self)
        self.window_actions = WindowActions(self)
        self._build_status_bar()
        self._connect()
        self.set_document(None)
        self.set_model(self.model)
        self.restore_layout()
        install_reference_tool(self)

    # --- construction --------------------------------------------------------------------------------------

    def _build_central(self) -> QWidget:
        self.canvas = CanvasView(undo_stack=self.undo_stack, tool_state=self.tool_state)
        # Drops go to the window (open the file), not to the scene, which has no items that take them.
        self.canvas.setAcceptDrops(False)
        self.canvas.viewport().setAcceptDrops(False)
        self.welcome = QLabel(WELCOME, alignment=Qt.AlignmentFlag.AlignCenter, wordWrap=True)
        self.welcome.setStyleSheet("color: palette(mid); font-size: 15px; padding: 40px")
        self.canvas_stack = QStackedWidget()
        self.canvas_stack.addWidget(self.welcome)
        self.canvas_stack.addWidget(self.canvas)
        self.staging = StagingPanel()
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(self.canvas_stack)
        splitter.addWidget(self.staging)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 2)
        splitter.setCollapsible(0, False)
        self.splitter = splitter
        self.banner = Banner()
        self.error_box = self.banner  # where errors show (tests and older callers read it by this name)
        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.banner)
        layout.addWidget(splitter, 1)
        return central

    def _build_docks(self) -> None:
        self.method_panel = MethodPanel()
        self.layers_panel = LayersPanel()
        self.history_panel = HistoryPanel()
        self.method_dock = self._dock("Method", self.method_panel)
        self.layers_dock = self._dock("Layers", self.layers_panel)
        self.history_dock = self._dock("History", self.history_panel)
        right = Qt.DockWidgetArea.RightDockWidgetArea
        self.addDockWidget(right, self.method_dock)
        self.addDockWidget(right, self.layers_dock)
        self.splitDockWidget(self.method_dock, self.layers_dock, Qt.Orientation.Vertical)
        self.tabifyDockWidget(self.layers_dock, self.history_dock)
        self.layers_dock.raise_()
        self.resizeDocks([self.method_dock], [340], Qt.Orientation.Horizontal)
        # The method panel's height is what it needs; the layer list takes the rest.
        self.resizeDocks([self.method_dock, self.layers_dock], [330, 600], Qt.Orientation.Vertical)

    def _dock(self, title: str, widget: QWidget) -> QDockWidget:
        dock = QDockWidget(title, self)
        dock.setObjectName(f"{title.lower()}-dock")  # saveState() needs names
        dock.setWidget(widget)
        dock.setMinimumWidth(280)
        return dock

    def _build_status_bar(self) -> None:
        self.position_label = QLabel()
        self.zoom_label = QLabel()
        self.model_label = QLabel()
        self.backend_state = QLabel("Backend: starting…")
        for label in (self.position_label, self.zoom_label, self.model_label, self.backend_state):
            self.statusBar().addPermanentWidget(label)

    def _request_segment(self, request_id: int, image, include, exclude, box) -> None:
        query_id = self.link.request_segment(image, include, exclude, box)
        self._segment_queries[query_id] = request_id

    def _on_segment_ready(self, query_id: str, mask) -> None:
        request_id = self._segment_queries.pop(query_id, None)
        if request_id is not None:
            self.canvas.show_segment_proposal(request_id, mask)

    def _connect(self) -> None:
        link = self.link
        link.methods_ready.connect(self._on_methods)
        link.started.connect(self._on_started)
        link.progress.connect(self._on_progress)
        link.preview.connect(self._on_preview)
        link.log.connect(self._on_log)
        link.result.connect(self._on_result)
        link.error.connect(self._on_error)
        link.cancelled.connect(self._on_cancelled)
        self.method_panel.run_requested.connect(self.run_edit)
        self.method_panel.run_next_requested.connect(lambda: self.run_edit(first=True))
        self.method_panel.cancel_requested.connect(self.cancel_edit)
        self.method_panel.queue_view.run_next_requested.connect(self.move_to_front)
        self.method_panel.queue_view.remove_requested.connect(self.remove_queued)
        self.staging.accept_requested.connect(self.accept_result)
        self.staging.discard_requested.connect(self.discard_result)
        self.history_panel.reuse_requested.connect(self.reuse_recipe)
        # Click-to-segment: the canvas asks, the backend answers (SAM or the offline segmenter).
        self._segment_queries: dict[str, int] = {}
        self.canvas.segment_requested.connect(self._request_segment)
        link.segment_ready.connect(self._on_segment_ready)
        for source in (self.canvas, self.layers_panel, self.history_panel):
            source.message.connect(self.show_status)
        self.canvas.zoom_changed.connect(lambda zoom: self.zoom_label.setText(f"{zoom:.0%}"))
        self.canvas.cursor_moved.connect(self._on_cursor)

    # --- the document --------------------------------------------------------------------------------------

    def set_document(self, document: Document | None, name: str = "") -> None:
        """Show `document`; the undo history, a staged result and a running job belong to the old one and go."""
        if self.jobs:  # their results would belong to the old picture: cancel them and stop listening
            for job_id in self.jobs.clear():
                self.link.cancel(job_id)
            self._finish_job("cancelled: another document was opened")
        self.parked_results.clear()
        if self.document is not None:
            self.document.events.modified_changed.disconnect(self._on_modified)
        self.document, self.document_name = document, name if document is not None else ""
        self.undo_stack.clear()
        self.canvas.set_document(document)
        self.layers_panel.set_document(document, self.undo_stack if document is not None else None)
        self.history_panel.set_document(document, self.undo_stack)
        self.canvas_stack.setCurrentWidget(self.canvas if document is not None else self.welcome)
        if document is not None:
            document.events.modified_changed.connect(self._on_modified)
            self.canvas.setFocus()
        self._clear_staging()
        self.files.document_replaced()
        self.window_actions.document_replaced(document is not None)
        self._update_title()

    def set_model(self, model: str) -> None:
        """The model the next run uses (a run already submitted keeps its own), shown in the status bar and the
        method dock."""
        self.model = model
        self.model_label.setText(f"Model: {model_name(model)}")
        self.model_label.setToolTip(model)
        self.method_panel.set_model(model)

    def set_document_name(self, name: str) -> None:
        self.document_name = name
        self._update_title()

    def _on_modified(self, _event: DocumentEvent) -> None:
        self._update_title()

    def _on_clean_changed(self, clean: bool) -> None:
        # Undo back to the saved state means the file on disk matches again (the document's own flag only
        # knows that something changed since).
        if clean and self.document is not None:
            self.document.set_modified(False)

    def _update_title(self) -> None:
        if self.document is None:
            self.setWindowTitle("Atelier")
            return
        star = "*" if self.document.modified else ""
        self.setWindowTitle(f"{self.document_name or 'Untitled'}{star} — Atelier")

    def show_status(self, text: str, timeout_ms: int = MESSAGE_MS) -> None:
        self.statusBar().showMessage(text, timeout_ms)

    def show_error(self, title: str, message: str, hint: str = "", level: str = "error") -> None:
        """In the banner over the canvas: never modal, never steals focus; the next message replaces it."""
        self.banner.show_message(title, message, hint, level)

    def _on_cursor(self, x: int, y: int) -> None:
        inside = self.document is not None and 0 <= x < self.document.width and 0 <= y < self.document.height
        self.position_label.setText(f"{x}, {y}" if inside else "")

    # --- drag and drop -------------------------------------------------------------------------------------

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt's name
        if local_files(event.mimeData()):
            event.acceptProposedAction()

    def dragMoveEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 - Qt's name
        if local_files(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 - Qt's name
        paths = local_files(event.mimeData())
        if paths:
            event.acceptProposedAction()
            self.files.open_dropped(paths)

    # --- running an edit -----------------------------------------------------------------------------------

    @property
    def job_id(self) -> str | None:
        """The edit whose progress the window shows: the running one, else the next in line; None when idle."""
        return self.jobs.current

    @property
    def job_request(self) -> EditRequest | None:
        return self.jobs.requests.get(self.jobs.current or "")

    def run_edit(self, first: bool = False) -> str | None:
        """Submit the current method on the document — queued behind the running edit, or first in line with
        `first` (Run next); returns its job id (None, with the reason shown, if it could not be built)."""
        method = self.method_panel.current_method()
        if method is None or self.document is None:
            reason = "the backend has not listed its methods yet" if method is None else "open a picture first"
            self.show_status(f"Cannot run: {reason}.")
            return None
        try:
            request = build_request(self.document, method, self.method_panel.inputs(), self.model)
        except MissingInput as missing:
            self.show_status(f"Cannot run: {missing}", 10_000)
            return None
        busy = bool(self.jobs)
        self.jobs.submitted(request, first=first)
        self.link.submit(request)
        if first and busy:
            self.link.run_next(request.job_id)
        if busy:
            position = self.jobs.waiting.index(request.job_id) + 1
            self.show_status(f"Queued {method.title} ({_ordinal(position)} in line)")
        else:
            self.method_panel.set_queued()
        self.method_panel.set_running(True)
        self.window_actions.set_running(True)
        self._show_queue()
        return request.job_id

    def cancel_edit(self) -> None:
        """Esc: cancel the running edit (the waiting ones stay queued)."""
        job_id = self.jobs.current
        if job_id is not None:
            self.link.cancel(job_id)
            self.method_panel.stage_label.setText("cancelling…")

    def move_to_front(self, job_id: str) -> None:
        if self.jobs.move_to_front(job_id):
            self.link.run_next(job_id)
            self._show_queue()
            self.method_panel.queue_view.select(job_id)

    def remove_queued(self, job_id: str) -> None:
        """Take a waiting edit out of the queue; its `cancelled` event then forgets it."""
        if job_id in self.jobs.waiting:
            self.link.cancel(job_id)

    def accept_result(self) -> None:
        """The staged result becomes a layer above the picture plus a history entry: one undo step."""
        metadata, image, document = self.staging.metadata, self.staging.array(), self.document
        if metadata is None or image is None or document is None:
            return
        title = str(metadata.get("method_title") or metadata.get("method") or "Edit")
        recipe = dict(metadata.get("recipe") or {})
        pixels, note = self._fit_to_document(image)
        layer = RasterLayer(name=f"{title} result", pixels=pixels, recipe=recipe)
        # The recipe is stored once; arrays meant for the viewer (insight) stay out of the saved project.
        details = {key: value for key, value in metadata.items() if key not in ("recipe", "insight")}
        details.setdefault("time", time.time())
        prompt = recipe.get("target_prompt") or recipe.get("source_prompt") or ""
        entry = HistoryEntry(f"{title}: {prompt}" if prompt else title, layer.id, recipe, details)
        painting_on = document.active_layer if isinstance(document.active_layer, (MaskLayer, ObjectLayer)) else None
        self.undo_stack.beginMacro(f"Accept {title} result")
        self.undo_stack.push(AddLayer(document, layer, _result_index(document)))
        self.undo_stack.push(AddHistoryEntry(document, entry))
        self.undo_stack.endMacro()
        if painting_on is not None:  # keep the mask active: adjusting it and running again is the usual next step
            document.set_active(painting_on.id)
        self._next_staged()
        self.show_status(f"Added '{layer.name}' as a new layer{note} (Ctrl+Z to undo)")

    def _fit_to_document(self, image: np.ndarray) -> tuple[np.ndarray, str]:
        """RGBA at the document's size, and a note if it had to be resized (the backend returns the input's size,
        so another size is worth saying)."""
        assert self.document is not None
        rgba = to_rgba(np.asarray(image, np.uint8))
        size, got = self.document.size, (rgba.shape[1], rgba.shape[0])
        if got == size:
            return rgba, ""
        logger.info("the result is %dx%d; resized to the document's %dx%d", *got, *size)
        resized = np.asarray(Image.fromarray(rgba).resize(size, Image.Resampling.LANCZOS))
        return np.ascontiguousarray(resized), f", resized from {got[0]}×{got[1]} to {size[0]}×{size[1]}"

    def discard_result(self) -> None:
        self._next_staged()

    def reuse_recipe(self, recipe: dict) -> None:
        self.show_status(self.method_panel.apply_recipe(recipe))
        self.method_dock.raise_()

    # --- staging: one result at a time, the others parked ---------------------------------------------------

    def _stage_result(self, image: np.ndarray, metadata: dict, request: EditRequest | None) -> None:
        seconds = metadata.get("seconds")
        timing = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        self.staged_request = request
        before = request.image if request is not None else None  # the picture the edit was made from
        label = f"Result — {metadata.get('method_title', '')}{timing}"
        self.staging.show_result(image, metadata, label, before=before)
        if self.parked_results:
            more = len(self.parked_results)
            self.staging.label.setText(f"{self.staging.label.text()}  (+{more} earlier result{'s' * (more > 1)})")

    def _park_staged_result(self) -> None:
        """A new edit starts while a result waits for Accept/Discard: set the result aside for its previews."""
        if self.staging.metadata is not None and (image := self.staging.array()) is not None:
            self.parked_results.append((image, dict(self.staging.metadata), self.staged_request))
            self.show_status("The earlier result is kept: it comes back once you accept or discard the new one")
        self.staging.clear()

    def _next_staged(self) -> None:
        """Accept/Discard is done with the staged result: bring back a parked one unless an edit is running."""
        self._clear_staging()
        if self.parked_results and self.jobs.running is None:
            self._stage_result(*self.parked_results.pop())

    def _clear_staging(self) -> None:
        self.staged_request = None
        self.staging.clear()

    # --- backend signals -----------------------------------------------------------------------------------

    def _finish_job(self, stage: str, complete: bool = False) -> None:
        """One of the window's edits ended; when none is left the window is idle again."""
        self._show_queue()
        if self.jobs:
            if stage.startswith(("failed", "cancelled")):
                self.show_status(f"Edit {stage}; the next one in the queue goes on")
            return
        self.method_panel.set_finished(stage, complete)
        self.window_actions.set_running(False)
        self._show_backend_state()
        self.preferences.job_finished()  # a backend restart the user put off until now

    def _show_queue(self) -> None:
        methods = self.method_panel.methods
        self.method_panel.queue_view.set_jobs(self.jobs, lambda m: methods[m].title if m in methods else m)
        self._show_backend_state()

    def _show_backend_state(self) -> None:
        if self.backend_restarting:
            return  # the restart's own text stays until the new backend lists its methods
        running = self.jobs.requests.get(self.jobs.running or "")
        if running is not None:
            method = self.method_panel.methods.get(running.method)
            waiting = f" ({len(self.jobs.waiting)} waiting)" if self.jobs.waiting else ""
            self.backend_state.setText(f"Backend: busy — {method.title if method else running.method}{waiting}")
        elif self.method_panel.methods:
            self.backend_state.setText(f"Backend: ready — {len(self.method_panel.methods)} methods")

    def _on_methods(self, infos: list[MethodInfo]) -> None:
        self.method_panel.set_methods(infos)
        self.backend_restarting = False
        self._show_backend_state()

    def _on_started(self, job_id: str, _message: str) -> None:
        if not self.jobs.started(job_id):
            return
        self._park_staged_result()
        self.method_panel.set_queued()
        self.method_panel.stage_label.setText("started")
        self._show_queue()
        self._show_backend_state()

    def _on_progress(self, job_id: str, step: int, total: int, stage: str) -> None:
        if job_id == self.jobs.current:
            self.method_panel.set_progress(step, total, stage)

    def _on_preview(self, job_id: str, step: int, image: np.ndarray) -> None:
        if job_id == self.jobs.current and image is not None:
            self.staging.show_preview(image, step)

    def _on_log(self, _job_id: str, message: str) -> None:
        self.show_status(message)

    def _on_result(self, job_id: str, image: np.ndarray, metadata: dict) -> None:
        request = self.jobs.ended(job_id)
        if request is None:
            return
        metadata = dict(metadata)
        if not metadata.get("recipe"):  # a backend that sent none: ours is exact
            metadata["recipe"] = dataclasses.replace(request, image=None).to_dict()
        if self.staging.metadata is not None:  # a parked-then-restored result is on show: this one goes first
            self._park_staged_result()
        self._stage_result(image, metadata, request)
        self._finish_job("done: accept or discard the result", complete=True)

    def _on_error(self, job_id: str, kind: str, message: str, hint: str) -> None:
        logger.warning("backend error (%s) for job %s: %s", kind, job_id or "-", message)
        self.statusBar().showMessage(f"Error: {message}" + (f" — {hint}" if hint else ""))
        ours = self.jobs.ended(job_id) is not None if job_id else False
        if kind == "backend-died":
            self._on_backend_died(message, ours)
        else:
            self.show_error(kind or "error", message, hint)
        if ours:
            if self.staging.metadata is None:
                self._clear_staging()
            self._finish_job(f"failed ({kind})")
        elif kind != "backend-died" and (not self.method_panel.methods or self.backend_restarting):
            self.backend_restarting = False
            self.backend_state.setText("Backend: error")

    def _on_backend_died(self, message: str, during_edit: bool) -> None:
        """The backend process is gone (crash, out of memory, killed): say so, and start a new one now — asking
        for the method list does that, and its answer flips the status back to ready. Queued edits go on there."""
        what = "Your edit was stopped. " if during_edit else ""
        self.show_error(
            "The backend stopped",
            f"{message}. {what}A new backend is starting.",
            "Your document is unchanged. If this keeps happening, try a smaller image or the CPU device.",
            level="warning",
        )
        self.backend_restarting = True
        self.backend_state.setText(DIED)
        self.link.request_methods()

    def _on_cancelled(self, job_id: str) -> None:
        running = job_id == self.jobs.running
        if self.jobs.ended(job_id) is None:
            return
        if running or not self.jobs:
            if self.staging.metadata is None:
                self._clear_staging()
            self._finish_job("cancelled")
            self.show_status("Edit cancelled")
        else:
            self._finish_job("removed")
            self.show_status("Removed the edit from the queue")

    # --- window layout and closing --------------------------------------------------------------------------

    def restore_layout(self) -> None:
        """The geometry and dock layout of the last session; a missing or corrupt saved value keeps the default."""
        for name, restore in (("window_geometry", self.restoreGeometry), ("window_state", self.restoreState)):
            text = getattr(self.settings, name)
            if not text:
                continue
            try:
                restored = restore(QByteArray(base64.b64decode(text, validate=True)))
            except (binascii.Error, ValueError):
                restored = False
            if not restored:
                logger.warning("the saved %s could not be restored; using the default", name.replace("_", " "))

    def remember_layout(self) -> bool:
        """Put the window's geometry and dock layout into the settings (not saved yet); True if they changed."""
        geometry = base64.b64encode(self.saveGeometry().data()).decode("ascii")
        state = base64.b64encode(self.saveState().data()).decode("ascii")
        changed = (geometry, state) != (self.settings.window_geometry, self.settings.window_state)
        self.settings.window_geometry, self.settings.window_state = geometry, state
        return changed

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt's name
        if not self.files.confirm_discard_changes():
            event.ignore()
            return
        for job_id in self.jobs.clear():
            self.link.cancel(job_id)
        self.files.end_session()
        super().closeEvent(event)


def _ordinal(number: int) -> str:
    return f"{number}{'st' if number == 1 else 'nd' if number == 2 else 'rd' if number == 3 else 'th'}"


def _result_index(document: Document) -> int | None:
    """Where a result layer goes: right above the active raster layer, else above the raster layer under the active
    layer (a mask is usually active after painting), else on top. Masks above it stay above it."""
    active = document.active_layer
    if active is None:
        return None
    below = document.layers[: document.index_of(active.id) + 1]
    rasters = [index for index, layer in enumerate(below) if isinstance(layer, RasterLayer)]
    return rasters[-1] + 1 if rasters else None
