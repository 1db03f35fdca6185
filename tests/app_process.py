"""Run the desktop app as a user would (`python -m desktop_app ...`) in a child process, headless."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_app(*args: str, timeout: float, offline: bool = True) -> subprocess.CompletedProcess:
    """The finished process (text output captured), on Qt's offscreen platform; `offline` forbids hub access."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "desktop_app", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
