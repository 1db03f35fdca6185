"""How responsive the window stays while an edit runs: a QTimer lag probe, and the measurement behind
`python -m desktop_app --measure-responsiveness` (a real backend, a real edit, a cancel mid-run).

The probe asks for a tick every `interval_ms`; any gap between ticks beyond that is time the GUI thread spent on
something else (handling events, converting previews, painting). The longest gap is the longest stall a user could
have felt; UX.md's goal is one frame, 16 ms.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from PySide6.QtCore import QObject, Qt, QTimer


@dataclass
class LagReport:
    ticks: int = 0
    longest_ms: float = 0.0
    gaps_ms: list[float] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        if not self.gaps_ms:
            return 0.0
        ordered = sorted(self.gaps_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def summary(self) -> str:
        return (
            f"longest main-thread stall {self.longest_ms:.1f} ms, 99th percentile {self.percentile(99):.1f} ms "
            f"over {self.ticks} ticks"
        )


class LagProbe(QObject):
    def __init__(self, interval_ms: int = 2, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.interval_ms = interval_ms
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.TimerType.PreciseTimer)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)
        self._last = 0.0
        self.report = LagReport()

    def start(self) -> None:
        self.report = LagReport()
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> LagReport:
        self._timer.stop()
        return self.report

    def _tick(self) -> None:
        now = time.perf_counter()
        stall = max(0.0, (now - self._last) * 1000 - self.interval_ms)
        self._last = now
        self.report.ticks += 1
        self.report.gaps_ms.append(stall)
        self.report.longest_ms = max(self.report.longest_ms, stall)


class ResponsivenessRun(QObject):
    """`--measure-responsiveness`: once the backend lists its methods, open a sample, run SDEdit while the lag
    probe runs, then run it again and cancel it at step 10; print the figures and quit (0 = ok, 1 = failed).

    Two figures, as a user feels them: the click on Run (building the request from the document, then the relayout
    and repaint it causes, up to the next probe tick) and the stalls while the edit streams progress and previews
    (from the job's `started` event to its result)."""

    CANCEL_AT = 10

    def __init__(self, window, app, steps: int = 50) -> None:
        super().__init__(window)
        self.window, self.app, self.steps = window, app, steps
        self.probe = LagProbe(parent=self)
        self.previews = self.last_step = 0
        self.cancel_asked: int | None = None
        self.cancelling = False
        self.started_at = 0.0
        link = window.link
        self.click_ms = 0.0
        self.click_probe = LagProbe(parent=self)
        link.methods_ready.connect(self._begin)
        link.started.connect(self._on_started)
        link.preview.connect(self._on_preview)
        link.progress.connect(self._on_progress)
        link.result.connect(self._after_full_run)  # after the window's own slot: it was connected first
        link.cancelled.connect(self._after_cancel)
        link.error.connect(self._on_error)

    def _begin(self, _methods) -> None:
        self.window.link.methods_ready.disconnect(self._begin)
        why_not = set_up_sdedit(self.window, self.steps)
        if why_not:
            self._fail(why_not)
            return
        self._run()

    def _run(self) -> None:
        self.previews = self.last_step = 0
        self.started_at = time.perf_counter()
        self.click_probe.start()
        if self.window.run_edit() is None:
            self._fail("the edit could not start")
        QTimer.singleShot(0, self._click_handled)

    def _click_handled(self) -> None:
        self.click_ms = (time.perf_counter() - self.started_at) * 1000
        self.click_probe.stop()

    def _on_started(self, *_args) -> None:
        self.probe.start()

    def _on_preview(self, *_args) -> None:
        self.previews += 1

    def _on_progress(self, _job: str, step: int, _total: int, stage: str) -> None:
        if stage != "sdedit":
            return
        self.last_step = step
        if self.cancelling and step >= self.CANCEL_AT and self.cancel_asked is None:
            self.cancel_asked = step
            self.window.cancel_edit()

    def _after_full_run(self, *_args) -> None:
        lag = self.probe.stop()
        seconds = time.perf_counter() - self.started_at
        print(
            f"atelier responsiveness: Run click handled in {self.click_ms:.1f} ms; full run {seconds:.1f} s, "
            f"{self.last_step} denoising steps, {self.previews} previews shown; while it ran: {lag.summary()}",
            flush=True,
        )
        self.window.discard_result()
        self.cancelling = True
        self._run()

    def _after_cancel(self, *_args) -> None:
        lag = self.probe.stop()
        print(
            f"atelier responsiveness: cancel asked at step {self.cancel_asked}, last step {self.last_step}; "
            f"while it ran: {lag.summary()}",
            flush=True,
        )
        self.app.exit(0)

    def _on_error(self, _job: str, kind: str, message: str, _hint: str) -> None:
        self._fail(f"{kind}: {message}")

    def _fail(self, why: str) -> None:
        fail(self.app, "responsiveness", why)


def set_up_sdedit(window, steps: int, strength: float = 0.8, prompt: str = "a blue star") -> str | None:
    """Open the first sample (unless a picture is open) and set the Method dock to SDEdit with these values.

    Returns why that could not be done, or None; the caller presses Run (`window.run_edit()`)."""
    from desktop_app.resources import sample_images

    window.files.ask_save_changes = lambda _name: "discard"  # a diagnostic run never waits on a dialog
    samples = sample_images()
    if window.document is None and not (samples and window.files.open(samples[0])):
        return "could not open a sample image"
    panel = window.method_panel
    index = panel.method_combo.findData("sdedit")
    if index < 0:
        return "the backend lists no sdedit method"
    panel.method_combo.setCurrentIndex(index)
    panel.target_prompt.setText(prompt)
    panel.param_form.set_values({**panel.param_form.values(), "steps": steps, "strength": strength})
    return None


def fail(app, run_name: str, why: str, code: int = 1) -> None:
    """End a diagnostic run: say why on stderr, quit the event loop with `code`."""
    print(f"atelier {run_name} failed: {why}", file=sys.stderr, flush=True)
    app.exit(code)


__all__ = ["LagProbe", "LagReport", "ResponsivenessRun", "fail", "set_up_sdedit"]
