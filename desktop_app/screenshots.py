"""`python -m desktop_app.screenshots OUTDIR`: take the README's screenshots from the real window and backend.

Run it under a display server (`xvfb-run -a python -m desktop_app.screenshots resources/screenshots`) or with
QT_QPA_PLATFORM=offscreen. It opens a sample, then captures: the segment tool with a proposal under a click, a drag
edit set up with handle → target points, and the staging pane in the middle of a run (previews every step).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from desktop_app.backend_link import BackendLink
from desktop_app.main_window import MainWindow
from desktop_app.resources import sample_images
from desktop_app.settings import Settings

SAMPLE = "red_circle_blue_square.png"
TIMEOUT_S = 180


def wait_until(app: QApplication, condition: Callable[[], bool], what: str, timeout: float = TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"screenshots: gave up waiting for {what}")
        app.processEvents()
        time.sleep(0.01)


def click(window: MainWindow, x: float, y: float) -> None:
    canvas = window.canvas
    position = canvas.mapFromScene(QPointF(x, y))
    QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, position)


def centre_of(window: MainWindow, colour: tuple[int, int, int]) -> tuple[float, float]:
    """The centre of the pixels nearest to `colour` in the picture (where to click on the sample's objects)."""
    import numpy as np

    image = window.document.composite_rgb().astype(int)
    distance = np.abs(image - np.array(colour)).sum(axis=2)
    ys, xs = np.nonzero(distance <= distance.min() + 30)
    return float(xs.mean()) + 0.5, float(ys.mean()) + 0.5


def take(app: QApplication, window: MainWindow, path: Path) -> None:
    for _ in range(5):
        app.processEvents()
        time.sleep(0.02)
    window.grab().save(str(path))
    print(f"screenshots: wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m desktop_app.screenshots", description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--model", default=None, help="model id (default: the app's default)")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication([sys.argv[0]])
    link = BackendLink(settings={"device": "cpu"})
    settings = Settings(autosave_minutes=0)
    window = MainWindow(link, model=args.model or settings.model, settings=settings)
    window.files.ask_save_changes = lambda _name: "discard"
    window.resize(1360, 820)
    window.show()
    link.start()
    link.request_methods()
    panel = window.method_panel
    wait_until(app, lambda: panel.method_combo.findData("sdedit") >= 0, "the backend's methods")
    sample = next(path for path in sample_images() if path.name == SAMPLE)
    if not window.files.open(sample):
        raise SystemExit(f"screenshots: could not open {sample}")
    window.canvas.fit()
    try:
        # 1. Click-to-segment: one click on the red circle, the proposal outlined.
        window.tool_state.tool = "segment"
        click(window, *centre_of(window, (220, 40, 40)))
        wait_until(
            app,
            lambda: window.canvas.segment_session is not None and window.canvas.segment_session.proposal is not None,
            "a segment proposal",
        )
        take(app, window, args.output / "segment-tool.png")
        window.canvas.apply_segment()
        # 2. A drag edit set up: handle on the circle, target to its right; the Move tool's region outline too.
        window.tool_state.tool = "drag"
        x, y = centre_of(window, (220, 40, 40))
        click(window, x, y)
        click(window, x + 30, y - 10)
        take(app, window, args.output / "drag-points.png")
        # 3. The staging pane mid-run: SDEdit inside the mask, previews streaming in.
        window.tool_state.tool = "brush"
        panel.method_combo.setCurrentIndex(panel.method_combo.findData("sdedit"))
        panel.target_prompt.setText("a blue star")
        panel.param_form.set_values({**panel.param_form.values(), "steps": 200, "strength": 0.9})
        window.run_edit()
        wait_until(app, lambda: panel.progress_bar.value() >= 40, "the edit's 40th step")
        take(app, window, args.output / "staging-mid-run.png")
        window.cancel_edit()
        wait_until(app, lambda: window.job_id is None, "the cancel")
    finally:
        link.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
