"""The user's settings: a small JSON file in the platform's config folder. No Qt, so tests and the CLI can use it.

A settings file is edited by hand, copied between versions and machines, and half-written by crashes; so a
key we do not know is ignored, a bad value falls back to its default with a logged warning (never a failed
start), and saving is atomic.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import platformdirs

from backend.protocol import DEFAULT_MODEL
from desktop_app.document.atomic import atomic_write_bytes

log = logging.getLogger(__name__)

APP_NAME = "Atelier"
FILE_NAME = "settings.json"
MAX_RECENT = 10
DTYPES = ("auto", "fp16", "float16", "bf16", "fp32")  # what backend.models.loading.choose_dtype accepts
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# What the backend process is started with (backend.jobs.WorkerState reads these); a change needs a restart.
BACKEND_KEYS = ("device", "dtype", "previews", "models_dir", "sam_checkpoint")


@dataclass
class Settings:
    """Everything the user can set. Paths are strings ('' = not set), so the JSON stays plain."""

    models_dir: str = ""
    model: str = DEFAULT_MODEL
    sam_checkpoint: str = ""
    device: str = "auto"
    dtype: str = "auto"
    previews: bool = True
    autosave_minutes: float = 3.0  # 0 = autosave off
    recent_files: list[str] = field(default_factory=list)
    brush_size: int = 24
    brush_hardness: float = 0.6
    window_geometry: str = ""  # QMainWindow.saveGeometry(), base64; '' = the default size
    window_state: str = ""  # QMainWindow.saveState() (docks, toolbar), base64; '' = the default layout

    def add_recent(self, path: str | Path) -> None:
        """Put `path` first in the recent files (once), keeping the newest MAX_RECENT."""
        text = str(path)
        self.recent_files = [text, *(item for item in self.recent_files if item != text)][:MAX_RECENT]

    def save(self, path: str | Path | None = None) -> Path:
        return save_settings(self, path)


def backend_settings(settings: Settings) -> dict[str, Any]:
    """The settings the backend process is started with (see BACKEND_KEYS)."""
    return {key: getattr(settings, key) for key in BACKEND_KEYS}


def check_value(name: str, value: Any) -> Any:
    """The value to store for setting `name`, or ValueError saying what is expected (the settings file's rules)."""
    return _VALIDATORS[name](value)


def config_dir() -> Path:
    """The settings folder: ATELIER_CONFIG_DIR (tests, portable installs) or the platform's config folder."""
    return Path(os.environ.get("ATELIER_CONFIG_DIR") or platformdirs.user_config_dir(APP_NAME, appauthor=False))


def settings_path() -> Path:
    return config_dir() / FILE_NAME


def data_dir() -> Path:
    """The user data folder: ATELIER_DATA_DIR (tests, portable installs) or the platform's data folder.

    The same folder as backend.paths.user_data_dir, which the GUI may not import (import-linter)."""
    return Path(os.environ.get("ATELIER_DATA_DIR") or platformdirs.user_data_dir(APP_NAME))


def autosave_dir() -> Path:
    """Where autosaves and their session markers live (desktop_app.document.autosave)."""
    return data_dir() / "autosave"


def load_settings(path: str | Path | None = None) -> Settings:
    """The saved settings, or the defaults where the file is missing, unreadable or a value is bad."""
    path = Path(path) if path else settings_path()
    data = _read_json(path)
    defaults = Settings()
    values = {}
    for item in fields(Settings):
        if item.name in data:
            values[item.name] = _checked(item.name, data[item.name], getattr(defaults, item.name), path)
    return Settings(**values)


def save_settings(settings: Settings, path: str | Path | None = None) -> Path:
    path = Path(path) if path else settings_path()
    return atomic_write_bytes(path, json.dumps(asdict(settings), indent=2).encode("utf-8"))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        log.warning("could not read the settings in %s (%s); using the defaults", path, error)
        return {}
    if not isinstance(data, dict):
        log.warning("the settings in %s are not a JSON object; using the defaults", path)
        return {}
    return data


def _checked(name: str, value: Any, default: Any, path: Path) -> Any:
    try:
        return _VALIDATORS[name](value)
    except (TypeError, ValueError) as error:
        log.warning("settings %s: %s = %r is not valid (%s); using %r", path, name, value, error, default)
        return default


# --- validators: return the value to use or raise ValueError ---------------------------------------------------


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("expected text")
    return value


def _non_empty_text(value: Any) -> str:
    if not _text(value).strip():
        raise ValueError("must not be empty")
    return value.strip()


def _device(value: Any) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise ValueError("expected auto, cpu, mps, cuda or cuda:N")
    return value


def _dtype(value: Any) -> str:
    if value not in DTYPES:
        raise ValueError(f"expected one of {', '.join(DTYPES)}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _number(low: float, high: float, integer: bool = False) -> Callable[[Any], float | int]:
    def check(value: Any) -> float | int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"expected a number from {low:g} to {high:g}")
        if integer and value != int(value):
            raise ValueError("expected a whole number")
        return int(value) if integer else float(value)

    return check


def _base64(value: Any) -> str:
    try:
        base64.b64decode(_text(value), validate=True)
    except binascii.Error as error:
        raise ValueError(f"expected base64 ({error})") from None
    return value


def _recent(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("expected a list of paths")
    unique = dict.fromkeys(item for item in value if isinstance(item, str) and item)
    return list(unique)[:MAX_RECENT]


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "models_dir": _text,
    "model": _non_empty_text,
    "sam_checkpoint": _text,
    "device": _device,
    "dtype": _dtype,
    "previews": _flag,
    "autosave_minutes": _number(0, 24 * 60),
    "recent_files": _recent,
    "brush_size": _number(1, 2048, integer=True),
    "brush_hardness": _number(0, 1),
    "window_geometry": _base64,
    "window_state": _base64,
}


__all__ = [
    "BACKEND_KEYS",
    "Settings",
    "autosave_dir",
    "backend_settings",
    "check_value",
    "config_dir",
    "data_dir",
    "load_settings",
    "save_settings",
    "settings_path",
]
