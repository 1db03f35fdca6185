"""Mask tools without Qt: brush, eraser, rectangle, lasso, flood fill; fill / invert / clear of a whole mask.
(The point tools' Qt-free halves: segment.py for click-to-segment, drag.py for drag points and region moves.)

Pointer tools are generators (napari's pattern). A factory returns one already started; the caller sends image
positions with `send((x, y))` — the first is the press, the next ones are moves — and `send(RELEASE)` ends the
gesture: the generator then returns (StopIteration.value; `finish` unwraps it) one `UndoRecord` covering every
pixel the gesture changed, so the canvas pushes exactly one PaintPatch per gesture. Each `send` answers with an
outline to preview (image points of a rectangle or lasso) or None.

Positions are scene coordinates: pixel (col, row) covers [col, col + 1) x [row, row + 1), so its centre is at
(col + 0.5, row + 0.5). Tests drive all of this without a widget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from desktop_app.document import Document, Layer, MaskLayer, ObjectLayer
from desktop_app.document.events import EmitterGroup

Point = tuple[float, float]
Outline = list[Point] | None
ToolGenerator = Generator[Outline, "Point | None", "UndoRecord | None"]

RELEASE = None  # what the caller sends on mouse release
MASK_TOOLS = ("brush", "eraser", "rectangle", "lasso", "fill")
POINT_TOOLS = ("segment", "drag", "move")  # click-to-segment, drag points, region move (segment.py, drag.py)
TOOLS = MASK_TOOLS + POINT_TOOLS
MIN_SIZE, MAX_SIZE = 1, 512
SIZE_STEP = 1.25  # [ and ] multiply/divide the size by this: equal steps on a log scale, as Krita and GIMP do


@dataclass
class UndoRecord:
    """The pixels of one layer inside one rectangle before and after a gesture: a PaintPatch's arguments."""

    layer_id: str
    origin: tuple[int, int]
    before: np.ndarray
    after: np.ndarray
    text: str

    def revert(self, document: Document) -> None:
        """Put the old pixels back (a gesture cancelled with Esc)."""
        document.write_patch(self.layer_id, *self.origin, self.before)


class ToolState:
    """The current tool, brush size and hardness. One event per attribute (events.tool/size/hardness)."""

    def __init__(self, tool: str = "brush", size: int = 40, hardness: float = 0.6) -> None:
        self.events = EmitterGroup(self, ("tool", "size", "hardness"))
        self._tool, self._size, self._hardness = "brush", 40, 0.6
        self.tool, self.size, self.hardness = tool, size, hardness

    @property
    def tool(self) -> str:
        return self._tool

    @tool.setter
    def tool(self, value: str) -> None:
        if value not in TOOLS:
            raise ValueError(f"tool must be one of {', '.join(TOOLS)}; got {value!r}")
        if value != self._tool:
            self._tool = value
            self.events.tool(value=value)

    @property
    def size(self) -> int:
        return self._size

    @size.setter
    def size(self, value: float) -> None:
        value = int(round(value))
        if not MIN_SIZE <= value <= MAX_SIZE:
            raise ValueError(f"brush size must be between {MIN_SIZE} and {MAX_SIZE} pixels; got {value}")
        if value != self._size:
            self._size = value
            self.events.size(value=value)

    @property
    def hardness(self) -> float:
        return self._hardness

    @hardness.setter
    def hardness(self, value: float) -> None:
        value = float(value)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"hardness must be between 0 and 1; got {value}")
        if value != self._hardness:
            self._hardness = value
            self.events.hardness(value=value)

    def grow(self) -> int:
        """`]`: about x1.25, at least one pixel more (small brushes would otherwise never grow), at most 512."""
        self.size = min(MAX_SIZE, max(self._size + 1, round(self._size * SIZE_STEP)))
        return self._size

    def shrink(self) -> int:
        """`[`: about /1.25, at least one pixel less, at least 1."""
        self.size = max(MIN_SIZE, min(self._size - 1, round(self._size / SIZE_STEP)))
        return self._size


def paintable_layer(document: Document) -> Layer | None:
    """The active layer if tools can paint into it (a mask or an object's mask), else None."""
    layer = document.active_layer
    return layer if isinstance(layer, (MaskLayer, ObjectLayer)) else None


# --- driving a tool ---------------------------------------------------------------------------------------------


def started(factory: Callable[..., ToolGenerator]) -> Callable[..., ToolGenerator]:
    """Run a tool generator to its first `yield`, so the caller's first `send` is the press."""

    @wraps(factory)
    def start(*args: Any, **kwargs: Any) -> ToolGenerator:
        gesture = factory(*args, **kwargs)
        next(gesture)
        return gesture

    return start


def finish(gesture: ToolGenerator) -> UndoRecord | None:
    """Release: end the gesture and return its undo record (None when it changed nothing)."""
    try:
        gesture.send(RELEASE)
    except StopIteration as stop:
        return stop.value
    gesture.close()
    raise RuntimeError("a tool kept running after the release")


def play(gesture: ToolGenerator, points: Iterable[Point]) -> UndoRecord | None:
    """Press at the first point, move through the rest, release: one gesture as a test or script makes it."""
    for point in points:
        gesture.send((float(point[0]), float(point[1])))
    return finish(gesture)


# --- brush and eraser -------------------------------------------------------------------------------------------


def brush_alpha(distance: np.ndarray, radius: float, hardness: float) -> np.ndarray:
    """The round stamp's opacity (0..1) at `distance` from its centre.

    Opaque out to hardness * radius, then a smoothstep down to 0 at the rim; the fade is at least one pixel wide
    so a hard brush is still anti-aliased, and the rim sits half a pixel out so a 1 px brush covers one pixel.
    """
    fade = max((1.0 - hardness) * radius, 1.0)
    t = np.clip((radius + 0.5 - distance) / fade, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def swept_stamp(
    start: Point, end: Point, size: float, hardness: float, shape: tuple[int, int]
) -> tuple[int, int, np.ndarray] | None:
    """The stamp dragged from `start` to `end`: (x, y, uint8 alpha) over its box clipped to `shape`, or None.

    This is stamping with spacing taken to zero: the maximum of the stamp over every point of the segment is the
    stamp's profile at the distance to the segment. A fast mouse move leaves no gap and no beads where dabs
    overlap, and one vectorised pass per mouse event replaces a loop over dabs.
    """
    radius = size / 2.0
    reach = radius + 1.5
    (ax, ay), (bx, by) = start, end
    x0, x1 = max(0, math.floor(min(ax, bx) - reach)), min(shape[1], math.ceil(max(ax, bx) + reach))
    y0, y1 = max(0, math.floor(min(ay, by) - reach)), min(shape[0], math.ceil(max(ay, by) + reach))
    if x0 >= x1 or y0 >= y1:
        return None
    xs = np.arange(x0, x1, dtype=np.float32)[None, :] + 0.5 - np.float32(ax)
    ys = np.arange(y0, y1, dtype=np.float32)[:, None] + 0.5 - np.float32(ay)
    dx, dy = np.float32(bx - ax), np.float32(by - ay)
    length2 = dx * dx + dy * dy
    along = np.clip((xs * dx + ys * dy) / length2, 0.0, 1.0) if length2 > 0 else np.float32(0.0)
    distance = np.hypot(xs - along * dx, ys - along * dy)
    alpha = brush_alpha(distance, radius, hardness)
    return x0, y0, (alpha * 255.0 + 0.5).astype(np.uint8)


def compose(base: np.ndarray, coverage: np.ndarray, erase: bool) -> np.ndarray:
    """Brush: the mask rises towards 255 by the coverage; eraser: it falls towards 0. Exact at 0 and 255."""
    base16, cover16 = base.astype(np.uint16), coverage.astype(np.uint16)
    if erase:
        return ((base16 * (255 - cover16) + 127) // 255).astype(np.uint8)
    return (base16 + ((255 - base16) * cover16 + 127) // 255).astype(np.uint8)


class _StrokeBuffer:
    """What one stroke has covered so far (the max of its stamps) and the mask values it replaced.

    Coverage is kept per stroke, not summed per stamp, so going over the same place again in one stroke does not
    harden a soft edge. Both buffers are full size, but np.zeros maps zero pages lazily, so only the pages under
    the stroke ever cost memory or time.
    """

    def __init__(self, document: Document, layer_id: str, erase: bool) -> None:
        self.document, self.layer_id, self.erase = document, layer_id, erase
        self.mask = _mask_of(document, layer_id)
        self.coverage = np.zeros(self.mask.shape, np.uint8)
        self.original = np.zeros(self.mask.shape, np.uint8)
        self.box: tuple[int, int, int, int] | None = None  # x0, y0, x1, y1 of everything touched

    def add(self, x: int, y: int, alpha: np.ndarray) -> None:
        height, width = alpha.shape
        region = np.s_[y : y + height, x : x + width]
        coverage, mask, original = self.coverage[region], self.mask[region], self.original[region]
        first_touch = (coverage == 0) & (alpha > 0)
        original[first_touch] = mask[first_touch]
        np.maximum(coverage, alpha, out=coverage)
        base = np.where(coverage > 0, original, mask)
        self.document.write_patch(self.layer_id, x, y, compose(base, coverage, self.erase))
        box = (x, y, x + width, y + height)
        self.box = box if self.box is None else _union(self.box, box)

    def record(self, text: str) -> UndoRecord | None:
        if self.box is None:
            return None
        x0, y0, x1, y1 = self.box
        region = np.s_[y0:y1, x0:x1]
        before = np.where(self.coverage[region] > 0, self.original[region], self.mask[region])
        after = self.mask[region].copy()
        if np.array_equal(before, after):
            return None
        return UndoRecord(self.layer_id, (x0, y0), before, after, text)


@started
def stroke(document: Document, layer_id: str, size: float, hardness: float, erase: bool = False) -> ToolGenerator:
    """Brush (or eraser) stroke into a mask, painted live; returns one record for the whole stroke."""
    buffer = _StrokeBuffer(document, layer_id, erase)
    shape = buffer.mask.shape
    last = yield None
    if last is None:
        return None
    dab = swept_stamp(last, last, size, hardness, shape)
    if dab is not None:
        buffer.add(*dab)
    while (position := (yield None)) is not None:
        if position == last:
            continue
        segment = swept_stamp(last, position, size, hardness, shape)
        if segment is not None:
            buffer.add(*segment)
        last = position
    return buffer.record("Erase" if erase else "Brush stroke")


# --- selections -------------------------------------------------------------------------------------------------


@started
def rectangle(document: Document, layer_id: str, subtract: bool = False) -> ToolGenerator:
    """Drag a rectangle; on release it is filled with 255 (or cleared to 0 with `subtract`)."""
    _mask_of(document, layer_id)
    start = yield None
    if start is None:
        return None
    end = start
    while (position := (yield _rect_outline(start, end))) is not None:
        end = position
    return fill_rect(document, layer_id, start, end, subtract)


@started
def lasso(document: Document, layer_id: str, subtract: bool = False) -> ToolGenerator:
    """Draw a free polygon; on release its inside is filled with 255 (or cleared with `subtract`)."""
    _mask_of(document, layer_id)
    first = yield None
    if first is None:
        return None
    points = [first]
    while (position := (yield list(points))) is not None:
        last = points[-1]
        if abs(position[0] - last[0]) + abs(position[1] - last[1]) >= 1.0:  # sub-pixel wiggles add nothing
            points.append(position)
    return fill_polygon(document, layer_id, points, subtract)


@started
def fill(document: Document, layer_id: str, subtract: bool = False) -> ToolGenerator:
    """Click: flood-fill the unpainted region under the click (or clear the painted one with `subtract`)."""
    _mask_of(document, layer_id)
    click = yield None
    if click is None:
        return None
    record = flood_fill(document, layer_id, click, subtract)
    while (yield None) is not None:
        pass
    return record


def fill_rect(document: Document, layer_id: str, a: Point, b: Point, subtract: bool = False) -> UndoRecord | None:
    """Pixels whose centres lie inside the rectangle a-b set to 255 (0 with `subtract`)."""
    height, width = _mask_of(document, layer_id).shape
    x0, x1 = (max(0, min(width, round(v))) for v in sorted((a[0], b[0])))
    y0, y1 = (max(0, min(height, round(v))) for v in sorted((a[1], b[1])))
    if x0 >= x1 or y0 >= y1:
        return None
    inside = np.ones((y1 - y0, x1 - x0), bool)
    return _set_region(document, layer_id, x0, y0, inside, subtract, "Subtract rectangle" if subtract else "Rectangle")


def fill_polygon(document: Document, layer_id: str, points: list[Point], subtract: bool = False) -> UndoRecord | None:
    """Pixels whose centres lie inside the polygon set to 255 (0 with `subtract`)."""
    if len(points) < 3:
        return None
    height, width = _mask_of(document, layer_id).shape
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1 = max(0, math.floor(min(xs))), min(width, math.ceil(max(xs)))
    y0, y1 = max(0, math.floor(min(ys))), min(height, math.ceil(max(ys)))
    if x0 >= x1 or y0 >= y1:
        return None
    # PIL rasterises in C and puts pixel centres on integer coordinates, hence the half-pixel shift.
    canvas = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(canvas).polygon([(x - x0 - 0.5, y - y0 - 0.5) for x, y in points], fill=255)
    inside = np.asarray(canvas) > 0
    return _set_region(document, layer_id, x0, y0, inside, subtract, "Subtract lasso" if subtract else "Lasso")


def flood_fill(document: Document, layer_id: str, point: Point, subtract: bool = False) -> UndoRecord | None:
    """The 4-connected region under `point` of unpainted pixels (< 128) set to 255; with `subtract`, the painted
    region (>= 128) set to 0. Soft edges below half count as unpainted, so a fill reaches the outline's core."""
    mask = _mask_of(document, layer_id)
    col, row = math.floor(point[0]), math.floor(point[1])
    if not (0 <= row < mask.shape[0] and 0 <= col < mask.shape[1]):
        return None
    candidates = mask >= 128 if subtract else mask < 128
    if not candidates[row, col]:
        return None
    from scipy import ndimage  # here, not at the top: importing scipy costs ~0.5 s of the app's start-up

    labels, _ = ndimage.label(candidates)
    region = labels == labels[row, col]
    rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return _set_region(document, layer_id, x0, y0, region[y0:y1, x0:x1], subtract, "Fill")


# --- whole-mask operations --------------------------------------------------------------------------------------


def fill_mask(document: Document, layer_id: str) -> UndoRecord | None:
    return replace_mask(document, layer_id, np.full_like(_mask_of(document, layer_id), 255), "Fill mask")


def invert_mask(document: Document, layer_id: str) -> UndoRecord | None:
    return replace_mask(document, layer_id, 255 - _mask_of(document, layer_id), "Invert mask")


def clear_mask(document: Document, layer_id: str) -> UndoRecord | None:
    return replace_mask(document, layer_id, np.zeros_like(_mask_of(document, layer_id)), "Clear mask")


# --- helpers ----------------------------------------------------------------------------------------------------


def _mask_of(document: Document, layer_id: str) -> np.ndarray:
    layer = document.layer(layer_id)
    if not isinstance(layer, (MaskLayer, ObjectLayer)):
        raise ValueError(f"layer {layer.name!r} is a {layer.kind} layer; mask tools paint into mask layers only")
    return layer.mask


def _set_region(
    document: Document, layer_id: str, x: int, y: int, inside: np.ndarray, subtract: bool, text: str
) -> UndoRecord | None:
    mask = _mask_of(document, layer_id)
    current = mask[y : y + inside.shape[0], x : x + inside.shape[1]]
    after = np.where(inside, np.uint8(0 if subtract else 255), current)
    if np.array_equal(after, current):
        return None
    before = document.write_patch(layer_id, x, y, after)
    return UndoRecord(layer_id, (int(x), int(y)), before, after, text)


def replace_mask(document: Document, layer_id: str, new: np.ndarray, text: str) -> UndoRecord | None:
    """Write `new` over the whole mask, recording only the box where something changed (small undo memory)."""
    changed = _mask_of(document, layer_id) != new
    if not changed.any():
        return None
    rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    after = np.ascontiguousarray(new[y0:y1, x0:x1])
    before = document.write_patch(layer_id, x0, y0, after)
    return UndoRecord(layer_id, (x0, y0), before, after, text)


def _rect_outline(a: Point, b: Point) -> list[Point]:
    return [(a[0], a[1]), (b[0], a[1]), (b[0], b[1]), (a[0], b[1])]


def _union(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    return min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])
