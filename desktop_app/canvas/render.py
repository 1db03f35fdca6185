"""Showing a Document in a QGraphicsScene: numpy -> QImage without Python loops, one item per layer, and partial
updates — a `pixels_changed` event re-renders only its rectangle, so painting a 2048x2048 mask stays smooth.

Each image item keeps its pixels in a numpy array in the display format (premultiplied ARGB32, Qt's fast path)
and a QImage over that same memory: an update writes a slice of the array and marks only that rectangle dirty.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import weakref
from functools import lru_cache
from typing import Any

import numpy as np
from PySide6.QtCore import QRectF
from PySide6.QtGui import QColor, QImage, QPainter, QPainterPath
from PySide6.QtWidgets import QGraphicsItem, QGraphicsScene, QStyleOptionGraphicsItem, QWidget
from shiboken6 import Shiboken

from desktop_app.canvas.drag import Box, region_box
from desktop_app.canvas.overlays import DragOverlay, RegionOverlay, RegionShape, mask_outline
from desktop_app.canvas.reference import masked_image
from desktop_app.document import (
    ROLE_COLOURS,
    Document,
    DocumentEvent,
    DragLayer,
    EventEmitter,
    Layer,
    MaskLayer,
    ObjectLayer,
    RasterLayer,
    ReferenceLayer,
    RegionMove,
)

log = logging.getLogger(__name__)

# Premultiplied ARGB32 is what the raster paint engine blends without converting; in memory it is B, G, R, A on
# little-endian machines. On big-endian ones, RGBA8888 keeps R, G, B, A byte order (slower, still correct).
if sys.byteorder == "little":
    DISPLAY_FORMAT, DISPLAY_ORDER = QImage.Format.Format_ARGB32_Premultiplied, (2, 1, 0, 3)
else:  # pragma: no cover - no big-endian desktops to test on
    DISPLAY_FORMAT, DISPLAY_ORDER = QImage.Format.Format_RGBA8888_Premultiplied, (0, 1, 2, 3)

# Stacking: masks tint whatever raster is under them wherever they sit in the layer list (they are annotations,
# not pixels), and drag arrows stay above every tint.
Z_MASKS, Z_ANNOTATIONS = 10_000.0, 20_000.0
EDGE_ALPHA = 220  # the mask's outline (its 50% contour) over the faint tint inside


# --- conversions ------------------------------------------------------------------------------------------------


def to_qimage(array: np.ndarray) -> QImage:
    """uint8 H x W (gray), H x W x 3 (RGB) or H x W x 4 (RGBA, straight alpha) -> a QImage owning a copy."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    height, width = array.shape[:2]
    channels = 1 if array.ndim == 2 else array.shape[2]
    formats = {1: QImage.Format.Format_Grayscale8, 3: QImage.Format.Format_RGB888, 4: QImage.Format.Format_RGBA8888}
    return QImage(array.data, width, height, width * channels, formats[channels]).copy()


def from_qimage(image: QImage) -> np.ndarray:
    """A QImage -> H x W x 4 RGBA uint8 (straight alpha), for tests and screenshots."""
    return _pixels_of(image.convertToFormat(QImage.Format.Format_RGBA8888))


def raster_pixels(rgba: np.ndarray) -> np.ndarray:
    """Straight-alpha RGBA -> premultiplied, in display byte order. Qt's SIMD conversion does the premultiply and
    the byte swap several times faster than numpy arithmetic (10 vs 40 ms for 2048x2048)."""
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    height, width = rgba.shape[:2]
    if rgba.size == 0:
        return np.zeros((height, width, 4), np.uint8)
    image = QImage(rgba.data, width, height, width * 4, QImage.Format.Format_RGBA8888)
    return _pixels_of(image.convertToFormat(DISPLAY_FORMAT))


def _pixels_of(image: QImage) -> np.ndarray:
    """A 32-bit QImage's pixels as an H x W x 4 array of its bytes (copied: the QImage may go away)."""
    height, width = image.height(), image.width()
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(height, image.bytesPerLine())
    return rows[:, : width * 4].reshape(height, width, 4).copy()


@lru_cache(maxsize=32)
def _tint_words(colour: tuple[int, int, int, int]) -> np.ndarray:
    """257 display pixels as 32-bit words: the tint for every mask value, then the outline's colour. Tinting is
    then one gather of words (a gather of 4-byte rows is several times slower)."""
    red, green, blue, strength = colour
    alpha = (np.arange(256, dtype=np.uint32) * strength + 127) // 255
    alpha = np.append(alpha, EDGE_ALPHA)
    rgba = np.stack([(alpha * c + 127) // 255 for c in (red, green, blue)] + [alpha], axis=1)
    return np.ascontiguousarray(rgba[:, DISPLAY_ORDER].astype(np.uint8)).view(np.uint32)[:, 0]


def mask_pixels(mask: np.ndarray, colour: tuple[int, int, int, int], edge: np.ndarray | None = None) -> np.ndarray:
    """A soft mask -> its tint (the colour at the colour's alpha times the mask), premultiplied display order.
    Pixels flagged in `edge` get the colour nearly opaque: a tint alone vanishes on a picture of the same hue."""
    index = mask if edge is None else np.where(edge, np.uint16(256), mask)
    words = _tint_words(tuple(int(c) for c in colour))[index]
    return words.view(np.uint8).reshape(*mask.shape, 4)


def mask_edge(mask: np.ndarray, x: int, y: int, width: int, height: int) -> np.ndarray:
    """Which pixels of the rectangle lie inside the mask (>= 128) next to a pixel outside it (4-neighbours).
    Reads one pixel around the rectangle; beyond the image counts as inside, so the image border is no edge."""
    rows, cols = mask.shape
    top, left = max(0, y - 1), max(0, x - 1)
    around = mask[top : min(rows, y + height + 1), left : min(cols, x + width + 1)] >= 128
    pad = ((1 - (y - top), 1 - (min(rows, y + height + 1) - y - height)),)
    pad += ((1 - (x - left), 1 - (min(cols, x + width + 1) - x - width)),)
    inside = np.pad(around, pad, mode="edge")
    core = inside[1:-1, 1:-1]
    surrounded = inside[:-2, 1:-1] & inside[2:, 1:-1] & inside[1:-1, :-2] & inside[1:-1, 2:]
    return core & ~surrounded


def tint_colour(layer: Layer) -> tuple[int, int, int, int]:
    return ROLE_COLOURS[layer.role] if isinstance(layer, MaskLayer) else ROLE_COLOURS["object"]


def layer_pixels(layer: Layer, x: int, y: int, width: int, height: int) -> np.ndarray | None:
    """What the canvas shows of `layer` in one rectangle, in display format; None for layers without pixels."""
    region = np.s_[y : y + height, x : x + width]
    if isinstance(layer, RasterLayer):
        return raster_pixels(layer.pixels[region])
    if isinstance(layer, (MaskLayer, ObjectLayer)):
        return mask_pixels(layer.mask[region], tint_colour(layer), mask_edge(layer.mask, x, y, width, height))
    if isinstance(layer, ReferenceLayer):  # only the part its mask selects: what a paste would put there
        return raster_pixels(masked_image(layer.image[region], None if layer.mask is None else layer.mask[region]))
    return None


# --- items ------------------------------------------------------------------------------------------------------


class ImageItem(QGraphicsItem):
    """An image the scene draws from a numpy array it owns; `write` updates a rectangle in place."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.pixels = np.zeros((height, width, 4), np.uint8)  # display format; the QImage below shares it
        self._image = QImage(self.pixels.data, width, height, width * 4, DISPLAY_FORMAT)
        self._bounds = QRectF(0, 0, width, height)
        # Ask for the exposed rectangle, so a repaint after a brush move draws a few pixels, not the image.
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemUsesExtendedStyleOption)

    def write(self, x: int, y: int, pixels: np.ndarray) -> None:
        self.pixels[y : y + pixels.shape[0], x : x + pixels.shape[1]] = pixels
        self.update(QRectF(x, y, pixels.shape[1], pixels.shape[0]))

    def image(self) -> QImage:
        return self._image

    def rgba_at(self, x: int, y: int) -> tuple[int, int, int, int]:
        """The shown (premultiplied) R, G, B, A at one pixel."""
        pixel = self.pixels[y, x]
        return tuple(int(pixel[DISPLAY_ORDER.index(c)]) for c in range(4))  # type: ignore[return-value]

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        return self._bounds

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem, widget: QWidget | None = None) -> None:
        # A margin around the exposed part keeps smooth scaling from sampling a hard edge at its border.
        exposed = option.exposedRect.adjusted(-2, -2, 2, 2).intersected(self._bounds)
        if exposed.isEmpty():
            return
        left, top = math.floor(exposed.left()), math.floor(exposed.top())
        source = QRectF(left, top, math.ceil(exposed.right()) - left, math.ceil(exposed.bottom()) - top)
        # Zoomed out, filter (a scaled-down photo aliases badly); zoomed in, show crisp pixels, as paint apps do.
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, painter.worldTransform().m11() < 1.0)
        painter.drawImage(source, self._image, source)


class DocumentScene(QGraphicsScene):
    """A scene mirroring one Document: an ImageItem per raster, mask, object and reference layer, a DragOverlay
    per drag layer, one RegionOverlay for the region moves of all drag layers; it follows the document's events,
    and pixels_changed repaints only the changed rectangle."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.document: Document | None = None
        self._items: dict[str, QGraphicsItem] = {}
        self._listener: WeakListener | None = None
        self._view_scale = 1.0
        self.regions = RegionOverlay()
        self.regions.setZValue(Z_ANNOTATIONS - 1)  # under the drag arrows, over every mask tint
        self.addItem(self.regions)
        self._outlines: dict[str, tuple[QPainterPath, Box] | None] = {}  # mask layer id -> its outline and box
        self._region_preview: RegionMove | None = None
        self._region_handles: str | None = None

    def set_document(self, document: Document | None) -> None:
        if self._listener is not None:
            self._listener.detach()
            self._listener = None
        for item in self._items.values():
            self.removeItem(item)
        self._items.clear()
        self._outlines.clear()
        self._region_preview = self._region_handles = None
        self.document = document
        if document is not None:
            for layer in document.layers:
                self._add(layer)
            self._restack()
            events = document.events
            emitters = [events.layer_added, events.layer_removed, events.layer_moved, events.layer_changed]
            self._listener = WeakListener(self, "on_event", [*emitters, events.pixels_changed])
        self._refresh_regions()

    def item_for(self, layer_id: str) -> QGraphicsItem | None:
        return self._items.get(layer_id)

    def set_view_scale(self, scale: float) -> None:
        """Overlays drawn at a constant size on screen need the zoom to know their extent in the scene."""
        self._view_scale = scale
        self.regions.set_view_scale(scale)
        for item in self._items.values():
            if isinstance(item, DragOverlay):
                item.set_view_scale(scale)

    def set_region_preview(self, move: RegionMove | None) -> None:
        """Show this move of its mask's region instead of the stored one (while the user drags it)."""
        self._region_preview = move
        self._refresh_regions()

    def set_region_handles(self, mask_layer_id: str | None) -> None:
        """Draw the box and corner handles of this mask's region (the move tool's active region), stored or not."""
        if mask_layer_id != self._region_handles:
            self._region_handles = mask_layer_id
            self._refresh_regions()

    def region_outline(self, mask_layer_id: str) -> tuple[QPainterPath, Box] | None:
        """A mask's outline and box, cached until its pixels change; None for an empty or missing mask."""
        if mask_layer_id not in self._outlines:
            layer = self._layer(mask_layer_id)
            mask = layer.pixel_array() if isinstance(layer, (MaskLayer, ObjectLayer)) else None
            box = None if mask is None else region_box(mask)
            self._outlines[mask_layer_id] = None if box is None else (mask_outline(mask), box)
        return self._outlines[mask_layer_id]

    # --- following the document ---------------------------------------------------------------------------

    def on_event(self, event: DocumentEvent) -> None:
        kind = event.type
        if kind == "layer_added":
            self._add(event.layer)
            self._restack()
        elif kind == "layer_removed":
            item = self._items.pop(event.layer.id, None)
            if item is not None:
                self.removeItem(item)
            self._restack()
        elif kind == "layer_moved":
            self._restack()
        elif kind == "layer_changed":
            self._changed(event.layer, event.attribute)
        elif kind == "pixels_changed":
            self._repaint(event.layer, *event.rect)
        if kind in ("layer_removed", "pixels_changed") or (kind == "layer_changed" and event.attribute == "mask"):
            self._outlines.pop(event.layer.id, None)
        if self._touches_regions(event):
            self._refresh_regions()

    def _add(self, layer: Layer) -> None:
        if isinstance(layer, DragLayer):
            item: QGraphicsItem = DragOverlay(layer.points)
            item.set_view_scale(self._view_scale)
        elif isinstance(layer, ReferenceLayer):
            item = ImageItem(layer.image.shape[1], layer.image.shape[0])
            item.setPos(layer.x, layer.y)
            item.setScale(layer.scale)
        else:
            height, width = layer.pixel_array().shape[:2]
            item = ImageItem(width, height)
        self._items[layer.id] = item
        self._repaint(layer, 0, 0, *_extent(layer))
        item.setVisible(layer.visible)
        item.setOpacity(layer.opacity)
        self.addItem(item)

    def _changed(self, layer: Layer, attribute: str) -> None:
        item = self._items.get(layer.id)
        if item is None:
            return
        if attribute == "visible":
            item.setVisible(layer.visible)
        elif attribute == "opacity":
            item.setOpacity(layer.opacity)
        elif attribute in ("role", "mask"):
            self._repaint(layer, 0, 0, *_extent(layer))
        elif attribute == "points" and isinstance(item, DragOverlay):
            item.set_points(layer.points)
        elif attribute in ("x", "y", "scale") and isinstance(layer, ReferenceLayer):
            item.setPos(layer.x, layer.y)
            item.setScale(layer.scale)

    # --- region moves -------------------------------------------------------------------------------------------

    def _touches_regions(self, event: DocumentEvent) -> bool:
        layer = event.layer
        if isinstance(layer, DragLayer):
            return event.type != "layer_changed" or event.attribute in ("regions", "visible")
        return event.type != "layer_moved" and layer.id in self._shown_regions()

    def _shown_regions(self) -> set[str]:
        ids = {move.mask_layer_id for layer in self._drag_layers() for move in layer.regions}
        ids |= {self._region_handles} if self._region_handles else set()
        return ids | ({self._region_preview.mask_layer_id} if self._region_preview else set())

    def _drag_layers(self) -> list[DragLayer]:
        if self.document is None:
            return []
        return [layer for layer in self.document.layers_of(DragLayer) if layer.visible]  # type: ignore[misc]

    def _refresh_regions(self) -> None:
        moves = {move.mask_layer_id: move for layer in self._drag_layers() for move in layer.regions}
        for extra in (self._region_handles, self._region_preview and self._region_preview.mask_layer_id):
            if extra and extra not in moves:  # the region being edited, not stored yet
                moves[extra] = RegionMove(extra)
        if self._region_preview is not None:
            moves[self._region_preview.mask_layer_id] = self._region_preview
        shapes = []
        for mask_layer_id, move in moves.items():
            layer = self._layer(mask_layer_id)
            outline = self.region_outline(mask_layer_id) if layer is not None else None
            if outline is not None:
                red, green, blue, _ = tint_colour(layer)
                shapes.append(RegionShape(outline[0], outline[1], move, QColor(red, green, blue)))
        self.regions.set_regions(shapes, self._region_handles)

    def _layer(self, layer_id: str) -> Layer | None:
        if self.document is None:
            return None
        return next((layer for layer in self.document.layers if layer.id == layer_id), None)

    def _repaint(self, layer: Layer, x: int, y: int, width: int, height: int) -> None:
        item = self._items.get(layer.id)
        if isinstance(layer, (MaskLayer, ObjectLayer)):  # a change can move the outline one pixel outside it
            right, bottom = min(layer.mask.shape[1], x + width + 1), min(layer.mask.shape[0], y + height + 1)
            x, y = max(0, x - 1), max(0, y - 1)
            width, height = right - x, bottom - y
        pixels = layer_pixels(layer, x, y, width, height)
        if isinstance(item, ImageItem) and pixels is not None:
            item.write(x, y, pixels)

    def _restack(self) -> None:
        if self.document is None:
            return
        for index, layer in enumerate(self.document.layers):
            item = self._items.get(layer.id)
            if item is not None:
                base = Z_ANNOTATIONS if isinstance(layer, DragLayer) else 0.0
                base = Z_MASKS if isinstance(layer, (MaskLayer, ObjectLayer)) else base
                item.setZValue(base + index)


def _extent(layer: Layer) -> tuple[int, int]:
    array = layer.image if isinstance(layer, ReferenceLayer) else layer.pixel_array()
    return (0, 0) if array is None else (array.shape[1], array.shape[0])


class WeakListener:
    """Calls `owner.<method>(event)` for the given emitters without keeping `owner` alive: once the owner is gone
    (Python object collected, or its C++ side deleted with its window) the next event disconnects the listener.
    A document or tool state can outlive the view showing it; a dead view must not be called."""

    def __init__(self, owner: Any, method: str, emitters: list[EventEmitter]) -> None:
        self._owner = weakref.ref(owner)
        self._method = method
        self._emitters = emitters
        for emitter in emitters:
            emitter.connect(self)

    def __call__(self, event: DocumentEvent) -> None:
        owner = self._owner()
        if owner is None or not Shiboken.isValid(owner):
            self.detach()
            return
        getattr(owner, self._method)(event)

    def detach(self) -> None:
        for emitter in self._emitters:
            with contextlib.suppress(ValueError):  # already detached
                emitter.disconnect(self)
