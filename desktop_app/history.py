"""Undo commands: every document change the user makes goes through one of these on the window's QUndoStack.

Each command calls the Document's own mutation methods (which validate and emit events), so undo/redo and the
canvas/panels never disagree about what changed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PySide6.QtGui import QUndoCommand

from desktop_app.document import Document, HistoryEntry, Layer


class AddLayer(QUndoCommand):
    def __init__(self, document: Document, layer: Layer, index: int | None = None, text: str = "") -> None:
        super().__init__(text or f"Add {layer.kind} layer '{layer.name}'")
        self.document, self.layer, self.index = document, layer, index
        self._previous_active: str | None = None

    def redo(self) -> None:
        self._previous_active = self.document.active_id
        self.document.add_layer(self.layer, self.index)

    def undo(self) -> None:
        _, self.index = self.document.remove_layer(self.layer.id)
        if self._previous_active and any(layer.id == self._previous_active for layer in self.document.layers):
            self.document.set_active(self._previous_active)


class AddedLayer(AddLayer):
    """AddLayer for a layer a tool already put in the document (a brush stroke shows its new mask while it paints):
    the first redo, which QUndoStack.push runs, must not add it a second time; later redos do."""

    def __init__(self, document: Document, layer: Layer, previous_active: str | None, text: str = "") -> None:
        super().__init__(document, layer, text=text)
        self._previous_active = previous_active
        self._skip_first_redo = True

    def redo(self) -> None:
        if self._skip_first_redo:
            self._skip_first_redo = False
            return
        super().redo()


class RemoveLayer(QUndoCommand):
    def __init__(self, document: Document, layer_id: str) -> None:
        layer = document.layer(layer_id)
        super().__init__(f"Delete layer '{layer.name}'")
        self.document, self.layer = document, layer
        self.index = document.index_of(layer_id)

    def redo(self) -> None:
        self.document.remove_layer(self.layer.id)

    def undo(self) -> None:
        self.document.add_layer(self.layer, self.index)


class MoveLayer(QUndoCommand):
    def __init__(self, document: Document, layer_id: str, index: int) -> None:
        super().__init__(f"Move layer '{document.layer(layer_id).name}'")
        self.document, self.layer_id, self.index = document, layer_id, index
        self.old_index = document.index_of(layer_id)

    def redo(self) -> None:
        self.old_index = self.document.move_layer(self.layer_id, self.index)

    def undo(self) -> None:
        self.document.move_layer(self.layer_id, self.old_index)


class SetProperty(QUndoCommand):
    """One property of one layer. Consecutive changes of the same property (an opacity slider drag) merge.

    `merge_key` names the gesture a change belongs to: only changes with equal keys merge, so two separate slider
    drags stay two undo steps (the default None merges every consecutive change, as before). Other properties
    merge only when given a key (the wheel scaling a region: one step per burst of notches)."""

    MERGE_ID = 1001

    def __init__(
        self, document: Document, layer_id: str, name: str, value: Any, text: str = "", merge_key: object = None
    ) -> None:
        layer = document.layer(layer_id)
        super().__init__(text or f"Change {name} of '{layer.name}'")
        self.document, self.layer_id, self.name, self.merge_key = document, layer_id, name, merge_key
        # Validate now: a ValueError raised inside push()'s redo() would still leave this command on the stack.
        self.value, self.old = document.validate_property(layer_id, name, value), getattr(layer, name)

    def redo(self) -> None:
        self.old = self.document.set_property(self.layer_id, self.name, self.value)

    def undo(self) -> None:
        self.document.set_property(self.layer_id, self.name, self.old)

    def id(self) -> int:
        return self.MERGE_ID if self.name == "opacity" or self.merge_key is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt's name
        if not isinstance(other, SetProperty):
            return False
        if (other.layer_id, other.name, other.merge_key) != (self.layer_id, self.name, self.merge_key):
            return False
        self.value = other.value
        return True


class SetPlacement(QUndoCommand):
    """Where a reference image sits on the picture, x, y and scale together: moving it or scaling it about its
    centre is one undo step. Changes with the same `merge_key` (a burst of wheel notches) merge."""

    MERGE_ID = 1002
    NAMES = ("x", "y", "scale")

    def __init__(
        self,
        document: Document,
        layer_id: str,
        placement: tuple[float, float, float],
        text: str,
        merge_key: object = None,
    ) -> None:
        super().__init__(text)
        self.document, self.layer_id, self.merge_key = document, layer_id, merge_key
        layer = document.layer(layer_id)
        self.value = tuple(document.validate_property(layer_id, n, v) for n, v in zip(self.NAMES, placement))
        self.old = tuple(getattr(layer, name) for name in self.NAMES)

    def redo(self) -> None:
        self._apply(self.value)

    def undo(self) -> None:
        self._apply(self.old)

    def _apply(self, values: tuple[float, ...]) -> None:
        layer = self.document.layer(self.layer_id)
        for name, value in zip(self.NAMES, values):
            if getattr(layer, name) != value:
                self.document.set_property(self.layer_id, name, value)

    def id(self) -> int:
        return self.MERGE_ID if self.merge_key is not None else -1

    def mergeWith(self, other: QUndoCommand) -> bool:  # noqa: N802 - Qt's name
        if not isinstance(other, SetPlacement) or (other.layer_id, other.merge_key) != (self.layer_id, self.merge_key):
            return False
        self.value = other.value
        return True


class PaintPatch(QUndoCommand):
    """Pixels of one layer inside one rectangle, before and after: one brush stroke, fill, invert or clear.

    A tool paints live while the mouse moves, then pushes this with the pixels from before the stroke; the first
    redo() (which Qt calls on push) must not paint again, so it only writes when asked to.
    """

    def __init__(
        self,
        document: Document,
        layer_id: str,
        origin: tuple[int, int],
        before: np.ndarray,
        after: np.ndarray,
        text: str,
        already_applied: bool = True,
    ) -> None:
        super().__init__(text)
        self.document, self.layer_id, self.origin = document, layer_id, origin
        self.before, self.after = before, after
        self._skip_first_redo = already_applied

    def redo(self) -> None:
        if self._skip_first_redo:
            self._skip_first_redo = False
            return
        self.document.write_patch(self.layer_id, *self.origin, self.after)

    def undo(self) -> None:
        self.document.write_patch(self.layer_id, *self.origin, self.before)


class AddHistoryEntry(QUndoCommand):
    """A result in the document's history; pushed with the result's AddLayer inside one macro (accepting a
    result), so one undo takes away both the layer and its entry."""

    def __init__(self, document: Document, entry: HistoryEntry) -> None:
        super().__init__(f"Add result '{entry.title}'")
        self.document, self.entry = document, entry

    def redo(self) -> None:
        self.document.add_history(self.entry)

    def undo(self) -> None:
        self.document.remove_history(self.entry)
