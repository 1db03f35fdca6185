"""Atelier's entry point: `python -m desktop_app` (or the `atelier` script, or the frozen app).

Only the standard library is imported at module level: `multiprocessing.freeze_support()` must run before
anything else in a frozen build (or the app respawns itself instead of starting the backend process), and
importing this module must stay cheap and torch-free.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from desktop_app.settings import Settings

# --measure-startup also counts from here (a few stdlib imports in: microseconds), for systems without /proc.
IMPORTED_AT = time.perf_counter()

logger = logging.getLogger(__name__)

SMOKE_TEST_TIMEOUT_S = 120
FIRST_PAINT_FALLBACK_MS = 2000  # start the backend anyway if a platform never reports a paint
SCREENSHOT_DELAY_MS = 300  # after the methods arrive: the Method dock relayouts and repaints first


def main(argv: list[str] | None = None) -> int:
    """Run the GUI; returns the exit code."""
    multiprocessing.freeze_support()
    args, qt_args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s",
    )
    return run_gui(args, qt_args)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Atelier's options; whatever else is on the command line is left for Qt (-platform, -style, ...)."""
    from backend.protocol import DEFAULT_MODEL

    parser = argparse.ArgumentParser(prog="atelier", description="Training-free diffusion image editing.")
    parser.add_argument("--image", metavar="PATH", help="image to open at start")
    parser.add_argument("--model", help=f"model id or folder (default: the one in the settings, {DEFAULT_MODEL})")
    parser.add_argument("--device", help="backend device for this run: auto, cuda, mps or cpu (default: the settings)")
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="open the window, wait for the backend's method list, print a summary and quit (0 = ok)",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="load the default model (toy-world, else tiny) in the backend process, run a short SDEdit on a sample "
        "through the window, print a summary with timings and quit (0 = ok); --model picks another model",
    )
    parser.add_argument(
        "--screenshot",
        metavar="PATH",
        help="once the backend has listed its methods, save a picture of the window to PATH (PNG) and quit",
    )
    parser.add_argument(
        "--measure-startup",
        action="store_true",
        help="print the seconds from process start until the window's first paint, then quit",
    )
    parser.add_argument(
        "--measure-responsiveness",
        action="store_true",
        help="run an edit on a sample and cancel another while probing the GUI thread's stalls; print them, quit",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_known_args(argv)


def run_gui(args: argparse.Namespace, qt_args: list[str]) -> int:
    from PySide6.QtWidgets import QApplication

    from desktop_app.backend_link import BackendLink
    from desktop_app.main_window import MainWindow
    from desktop_app.settings import load_settings

    app = QApplication([sys.argv[0], *qt_args])
    app.setApplicationName("Atelier")
    app.setOrganizationName("Atelier")
    settings = load_settings()
    link = BackendLink(settings=backend_settings_for_run(settings, args))
    window = MainWindow(link, model=args.model, settings=settings)
    window_built = time.perf_counter()

    def after_first_paint() -> None:
        if args.measure_startup:
            _report_startup(window_built)
            app.exit(0)
            return
        # The backend (a process that imports torch) starts only now, so it never delays the window.
        link.start()
        link.request_methods()
        if not unattended(args):
            window.files.offer_recovery()

    try:
        if args.smoke_test or args.screenshot:
            _arm_smoke_test(app, window, args.screenshot)
        if args.self_test:
            from desktop_app.self_test import SelfTestRun

            SelfTestRun(window, app, model=args.model)
        if args.measure_responsiveness:
            from desktop_app.diagnostics import ResponsivenessRun

            window.files.ask_save_changes = lambda _name: "discard"
            ResponsivenessRun(window, app)
        if not _open_start_image(window, args):
            return 1
        call_after_first_paint(window, after_first_paint)
        window.show()
        return app.exec()
    finally:
        window.files.end_session()
        link.shutdown()


def unattended(args: argparse.Namespace) -> bool:
    """A run no one watches (a test or a measurement): it must never wait on a dialog."""
    return bool(args.smoke_test or args.self_test or args.screenshot or args.measure_responsiveness)


def backend_settings_for_run(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    """What the backend starts with: the saved settings, with --device overriding for this run (--model goes to
    the window)."""
    from desktop_app.settings import backend_settings

    values = backend_settings(settings)
    if args.device:
        values["device"] = args.device
    return values


def call_after_first_paint(window: Any, callback: Callable[[], None]) -> None:
    """Call `callback` once, right after the first paint of `window` has been flushed to the screen."""
    from PySide6.QtCore import QEvent, QObject, QTimer
    from PySide6.QtWidgets import QApplication, QWidget

    app = QApplication.instance()
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            app.removeEventFilter(watcher)
            callback()

    class FirstPaint(QObject):
        def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
            if event.type() == QEvent.Type.Paint and isinstance(watched, QWidget) and watched.window() is window:
                QTimer.singleShot(0, once)  # runs once this paint pass is over and flushed
            return False

    watcher = FirstPaint(window)
    app.installEventFilter(watcher)
    QTimer.singleShot(FIRST_PAINT_FALLBACK_MS, once)


def seconds_since_process_start() -> float | None:
    """How long ago the kernel started this process (Linux: /proc), so interpreter start-up counts too."""
    try:
        stat = Path("/proc/self/stat").read_text()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, counting the two before ")"
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _report_startup(window_built: float) -> None:
    now = time.perf_counter()
    since_process = seconds_since_process_start()
    process = f"{since_process:.2f} s after process start, " if since_process is not None else ""
    print(
        f"atelier startup: first paint {process}{now - IMPORTED_AT:.2f} s after importing desktop_app.app "
        f"({now - window_built:.2f} s after the window was built)",
        flush=True,
    )


def _open_start_image(window: Any, args: argparse.Namespace) -> bool:
    """Open --image. In an unattended run a bad file fails the run instead of waiting on a message box."""
    if not args.image:
        return True
    if not unattended(args):
        window.files.open(args.image)
        return True
    from desktop_app.document.imagefile import ImageFileError
    from desktop_app.files import load_document

    try:
        window.set_document(load_document(args.image), Path(args.image).name)
    except (ImageFileError, ValueError) as error:
        print(f"atelier failed: cannot open {args.image}: {error}", file=sys.stderr, flush=True)
        return False
    return True


def _arm_smoke_test(app: Any, window: Any, screenshot: str | None = None) -> None:
    """Quit with 0 once the backend has listed its methods (after saving a picture of the window to `screenshot`,
    if given), 1 on a backend error or an unsaved picture, 2 after a timeout."""
    from PySide6.QtCore import QTimer

    from desktop_app.diagnostics import fail

    link = window.link

    def passed(methods: list) -> None:
        print(f"atelier ok: {len(methods)} methods from backend pid {link.backend_pid}", flush=True)
        if screenshot:
            QTimer.singleShot(SCREENSHOT_DELAY_MS, lambda: app.exit(_save_screenshot(app, window, screenshot)))
        else:
            app.exit(0)

    link.methods_ready.connect(passed)
    link.error.connect(lambda _job, kind, message, hint: fail(app, "smoke test", f"{kind}: {message} {hint}".rstrip()))
    QTimer.singleShot(
        SMOKE_TEST_TIMEOUT_S * 1000, lambda: fail(app, "smoke test", f"no answer within {SMOKE_TEST_TIMEOUT_S} s", 2)
    )


def _save_screenshot(app: Any, window: Any, path: str) -> int:
    """Render the window into a PNG at `path`; returns the exit code (0 saved, 1 not)."""
    picture = window.grab()
    if not picture.save(path):
        print(f"atelier screenshot failed: could not write {path}", file=sys.stderr, flush=True)
        return 1
    print(
        f"atelier screenshot: {path} ({picture.width()}x{picture.height()}, Qt platform {app.platformName()})",
        flush=True,
    )
    return 0
