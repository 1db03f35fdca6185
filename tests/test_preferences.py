"""Edit ▸ Preferences and the window layout: what the dialog shows, what OK saves and applies (the next run's model,
the autosave timer, a backend restart with the new settings), what it refuses, and the window's geometry and docks
kept between runs. The backend is the fake client of tests/fake_backend.py."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging

import numpy as np
import pytest
from fake_backend import MODELS, FakeClient
from PIL import Image
from PySide6.QtCore import Qt

from backend.protocol import MethodInfo
from desktop_app.app import backend_settings_for_run, parse_args
from desktop_app.backend_link import BackendLink
from desktop_app.main_window import MainWindow
from desktop_app.preferences import RESTARTING, backend_wanted, check_preferences
from desktop_app.settings import Settings, backend_settings, load_settings, settings_path

LEFT = Qt.MouseButton.LeftButton
METHODS = [
    MethodInfo(
        id="sdedit",
        title="SDEdit",
        description="Noise the image part way, then denoise it towards the prompt.",
        families=("sd1",),
        inputs=("image", "target_prompt"),
        params=(),
    )
]
DEFAULT_BACKEND = {"device": "auto", "dtype": "auto", "previews": True, "models_dir": "", "sam_checkpoint": ""}


@pytest.fixture(autouse=True)
def _own_folders(own_folders):
    """Autosaves and settings of this test only (conftest.own_folders)."""


@pytest.fixture
def clients() -> list[FakeClient]:
    """Every client the link made, in order; each keeps the settings it was made with."""
    return []


@pytest.fixture
def make_window(qtbot, clients):
    """A shown window whose link makes a new FakeClient per (re)start, started with `backend_settings(settings)`
    as the app does; the 'save changes?' question answers 'discard'."""
    links = []

    def make(settings: Settings | None = None, hold_at_step: int | None = None) -> MainWindow:
        settings = settings if settings is not None else Settings(autosave_minutes=0)

        def factory(backend: dict) -> FakeClient:
            clients.append(FakeClient(METHODS, hold_at_step=hold_at_step, settings=backend))
            return clients[-1]

        link = BackendLink(client_factory=factory, settings=backend_settings(settings))
        links.append(link)
        window = MainWindow(link, settings=settings)
        window.files.ask_save_changes = lambda _name: "discard"
        qtbot.addWidget(window)
        window.show()
        qtbot.waitExposed(window)
        link.start()
        link.request_methods()
        qtbot.waitUntil(lambda: window.method_panel.method_combo.count() == len(METHODS))
        return window

    yield make
    for link in links:
        link.shutdown()


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "scene.png"
    Image.fromarray(np.full((32, 48, 3), 200, np.uint8)).save(path)
    return path


def open_preferences(qtbot, window):
    dialog = window.preferences.open()
    qtbot.waitUntil(lambda: dialog.model_combo.count() == len(MODELS))  # the backend's list arrived
    return dialog


def press_ok(qtbot, dialog) -> None:
    qtbot.mouseClick(dialog.ok_button, LEFT)


def test_the_dialog_opens_with_ctrl_comma_and_shows_the_current_settings(qtbot, make_window, tmp_path):
    sam = tmp_path / "sam_vit_b.pth"
    sam.write_bytes(b"weights")
    settings = Settings(
        model="sd15",
        models_dir=str(tmp_path),
        sam_checkpoint=str(sam),
        device="cpu",
        dtype="bf16",
        previews=False,
        autosave_minutes=5,
    )
    window = make_window(settings)
    action = window.window_actions.preferences_action
    assert action.shortcut().toString() == "Ctrl+,"
    action.trigger()
    dialog = window.preferences.dialog
    assert dialog is not None and dialog.isVisible()
    qtbot.waitUntil(lambda: dialog.model_combo.count() == len(MODELS))
    assert [dialog.model_combo.itemText(i) for i in range(2)] == ["tiny", "sd15"]
    assert dialog.model_combo.currentText() == "sd15" and "Stable Diffusion 1.5" in dialog.model_info.text()
    assert dialog.models_dir_edit.text() == str(tmp_path) and dialog.sam_edit.text() == str(sam)
    assert (dialog.device_combo.currentText(), dialog.dtype_combo.currentText()) == ("cpu", "bf16")
    assert not dialog.previews_check.isChecked() and dialog.autosave_spin.value() == 5
    assert window.model_label.text() == "Model: sd15"  # the status bar
    assert window.method_panel.model_label.text() == "Model: sd15"  # the method dock


def test_a_new_model_and_previews_are_saved_and_the_next_run_uses_the_model(qtbot, make_window, picture, clients):
    window = make_window()
    assert window.files.open(picture)
    dialog = open_preferences(qtbot, window)
    dialog.model_combo.setCurrentText("sd15")
    dialog.previews_check.setChecked(False)
    press_ok(qtbot, dialog)

    assert not dialog.isVisible()
    saved = json.loads(settings_path().read_text())
    assert saved["model"] == "sd15" and saved["previews"] is False
    assert load_settings().model == "sd15"
    assert window.model_label.text() == "Model: sd15" and window.method_panel.model_label.text() == "Model: sd15"
    # Previews are the backend's: it restarts with them, then lists its methods again.
    qtbot.waitUntil(lambda: len(clients) == 2 and window.backend_state.text().startswith("Backend: ready"))
    assert clients[1].settings["previews"] is False

    window.method_panel.target_prompt.setText("a green square")
    job_id = window.run_edit()
    assert job_id is not None
    qtbot.waitUntil(lambda: window.staging.metadata is not None)
    assert clients[1].edits()[-1].model == "sd15"


def test_a_models_folder_that_does_not_exist_is_refused_and_nothing_is_saved(qtbot, make_window, tmp_path, clients):
    window = make_window()
    dialog = open_preferences(qtbot, window)
    missing = tmp_path / "no such folder"
    dialog.models_dir_edit.setText(str(missing))
    dialog.previews_check.setChecked(False)
    press_ok(qtbot, dialog)

    assert dialog.isVisible()
    assert dialog.error_label.isVisible()
    assert f"The models folder {missing} does not exist" in dialog.error_label.text()
    assert not settings_path().exists()
    assert window.settings.models_dir == "" and window.settings.previews
    assert len(clients) == 1 and not clients[0].stopped

    dialog.models_dir_edit.setText(str(tmp_path))  # fixed: OK goes through
    press_ok(qtbot, dialog)
    assert not dialog.isVisible() and load_settings().models_dir == str(tmp_path)


def test_a_device_change_restarts_the_backend_with_the_new_settings(qtbot, make_window, clients):
    window = make_window()
    assert clients[0].settings == DEFAULT_BACKEND
    dialog = open_preferences(qtbot, window)
    dialog.device_combo.setCurrentText("cpu")
    press_ok(qtbot, dialog)

    assert window.backend_state.text() == RESTARTING == "Backend: restarting with new settings"
    assert window.link.settings == {**DEFAULT_BACKEND, "device": "cpu"}
    qtbot.waitUntil(lambda: len(clients) == 2)
    assert clients[0].stopped and clients[1].started
    assert clients[1].settings == {**DEFAULT_BACKEND, "device": "cpu"}
    qtbot.waitUntil(lambda: window.backend_state.text() == "Backend: ready — 1 methods")


def test_nothing_the_backend_reads_changed_means_no_restart(qtbot, make_window, clients):
    window = make_window()
    dialog = open_preferences(qtbot, window)
    dialog.model_combo.setCurrentText("sd15")
    dialog.autosave_spin.setValue(2)
    press_ok(qtbot, dialog)
    assert window.model == "sd15" and window.statusBar().currentMessage() == "Preferences saved"
    assert window.files.timer.isActive() and window.files.timer.interval() == 120_000
    assert len(clients) == 1 and not clients[0].stopped
    dialog = open_preferences(qtbot, window)
    dialog.autosave_spin.setValue(0)  # shown as "Off"
    press_ok(qtbot, dialog)
    assert not window.files.timer.isActive() and window.files.autosaver is None


@pytest.mark.parametrize("answer", ["now", "later"])
def test_a_restart_while_an_edit_runs_asks_first(qtbot, make_window, picture, clients, answer):
    window = make_window(hold_at_step=2)
    assert window.files.open(picture)
    window.method_panel.target_prompt.setText("a green square")
    job_id = window.run_edit()
    qtbot.waitUntil(lambda: window.link.running_job == job_id)
    asked = []
    window.preferences.ask_restart_during_job = lambda: asked.append(True) or answer
    dialog = open_preferences(qtbot, window)
    dialog.dtype_combo.setCurrentText("fp32")
    press_ok(qtbot, dialog)

    assert asked == [True]
    if answer == "later":
        assert window.job_id == job_id and len(clients) == 1  # the edit goes on
        assert "when this edit ends" in window.statusBar().currentMessage()
        window.cancel_edit()  # ... until it ends; then the restart happens
    qtbot.waitUntil(lambda: window.job_id is None and len(clients) == 2)
    assert clients[1].settings["dtype"] == "fp32"
    assert clients[0].cancelled == [job_id] and window.method_panel.stage_label.text() == "cancelled"
    qtbot.waitUntil(lambda: window.backend_state.text().startswith("Backend: ready"))


def test_a_command_line_device_holds_until_the_user_changes_the_device():
    saved = Settings(device="auto")
    args, _ = parse_args(["--device", "cuda:1"])
    running = backend_settings_for_run(saved, args)
    assert running == {**DEFAULT_BACKEND, "device": "cuda:1"}
    assert backend_settings_for_run(saved, parse_args([])[0]) == DEFAULT_BACKEND

    previews_off = dataclasses.replace(saved, previews=False)
    assert backend_wanted(saved, previews_off, running) == {**running, "previews": False}
    on_cpu = dataclasses.replace(saved, device="cpu")
    assert backend_wanted(saved, on_cpu, running)["device"] == "cpu"
    assert backend_wanted(saved, dataclasses.replace(saved, model="sd15"), running) == running


def test_models_are_checked_before_they_are_saved(tmp_path):
    def problems(**values) -> list[str]:
        form = {"model": "tiny", "models_dir": "", "sam_checkpoint": "", "device": "auto", "dtype": "auto"}
        return check_preferences({**form, "previews": True, "autosave_minutes": 3.0, **values})

    diffusers = tmp_path / "my-model"
    (diffusers / "unet").mkdir(parents=True)
    (tmp_path / "model.safetensors").write_bytes(b"{}")
    (tmp_path / "model.ckpt").write_bytes(b"pickle")
    assert problems() == problems(model="owner/name") == problems(model=str(diffusers)) == []
    assert problems(model=str(tmp_path / "model.safetensors")) == []
    assert "does not exist" in problems(model=str(tmp_path / "gone.safetensors"))[0]
    assert "only .safetensors" in problems(model=str(tmp_path / "model.ckpt"))[0]
    assert "not a diffusers model" in problems(model=str(tmp_path))[0]
    assert "Choose a model" in problems(model="")[0]
    assert "SAM checkpoint" in problems(sam_checkpoint=str(tmp_path / "sam.pth"))[0]
    assert "Device 'gpu'" in problems(device="gpu")[0]


def test_browse_buttons_fill_the_model_with_a_folder_or_a_file(qtbot, make_window, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "model_index.json").write_text("{}")
    checkpoint = tmp_path / "dreamy.safetensors"
    checkpoint.write_bytes(b"{}")
    window = make_window()
    dialog = open_preferences(qtbot, window)
    dialog.ask_folder = lambda _title, _start: str(folder)
    dialog.ask_file = lambda _title, _start, _filter: str(checkpoint)
    qtbot.mouseClick(dialog.model_folder_button, LEFT)
    assert dialog.model_combo.currentText() == str(folder)
    qtbot.mouseClick(dialog.model_file_button, LEFT)
    assert dialog.model_combo.currentText() == str(checkpoint)
    press_ok(qtbot, dialog)
    assert window.model == str(checkpoint) and load_settings().model == str(checkpoint)
    assert window.model_label.text() == "Model: dreamy.safetensors"


def test_window_geometry_and_dock_layout_come_back_next_time(qtbot, make_window):
    window = make_window(Settings(autosave_minutes=0))
    window.resize(780, 700)  # within the offscreen screen (800×800): a restore fits the window to the screen
    window.tabifyDockWidget(window.layers_dock, window.method_dock)
    window.history_dock.hide()
    window.close()  # a clean exit saves the layout
    saved = load_settings()
    assert saved.window_geometry and saved.window_state
    base64.b64decode(saved.window_state, validate=True)

    again = make_window(saved)
    assert (again.width(), again.height()) == (780, 700)
    assert again.layers_dock in again.tabifiedDockWidgets(again.method_dock)
    assert again.history_dock.isHidden() and not again.layers_dock.isHidden()
    fresh = make_window(Settings(autosave_minutes=0))
    assert (fresh.width(), fresh.height()) == (1400, 900) and not fresh.history_dock.isHidden()


def test_a_corrupt_saved_layout_is_ignored(qtbot, make_window, caplog):
    settings_path().parent.mkdir(parents=True, exist_ok=True)
    garbage = base64.b64encode(b"\x00\x01 not a QMainWindow state").decode()
    settings_path().write_text(json.dumps({"window_geometry": "%%% not base64", "window_state": garbage}))
    settings = load_settings()  # the file's bad value falls back to the default; the garbage is valid base64
    assert settings.window_geometry == "" and settings.window_state == garbage

    with caplog.at_level(logging.WARNING, logger="desktop_app.main_window"):
        window = make_window(settings)
        broken = make_window(Settings(autosave_minutes=0, window_geometry="%%%", window_state="@@"))
    assert "the saved window state could not be restored" in caplog.text
    for each in (window, broken):
        assert each.dockWidgetArea(each.method_dock) == Qt.DockWidgetArea.RightDockWidgetArea
        assert not each.layers_dock.isHidden()
