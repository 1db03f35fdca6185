"""Exceptions a job turns into `error` / `cancelled` events. Each carries the event's `error_kind` and a hint."""

from __future__ import annotations


class AtelierError(Exception):
    """Base: `kind` becomes Event.error_kind, `hint` tells the user what to change."""

    kind = "method-failed"

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


class InputError(AtelierError, ValueError):
    """The request itself is wrong: missing or malformed image, mask, points, prompt or parameter."""

    kind = "bad-input"


class UnknownMethod(AtelierError, LookupError):
    kind = "unknown-method"


class ModelUnavailable(AtelierError):
    kind = "model-missing"


class Cancelled(Exception):
    """Raised at a step boundary once the user asked to cancel; `step` is the last step completed."""

    def __init__(self, step: int = 0) -> None:
        super().__init__(f"cancelled after step {step}")
        self.step = step
