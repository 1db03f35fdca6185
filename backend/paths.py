"""Where Atelier's files live: shipped resources and the user's data/cache/log folders (platformdirs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import platformdirs

APP_NAME = "Atelier"


def resources_dir() -> Path:
    """resources/ beside the packages, or inside a PyInstaller bundle (sys._MEIPASS)."""
    bundle_root = getattr(sys, "_MEIPASS", None)
    if bundle_root:
        return Path(bundle_root) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def resource_path(*parts: str) -> Path:
    return resources_dir().joinpath(*parts)


def user_data_dir() -> Path:
    return Path(os.environ.get("ATELIER_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))


def user_cache_dir() -> Path:
    return Path(os.environ.get("ATELIER_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME))


def user_log_dir() -> Path:
    return Path(os.environ.get("ATELIER_LOG_DIR") or platformdirs.user_log_dir(APP_NAME))


def models_dir() -> Path:
    """Folder the user keeps models in (diffusers folders or single .safetensors files)."""
    return Path(os.environ.get("ATELIER_MODELS_DIR") or user_data_dir() / "models")
