"""How a running method talks to the outside: progress, previews, log lines, and the cancel check."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from backend.errors import Cancelled
from backend.protocol import Event

log = logging.getLogger(__name__)


class Reporter:
    """Turns method calls into Events for one job; `check_cancel` raises Cancelled at step boundaries."""

    def __init__(
        self,
        job_id: str,
        emit: Callable[[Event], None],
        cancel: Any = None,
        previews: bool = True,
    ) -> None:
        self.job_id = job_id
        self._emit = emit
        self._cancel = cancel
        self.previews = previews
        self.last_step = 0

    def cancelled(self) -> bool:
        return bool(self._cancel is not None and self._cancel.is_set())

    def check_cancel(self) -> None:
        if self.cancelled():
            raise Cancelled(self.last_step)

    def progress(self, step: int, total: int, stage: str) -> None:
        self.last_step = step
        self._emit(Event(kind="progress", job_id=self.job_id, step=step, total=total, stage=stage))

    def preview(self, step: int, total: int, rgb: np.ndarray) -> None:
        if self.previews:
            self._emit(Event(kind="preview", job_id=self.job_id, step=step, total=total, image=rgb))

    def log(self, message: str) -> None:
        log.info("%s: %s", self.job_id, message)
        self._emit(Event(kind="log", job_id=self.job_id, message=message))


class SilentReporter(Reporter):
    """For library use and tests that don't care about events."""

    def __init__(self) -> None:
        super().__init__("local", lambda event: None)
