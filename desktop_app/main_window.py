"""Atelier's main window: the image, a staging view for previews and results, and a method panel.

A thin shell for now (one RGB image, no layers): later the document model, the canvas and the panels replace the
image view and the side panel. What it settles already: a run builds one `EditRequest`; previews and results go to
the staging view, never over the user's pixels; accepting a result is one undo step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QAction, QCloseEvent, QImage, QKeySequence, QPixmap, QResizeEvent, QUndoCommand, QUndoStack
from PySide6.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFormLayout,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from backend.protocol import DEFAULT_MODEL, EditRequest, MethodInfo
from desktop_app.backend_link import BackendLink
from desktop_app.resources import sample_images

logger = logging.getLogger(__name__)

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff);;All files (*)"


class ImageLoadError(ValueError):
    """An image file that can't be read; the message says why."""


def load_rgb(path: str | Path) -> np.ndarray:
    """The picture at `path` as an HxWx3 uint8 array; ImageLoadError (with the reason) if it can't be read."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later while painting
            return np.asarray(image.convert("RGB")).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise ImageLoadError(str(error) or type(error).__name__) from None


def to_qimage(array: np.ndarray) -> QImage:
    """uint8 HxW, HxWx3 or HxWx4 array -> an RGB QImage owning its pixels."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    rgb = np.ascontiguousarray(array[:, :, :3], dtype=np.uint8)
    height, width, _ = rgb.shape
    return QImage(rgb.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


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

    def resizeEvent(self, event: QResizeEvent) -> None:  # noqa: N802 (Qt override)
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


class AcceptResult(QUndoCommand):
    """Accepting a staged result: the shown image becomes the result; undo brings the previous one back."""

    def __init__(self, view: ImageView, result: np.ndarray, title: str) -> None:
        super().__init__(f"Accept {title}")
        self._view = view
        self._before = view.array()
        self._after = result

    def redo(self) -> None:
        self._view.set_array(self._after)

    def undo(self) -> None:
        self._view.set_array(self._before)


class MainWindow(QMainWindow):
    """The image, the staging view (previews, then the result to accept or discard) and the method panel."""

    def __init__(self, link: BackendLink, model: str = DEFAULT_MODEL, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.link = link
        self.model = model
        self.methods: dict[str, MethodInfo] = {}
        self.job_id: str | None = None  # the edit this window submitted and is waiting for
        self.job_title = ""
        self.staged_metadata: dict | None = None
        self.undo_stack = QUndoStack(self)
        self._error_box: QMessageBox | None = None
        self.setWindowTitle("Atelier")
        self.resize(1100, 680)
        self.setCentralWidget(self._build_views())
        self.addDockWidget(Qt.DockWidgetArea.RightDockWidgetArea, self._build_method_dock())
        self._build_menus()
        self._build_status_bar()
        self._connect_link()
        self._set_running(False)
        self._set_staged(None)
        self._on_method_changed()
        self.export_action.setEnabled(False)

    # --- construction --------------------------------------------------------------------------------------

    def _build_views(self) -> QSplitter:
        self.image_view = ImageView("Open an image (File > Open Image, Ctrl+O) or a sample (File > Open Sample).")
        self.staging_view = ImageView("Previews of a running edit and its result appear here.")
        self.staging_label = QLabel("Staging")
        self.accept_button = QPushButton("Accept")
        self.accept_button.setToolTip("Replace the image with the result (Ctrl+Z undoes)")
        self.discard_button = QPushButton("Discard")
        self.accept_button.clicked.connect(self.accept_result)
        self.discard_button.clicked.connect(self.discard_result)
        buttons = _row(self.accept_button, self.discard_button)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(_pane(QLabel("Image"), self.image_view))
        splitter.addWidget(_pane(self.staging_label, self.staging_view, buttons))
        splitter.setChildrenCollapsible(False)
        return splitter

    def _build_method_dock(self) -> QDockWidget:
        self.method_combo = QComboBox()
        self.method_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.method_description = QLabel()
        self.method_description.setWordWrap(True)
        self.target_prompt = QLineEdit()
        self.source_prompt = QLineEdit()
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run the method (Ctrl+Enter)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Cancel the running edit (Esc)")
        self.run_button.clicked.connect(self.run_edit)
        self.cancel_button.clicked.connect(self.cancel_edit)
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("%v / %m")
        self.stage_label = QLabel()
        form = QFormLayout()
        form.addRow(self.method_combo)
        form.addRow(self.method_description)
        form.addRow("Prompt", self.target_prompt)
        form.addRow("Source prompt", self.source_prompt)
        form.addRow(_row(self.run_button, self.cancel_button))
        form.addRow(self.progress_bar)
        form.addRow(self.stage_label)
        panel = QWidget()
        panel.setLayout(form)
        dock = QDockWidget("Method")
        dock.setObjectName("method-dock")
        dock.setFeatures(QDockWidget.DockWidgetFeature.DockWidgetMovable)
        dock.setWidget(panel)
        dock.setMinimumWidth(300)
        return dock

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addAction(_action(self, "&Open Image…", self.choose_image, QKeySequence.StandardKey.Open))
        self.samples_menu = file_menu.addMenu("Open &Sample")
        for path in sample_images():
            # `triggered` passes `checked`; the keyword-only default keeps it away from the path.
            self.samples_menu.addAction(path.stem.replace("_", " "), lambda *_, p=path: self.open_image(p))
        self.samples_menu.setEnabled(not self.samples_menu.isEmpty())
        self.export_action = _action(self, "&Export PNG…", self.choose_export, "Ctrl+E")
        file_menu.addAction(self.export_action)
        file_menu.addSeparator()
        file_menu.addAction(_action(self, "&Quit", self.close, QKeySequence.StandardKey.Quit))
        edit_menu = self.menuBar().addMenu("&Edit")
        undo = self.undo_stack.createUndoAction(self, "&Undo")
        undo.setShortcut(QKeySequence.StandardKey.Undo)
        redo = self.undo_stack.createRedoAction(self, "&Redo")
        redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        edit_menu.addActions([undo, redo])
        job_menu = self.menuBar().addMenu("&Job")
        self.run_action = _action(self, "&Run", self.run_edit, "Ctrl+Return", "Ctrl+Enter")
        self.cancel_action = _action(self, "&Cancel", self.cancel_edit, "Esc")
        job_menu.addActions([self.run_action, self.cancel_action])

    def _build_status_bar(self) -> None:
        self.backend_state = QLabel("Backend: starting…")
        self.statusBar().addPermanentWidget(self.backend_state)

    def _connect_link(self) -> None:
        self.link.methods_ready.connect(self._on_methods)
        self.link.started.connect(self._on_started)
        self.link.progress.connect(self._on_progress)
        self.link.preview.connect(self._on_preview)
        self.link.log.connect(self._on_log)
        self.link.result.connect(self._on_result)
        self.link.error.connect(self._on_error)
        self.link.cancelled.connect(self._on_cancelled)

    # --- the image -----------------------------------------------------------------------------------------

    def image(self) -> np.ndarray | None:
        return self.image_view.array()

    def set_image(self, array: np.ndarray, name: str = "") -> None:
        """Show a new picture; what was staged and the undo history belong to the old one and go."""
        self.image_view.set_array(array)
        self.undo_stack.clear()
        self._set_staged(None)
        self.setWindowTitle(f"{name} — Atelier" if name else "Atelier")
        self.export_action.setEnabled(True)

    def choose_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open Image", "", IMAGE_FILTER)
        if path:
            self.open_image(path)

    def open_image(self, path: str | Path) -> bool:
        """Load `path`; an unreadable file leaves everything as it was and says why."""
        try:
            array = load_rgb(path)
        except ImageLoadError as error:
            QMessageBox.warning(self, "Could not open image", f"{path}\n\n{error}")
            self.statusBar().showMessage(f"Could not open {Path(path).name}: {error}")
            return False
        self.set_image(array, Path(path).name)
        self.statusBar().showMessage(f"Opened {Path(path).name} ({array.shape[1]}×{array.shape[0]})", 5000)
        return True

    def choose_export(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", "result.png", "PNG image (*.png)")
        if path:
            self.export_png(path)

    def export_png(self, path: str | Path) -> bool:
        """Save the shown image (accepted results included) as PNG."""
        array = self.image()
        if array is None:
            return False
        try:
            Image.fromarray(array).save(path, format="PNG")
        except (OSError, ValueError) as error:
            QMessageBox.warning(self, "Could not export", f"{path}\n\n{error}")
            return False
        self.statusBar().showMessage(f"Exported {path}", 5000)
        return True

    # --- running an edit -----------------------------------------------------------------------------------

    def current_method(self) -> MethodInfo | None:
        return self.methods.get(self.method_combo.currentData())

    def build_request(self) -> EditRequest | None:
        """The EditRequest for the current method, image and prompts (None, with a reason shown, if not ready)."""
        method, image = self.current_method(), self.image()
        if method is None or image is None:
            reason = "the backend has not listed its methods yet" if method is None else "open an image first"
            self.statusBar().showMessage(f"Cannot run: {reason}.", 5000)
            return None
        return EditRequest(
            method=method.id,
            image=image,
            target_prompt=self.target_prompt.text().strip(),
            source_prompt=self.source_prompt.text().strip(),
            model=self.model,
            seed=0,
        )

    def run_edit(self) -> str | None:
        """Submit an edit with the method's default parameters; returns its job id."""
        if self.job_id is not None:
            return None
        request = self.build_request()
        if request is None:
            return None
        self.job_id = self.link.submit(request)
        self.job_title = self.methods[request.method].title
        self._set_running(True)
        self._set_staged(None)
        self.progress_bar.setRange(0, 0)
        self.stage_label.setText("queued")
        return self.job_id

    def cancel_edit(self) -> None:
        if self.job_id is not None:
            self.link.cancel(self.job_id)
            self.stage_label.setText("cancelling…")

    def accept_result(self) -> None:
        staged = self.staging_view.array()
        if self.staged_metadata is None or staged is None:
            return
        self.undo_stack.push(AcceptResult(self.image_view, staged, self.staged_metadata.get("method_title", "")))
        self._set_staged(None)
        self.statusBar().showMessage("Result accepted (Ctrl+Z to undo)", 5000)

    def discard_result(self) -> None:
        self._set_staged(None)

    def _set_running(self, running: bool) -> None:
        for widget in (self.run_button, self.run_action):
            widget.setEnabled(not running)
        for widget in (self.cancel_button, self.cancel_action):
            widget.setEnabled(running)

    def _set_staged(self, array: np.ndarray | None, metadata: dict | None = None, label: str = "Staging") -> None:
        """Put a preview (metadata None) or a result (with its metadata) in staging, or clear it."""
        self.staging_view.set_array(array)
        self.staged_metadata = metadata
        self.staging_label.setText(label)
        self.accept_button.setEnabled(metadata is not None)
        self.discard_button.setEnabled(metadata is not None)

    def _finish_job(self, stage: str) -> None:
        self.job_id = None
        self._set_running(False)
        if self.progress_bar.maximum() == 0:  # still a busy indicator: the job ended before any progress
            self.progress_bar.setRange(0, 1)
        self.stage_label.setText(stage)
        self.backend_state.setText(f"Backend: ready — {len(self.methods)} methods")

    # --- backend signals -----------------------------------------------------------------------------------

    def _on_methods(self, infos: list[MethodInfo]) -> None:
        previous = self.method_combo.currentData()
        self.methods = {info.id: info for info in infos}
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        for index, info in enumerate(infos):
            self.method_combo.addItem(info.title, info.id)
            self.method_combo.setItemData(index, info.description, Qt.ItemDataRole.ToolTipRole)
        self.method_combo.blockSignals(False)
        self.method_combo.setCurrentIndex(max(0, self.method_combo.findData(previous)))
        self._on_method_changed()
        self.backend_state.setText(f"Backend: ready — {len(infos)} methods")

    def _on_method_changed(self) -> None:
        method = self.current_method()
        self.method_description.setText(method.description if method else "")
        self.method_description.setVisible(method is not None)
        self.method_combo.setToolTip(method.description if method else "")
        for field, box in (("target_prompt", self.target_prompt), ("source_prompt", self.source_prompt)):
            _describe_input(box, method, field)

    def _on_started(self, job_id: str, _message: str) -> None:
        if job_id == self.job_id:
            self.backend_state.setText(f"Backend: running {self.job_title}")
            self.stage_label.setText("started")

    def _on_progress(self, job_id: str, step: int, total: int, stage: str) -> None:
        if job_id != self.job_id:
            return
        self.progress_bar.setRange(0, total)  # total 0: a busy indicator (e.g. while the model loads)
        self.progress_bar.setValue(step)
        self.stage_label.setText(stage)

    def _on_preview(self, job_id: str, step: int, image: np.ndarray) -> None:
        if job_id == self.job_id and image is not None:
            self._set_staged(image, label=f"Preview — step {step}")

    def _on_log(self, _job_id: str, message: str) -> None:
        self.statusBar().showMessage(message, 5000)

    def _on_result(self, job_id: str, image: np.ndarray, metadata: dict) -> None:
        if job_id != self.job_id:
            return
        self.progress_bar.setValue(self.progress_bar.maximum())
        seconds = metadata.get("seconds")
        timing = f" in {seconds:.1f} s" if isinstance(seconds, (int, float)) else ""
        self._set_staged(image, dict(metadata), f"Result — {metadata.get('method_title', '')}{timing}")
        self._finish_job("done: accept or discard the result")

    def _on_error(self, job_id: str, kind: str, message: str, hint: str) -> None:
        text = f"Error: {message}" + (f" — {hint}" if hint else "")
        logger.warning("backend error (%s) for job %s: %s", kind, job_id or "-", message)
        self.statusBar().showMessage(text)
        self._show_error(kind, message, hint)
        if job_id and job_id == self.job_id:
            self._set_staged(None)
            self._finish_job(f"failed ({kind})")
        elif not self.methods:
            self.backend_state.setText("Backend: error")

    def _on_cancelled(self, job_id: str) -> None:
        if job_id == self.job_id:
            self._set_staged(None)
            self._finish_job("cancelled")
            self.statusBar().showMessage("Edit cancelled", 5000)

    def _show_error(self, kind: str, message: str, hint: str) -> None:
        """A non-modal box (one at a time, reused) so that the window stays usable."""
        if self._error_box is None:
            self._error_box = QMessageBox(QMessageBox.Icon.Warning, "Atelier", "", QMessageBox.StandardButton.Ok, self)
            self._error_box.setModal(False)
        self._error_box.setText(message)
        self._error_box.setInformativeText(hint)
        self._error_box.setWindowTitle(f"Atelier — {kind or 'error'}")
        self._error_box.show()

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt override)
        if self.job_id is not None:
            self.link.cancel(self.job_id)
        super().closeEvent(event)


def _describe_input(box: QLineEdit, method: MethodInfo | None, field: str) -> None:
    """Enable a prompt box only for methods that use it, and say whether it is required."""
    if method is None:
        box.setEnabled(False)
        box.setPlaceholderText("waiting for the backend…")
        return
    required, optional = field in method.inputs, field in method.optional_inputs
    box.setEnabled(required or optional)
    box.setPlaceholderText("required" if required else "optional" if optional else "not used by this method")


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return row


def _pane(*widgets: QWidget) -> QWidget:
    pane = QWidget()
    layout = QVBoxLayout(pane)
    layout.setContentsMargins(4, 4, 4, 4)
    for widget in widgets:
        layout.addWidget(widget, stretch=1 if isinstance(widget, ImageView) else 0)
    return pane


def _action(parent: QWidget, text: str, slot: object, *shortcuts: QKeySequence | str) -> QAction:
    action = QAction(text, parent)
    action.setShortcuts([QKeySequence(shortcut) for shortcut in shortcuts])
    action.triggered.connect(slot)
    parent.addAction(action)
    return action
