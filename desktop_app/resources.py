"""Where the GUI finds the files shipped with Atelier (sample images, icons).

Mirrors `backend.paths.resources_dir`, which the GUI may not import (import-linter): resources/ sits beside the
packages in a checkout and inside the bundle (`sys._MEIPASS`) in a PyInstaller build.
"""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    """resources/ beside the packages, or inside a PyInstaller bundle (sys._MEIPASS)."""
    bundle_root = getattr(sys, "_MEIPASS", None)
    if bundle_root:
        return Path(bundle_root) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def resource_path(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def sample_images() -> list[Path]:
    """The sample pictures offered by File > Open Sample, sorted by name."""
    return sorted(resource_path("samples").glob("*.png"))
