"""Autosave and crash recovery, without Qt: the main window calls `maybe_save` from a QTimer.

Each running Atelier is a *session* with two files in the autosave folder: `autosave-<session>.ora` (the last
autosaved document) and `autosave-<session>.lock` (a marker holding the session's pid). A clean exit removes
both. At start-up, `recoverable(folder)` lists the autosaves whose marker names a process that is no longer
running (or that lost their marker): those are what a crash or a power cut left behind. A live session's
autosave, this one's or another open window's, is never offered.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import time
import uuid
from pathlib import Path

from desktop_app.document.atomic import atomic_write_bytes
from desktop_app.document.document import EVENT_NAMES, Document
from desktop_app.document.events import DocumentEvent
from desktop_app.document.ora import save_ora

log = logging.getLogger(__name__)

PREFIX = "autosave-"
PROJECT_SUFFIX = ".ora"
MARKER_SUFFIX = ".lock"
# Changes that do not alter the saved project's content (or are the modified flag itself) do not count.
_IGNORED_EVENTS = frozenset({"modified_changed", "active_changed"})


class Autosaver:
    """Saves the document every `interval_s` seconds while it has unsaved changes; see the module docstring."""

    def __init__(self, folder: str | Path, interval_s: float = 180.0, session: str | None = None) -> None:
        self.folder = Path(folder)
        self.interval_s = float(interval_s)
        self.session = session or _new_session_name()
        self.path = self.folder / f"{PREFIX}{self.session}{PROJECT_SUFFIX}"
        self.marker = self.path.with_suffix(MARKER_SUFFIX)
        self.label = ""  # what a recovery dialog calls the document (its file name), written into the marker
        self.last_error: Exception | None = None
        self._document: Document | None = None
        self._changes = 0  # document changes seen since watching started
        self._saved_changes = 0  # the value of _changes at the last autosave
        self._last_save: float | None = None
        self._started = _now_text()
        self._write_marker()

    def watch(self, document: Document) -> None:
        """Follow `document`'s changes (maybe_save does this itself when the window opens another document)."""
        if document is self._document:
            return
        self._unwatch()
        self._document = document
        document.events.connect_all(self._on_change)
        self._changes, self._saved_changes = (1, 0) if document.modified else (0, 0)

    def _on_change(self, event: DocumentEvent) -> None:
        if event.type not in _IGNORED_EVENTS:
            self._changes += 1

    def maybe_save(self, document: Document, now: float | None = None) -> Path | None:
        """Autosave if the document changed since the last autosave and `interval_s` has passed; the path or None.

        Never raises: a failed autosave is logged (and kept in `last_error`) and tried again next time.
        """
        now = time.monotonic() if now is None else now
        self.watch(document)
        if not document.modified:
            self._drop_autosave()  # saved by the user: the project file is newer than any autosave
            self._saved_changes = self._changes
            return None
        if self._changes == self._saved_changes:
            return None
        if self._last_save is not None and now - self._last_save < self.interval_s:
            return None
        return self._save(document, now)

    def _save(self, document: Document, now: float) -> Path | None:
        changes = self._changes
        try:
            save_ora(document, self.path, compress_level=1)  # fast: an autosave blocks the window while it runs
        except Exception as error:  # an autosave must never take the editor down with it
            log.exception("autosave to %s failed", self.path)
            self.last_error = error
            return None
        self.last_error = None
        self._saved_changes, self._last_save = changes, now
        self._write_marker()
        log.info("autosaved to %s", self.path)
        return self.path

    def close(self) -> None:
        """A clean exit: this session's autosave and marker go; nothing will be offered for recovery."""
        self._unwatch()
        self._drop_autosave()
        self.marker.unlink(missing_ok=True)

    def _unwatch(self) -> None:
        if self._document is not None:
            for name in EVENT_NAMES:
                getattr(self._document.events, name).disconnect(self._on_change)
        self._document = None

    def _drop_autosave(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not remove the autosave %s: %s", self.path, error)

    def _write_marker(self) -> None:
        info = {"pid": os.getpid(), "started": self._started, "label": self.label, "autosave": self.path.name}
        try:
            atomic_write_bytes(self.marker, json.dumps(info).encode())
        except OSError as error:  # without a marker the autosave is still recoverable; say so and go on
            log.warning("could not write the autosave marker %s: %s", self.marker, error)


def recoverable(folder: str | Path) -> list[Path]:
    """Autosaves left by sessions that did not exit cleanly, newest first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [path for path in folder.glob(f"{PREFIX}*{PROJECT_SUFFIX}") if not _session_alive(path)]
    return sorted(found, key=lambda path: path.stat().st_mtime, reverse=True)


def recovery_label(path: str | Path) -> str:
    """What the crashed session called its document ('' when unknown), for the recovery dialog."""
    info = _marker_info(Path(path).with_suffix(MARKER_SUFFIX))
    return str(info.get("label", "")) if info else ""


def discard(path: str | Path) -> None:
    """Forget a recovered (or declined) autosave: the file and its marker."""
    path = Path(path)
    path.unlink(missing_ok=True)
    path.with_suffix(MARKER_SUFFIX).unlink(missing_ok=True)


def _session_alive(path: Path) -> bool:
    info = _marker_info(path.with_suffix(MARKER_SUFFIX))
    if info is None:
        return False
    pid = info.get("pid")
    return isinstance(pid, int) and pid_alive(pid)


def _marker_info(marker: Path) -> dict | None:
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs now. (A reused pid reads as alive: the autosave waits, it is not lost.)"""
    if pid <= 0:
        return False
    if os.name == "nt":
        return _windows_pid_alive(pid)
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    except OSError:
        return False
    return True


def _windows_pid_alive(pid: int) -> bool:
    """os.kill on Windows *terminates* the process, so ask the kernel instead."""
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def _new_session_name() -> str:
    return f"{datetime.datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def _now_text() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


__all__ = ["Autosaver", "discard", "pid_alive", "recoverable", "recovery_label"]
