"""The GUI shell: main window + BackendLink driven by a fake client that replays a recorded event stream.

No backend process is spawned except in the last test, the real end-to-end `--smoke-test`.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from backend.protocol import EditRequest, Event, MethodInfo, ParamSpec, Query
from desktop_app.backend_link import BackendLink, PreviewThrottle
from desktop_app.main_window import MainWindow
from desktop_app.resources import sample_images

REPO = Path(__file__).resolve().parent.parent

METHODS = [
    MethodInfo(
        id="sdedit",
        title="SDEdit",
        description="Noise the image part way, then denoise it towards the prompt.",
        families=("sd1",),
        inputs=("image", "target_prompt"),
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


def previews() -> list[np.ndarray]:
    return [np.full((8, 8, 3), 40 * step, np.uint8) for step in (1, 2, 3)]


RESULT = np.zeros((16, 16, 3), np.uint8)
RESULT[:, :, 1] = 200


def recorded_stream(job_id: str) -> list[Event]:
    """What the worker sends for a 3-step edit: started, progress + preview per step, result."""
    events = [Event(kind="started", job_id=job_id, message="sdedit")]
    for step, image in enumerate(previews(), start=1):
        events.append(Event(kind="progress", job_id=job_id, step=step, total=3, stage="denoising"))
        events.append(Event(kind="preview", job_id=job_id, step=step, total=3, image=image))
    metadata = {"method": "sdedit", "method_title": "SDEdit", "seconds": 0.5}
    events.append(Event(kind="result", job_id=job_id, image=RESULT, metadata=metadata))
    return events


class FakeClient:
    """Stands in for BackendClient: answers the methods query and replays `script(job_id)` for each edit.

    With `hold_at_step`, an edit stops after that step's preview until it is cancelled (as a long job would)."""

    pid = 4242

    def __init__(self, script=recorded_stream, hold_at_step: int | None = None) -> None:
        self.script = script
        self.hold_at_step = hold_at_step
        self.submitted: list[EditRequest | Query] = []
        self.cancelled: list[str | None] = []
        self.started = self.stopped = False
        self._events: queue.Queue[Event] = queue.Queue()
        self.threads: set[int] = set()

    def start(self) -> None:
        self.started = True
        self.threads.add(threading.get_ident())

    def stop(self, timeout: float = 10.0) -> int:
        self.stopped = True
        return 0

    def submit(self, job: EditRequest | Query) -> str:
        self.threads.add(threading.get_ident())
        self.submitted.append(job)
        if isinstance(job, Query):
            methods = [info.to_dict() for info in METHODS]
            self._events.put(Event(kind="result", job_id=job.job_id, metadata={"methods": methods}))
            return job.job_id
        for event in self.script(job.job_id):
            self._events.put(event)
            if self.hold_at_step is not None and event.kind == "preview" and event.step == self.hold_at_step:
                break
        return job.job_id

    def cancel(self, job_id: str | None = None) -> bool:
        self.cancelled.append(job_id)
        self._events.put(Event(kind="cancelled", job_id=job_id or "", message="cancelled by the user"))
        return True

    def emit(self, event: Event) -> None:
        """Inject an event (an error, a log line) as if the worker had sent it."""
        self._events.put(event)

    def poll(self, timeout: float = 0.0) -> Event | None:
        try:
            return self._events.get(timeout=timeout) if timeout > 0 else self._events.get_nowait()
        except queue.Empty:
            return None

    def edits(self) -> list[EditRequest]:
        return [job for job in self.submitted if isinstance(job, EditRequest)]


@pytest.fixture
def scene() -> np.ndarray:
    image = np.full((32, 48, 3), 230, np.uint8)
    image[8:24, 4:20] = (200, 30, 30)
    return image


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


@pytest.fixture
def window(qtbot, fake, scene, tmp_path):
    link = BackendLink(client_factory=lambda: fake)
    main_window = MainWindow(link, model="tiny")
    qtbot.addWidget(main_window)
    main_window.show()
    link.start()
    link.request_methods()
    path = tmp_path / "scene.png"
    Image.fromarray(scene).save(path)
    assert main_window.open_image(path)
    qtbot.waitUntil(lambda: main_window.method_combo.count() == 2)
    yield main_window
    link.shutdown()
    assert fake.stopped


def run_to_result(qtbot, window: MainWindow, prompt: str = "a green square") -> str:
    window.target_prompt.setText(prompt)
    qtbot.mouseClick(window.run_button, Qt.MouseButton.LeftButton)
    job_id = window.job_id
    assert job_id is not None
    qtbot.waitUntil(lambda: window.staged_metadata is not None)
    return job_id


def test_methods_from_the_backend_fill_the_method_combo(window):
    combo = window.method_combo
    assert [combo.itemText(i) for i in range(combo.count())] == ["SDEdit", "DDIM + word swap"]
    assert combo.itemData(0, Qt.ItemDataRole.ToolTipRole) == METHODS[0].description
    assert "ready" in window.backend_state.text() and "2 methods" in window.backend_state.text()
    assert not window.source_prompt.isEnabled()  # SDEdit takes no source prompt
    combo.setCurrentIndex(1)
    assert window.source_prompt.isEnabled()


def test_run_sends_one_request_with_the_shown_image_and_the_prompt(qtbot, window, fake, scene):
    job_id = run_to_result(qtbot, window, "a green square")
    (request,) = fake.edits()
    assert request.job_id == job_id
    assert request.method == "sdedit" and request.model == "tiny" and request.seed == 0
    assert request.target_prompt == "a green square" and request.params == {}
    np.testing.assert_array_equal(request.image, scene)


def test_all_client_calls_happen_on_the_link_thread(qtbot, window, fake):
    run_to_result(qtbot, window)
    assert len(fake.threads) == 1 and threading.main_thread().ident not in fake.threads


def test_progress_and_previews_go_to_staging_and_leave_the_image_alone(qtbot, window, scene):
    seen: list[int] = []
    window.link.preview.connect(lambda _job, step, _image: seen.append(step))
    run_to_result(qtbot, window)
    assert (window.progress_bar.value(), window.progress_bar.maximum()) == (3, 3)
    assert seen[-1] == 3  # throttling may drop step 2, never the last preview
    np.testing.assert_array_equal(window.image(), scene)
    np.testing.assert_array_equal(window.staging_view.array(), RESULT)
    assert window.accept_button.isEnabled() and window.run_button.isEnabled()


def test_staging_shows_the_last_preview_while_the_job_runs(qtbot, fake, window, scene):
    fake.hold_at_step = 3
    run_job = window.run_edit()
    qtbot.waitUntil(lambda: window.progress_bar.value() == 3)
    # a throttled preview is held back, then delivered once its turn comes even though no event follows it
    qtbot.waitUntil(lambda: "step 3" in window.staging_label.text())
    np.testing.assert_array_equal(window.staging_view.array(), previews()[-1])
    assert not window.accept_button.isEnabled()  # a preview is not a result
    np.testing.assert_array_equal(window.image(), scene)
    window.cancel_edit()
    qtbot.waitUntil(lambda: window.job_id is None)
    assert fake.cancelled == [run_job]


def test_accept_shows_the_result_and_ctrl_z_restores_the_original(qtbot, window, scene):
    run_to_result(qtbot, window)
    qtbot.mouseClick(window.accept_button, Qt.MouseButton.LeftButton)
    np.testing.assert_array_equal(window.image(), RESULT)
    assert window.staging_view.array() is None and not window.accept_button.isEnabled()
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(window.image(), scene)
    qtbot.keyClick(window, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(window.image(), RESULT)


def test_discard_drops_the_result(qtbot, window, scene):
    run_to_result(qtbot, window)
    qtbot.mouseClick(window.discard_button, Qt.MouseButton.LeftButton)
    assert window.staging_view.array() is None
    np.testing.assert_array_equal(window.image(), scene)
    assert not window.undo_stack.canUndo()


def test_ctrl_return_runs_and_esc_cancels(qtbot, fake, window):
    fake.hold_at_step = 1
    window.target_prompt.setFocus()
    qtbot.keyClick(window.target_prompt, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    qtbot.waitUntil(lambda: window.progress_bar.value() == 1)
    job_id = window.job_id
    assert job_id is not None and not window.run_button.isEnabled()
    qtbot.keyClick(window.target_prompt, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: window.job_id is None)
    assert fake.cancelled == [job_id]
    assert window.stage_label.text() == "cancelled" and window.run_button.isEnabled()


def test_cancel_button_cancels_the_running_job_by_id(qtbot, fake, window):
    fake.hold_at_step = 2
    job_id = window.run_edit()
    qtbot.waitUntil(lambda: window.link.running_job == job_id and window.progress_bar.value() == 2)
    assert window.cancel_button.isEnabled()
    qtbot.mouseClick(window.cancel_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not window.cancel_button.isEnabled())
    assert fake.cancelled == [job_id]
    assert window.link.running_job is None and window.staging_view.array() is None


def test_an_error_shows_message_and_hint_and_the_window_stays_usable(qtbot, fake, window):
    fake.script = lambda job_id: [
        Event(kind="started", job_id=job_id),
        Event(kind="error", job_id=job_id, error_kind="out-of-memory", message="the GPU ran out", hint="Use fp16."),
    ]
    job_id = window.run_edit()
    qtbot.waitUntil(lambda: window.job_id is None)
    status = window.statusBar().currentMessage()
    assert "the GPU ran out" in status and "Use fp16." in status
    assert window._error_box is not None and not window._error_box.isModal()
    assert window.run_button.isEnabled() and not window.cancel_button.isEnabled()
    fake.script = recorded_stream
    assert run_to_result(qtbot, window) != job_id


def test_an_unreadable_png_shows_why_and_keeps_the_previous_image(qtbot, window, scene, tmp_path, monkeypatch):
    warnings: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda _parent, _title, text, *rest: warnings.append(text))
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:-40])
    assert not window.open_image(truncated)
    assert len(warnings) == 1 and "truncated.png" in warnings[0]
    np.testing.assert_array_equal(window.image(), scene)
    assert "Could not open truncated.png" in window.statusBar().currentMessage()


def test_samples_open_and_export_writes_the_shown_image(qtbot, window, tmp_path):
    samples = sample_images()
    assert len(samples) >= 3
    actions = window.samples_menu.actions()
    assert len(actions) == len(samples)
    actions[0].trigger()
    shown = window.image()
    assert shown.shape == (128, 128, 3)
    out = tmp_path / "export.png"
    assert window.export_png(out)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), shown)


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
    def burst(job_id: str) -> list[Event]:
        events = [Event(kind="started", job_id=job_id)]
        events += [Event(kind="preview", job_id=job_id, step=s, image=np.zeros((2, 2, 3), np.uint8)) for s in range(50)]
        return [*events, Event(kind="result", job_id=job_id, image=RESULT)]

    link = BackendLink(client_factory=lambda: FakeClient(script=burst))
    kinds: list[str] = []
    steps: list[int] = []
    link.event.connect(lambda event: kinds.append(event.kind))
    link.preview.connect(lambda _job, step, _image: steps.append(step))
    link.start()
    link.submit(EditRequest(method="sdedit", image=RESULT))
    qtbot.waitUntil(lambda: "result" in kinds)
    link.shutdown()
    assert len(steps) < 10 and steps[-1] == 49
    assert kinds.index("result") == len(kinds) - 1


def test_a_client_that_fails_to_start_is_reported(qtbot):
    def broken() -> FakeClient:
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
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run(
        [sys.executable, "-m", "desktop_app", "--smoke-test"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert summary.startswith("atelier ok: ")
    assert int(summary.split()[2]) >= 3
