"""`atelier --self-test`: the check that a build (frozen or from source) has everything it needs to edit.

Through the real window and a real backend process: wait for the backend's methods, pick the model (the toy-world
model when this installation ships its weights, else the built-in 'tiny' test model, and say so), run a short SDEdit
on a sample, check the result reached the staging pane, print one line with timings and quit. Exit codes: 0 ok,
1 failed (the reason is printed), 2 no answer in time. packaging/README.md runs it on the PyInstaller build.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QObject, QTimer

from desktop_app.app import IMPORTED_AT, call_after_first_paint, seconds_since_process_start
from desktop_app.diagnostics import fail, set_up_sdedit

# Mirrors backend.models.registry.TOYWORLD (the GUI may not import the registry); the backend lists it only when
# resources/models/toyworld/model_index.json exists.
TOYWORLD = "toyworld"
FALLBACK_MODEL = "tiny"
STEPS = 10  # at strength 0.8: 8 denoising steps, seconds even on a laptop CPU with the toy-world model
TIMEOUT_S = 300  # a cold first start of a frozen build imports torch from disk


def choose_model(listed: list[str], requested: str | None = None) -> tuple[str, str]:
    """The model the self-test loads, and a note saying why when it is not the one a user would want."""
    if requested:
        return requested, ""
    if TOYWORLD in listed:
        return TOYWORLD, ""
    return FALLBACK_MODEL, (
        f"the toy-world model is not in this installation (no resources/models/{TOYWORLD}/model_index.json); "
        f"falling back to the built-in '{FALLBACK_MODEL}' test model (random weights)"
    )


def since_start() -> float:
    """Seconds since this process started (Linux), else since desktop_app.app was imported."""
    seconds = seconds_since_process_start()
    return seconds if seconds is not None else time.perf_counter() - IMPORTED_AT


class SelfTestRun(QObject):
    """Drives the window through the self-test; the module docstring says what it checks."""

    def __init__(self, window, app, model: str | None = None, steps: int = STEPS) -> None:
        super().__init__(window)
        self.window, self.app, self.requested, self.steps = window, app, model, steps
        self.model = self.note = self.job_id = ""
        self.loaded = "model already loaded"
        self.painted_at = self.ready_at = self.edit_started_at = 0.0
        link = window.link
        link.methods_ready.connect(self._on_methods)
        link.models_ready.connect(self._on_models)
        link.log.connect(self._on_log)
        link.result.connect(self._on_result)  # after the window's own slot: it was connected first
        link.error.connect(self._on_error)
        call_after_first_paint(window, self._on_first_paint)
        QTimer.singleShot(TIMEOUT_S * 1000, lambda: fail(app, "self-test", f"no result within {TIMEOUT_S} s", 2))

    def _on_first_paint(self) -> None:
        self.painted_at = since_start()

    def _on_methods(self, _methods) -> None:
        self.window.link.methods_ready.disconnect(self._on_methods)
        self.ready_at = since_start()
        if self.requested:
            self._run(self.requested, "")
        else:
            self.window.link.request_models()

    def _on_models(self, models: list[dict]) -> None:
        self.window.link.models_ready.disconnect(self._on_models)
        self._run(*choose_model([model["id"] for model in models]))

    def _run(self, model: str, note: str) -> None:
        self.model, self.note = model, note
        if note:
            print(f"atelier self-test: {note}", flush=True)
        self.window.set_model(model)
        why_not = set_up_sdedit(self.window, self.steps)
        if why_not:
            fail(self.app, "self-test", why_not)
            return
        self.edit_started_at = time.perf_counter()
        self.job_id = self.window.run_edit() or ""
        if not self.job_id:
            fail(self.app, "self-test", "the edit could not start")

    def _on_log(self, job_id: str, message: str) -> None:
        if job_id == self.job_id and message.startswith("loaded "):
            self.loaded = message  # the worker's own words: "loaded toyworld (sd1) in 0.4 s"

    def _on_result(self, job_id: str, image, metadata: dict) -> None:
        if job_id != self.job_id:
            return
        seconds = time.perf_counter() - self.edit_started_at
        document = self.window.document
        staged = self.window.staging.metadata
        if getattr(image, "ndim", 0) != 3 or image.shape[2] != 3 or staged is None:
            fail(
                self.app,
                "self-test",
                f"the result did not reach the staging pane (image {getattr(image, 'shape', None)})",
            )
            return
        fallback = " (fallback)" if self.note else ""
        print(
            f"atelier self-test ok: model {metadata.get('model', self.model)}{fallback} on "
            f"{metadata.get('device', '?')} in backend pid {self.window.link.backend_pid} ({self.loaded}); "
            f"sdedit, {self.steps} steps at strength 0.8 on a {document.width}x{document.height} sample: "
            f"{image.shape[1]}x{image.shape[0]} result in {seconds:.1f} s; first paint {self.painted_at:.1f} s, "
            f"backend ready {self.ready_at:.1f} s, done {since_start():.1f} s after process start",
            flush=True,
        )
        self.app.exit(0)

    def _on_error(self, _job: str, kind: str, message: str, hint: str) -> None:
        fail(self.app, "self-test", f"{kind}: {message} {hint}".rstrip())


__all__ = ["SelfTestRun", "choose_model"]
