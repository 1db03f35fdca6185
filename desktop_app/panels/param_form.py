"""A method's parameter form, built from its ParamSpecs: never a hand-made form per method.

int -> spin box, float -> double spin box (with a slider beside it when the spec asks for one), bool -> check
box, choice -> combo box, str -> line edit; each with the paper's default, the allowed range and the help text as
tooltip. Plus the seed, which every run records.
"""

from __future__ import annotations

import random
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QSlider,
    QSpinBox,
    QToolButton,
    QWidget,
)

from backend.protocol import ParamSpec

MAX_SEED = 2**31 - 1  # QSpinBox holds a C int; the backend accepts up to 2^32 - 1
INT_LIMIT = 2**31 - 1


class ParamForm(QWidget):
    """Editors for one method's parameters and the seed; `values()` is what the next run sends."""

    changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.specs: tuple[ParamSpec, ...] = ()
        self.editors: dict[str, QWidget] = {}
        self._form = QFormLayout(self)
        self._form.setContentsMargins(0, 0, 0, 0)
        self.set_specs(())

    def set_specs(self, specs: tuple[ParamSpec, ...]) -> None:
        """Rebuild the form for another method (values start at the defaults)."""
        while self._form.rowCount():
            self._form.removeRow(0)  # deletes the row's widgets too
        self.specs, self.editors = tuple(specs), {}
        for spec in self.specs:
            editor = _editor(spec)
            _connect_changed(editor, self.changed)
            self.editors[spec.name] = editor
            self._form.addRow(spec.label or spec.name.replace("_", " ").capitalize(), editor)
        self.seed_box = QSpinBox(maximum=MAX_SEED, toolTip="Same seed, same picture")
        self.seed_box.valueChanged.connect(self.changed)
        self.dice = QToolButton(text="Random", toolTip="A new random seed")
        self.dice.clicked.connect(lambda: self.seed_box.setValue(random.randint(0, MAX_SEED)))
        self.reset_button = QToolButton(text="Defaults", toolTip="Reset every parameter to the paper's default")
        self.reset_button.clicked.connect(self.reset)
        row = QWidget()
        line = QHBoxLayout(row)
        line.setContentsMargins(0, 0, 0, 0)
        for widget in (self.seed_box, self.dice, self.reset_button):
            line.addWidget(widget)
        self._form.addRow("Seed", row)

    def values(self) -> dict[str, Any]:
        return {spec.name: _read(self.editors[spec.name], spec) for spec in self.specs}

    @property
    def seed(self) -> int:
        return self.seed_box.value()

    def set_values(self, params: dict[str, Any], seed: int | None = None) -> list[str]:
        """Fill in reused values; returns the names this method does not have or whose values are invalid."""
        skipped = []
        for name, value in params.items():
            spec = next((s for s in self.specs if s.name == name), None)
            try:
                _write(self.editors[name], spec.validate(value))
            except (AttributeError, KeyError, ValueError):
                skipped.append(name)
        if seed is not None:
            self.seed_box.setValue(max(0, min(int(seed), MAX_SEED)))
        return skipped

    def reset(self) -> None:
        for spec in self.specs:
            _write(self.editors[spec.name], spec.default)
        self.seed_box.setValue(0)


def _editor(spec: ParamSpec) -> QWidget:
    tooltip = spec.help + (f"\nDefault: {spec.default}" if spec.help else f"Default: {spec.default}")
    if spec.type == "int":
        editor: QWidget = QSpinBox(minimum=_bound(spec.minimum, -INT_LIMIT), maximum=_bound(spec.maximum, INT_LIMIT))
    elif spec.type == "float" and spec.slider and None not in (spec.minimum, spec.maximum):
        editor = SliderSpin(spec.minimum, spec.maximum, max(3, _decimals(spec)))
    elif spec.type == "float":
        editor = QDoubleSpinBox(decimals=_decimals(spec), singleStep=_step(spec))
        low = spec.minimum if spec.minimum is not None else -1e9
        editor.setRange(low, spec.maximum if spec.maximum is not None else 1e9)
    elif spec.type == "bool":
        editor = QCheckBox()
    elif spec.type == "choice":
        editor = QComboBox()
        editor.addItems(list(spec.choices))
    else:
        editor = QLineEdit()
    editor.setToolTip(tooltip)
    _write(editor, spec.default)
    return editor


class SliderSpin(QWidget):
    """A float between two bounds as a slider and a spin box that follow each other; the spin box holds the value
    (typed values keep their decimals), the slider moves in hundredths of the range."""

    valueChanged = Signal(float)
    TICKS = 100

    def __init__(self, minimum: float, maximum: float, decimals: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.minimum, self.maximum = float(minimum), float(maximum)
        self.slider = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=self.TICKS)
        self.spin = QDoubleSpinBox(decimals=decimals, singleStep=(self.maximum - self.minimum) / self.TICKS)
        self.spin.setRange(self.minimum, self.maximum)
        line = QHBoxLayout(self)
        line.setContentsMargins(0, 0, 0, 0)
        line.addWidget(self.slider, 1)
        line.addWidget(self.spin)
        self.slider.valueChanged.connect(self._slid)
        self.spin.valueChanged.connect(self._typed)

    def value(self) -> float:
        return self.spin.value()

    def setValue(self, value: float) -> None:  # noqa: N802 - the Qt editors' name, so _read/_write treat all alike
        self.spin.setValue(value)

    def setToolTip(self, text: str) -> None:  # noqa: N802
        super().setToolTip(text)
        self.slider.setToolTip(text)
        self.spin.setToolTip(text)

    def _slid(self, tick: int) -> None:
        value = self.minimum + (self.maximum - self.minimum) * tick / self.TICKS
        if round(self._tick(self.spin.value())) != tick:  # a drag, not the echo of a typed value
            self.spin.setValue(value)

    def _typed(self, value: float) -> None:
        self.slider.blockSignals(True)
        self.slider.setValue(round(self._tick(value)))
        self.slider.blockSignals(False)
        self.valueChanged.emit(value)

    def _tick(self, value: float) -> float:
        span = self.maximum - self.minimum
        return (value - self.minimum) / span * self.TICKS if span > 0 else 0.0


def _bound(value: float | None, fallback: int) -> int:
    return int(value) if value is not None else fallback


def _decimals(spec: ParamSpec) -> int:
    default = f"{float(spec.default):.6f}".rstrip("0")
    return max(2, min(6, len(default.split(".")[1]) if "." in default else 2))


def _step(spec: ParamSpec) -> float:
    if spec.minimum is not None and spec.maximum is not None and spec.maximum > spec.minimum:
        return float(spec.maximum - spec.minimum) / 100.0
    return 0.1


def _read(editor: QWidget, spec: ParamSpec) -> Any:
    if isinstance(editor, QCheckBox):
        return editor.isChecked()
    if isinstance(editor, QComboBox):
        return editor.currentText()
    if isinstance(editor, QLineEdit):
        return editor.text()
    return editor.value()


def _write(editor: QWidget, value: Any) -> None:
    if isinstance(editor, QCheckBox):
        editor.setChecked(bool(value))
    elif isinstance(editor, QComboBox):
        editor.setCurrentText(str(value))
    elif isinstance(editor, QLineEdit):
        editor.setText(str(value))
    else:
        editor.setValue(value)


def _connect_changed(editor: QWidget, signal: Signal) -> None:
    for name in ("valueChanged", "toggled", "currentIndexChanged", "textChanged"):
        if hasattr(editor, name):
            getattr(editor, name).connect(signal)
            return
