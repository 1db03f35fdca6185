"""The document: an ordered stack of layers at one size, the active layer, and the history of results.

Every mutation goes through a Document method that validates (clear ValueError), stores, and emits one event,
and returns what undo needs (the old value, the old pixels). Undo commands (desktop_app/history.py) call these
methods; the model itself knows nothing of Qt.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from desktop_app.document.events import EmitterGroup
from desktop_app.document.layers import (
    MASK_ROLES,
    DragLayer,
    Layer,
    MaskLayer,
    ObjectLayer,
    RasterLayer,
    ReferenceLayer,
    RegionMove,
)

MAX_SIDE = 16384

EVENT_NAMES = (
    "layer_added",  # layer, index
    "layer_removed",  # layer, index
    "layer_moved",  # layer, old_index, index
    "layer_changed",  # layer, attribute, old, new
    "pixels_changed",  # layer, rect (x, y, w, h)
    "active_changed",  # layer (or None)
    "history_changed",  # entry
    "modified_changed",  # modified
)


@dataclass
class HistoryEntry:
    """A result that became a layer: its title, the layer, and the full recipe (an EditRequest dict)."""

    title: str
    layer_id: str
    recipe: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


class Document:
    def __init__(self, width: int, height: int) -> None:
        _check_size(width, height)
        self.width, self.height = int(width), int(height)
        self.layers: list[Layer] = []
        self.history: list[HistoryEntry] = []
        self.active_id: str | None = None
        self.modified = False
        self.events = EmitterGroup(self, EVENT_NAMES)

    # --- construction -----------------------------------------------------------------------------------

    @classmethod
    def from_image(cls, image: np.ndarray, name: str = "Background") -> Document:
        rgba = to_rgba(image)
        document = cls(rgba.shape[1], rgba.shape[0])
        document.add_layer(RasterLayer(name=name, pixels=rgba))
        document.set_modified(False)
        return document

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    # --- lookups ----------------------------------------------------------------------------------------

    def layer(self, layer_id: str) -> Layer:
        for layer in self.layers:
            if layer.id == layer_id:
                return layer
        raise KeyError(f"no layer with id {layer_id!r}")

    def index_of(self, layer_id: str) -> int:
        return self.layers.index(self.layer(layer_id))

    @property
    def active_layer(self) -> Layer | None:
        # None, not KeyError, while layer_removed observers run: active_id still names the removed layer then.
        return next((layer for layer in self.layers if layer.id == self.active_id), None)

    def layers_of(self, kind: type[Layer]) -> list[Layer]:
        return [layer for layer in self.layers if isinstance(layer, kind)]

    # --- structure --------------------------------------------------------------------------------------

    def add_layer(self, layer: Layer, index: int | None = None) -> Layer:
        """Insert `layer` (default: on top) and make it active."""
        self._check_layer(layer)
        if any(existing.id == layer.id for existing in self.layers):
            raise ValueError(f"layer {layer.id} is already in the document")
        index = len(self.layers) if index is None else max(0, min(int(index), len(self.layers)))
        self.layers.insert(index, layer)
        self.events.layer_added(layer=layer, index=index)
        self.set_active(layer.id)
        self.set_modified(True)
        return layer

    def remove_layer(self, layer_id: str) -> tuple[Layer, int]:
        index = self.index_of(layer_id)
        layer = self.layers.pop(index)
        self.events.layer_removed(layer=layer, index=index)
        if self.active_id == layer_id:
            self.set_active(self.layers[min(index, len(self.layers) - 1)].id if self.layers else None)
        self.set_modified(True)
        return layer, index

    def move_layer(self, layer_id: str, index: int) -> int:
        """Move to `index` (0 = bottom); returns the old index."""
        old = self.index_of(layer_id)
        index = max(0, min(int(index), len(self.layers) - 1))
        if index != old:
            layer = self.layers.pop(old)
            self.layers.insert(index, layer)
            self.events.layer_moved(layer=layer, old_index=old, index=index)
            self.set_modified(True)
        return old

    def set_active(self, layer_id: str | None) -> None:
        if layer_id is not None:
            self.layer(layer_id)  # must exist
        if layer_id != self.active_id:
            self.active_id = layer_id
            self.events.active_changed(layer=self.active_layer)

    # --- properties -------------------------------------------------------------------------------------

    def validate_property(self, layer_id: str, name: str, value: Any) -> Any:
        """The value `set_property` would store, or the ValueError it would raise; changes nothing.

        Undo commands call this before they reach the stack: a refused value must not leave an empty step."""
        layer = self.layer(layer_id)
        if name not in layer.editable:
            raise ValueError(f"{layer.kind} layers have no editable property {name!r}")
        return _validated(layer, name, value, self.size)

    def set_property(self, layer_id: str, name: str, value: Any) -> Any:
        """Validate and set one editable property; returns the old value (for undo)."""
        value = self.validate_property(layer_id, name, value)
        layer = self.layer(layer_id)
        old = getattr(layer, name)
        setattr(layer, name, value)
        self.events.layer_changed(layer=layer, attribute=name, old=old, new=value)
        self.set_modified(True)
        return old

    # --- pixels -----------------------------------------------------------------------------------------

    def write_patch(self, layer_id: str, x: int, y: int, patch: np.ndarray) -> np.ndarray:
        """Replace the pixels under `patch` (clipped to the layer); returns the pixels it replaced.

        The returned array has the patch's shape (where the patch hangs over the edge it holds the patch's own
        pixels, which were never written), so `write_patch(layer_id, x, y, old)` undoes this call exactly."""
        array = self._pixel_array(layer_id)
        if patch.ndim != array.ndim or patch.shape[2:] != array.shape[2:] or patch.dtype != array.dtype:
            raise ValueError(f"patch of shape {patch.shape} {patch.dtype} does not fit {array.shape} {array.dtype}")
        height, width = array.shape[:2]
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(width, x + patch.shape[1]), min(height, y + patch.shape[0])
        old = patch.copy()
        if x0 >= x1 or y0 >= y1:
            return old
        old[y0 - y : y1 - y, x0 - x : x1 - x] = array[y0:y1, x0:x1]
        array[y0:y1, x0:x1] = patch[y0 - y : y1 - y, x0 - x : x1 - x]
        self.events.pixels_changed(layer=self.layer(layer_id), rect=(x0, y0, x1 - x0, y1 - y0))
        self.set_modified(True)
        return old

    def replace_pixels(self, layer_id: str, array: np.ndarray) -> np.ndarray:
        """Replace a layer's whole pixel array (same shape); returns the old one."""
        current = self._pixel_array(layer_id)
        if array.shape != current.shape:
            raise ValueError(f"new pixels are {array.shape}, the layer is {current.shape}")
        return self.write_patch(layer_id, 0, 0, array.astype(current.dtype, copy=False))

    def _pixel_array(self, layer_id: str) -> np.ndarray:
        array = self.layer(layer_id).pixel_array()
        if array is None:
            raise ValueError(f"layer {self.layer(layer_id).name!r} has no pixels to paint")
        return array

    # --- what methods need ------------------------------------------------------------------------------

    def composite(self) -> np.ndarray:
        """RGBA uint8 of the visible raster layers, bottom to top, 'over' with each layer's opacity."""
        out = np.zeros((self.height, self.width, 4), np.float32)
        for layer in self.layers:
            if isinstance(layer, RasterLayer) and layer.visible and layer.opacity > 0:
                src = layer.pixels.astype(np.float32) / 255.0
                alpha = src[..., 3:4] * layer.opacity
                out_alpha = alpha + out[..., 3:4] * (1 - alpha)
                colour = src[..., :3] * alpha + out[..., :3] * out[..., 3:4] * (1 - alpha)
                out[..., :3] = np.divide(colour, out_alpha, out=np.zeros_like(colour), where=out_alpha > 0)
                out[..., 3:4] = out_alpha
        return (out * 255).round().astype(np.uint8)

    def composite_rgb(self, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
        """The picture a method edits: the composite flattened over a plain background."""
        rgba = self.composite().astype(np.float32)
        alpha = rgba[..., 3:4] / 255.0
        flat = rgba[..., :3] * alpha + np.asarray(background, np.float32) * (1 - alpha)
        return flat.round().astype(np.uint8)

    def masks_by_role(self) -> dict[str, np.ndarray]:
        """Visible masks merged per role (union = max), as an EditRequest wants them."""
        merged: dict[str, np.ndarray] = {}
        for layer in self.layers_of(MaskLayer):
            if layer.visible and layer.mask.any():
                merged[layer.role] = np.maximum(merged.get(layer.role, 0), layer.mask).astype(np.uint8)
        return merged

    # --- history and state ------------------------------------------------------------------------------

    def add_history(self, entry: HistoryEntry) -> None:
        self.history.append(entry)
        self.events.history_changed(entry=entry)
        self.set_modified(True)

    def remove_history(self, entry: HistoryEntry) -> None:
        """Take `entry` out of the history (undoing the accept that added it); ValueError if it is not there."""
        for index, existing in enumerate(self.history):
            if existing is entry:  # identity: two results can have equal titles and recipes
                del self.history[index]
                self.events.history_changed(entry=entry)
                self.set_modified(True)
                return
        raise ValueError(f"history entry {entry.title!r} is not in the document")

    def set_modified(self, modified: bool) -> None:
        if modified != self.modified:
            self.modified = modified
            self.events.modified_changed(modified=modified)

    def _check_layer(self, layer: Layer) -> None:
        size = (self.height, self.width)
        if isinstance(layer, RasterLayer):
            _check_array(layer.pixels, (*size, 4), "raster layer pixels")
        elif isinstance(layer, (MaskLayer, ObjectLayer)):
            _check_array(layer.mask, size, f"{layer.kind} layer mask")
        elif isinstance(layer, ReferenceLayer):
            layer.image = to_rgba(layer.image)
            if layer.mask is not None:
                _check_array(layer.mask, layer.image.shape[:2], "reference mask")
        if isinstance(layer, MaskLayer) and layer.role not in MASK_ROLES:
            raise ValueError(f"mask role must be one of {', '.join(MASK_ROLES)}; got {layer.role!r}")


# --- validation helpers -------------------------------------------------------------------------------------


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise ValueError(f"document size {width}x{height} is outside 1..{MAX_SIDE} pixels per side")


def _check_array(array: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.shape != shape:
        got = f"{array.shape} {array.dtype}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{what} must be uint8 of shape {shape}; got {got}")


def to_rgba(image: np.ndarray) -> np.ndarray:
    """uint8 gray / RGB / RGBA -> RGBA (opaque where there was no alpha)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("an image must be a uint8 array")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"an image must be H x W (x 3 or 4); got shape {image.shape}")
    _check_size(image.shape[1], image.shape[0])
    if image.shape[2] == 3:
        image = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return np.ascontiguousarray(image)


def _validated(layer: Layer, name: str, value: Any, size: tuple[int, int]) -> Any:
    if name == "name":
        value = str(value).strip()
        if not value:
            raise ValueError("a layer needs a name")
    elif name == "visible":
        value = bool(value)
    elif name == "opacity":
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"opacity must be between 0 and 1; got {value}")
    elif name == "role":
        if value not in MASK_ROLES:
            raise ValueError(f"mask role must be one of {', '.join(MASK_ROLES)}; got {value!r}")
    elif name in ("prompt", "source"):
        value = str(value)
    elif name == "points":
        value = [_point_pair(pair, size) for pair in value]
    elif name == "regions":
        value = [region if isinstance(region, RegionMove) else RegionMove(**region) for region in value]
        if any(region.scale <= 0 for region in value):
            raise ValueError("a region's scale must be positive")
    elif name in ("x", "y"):
        value = float(value)
    elif name == "scale":
        value = float(value)
        if value <= 0:
            raise ValueError(f"scale must be positive; got {value}")
    elif name == "mask" and value is not None and isinstance(layer, ReferenceLayer):
        _check_array(value, layer.image.shape[:2], "reference mask")
    return value


def _point_pair(pair: Any, size: tuple[int, int]) -> tuple[tuple[float, float], tuple[float, float]]:
    (hx, hy), (tx, ty) = pair
    width, height = size
    for x, y in ((hx, hy), (tx, ty)):
        if not (0 <= x < width and 0 <= y < height):
            raise ValueError(f"point ({x:g}, {y:g}) lies outside the {width}x{height} image")
    return (float(hx), float(hy)), (float(tx), float(ty))


__all__ = ["Document", "DragLayer", "HistoryEntry", "to_rgba"]
