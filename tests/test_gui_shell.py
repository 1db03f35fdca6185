"""The window and the backend link: the main window + BackendLink driven by a fake client that replays a recorded
event stream (tests/fake_backend.py).

No backend process is spawned except in the last test, the real end-to-end `--smoke-test`.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from app_process import run_app
from fake_backend import FakeClient, green, open_window, previews, recorded_stream
from PIL import Image
from PySide6.QtCore import Qt

from backend.protocol import EditRequest, Event, MethodInfo, ParamSpec
from desktop_app.backend_link import BackendLink, PreviewThrottle
from desktop_app.document import RasterLayer, to_rgba
from desktop_app.resources import sample_images

REPO = Path(__file__).resolve().parent.parent
SHIFT = Qt.KeyboardModifier.ShiftModifier

METHODS = [
    MethodInfo(
        id="sdedit",
        title="SDEdit",
        description="Noise the image part way, then denoise it towards the prompt.",
        families=("sd1",),
        inputs=("image", "target_prompt"),
        optional_inputs=("mask:edit",),
        params=(ParamSpec("strength", "float", 0.6, minimum=0.0, maximum=1.0),),
    ),
    MethodInfo(
        id="ddim-word-swap",
        title="DDIM + word swap",
        description="Invert with the source prompt, regenerate with the target prompt.",
        families=("sd1",),
        inputs=("image", "source_prompt", "target_prompt"),
        params=(ParamSpec("steps", "int", 50, minimum=1, maximum=1000),),
    ),
]


@pytest.fixture
def scene() -> np.ndarray:
    image = np.full((32, 48, 3), 230, np.uint8)
    image[8:24, 4:20] = (200, 30, 30)
    return image


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient(METHODS)


@pytest.fixture
def window(qtbot, fake, scene, tmp_path):
    main_window = open_window(qtbot, fake)
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    assert main_window.files.open(path)
    yield main_window
    main_window.link.shutdown()
    assert fake.stopped


def run_to_result(qtbot, window, prompt: str = "a green square") -> str:
    panel = window.method_panel
    panel.target_prompt.setText(prompt)
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    job_id = window.job_id
    assert job_id is not None
    qtbot.waitUntil(lambda: window.staging.metadata is not None)
    return job_id


def picture(window) -> np.ndarray:
    """What the user sees: the document's composite."""
    return window.document.composite_rgb()


def test_methods_from_the_backend_fill_the_method_combo(window):
    panel = window.method_panel
    combo = panel.method_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["SDEdit", "DDIM + word swap"]
    assert combo.itemData(0, Qt.ItemDataRole.ToolTipRole) == METHODS[0].description
    assert "ready" in window.backend_state.text() and "2 methods" in window.backend_state.text()
    assert not panel.source_prompt.isEnabled()  # SDEdit takes no source prompt
    assert "Needs:</b> prompt" in panel.needs_label.text() and "'edit' mask" in panel.needs_label.text()
    combo.setCurrentIndex(1)
    assert panel.source_prompt.isEnabled()


def test_the_parameter_form_is_built_from_the_methods_paramspecs(qtbot, window, fake):
    panel = window.method_panel
    form = panel.param_form
    assert set(form.editors) == {"strength"}
    strength = form.editors["strength"]
    assert (strength.minimum(), strength.maximum(), strength.value()) == (0.0, 1.0, 0.6)
    strength.setValue(0.25)
    form.seed_box.setValue(11)
    assert panel.inputs().params == {"strength": 0.25} and panel.inputs().seed == 11
    panel.method_combo.setCurrentIndex(1)  # another method: its own parameters, at their defaults
    assert set(form.editors) == {"steps"} and form.editors["steps"].value() == 50
    assert panel.inputs().params == {"steps": 50}
    form.editors["steps"].setValue(5000)  # the spin box holds the ParamSpec's range
    assert form.values()["steps"] == 1000
    panel.reset_params()
    assert form.values() == {"steps": 50} and form.seed == 0


def test_cora_alpha_and_beta_are_sliders_that_follow_their_number(qtbot):
    from backend.methods.registry import get_method
    from desktop_app.panels.param_form import ParamForm, SliderSpin

    form = ParamForm()
    qtbot.addWidget(form)
    form.set_specs(get_method("cora").info.params)
    alpha, beta = form.editors["alpha"], form.editors["beta"]
    assert isinstance(alpha, SliderSpin) and isinstance(beta, SliderSpin)
    assert not isinstance(form.editors["pseudo_guidance"], SliderSpin)  # only where the spec asks
    assert (alpha.value(), alpha.slider.value()) == (0.7, 70)
    assert (beta.value(), beta.slider.value()) == (0.04, 4)
    changes: list[int] = []
    form.changed.connect(lambda: changes.append(1))
    alpha.slider.setValue(25)  # a drag
    assert form.values()["alpha"] == 0.25 and changes
    beta.spin.setValue(0.333)  # a typed value keeps its decimals and moves the slider
    assert form.values()["beta"] == 0.333 and beta.slider.value() == 33
    beta.spin.setValue(5)  # the spin box holds the range
    assert form.values()["beta"] == 1.0 and beta.slider.value() == 100
    assert form.set_values({"alpha": 0.1}) == [] and alpha.slider.value() == 10
    form.reset()
    assert (form.values()["alpha"], form.values()["beta"]) == (0.7, 0.04)


def test_run_sends_one_request_with_the_picture_and_the_prompt(qtbot, window, fake, scene):
    job_id = run_to_result(qtbot, window, "a green square")
    (request,) = fake.edits()
    assert request.job_id == job_id
    assert request.method == "sdedit" and request.model == "tiny" and request.seed == 0
    assert request.target_prompt == "a green square"
    assert request.params == {"strength": 0.6}  # the form's values, the paper's default: explicit in the recipe
    assert request.masks == {} and request.object_prompts == [] and request.points == []
    np.testing.assert_array_equal(request.image, scene)


def test_all_client_calls_happen_on_the_link_thread(qtbot, window, fake):
    run_to_result(qtbot, window)
    assert len(fake.threads) == 1 and threading.main_thread().ident not in fake.threads


def test_progress_and_previews_go_to_staging_and_leave_the_picture_alone(qtbot, window, scene):
    seen: list[int] = []
    window.link.preview.connect(lambda _job, step, _image: seen.append(step))
    run_to_result(qtbot, window)
    bar = window.method_panel.progress_bar
    assert (bar.value(), bar.maximum()) == (3, 3)
    assert seen[-1] == 3  # throttling may drop step 2, never the last preview
    np.testing.assert_array_equal(picture(window), scene)
    assert len(window.document.layers) == 1 and not window.document.modified
    np.testing.assert_array_equal(window.staging.array(), green(32, 48))
    assert window.staging.accept_button.isEnabled() and window.method_panel.run_button.isEnabled()


def test_staging_shows_the_last_preview_while_the_job_runs(qtbot, fake, window, scene):
    fake.hold_at_step = 3
    run_job = window.run_edit()
    qtbot.waitUntil(lambda: window.method_panel.progress_bar.value() == 3)
    # a throttled preview is held back, then delivered once its turn comes even though no event follows it
    qtbot.waitUntil(lambda: "step 3" in window.staging.label.text())
    np.testing.assert_array_equal(window.staging.array(), previews()[-1])
    assert not window.staging.accept_button.isEnabled()  # a preview is not a result
    np.testing.assert_array_equal(picture(window), scene)
    window.cancel_edit()
    qtbot.waitUntil(lambda: window.job_id is None)
    assert fake.cancelled == [run_job]


def test_accept_adds_a_result_layer_and_a_history_entry_and_ctrl_z_takes_both_away(qtbot, window, scene):
    run_to_result(qtbot, window, "a green square")
    document = window.document
    qtbot.mouseClick(window.staging.accept_button, Qt.MouseButton.LeftButton)
    background, result = document.layers
    assert isinstance(result, RasterLayer) and result.name == "SDEdit result"
    np.testing.assert_array_equal(result.pixels, to_rgba(green(32, 48)))
    assert result.recipe["method"] == "sdedit" and result.recipe["target_prompt"] == "a green square"
    (entry,) = document.history
    assert entry.layer_id == result.id and entry.title == "SDEdit: a green square" and entry.recipe == result.recipe
    np.testing.assert_array_equal(picture(window), green(32, 48))
    np.testing.assert_array_equal(background.pixels, to_rgba(scene))  # the user's pixels were never painted over
    assert window.staging.array() is None and not window.staging.accept_button.isEnabled()
    assert window.history_panel.results.count() == 1 and window.windowTitle().startswith("scene.png*")
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert document.layers == [background] and document.history == []
    assert window.history_panel.results.count() == 0
    np.testing.assert_array_equal(picture(window), scene)
    assert not document.modified  # back where the file on disk is
    qtbot.keyClick(window, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    assert document.layers == [background, result] and document.history == [entry]


def test_a_result_of_another_size_is_resized_to_the_document_and_said(qtbot, fake, window, caplog):
    def small(request: EditRequest) -> list[Event]:
        return [Event(kind="result", job_id=request.job_id, image=green(16, 16), metadata={"method_title": "SDEdit"})]

    fake.script = small
    caplog.set_level(logging.INFO, logger="desktop_app.main_window")
    run_to_result(qtbot, window)
    window.accept_result()
    result = window.document.layers[-1]
    assert result.pixels.shape == (32, 48, 4) and result.pixels[16, 24, 1] == 200
    assert "resized" in caplog.text and "16×16" in window.statusBar().currentMessage()


def test_discard_drops_the_result(qtbot, window, scene):
    run_to_result(qtbot, window)
    qtbot.mouseClick(window.staging.discard_button, Qt.MouseButton.LeftButton)
    assert window.staging.array() is None
    np.testing.assert_array_equal(picture(window), scene)
    assert not window.undo_stack.canUndo() and window.document.history == []


def test_ctrl_return_runs_and_esc_cancels(qtbot, fake, window):
    fake.hold_at_step = 1
    panel = window.method_panel
    panel.target_prompt.setFocus()
    qtbot.keyClick(panel.target_prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: panel.progress_bar.value() == 1)
    job_id = window.job_id
    assert job_id is not None and panel.cancel_button.isEnabled() and window.window_actions.cancel_action.isEnabled()
    assert "busy — SDEdit" in window.backend_state.text()
    qtbot.keyClick(panel.target_prompt, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: window.job_id is None)
    assert fake.cancelled == [job_id]
    assert panel.stage_label.text() == "cancelled" and not panel.cancel_button.isEnabled()
    assert window.backend_state.text().startswith("Backend: ready")


def test_run_while_an_edit_runs_queues_it_and_run_next_puts_it_first(qtbot, fake, window):
    fake.hold_at_step = 1
    panel, queue = window.method_panel, window.method_panel.queue_view
    panel.target_prompt.setText("first")
    running = window.run_edit()
    qtbot.waitUntil(lambda: panel.progress_bar.value() == 1)
    assert not queue.isVisible()
    panel.target_prompt.setText("second")
    qtbot.mouseClick(panel.run_button, Qt.MouseButton.LeftButton)
    panel.target_prompt.setText("third")
    qtbot.keyClick(panel.target_prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier | SHIFT)
    qtbot.waitUntil(lambda: [job.target_prompt for job in fake.waiting] == ["third", "second"])
    assert queue.isVisible() and len(queue.waiting_texts()) == 2
    assert '"third"' in queue.waiting_texts()[0] and '"second"' in queue.waiting_texts()[1]
    assert "2 waiting" in window.backend_state.text()
    fake.hold_at_step = None  # the queued ones run through
    qtbot.keyClick(panel.target_prompt, Qt.Key.Key_Escape)  # cancels the running one only
    qtbot.waitUntil(lambda: window.job_id is None)
    assert fake.cancelled == [running]
    # "third" ran first, then "second", whose start parked third's result; second's result is on show.
    assert window.staging.metadata["recipe"]["target_prompt"] == "second"
    assert "+1 earlier result" in window.staging.label.text()
    qtbot.mouseClick(window.staging.discard_button, Qt.MouseButton.LeftButton)
    assert window.staging.metadata["recipe"]["target_prompt"] == "third"  # came back, not lost
    qtbot.mouseClick(window.staging.accept_button, Qt.MouseButton.LeftButton)
    assert window.document.history[-1].recipe["target_prompt"] == "third" and window.staging.metadata is None


def test_remove_takes_a_waiting_edit_out_of_the_queue(qtbot, fake, window):
    fake.hold_at_step = 1
    panel, queue = window.method_panel, window.method_panel.queue_view
    running = window.run_edit()
    waiting = window.run_edit()
    qtbot.waitUntil(lambda: queue.isVisible())
    queue.select(waiting)
    qtbot.mouseClick(queue.remove_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not queue.isVisible())
    assert fake.cancelled == [waiting] and fake.waiting == [] and window.job_id == running
    assert panel.cancel_button.isEnabled()  # the running edit goes on
    window.cancel_edit()
    qtbot.waitUntil(lambda: window.job_id is None)
    assert [edit.job_id for edit in fake.edits()] == [running, waiting] and fake.cancelled == [waiting, running]


def test_cancel_button_cancels_the_running_job_by_id(qtbot, fake, window):
    fake.hold_at_step = 2
    job_id = window.run_edit()
    panel = window.method_panel
    qtbot.waitUntil(lambda: window.link.running_job == job_id and panel.progress_bar.value() == 2)
    assert panel.cancel_button.isEnabled()
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not panel.cancel_button.isEnabled())
    assert fake.cancelled == [job_id]
    assert window.link.running_job is None and window.staging.array() is None


def test_an_error_shows_message_and_hint_and_the_window_stays_usable(qtbot, fake, window):
    fake.script = lambda request: [
        Event(kind="started", job_id=request.job_id),
        Event(
            kind="error", job_id=request.job_id, error_kind="out-of-memory", message="the GPU ran out", hint="Use fp16."
        ),
    ]
    job_id = window.run_edit()
    qtbot.waitUntil(lambda: window.job_id is None)
    status = window.statusBar().currentMessage()
    assert "the GPU ran out" in status and "Use fp16." in status
    box = window.error_box
    assert box is not None and not box.isModal() and box.text() == "the GPU ran out"
    assert window.method_panel.run_button.isEnabled() and not window.method_panel.cancel_button.isEnabled()
    fake.script = recorded_stream
    assert run_to_result(qtbot, window) != job_id


def test_an_unreadable_png_shows_why_and_keeps_the_document(qtbot, window, scene, tmp_path):
    document = window.document
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-40])
    assert not window.files.open(truncated)
    assert window.error_box.isVisible() and "truncated.png" in window.error_box.text()
    assert window.document is document
    np.testing.assert_array_equal(picture(window), scene)
    assert "Could not open truncated.png" in window.statusBar().currentMessage()


def test_samples_open_and_export_writes_the_picture(qtbot, window, tmp_path):
    samples = sample_images()
    assert len(samples) >= 3
    actions = window.window_actions.samples_menu.actions()
    assert len(actions) == len(samples)
    actions[0].trigger()
    shown = picture(window)
    assert shown.shape == (128, 128, 3) and window.windowTitle().startswith(samples[0].name)
    out = tmp_path / "export.png"
    assert window.files.export_png(out)
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), shown)


def test_preview_throttle_lets_15_per_second_through_and_keeps_the_last():
    now = [0.0]
    throttle = PreviewThrottle(interval=1 / 15, clock=lambda: now[0])
    delivered = []
    for step in range(1, 101):  # 100 previews in one second
        now[0] = step / 100
        preview = Event(kind="preview", job_id="j", step=step)
        for event in (throttle.offer(preview), throttle.due()):
            if event is not None:
                delivered.append(event.step)
    held = throttle.flush("j")
    if held is not None:
        delivered.append(held.step)
    assert 10 <= len(delivered) <= 16
    assert delivered[-1] == 100 and delivered == sorted(delivered)
    assert throttle.flush("j") is None


def test_a_burst_of_previews_is_thinned_and_ends_with_the_last(qtbot):
    def burst(request: EditRequest) -> list[Event]:
        job_id = request.job_id
        events = [Event(kind="started", job_id=job_id)]
        events += [Event(kind="preview", job_id=job_id, step=s, image=np.zeros((2, 2, 3), np.uint8)) for s in range(50)]
        return [*events, Event(kind="result", job_id=job_id, image=green(16, 16))]

    link = BackendLink(client_factory=lambda _settings: FakeClient(METHODS, script=burst))
    kinds: list[str] = []
    steps: list[int] = []
    link.event.connect(lambda event: kinds.append(event.kind))
    link.preview.connect(lambda _job, step, _image: steps.append(step))
    link.start()
    link.submit(EditRequest(method="sdedit", image=green(16, 16)))
    qtbot.waitUntil(lambda: "result" in kinds)
    link.shutdown()
    assert len(steps) < 10 and steps[-1] == 49
    assert kinds.index("result") == len(kinds) - 1


def test_a_client_that_fails_to_start_is_reported(qtbot):
    def broken(_settings: dict) -> FakeClient:
        raise OSError("no python here")

    link = BackendLink(client_factory=broken)
    errors: list[tuple] = []
    link.error.connect(lambda *args: errors.append(args))
    link.start()
    qtbot.waitUntil(lambda: len(errors) == 1)
    link.request_methods()
    qtbot.waitUntil(lambda: len(errors) == 2)
    link.shutdown()
    assert errors[0][1] == "backend-unavailable" and "no python here" in errors[0][2]


def test_importing_the_app_does_not_load_torch():
    code = "import desktop_app.app, desktop_app.main_window, sys; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


def test_smoke_test_starts_the_real_backend_and_lists_its_methods():
    done = run_app("--smoke-test", timeout=120, offline=False)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("atelier ok: ")
    assert int(summary.split()[2]) >= 3
