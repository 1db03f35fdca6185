"""Drag points and region moves without Qt (the drag tool, D, and the move-region tool, M).

Point pairs are (handle, target) in image pixels, as DragLayer.points stores them. Clicks alternate handle ->
target: the first click of a pair is held as the *pending* handle (shown on the canvas, not in the document: a drag
layer stores complete pairs only), the second completes the pair. Pressing on an existing point and dragging moves
it. A region move drags the region of a mask layer (move) or one of its corners (scale about its centre).

The gestures are generators like the mask tools (tools.py): send image positions, then RELEASE; the return value
says what to store (the new list of pairs, the new RegionMove), which the canvas pushes as one SetProperty.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from dataclasses import dataclass, replace

import numpy as np

from desktop_app.canvas.tools import Point, started
from desktop_app.document import RegionMove

PointPair = tuple[Point, Point]
Box = tuple[float, float, float, float]
MIN_SCALE, MAX_SCALE = 0.05, 20.0
WHEEL_SCALE = 1.1  # region scale per wheel notch
EDGE = 0.01  # points stay this far inside the right and bottom edges (the document needs x < width)


@dataclass
class PointsEdit:
    """What a drag-point gesture did: the pairs to store (None: nothing to store), the pending handle after it,
    the undo text, and why a click did nothing (for the status bar)."""

    pairs: list[PointPair] | None
    pending: Point | None
    text: str = ""
    refused: str = ""


def inside(point: Point, size: tuple[int, int]) -> bool:
    return 0.0 <= point[0] < size[0] and 0.0 <= point[1] < size[1]


def clamp(point: Point, size: tuple[int, int]) -> Point:
    """The nearest position inside the image."""
    return min(max(point[0], 0.0), size[0] - EDGE), min(max(point[1], 0.0), size[1] - EDGE)


def hit(pairs: list[PointPair], point: Point, radius: float) -> tuple[int, int] | None:
    """(pair index, 0 = handle / 1 = target) of the point nearest `point` within `radius`; later pairs win ties
    (they are drawn on top)."""
    best, best_distance = None, radius
    for index, pair in enumerate(pairs):
        for end in (0, 1):
            distance = math.dist(pair[end], point)
            if distance <= best_distance:
                best, best_distance = (index, end), distance
    return best


def moved(pairs: list[PointPair], index: int, end: int, point: Point) -> list[PointPair]:
    """`pairs` with one handle (end 0) or target (end 1) at `point`."""
    pair = list(pairs[index])
    pair[end] = point
    return [*pairs[:index], (pair[0], pair[1]), *pairs[index + 1 :]]


@started
def point_gesture(
    pairs: list[PointPair], pending: Point | None, size: tuple[int, int], grab_radius: float
) -> Generator[list[PointPair] | None, Point | None, PointsEdit]:
    """One press-to-release of the drag tool. On a point (with no handle pending) it drags that point, yielding the
    pairs as they would be; elsewhere it is a click at the press: a new pending handle, or the target that
    completes the pending handle's pair. Clicks outside the image are refused."""
    press = yield None
    if press is None:
        return PointsEdit(None, pending)
    grabbed = hit(pairs, press, grab_radius) if pending is None else None
    if grabbed is None:
        while (yield None) is not None:  # a click: where it was pressed, however the mouse moves after
            pass
        if not inside(press, size):
            return PointsEdit(None, pending, refused="Drag points must lie inside the image")
        if pending is None:
            return PointsEdit(None, press)
        return PointsEdit([*pairs, (pending, press)], None, "Add drag point")
    index, end = grabbed
    start = pairs[index][end]
    offset = (start[0] - press[0], start[1] - press[1])  # the point keeps its place under the pointer, no jump
    current = list(pairs)
    while (position := (yield current)) is not None:
        current = moved(pairs, index, end, clamp((position[0] + offset[0], position[1] + offset[1]), size))
    if current == pairs:
        return PointsEdit(None, pending)
    return PointsEdit(current, pending, "Move drag point")


# --- region moves -----------------------------------------------------------------------------------------------


def region_box(mask: np.ndarray) -> Box | None:
    """The box (x0, y0, x1, y1; pixel edges) around the mask's inside (>= 128), or None for an empty mask."""
    inside_mask = mask >= 128
    rows, cols = np.flatnonzero(inside_mask.any(axis=1)), np.flatnonzero(inside_mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def box_centre(box: Box) -> Point:
    return (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0


def move_point(point: Point, centre: Point, move: RegionMove) -> Point:
    """Where a point of the region goes: scaled about the region's centre, then shifted by (dx, dy)."""
    return (
        centre[0] + (point[0] - centre[0]) * move.scale + move.dx,
        centre[1] + (point[1] - centre[1]) * move.scale + move.dy,
    )


def moved_box(box: Box, move: RegionMove) -> Box:
    centre = box_centre(box)
    (x0, y0), (x1, y1) = move_point(box[:2], centre, move), move_point(box[2:], centre, move)
    return x0, y0, x1, y1


def region_of(regions: list[RegionMove], mask_layer_id: str) -> RegionMove:
    """The stored move of a mask's region, or the identity move."""
    return next((region for region in regions if region.mask_layer_id == mask_layer_id), RegionMove(mask_layer_id))


def with_region(regions: list[RegionMove], move: RegionMove) -> list[RegionMove]:
    """`regions` with `move` replacing the entry for the same mask (or appended)."""
    result = [replace(region) for region in regions]
    for index, region in enumerate(result):
        if region.mask_layer_id == move.mask_layer_id:
            result[index] = move
            return result
    return [*result, move]


def scaled(move: RegionMove, factor: float) -> RegionMove:
    return replace(move, scale=min(MAX_SCALE, max(MIN_SCALE, move.scale * factor)))


@started
def region_gesture(
    move: RegionMove, box: Box, size: tuple[int, int], grab_radius: float
) -> Generator[RegionMove | None, Point | None, RegionMove | None]:
    """Drag a corner of the moved region's box to scale it about its centre, or inside the box to move it.

    Yields the move as it would be (None after a press that grabbed nothing: the caller says why); returns the
    new move, or None when nothing changed. The moved centre stays inside the image."""
    press = yield None
    if press is None:
        return None
    centre = box_centre(box)
    shown = moved_box(box, move)
    new_centre = (centre[0] + move.dx, centre[1] + move.dy)
    corners = [(shown[0], shown[1]), (shown[2], shown[1]), (shown[2], shown[3]), (shown[0], shown[3])]
    on_corner = min(math.dist(corner, press) for corner in corners) <= grab_radius
    in_box = shown[0] <= press[0] <= shown[2] and shown[1] <= press[1] <= shown[3]
    if not (on_corner or in_box):
        while (yield None) is not None:
            pass
        return None
    reach = max(math.dist(press, new_centre), 1e-6)
    current = move
    while (position := (yield current)) is not None:
        if on_corner:
            current = scaled(move, math.dist(position, new_centre) / reach)
        else:
            x, y = clamp((new_centre[0] + position[0] - press[0], new_centre[1] + position[1] - press[1]), size)
            current = replace(move, dx=x - centre[0], dy=y - centre[1])
    return None if current == move else current
