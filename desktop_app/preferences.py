"""Edit ▸ Preferences: the settings a user sets by hand, checked before anything is saved, then applied at once.

Where each setting goes when the user presses OK:
- the model: the window's next run (a run already going keeps its model);
- autosave minutes: the autosave timer, restarted with the new interval (0 turns autosave off);
- device, dtype, live previews, models folder: the backend process reads them when it starts, so it is restarted
  with them (if an edit is running the user chooses: cancel it and restart now, or restart when it ends);
- the SAM checkpoint: saved with the rest.

A setting given on the command line (--device, --model) holds for that run until the user changes that very
setting here. Every question to the user is one small method, so tests replace it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.settings import Settings, backend_settings, check_value, data_dir, save_settings

if TYPE_CHECKING:
    from desktop_app.main_window import MainWindow

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
MODEL_FILE_FILTER = "Safetensors checkpoint (*.safetensors)"
SAM_FILE_FILTER = "SAM checkpoint (*.pth *.pt *.safetensors);;All files (*)"
RESTARTING = "Backend: restarting with new settings"


def check_preferences(values: dict[str, Any]) -> list[str]:
    """What is wrong with the form's values, one sentence each; empty when they can be saved."""
    problems = [_model_problem(values["model"])]
    if models_dir := values["models_dir"]:
        if not Path(models_dir).exists():
            problems.append(f"The models folder {models_dir} does not exist. Create it or choose another one.")
        elif not Path(models_dir).is_dir():
            problems.append(f"The models folder {models_dir} is a file, not a folder.")
    if (sam := values["sam_checkpoint"]) and not Path(sam).is_file():
        problems.append(f"The SAM checkpoint {sam} does not exist (or is not a file).")
    for name in ("device", "dtype", "autosave_minutes"):
        try:
            check_value(name, values[name])
        except ValueError as error:
            problems.append(f"{name.replace('_', ' ').capitalize()} '{values[name]}': {error}.")
    return [problem for problem in problems if problem]


def _model_problem(model: str) -> str:
    if not model:
        return "Choose a model: one from the list, a model folder or a .safetensors file."
    if not _is_path(model):
        return ""  # an id or a hub name: only the backend knows them all, and it says so on the next run
    path = Path(model)
    if not path.exists():
        return f"The model {model} does not exist."
    if path.is_dir():
        if (path / "model_index.json").is_file() or (path / "unet").is_dir():
            return ""
        return f"The folder {model} is not a diffusers model (it has no model_index.json)."
    if path.suffix.lower() != ".safetensors":
        return f"{path.name} is not a .safetensors file; Atelier loads only .safetensors checkpoints."
    return ""


def _is_path(model: str) -> bool:
    return Path(model).is_absolute() or model.startswith(("~", ".")) or model.lower().endswith(CHECKPOINT_SUFFIXES)


def _path_text(text: str) -> str:
    text = text.strip()
    return str(Path(text).expanduser()) if text else ""


def backend_wanted(before: Settings, after: Settings, running: dict[str, Any]) -> dict[str, Any]:
    """The settings the backend should run with after the user changed `before` into `after`: the saved ones, but
    what it runs with now (e.g. a command-line --device) holds until the user changes that very setting."""
    old, new = backend_settings(before), backend_settings(after)
    changed = {key: value for key, value in new.items() if value != old[key]}
    return {**new, **running, **changed} if changed else dict(running)


class PreferencesDialog(QDialog):
    """The form. OK closes it only when `check_preferences` finds nothing wrong; else it says what, in red."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Preferences")
        self.models: dict[str, dict[str, Any]] = {}
        self._build_fields(settings)
        self.error_label = QLabel(wordWrap=True, visible=False)
        self.error_label.setStyleSheet("color: #c62828")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        self.ok_button = buttons.button(QDialogButtonBox.StandardButton.Ok)
        self._lay_out(buttons)
        self.set_models([])

    def _build_fields(self, settings: Settings) -> None:
        self.model_combo = QComboBox(editable=True)
        self.model_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.model_combo.lineEdit().setPlaceholderText("a model from the list, a folder or a .safetensors file")
        self.model_combo.setCurrentText(settings.model)
        self.model_combo.editTextChanged.connect(self._show_model_info)
        self.model_info = QLabel(wordWrap=True)
        self.model_info.setStyleSheet("color: palette(mid)")
        self.model_folder_button = QPushButton("Browse folder…", toolTip="A diffusers model folder on this computer")
        self.model_file_button = QPushButton("Browse file…", toolTip="A single .safetensors checkpoint")
        self.model_folder_button.clicked.connect(self._browse_model_folder)
        self.model_file_button.clicked.connect(self._browse_model_file)
        self.models_dir_edit = QLineEdit(settings.models_dir)
        self.models_dir_edit.setPlaceholderText(f"not set: {data_dir() / 'models'}")
        self.models_dir_button = QPushButton("Browse…")
        self.models_dir_button.clicked.connect(self._browse_models_dir)
        self.sam_edit = QLineEdit(settings.sam_checkpoint, placeholderText="not set: the built-in segmenter")
        self.sam_button = QPushButton("Browse…")
        self.sam_button.clicked.connect(self._browse_sam)
        self.device_combo = QComboBox(editable=True, toolTip="auto: cuda, else mps, else the CPU; cuda:1 = 2nd GPU")
        self.device_combo.addItems(DEVICES)
        self.device_combo.setCurrentText(settings.device)
        self.dtype_combo = QComboBox(toolTip="auto: fp16 on a GPU, fp32 on the CPU")
        self.dtype_combo.addItems(DTYPE_CHOICES)
        self.dtype_combo.setCurrentText("fp16" if settings.dtype == "float16" else settings.dtype)
        self.previews_check = QCheckBox("Show the picture forming: a preview every step", checked=settings.previews)
        self.autosave_spin = QDoubleSpinBox(minimum=0, maximum=24 * 60, decimals=1, suffix=" min")
        self.autosave_spin.setSpecialValueText("Off")
        self.autosave_spin.setValue(settings.autosave_minutes)

    def _lay_out(self, buttons: QDialogButtonBox) -> None:
        form = QFormLayout()
        form.addRow("Default model", self.model_combo)
        form.addRow("", _row(self.model_info, self.model_folder_button, self.model_file_button))
        form.addRow("Models folder", _row(self.models_dir_edit, self.models_dir_button))
        form.addRow("SAM checkpoint", _row(self.sam_edit, self.sam_button))
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.dtype_combo)
        form.addRow("Live previews", self.previews_check)
        form.addRow("Autosave every", self.autosave_spin)
        note = QLabel(
            "Device, precision, previews and the models folder take effect when the backend restarts, "
            "which OK does for you.",
            wordWrap=True,
        )
        note.setStyleSheet("color: palette(mid)")
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        for widget in (note, self.error_label, buttons):
            layout.addWidget(widget)
        self.setMinimumWidth(560)

    # --- values -------------------------------------------------------------------------------------------

    def set_models(self, models: list[dict[str, Any]]) -> None:
        """Fill the model list with the backend's models (ids; their titles as tooltips), keeping what is typed."""
        text = self.model_combo.currentText()
        self.models = {model["id"]: model for model in models}
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for index, model in enumerate(models):
            self.model_combo.addItem(model["id"])
            self.model_combo.setItemData(index, _describe(model), Qt.ItemDataRole.ToolTipRole)
        self.model_combo.setCurrentText(text)
        self.model_combo.blockSignals(False)
        self._show_model_info()

    def form_values(self) -> dict[str, Any]:
        """The settings the form edits, as it has them now; paths stripped and with ~ expanded."""
        model = self.model_combo.currentText().strip()
        return {
            "model": _path_text(model) if _is_path(model) else model,
            "models_dir": _path_text(self.models_dir_edit.text()),
            "sam_checkpoint": _path_text(self.sam_edit.text()),
            "device": self.device_combo.currentText().strip().lower(),
            "dtype": self.dtype_combo.currentText(),
            "previews": self.previews_check.isChecked(),
            "autosave_minutes": self.autosave_spin.value(),
        }

    def accept(self) -> None:
        """OK: close only if the values are fine; otherwise say what is wrong and stay open."""
        problems = check_preferences(self.form_values())
        if problems:
            self.error_label.setText("\n".join(problems))
            self.error_label.setVisible(True)
            return
        self.error_label.setVisible(False)
        super().accept()

    def _show_model_info(self) -> None:
        model = self.models.get(self.model_combo.currentText().strip())
        self.model_info.setText(_describe(model) if model else "")

    # --- browsing (the questions are replaced in tests) ---------------------------------------------------

    def ask_folder(self, title: str, start: str) -> str:
        return QFileDialog.getExistingDirectory(self, title, start)

    def ask_file(self, title: str, start: str, name_filter: str) -> str:
        return QFileDialog.getOpenFileName(self, title, start, name_filter)[0]

    def _browse_model_folder(self) -> None:
        if path := self.ask_folder("Choose a diffusers model folder", self._models_start()):
            self.model_combo.setCurrentText(path)

    def _browse_model_file(self) -> None:
        if path := self.ask_file("Choose a .safetensors checkpoint", self._models_start(), MODEL_FILE_FILTER):
            self.model_combo.setCurrentText(path)

    def _browse_models_dir(self) -> None:
        if path := self.ask_folder("Choose the models folder", _start(self.models_dir_edit.text())):
            self.models_dir_edit.setText(path)

    def _browse_sam(self) -> None:
        if path := self.ask_file("Choose a SAM checkpoint", _start(self.sam_edit.text()), SAM_FILE_FILTER):
            self.sam_edit.setText(path)

    def _models_start(self) -> str:
        model = self.model_combo.currentText().strip()
        if _is_path(model):
            return _start(model)
        return _start(self.models_dir_edit.text() or str(data_dir() / "models"))


def _describe(model: dict[str, Any]) -> str:
    family = f", {model['family']}" if model.get("family") else ""
    return f"{model.get('title') or model['id']} ({model.get('source', '?')}{family}): {model.get('location', '')}"


def _start(text: str) -> str:
    """Where a file dialog opens: the path typed, else its folder, else the home folder."""
    path = Path(text.strip()).expanduser() if text.strip() else Path.home()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return str(path if path.is_dir() else Path.home())


def _row(*widgets: QWidget) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for index, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if index == 0 else 0)
    return row


class Preferences(QObject):
    """Opens the dialog for `window` and applies what the user accepted (see the module docstring)."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__(window)
        self.window = window
        self.dialog: PreferencesDialog | None = None
        self.restart_after_job: dict[str, Any] | None = None  # backend settings waiting for the edit to end

    def open(self) -> PreferencesDialog:
        """Show the dialog (window-modal, without blocking) with the saved settings; the backend's model list
        fills the model box when it arrives."""
        if self.dialog is not None and self.dialog.isVisible():
            self.dialog.raise_()
            return self.dialog
        if self.dialog is not None:
            self.dialog.deleteLater()
        link, dialog = self.window.link, PreferencesDialog(self.window.settings, self.window)
        dialog.accepted.connect(lambda: self.apply(dialog.form_values()))
        link.models_ready.connect(dialog.set_models)
        dialog.finished.connect(lambda _result: link.models_ready.disconnect(dialog.set_models))
        self.dialog = dialog
        link.request_models()
        dialog.open()
        return dialog

    def apply(self, values: dict[str, Any]) -> None:
        """Save `values` (form_values()) into the settings and bring the window and the backend in line."""
        window, settings = self.window, self.window.settings
        before = dataclasses.replace(settings)
        for name, value in values.items():
            setattr(settings, name, value)  # in place: the window's parts share this object
        try:
            save_settings(settings)
        except OSError as error:
            log.warning("could not save the preferences: %s", error)
            window.show_error("Could not save", f"Could not save the preferences: {error}", "They hold until you quit.")
        if settings.model != before.model:
            window.set_model(settings.model)
        if settings.autosave_minutes != before.autosave_minutes:
            window.files.set_autosave_minutes(settings.autosave_minutes)
        wanted = backend_wanted(before, settings, window.link.settings)
        if wanted != window.link.settings:
            self.restart_backend(wanted)
        else:
            window.show_status("Preferences saved")

    def restart_backend(self, settings: dict[str, Any]) -> None:
        """Restart the backend with `settings`; while an edit runs, first ask whether to cancel it or wait."""
        window = self.window
        if window.job_id is not None:
            if self.ask_restart_during_job() == "later":
                self.restart_after_job = settings
                window.show_status("The backend restarts with the new settings when this edit ends")
                return
            window.cancel_edit()
        self.restart_after_job = None
        window.link.restart(settings)
        window.link.request_methods()  # its answer says the new backend is up
        window.backend_restarting = True
        window.backend_state.setText(RESTARTING)
        window.show_status("Preferences saved; the backend restarts with the new settings")

    def job_finished(self) -> None:
        """The window's edit ended: a restart the user put off until now happens now."""
        if self.restart_after_job is not None:
            self.restart_backend(self.restart_after_job)

    def ask_restart_during_job(self) -> str:
        """'now' (cancel the running edit and restart) or 'later' (restart when the edit ends)."""
        box = QMessageBox(QMessageBox.Icon.Question, "Restart the backend?", "", parent=self.window)
        box.setText(
            "An edit is running. The new device, precision, preview or models folder settings need a "
            "restart of the backend."
        )
        now = box.addButton("Cancel the Edit and Restart", QMessageBox.ButtonRole.AcceptRole)
        box.addButton("Restart When It Ends", QMessageBox.ButtonRole.RejectRole)
        box.exec()
        return "now" if box.clickedButton() is now else "later"


__all__ = ["Preferences", "PreferencesDialog", "backend_wanted", "check_preferences"]
