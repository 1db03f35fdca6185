"""The Method panel: choose one of the backend's methods, type its prompts, Run / Cancel, watch the progress.

The method list comes from the backend (it is the only one that knows); each prompt box is enabled only for methods
that use it, and the parameter form is built from the method's ParamSpecs (paper defaults, ranges, help tooltips).
Reusing a past result fills the form with its parameters and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from backend.protocol import MethodInfo
from desktop_app.edit_request import MethodInputs, mask_roles
from desktop_app.panels.param_form import ParamForm
from desktop_app.panels.queue import QueueView

PROMPT_FIELDS = ("target_prompt", "source_prompt", "negative_prompt")


class MethodPanel(QWidget):
    run_requested = Signal()
    run_next_requested = Signal()
    cancel_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.methods: dict[str, MethodInfo] = {}
        self.method_combo = QComboBox()
        self.method_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.method_combo.currentIndexChanged.connect(self._on_method_changed)
        self.method_description = QLabel(wordWrap=True)
        self.needs_label = QLabel(wordWrap=True)
        self.target_prompt = QLineEdit()
        self.source_prompt = QLineEdit()
        self.negative_prompt = QLineEdit()
        self.param_form = ParamForm()
        self.run_button = QPushButton("Run", toolTip="Run the method; while an edit runs, queue it (Ctrl+Enter)")
        self.run_next_button = QPushButton("Run next", toolTip="Queue it ahead of the waiting edits (Ctrl+Shift+Enter)")
        self.cancel_button = QPushButton("Cancel", toolTip="Cancel the running edit (Esc)")
        self.run_button.clicked.connect(self.run_requested)
        self.run_next_button.clicked.connect(self.run_next_requested)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.queue_view = QueueView()
        self.progress_bar = QProgressBar()
        self.progress_bar.setFormat("%v / %m")
        self.stage_label = QLabel()
        self.model_label = QLabel()  # read-only here: the model is chosen in Edit ▸ Preferences
        self.model_label.setStyleSheet("color: palette(mid)")
        self._lay_out()
        self.set_running(False)
        self._on_method_changed()

    def _lay_out(self) -> None:
        # Wrapped labels go in the box layout, not in form rows: a form row does not ask them for the height their
        # wrapped text needs, so a narrow dock clipped them.
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        for widget in (self.method_combo, self.method_description, self.needs_label):
            layout.addWidget(widget)
        form = QFormLayout()
        form.addRow("Prompt", self.target_prompt)
        form.addRow("Source prompt", self.source_prompt)
        form.addRow("Negative", self.negative_prompt)
        layout.addLayout(form)
        for widget in (
            self.param_form,
            _row(self.run_button, self.run_next_button, self.cancel_button),
            self.progress_bar,
            self.stage_label,
            self.queue_view,
            self.model_label,
        ):
            layout.addWidget(widget)
        layout.addStretch(1)

    # --- methods ------------------------------------------------------------------------------------------

    def set_methods(self, infos: list[MethodInfo]) -> None:
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

    def set_model(self, model: str) -> None:
        """Show the model the next run uses."""
        self.model_label.setText(f"Model: {model_name(model)}")
        self.model_label.setToolTip(f"{model}\nChange it in Edit ▸ Preferences (Ctrl+,)")

    def current_method(self) -> MethodInfo | None:
        return self.methods.get(self.method_combo.currentData())

    def inputs(self) -> MethodInputs:
        return MethodInputs(
            target_prompt=self.target_prompt.text(),
            source_prompt=self.source_prompt.text(),
            negative_prompt=self.negative_prompt.text(),
            params=self.param_form.values(),
            seed=self.param_form.seed,
        )

    def apply_recipe(self, recipe: dict[str, Any]) -> str:
        """Select the recipe's method and fill its prompts, parameters and seed; returns what happened, in words."""
        method_id = recipe.get("method", "")
        index = self.method_combo.findData(method_id)
        if index < 0:
            return f"This backend does not offer the method '{method_id}'; nothing was reused."
        self.method_combo.setCurrentIndex(index)
        for name in PROMPT_FIELDS:
            getattr(self, name).setText(str(recipe.get(name, "")))
        skipped = self.param_form.set_values(dict(recipe.get("params") or {}), int(recipe.get("seed", 0) or 0))
        note = f" (not reusable: {', '.join(skipped)})" if skipped else ""
        return f"Reusing the parameters of a {self.methods[method_id].title} result{note}."

    def reset_params(self) -> None:
        self.param_form.reset()

    # --- job state ----------------------------------------------------------------------------------------

    def set_running(self, running: bool) -> None:
        """Run stays available while an edit runs (it queues); Run next only means something then."""
        self.run_next_button.setEnabled(running)
        self.cancel_button.setEnabled(running)

    def set_queued(self) -> None:
        self.progress_bar.setRange(0, 0)  # a busy indicator until the first progress event
        self.stage_label.setText("queued")

    def set_progress(self, step: int, total: int, stage: str) -> None:
        self.progress_bar.setRange(0, total)  # total 0: a busy indicator (e.g. while the model loads)
        self.progress_bar.setValue(step)
        self.stage_label.setText(stage)

    def set_finished(self, stage: str, complete: bool = False) -> None:
        if complete:
            self.progress_bar.setValue(self.progress_bar.maximum())
        if self.progress_bar.maximum() == 0:  # still a busy indicator: the job ended before any progress
            self.progress_bar.setRange(0, 1)
        self.stage_label.setText(stage)
        self.set_running(False)

    # --- widgets ------------------------------------------------------------------------------------------

    def _on_method_changed(self) -> None:
        method = self.current_method()
        self.method_description.setText(method.description if method else "")
        self.method_description.setVisible(method is not None)
        self.method_combo.setToolTip(method.description if method else "")
        self.needs_label.setText(_needs_text(method))
        self.needs_label.setVisible(method is not None)
        for name in PROMPT_FIELDS:
            _describe_input(getattr(self, name), method, name)
        self.param_form.set_specs(method.params if method else ())


def model_name(model: str) -> str:
    """A model as a user reads it: the name of a folder or file (the full path is long), else the id itself."""
    path = Path(model)
    return path.name if path.is_absolute() or model.startswith(("~", ".")) else model


def _needs_text(method: MethodInfo | None) -> str:
    """'Needs: prompt, 'object' mask · Can use: 'edit' mask' from the method's declared inputs."""
    if method is None:
        return ""
    names = {"target_prompt": "prompt", "source_prompt": "source prompt", "negative_prompt": "negative prompt"}
    names |= {
        "object_prompts": "objects",
        "points": "drag points",
        "reference": "reference image",
        "move": "region move",
    }
    required, optional = mask_roles(method)

    def words(items: tuple[str, ...], roles: list[str]) -> list[str]:
        return [names[item] for item in items if item in names] + [f"'{role}' mask" for role in roles]

    parts = [f"<b>Needs:</b> {', '.join(need)}" if (need := words(method.inputs, required)) else ""]
    parts.append(f"<b>Can use:</b> {', '.join(can)}" if (can := words(method.optional_inputs, optional)) else "")
    return " · ".join(part for part in parts if part)


def _describe_input(box: QLineEdit, method: MethodInfo | None, field: str) -> None:
    """Enable a prompt box only for methods that use it, and say whether it is required."""
    if method is None:
        box.setEnabled(False)
        box.setPlaceholderText("waiting for the backend…")
        return
    required, optional = field in method.inputs, field in method.optional_inputs
    box.setEnabled(required or optional)
    box.setPlaceholderText("required" if required else "optional" if optional else "not used by this method")


def _row(*widgets: QWidget, stretch_first: bool = False) -> QWidget:
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for index, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if stretch_first and index == 0 else 0)
    return row


__all__ = ["MethodPanel", "model_name"]
