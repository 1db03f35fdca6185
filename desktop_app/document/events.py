"""Tiny observable machinery for the Qt-free document model (napari-style: one emitter per event name)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class DocumentEvent:
    """What changed: `type` is the emitter's name; the rest depends on it (layer_id, attribute, rect, ...)."""

    type: str
    source: Any = None
    data: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["data"][name]
        except KeyError:
            raise AttributeError(name) from None


class EventEmitter:
    """Callbacks for one kind of change. A failing callback is logged, never breaks the model's mutation."""

    def __init__(self, name: str, source: Any = None) -> None:
        self.name = name
        self.source = source
        self._callbacks: list[Callable[[DocumentEvent], None]] = []
        self._blocked = 0

    def connect(self, callback: Callable[[DocumentEvent], None]) -> Callable[[DocumentEvent], None]:
        self._callbacks.append(callback)
        return callback

    def disconnect(self, callback: Callable[[DocumentEvent], None]) -> None:
        self._callbacks.remove(callback)

    def __call__(self, **data: Any) -> DocumentEvent:
        event = DocumentEvent(self.name, self.source, data)
        if self._blocked:
            return event
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:  # an observer's bug must not corrupt the document mid-change
                log.exception("observer of %s failed", self.name)
        return event

    def blocker(self) -> _Blocker:
        return _Blocker(self)


class _Blocker:
    def __init__(self, emitter: EventEmitter) -> None:
        self.emitter = emitter

    def __enter__(self) -> None:
        self.emitter._blocked += 1

    def __exit__(self, *exc: object) -> None:
        self.emitter._blocked -= 1


class EmitterGroup:
    """`group.name.connect(cb)` for each declared event name; declared in one place per model class."""

    def __init__(self, source: Any, names: tuple[str, ...]) -> None:
        self._names = names
        for name in names:
            setattr(self, name, EventEmitter(name, source))

    def connect_all(self, callback: Callable[[DocumentEvent], None]) -> None:
        for name in self._names:
            getattr(self, name).connect(callback)
