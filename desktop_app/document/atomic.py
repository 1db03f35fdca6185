"""Atomic file writes: the file under the real name is always either the old one or the complete new one.

A save that fails halfway (disk full, a bug in a writer, the app killed mid-write) must never destroy the
user's previous project, so every writer writes a temporary file in the *same folder* (os.replace is only
atomic within one file system), flushes it to disk, and only then renames it over the real name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".part"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit it replaces `path`, on an error it is deleted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")
    try:
        yield temporary
        _flush_to_disk(temporary)
        if path.exists():
            shutil.copymode(path, temporary)  # keep the permissions the user gave the old file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    _flush_folder(path.parent)


def atomic_write(path: str | Path, writer: Callable[[Path], object]) -> Path:
    """Call `writer(temporary_path)` and move the result over `path` only if it returned without raising."""
    with atomic_path(path) as temporary:
        writer(temporary)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda temporary: temporary.write_bytes(data))


def _flush_to_disk(path: Path) -> None:
    """fsync, so that a power cut right after the rename cannot leave an empty file under the real name."""
    if not path.exists():
        raise FileNotFoundError(f"the writer did not create {path}")
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


def _flush_folder(folder: Path) -> None:
    """fsync the folder so the rename itself is durable (POSIX only; Windows cannot open folders)."""
    if os.name == "nt":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError as error:  # some file systems (network shares) refuse; the data is still written
        log.debug("could not fsync %s: %s", folder, error)
    finally:
        os.close(descriptor)


__all__ = ["atomic_path", "atomic_write", "atomic_write_bytes"]
