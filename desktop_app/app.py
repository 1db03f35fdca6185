"""Atelier's entry point: `python -m desktop_app` (or the `atelier` script, or the frozen app).

Only the standard library is imported at module level: `multiprocessing.freeze_support()` must run before
anything else in a frozen build (or the app respawns itself instead of starting the backend process), and
importing this module must stay cheap and torch-free.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import sys
from typing import Any

logger = logging.getLogger(__name__)

SMOKE_TEST_TIMEOUT_S = 120


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
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"model id or folder (default: {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto", help="backend device: auto, cuda, mps or cpu")
    parser.add_argument(
        "--smoke-test",
        action="store_true",
        help="open the window, wait for the backend's method list, print a summary and quit (0 = ok)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_known_args(argv)


def run_gui(args: argparse.Namespace, qt_args: list[str]) -> int:
    from PySide6.QtWidgets import QApplication

    from desktop_app.backend_link import BackendLink
    from desktop_app.main_window import MainWindow

    app = QApplication([sys.argv[0], *qt_args])
    app.setApplicationName("Atelier")
    app.setOrganizationName("Atelier")
    link = BackendLink(settings={"device": args.device})
    window = MainWindow(link, model=args.model)
    try:
        if args.smoke_test:
            _arm_smoke_test(app, link)
        if not _open_start_image(window, args):
            return 1
        window.show()
        link.start()
        link.request_methods()
        return app.exec()
    finally:
        link.shutdown()


def _open_start_image(window: Any, args: argparse.Namespace) -> bool:
    """Open --image. In a smoke test a bad file fails the test instead of waiting on a message box."""
    if not args.image:
        return True
    if not args.smoke_test:
        window.open_image(args.image)
        return True
    from desktop_app.main_window import ImageLoadError, load_rgb

    try:
        window.set_image(load_rgb(args.image))
    except ImageLoadError as error:
        print(f"atelier smoke test failed: cannot open {args.image}: {error}", file=sys.stderr, flush=True)
        return False
    return True


def _arm_smoke_test(app: Any, link: Any) -> None:
    """Quit with 0 once the backend has listed its methods, 1 on a backend error, 2 after a timeout."""
    from PySide6.QtCore import QTimer

    def passed(methods: list) -> None:
        print(f"atelier ok: {len(methods)} methods from backend pid {link.backend_pid}", flush=True)
        app.exit(0)

    def failed(_job_id: str, kind: str, message: str, hint: str) -> None:
        print(f"atelier smoke test failed: {kind}: {message} {hint}".rstrip(), file=sys.stderr, flush=True)
        app.exit(1)

    def timed_out() -> None:
        print(f"atelier smoke test failed: no answer within {SMOKE_TEST_TIMEOUT_S} s", file=sys.stderr, flush=True)
        app.exit(2)

    link.methods_ready.connect(passed)
    link.error.connect(failed)
    QTimer.singleShot(SMOKE_TEST_TIMEOUT_S * 1000, timed_out)
