"""Logging setup shared by the backend worker and the GUI: stderr plus a rotating file in the user's log folder.

Torch-free (the GUI process calls it too). The level comes from ATELIER_LOG_LEVEL (default INFO); the folder from
`backend.paths.user_log_dir()` (platformdirs' user_log_dir("Atelier"), overridable with ATELIER_LOG_DIR).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from backend.paths import user_log_dir

LOG_FORMAT = "%(asctime)s %(process)d %(name)s %(levelname)s: %(message)s"
MAX_BYTES = 1_000_000
BACKUP_COUNT = 3
_MARK = "_atelier_handler"


def log_level() -> int:
    """The level named by ATELIER_LOG_LEVEL (a name such as DEBUG or a number); INFO when unset or unknown."""
    raw = os.environ.get("ATELIER_LOG_LEVEL", "").strip()
    if not raw:
        return logging.INFO
    if raw.isdigit():
        return int(raw)
    level = logging.getLevelName(raw.upper())
    return level if isinstance(level, int) else logging.INFO


def _file_handler(name: str, folder: Path) -> logging.Handler | None:
    """A RotatingFileHandler writing `<folder>/<name>.log`, or None when the folder can't be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return logging.handlers.RotatingFileHandler(
            folder / f"{name}.log", maxBytes=MAX_BYTES, backupCount=BACKUP_COUNT, encoding="utf-8"
        )
    except OSError:
        return None


def _remove_own_handlers(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        if getattr(handler, _MARK, False):
            logger.removeHandler(handler)
            handler.close()


def setup_logging(name: str, folder: Path | None = None) -> Path | None:
    """Configure the root logger for this process; returns the log file's path, or None when stderr-only.

    Calling it again replaces the handlers it added before (no duplicated lines).
    """
    root = logging.getLogger()
    _remove_own_handlers(root)
    level = log_level()
    root.setLevel(level)
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    file_handler = _file_handler(name, folder if folder is not None else user_log_dir())
    if file_handler is not None:
        handlers.append(file_handler)
    # The terminal (the CLI's progress bar, the GUI's console) gets warnings only unless asked for more;
    # the file always gets the full level.
    console_level = level if os.environ.get("ATELIER_LOG_LEVEL") else max(level, logging.WARNING)
    for handler in handlers:
        setattr(handler, _MARK, True)
        handler.setFormatter(formatter)
        handler.setLevel(console_level if handler is handlers[0] else level)
        root.addHandler(handler)
    return Path(file_handler.baseFilename) if isinstance(file_handler, logging.FileHandler) else None
