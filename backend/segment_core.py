"""The torch-free half of click-to-segment: prompt checks, the offline segmenter, and the answer to a segment query.

Both the worker and the client import this module: the worker answers segment queries with SAM or with
`FallbackSegmenter`; the client answers them itself with `FallbackSegmenter` when no SAM checkpoint is set (its
fast lane: the worker runs one job at a time, and an edit can hold it for minutes). `answer_segment_query` is the
one place a query becomes an Event, so both lanes answer alike. numpy only at import (the client imports it at
start-up); scipy and Pillow come with `backend.segment_fallback` on first use. `backend.segment` adds SAM and
re-exports these names.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from backend.digest import image_digest
from backend.errors import AtelierError, InputError
from backend.protocol import Event, Query

if TYPE_CHECKING:
    from backend.segment_fallback import PreparedImage

log = logging.getLogger(__name__)

Point = tuple[float, float]
Box = tuple[float, float, float, float]


class SegmenterError(InputError):
    """The image or the prompts can't be segmented: no prompt, a point outside the image, a degenerate box..."""


class Segmenter(Protocol):
    """What a segment query asks: a 0/255 uint8 mask for the object the prompts point at."""

    name: str

    def segment(
        self,
        image: np.ndarray,
        include: Sequence[Point] | None = (),
        exclude: Sequence[Point] | None = (),
        box: Box | None = None,
    ) -> np.ndarray: ...


# --- prompts ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompts:
    """Checked prompts in image pixels: include/exclude (n, 2) float (x, y); box (4,) float or None."""

    include: np.ndarray
    exclude: np.ndarray
    box: np.ndarray | None


def check_image(image: Any) -> np.ndarray:
    """uint8 H x W x 3 (RGBA loses its alpha, grey becomes RGB), or SegmenterError saying what is wrong."""
    if image is None:
        raise SegmenterError("there is no image to segment")
    if not isinstance(image, np.ndarray):
        raise SegmenterError(f"the image must be a numpy array, not {type(image).__name__}")
    if image.dtype != np.uint8:
        raise SegmenterError(f"the image must be uint8 (0-255), not {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise SegmenterError(f"the image must be H x W x 3 (RGB) or H x W x 4 (RGBA), not {image.shape}")
    if min(image.shape[:2]) < 2:
        raise SegmenterError(f"the image is too small to segment ({image.shape[1]} x {image.shape[0]} px)")
    return np.ascontiguousarray(image[..., :3])


def check_prompts(
    shape: tuple[int, ...],
    include: Sequence[Point] | None = (),
    exclude: Sequence[Point] | None = (),
    box: Box | None = None,
) -> Prompts:
    """Validate prompts for an image of `shape` (H, W, ...); the box is ordered and clipped to the image."""
    height, width = shape[:2]
    include_points = _points(include, "include", width, height)
    exclude_points = _points(exclude, "exclude", width, height)
    checked_box = None if box is None else _box(box, width, height)
    if not len(include_points) and checked_box is None and not len(exclude_points):
        raise SegmenterError("nothing to segment: click on the object (Shift+click excludes) or drag a box around it")
    if checked_box is not None:
        x0, y0, x1, y1 = checked_box
        for x, y in include_points:
            if not (x0 <= x < x1 and y0 <= y < y1):
                raise SegmenterError(
                    f"the include click ({x:g}, {y:g}) lies outside the box ({x0:g}, {y0:g}, {x1:g}, {y1:g}); "
                    "click inside the box or redraw it"
                )
    return Prompts(include_points, exclude_points, checked_box)


def _points(points: Any, role: str, width: int, height: int) -> np.ndarray:
    checked = []
    for point in () if points is None else points:
        try:
            x, y = (float(value) for value in point)
        except (TypeError, ValueError):
            raise SegmenterError(f"{role} points must be (x, y) pairs of numbers, got {point!r}") from None
        if not (np.isfinite(x) and np.isfinite(y)):
            raise SegmenterError(f"{role} point ({x}, {y}) is not a finite position")
        if not (0 <= x < width and 0 <= y < height):
            raise SegmenterError(f"{role} point ({x:g}, {y:g}) is outside the {width} x {height} image")
        checked.append((x, y))
    return np.array(checked, np.float64).reshape(-1, 2)


def _box(box: Any, width: int, height: int) -> np.ndarray:
    try:
        values = np.asarray(box, np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SegmenterError(f"the box must be (x0, y0, x1, y1), got {box!r}") from None
    if values.shape != (4,) or not np.isfinite(values).all():
        raise SegmenterError(f"the box must be four finite numbers (x0, y0, x1, y1), got {box!r}")
    x0, x1 = sorted(values[[0, 2]])  # a box dragged up or to the left arrives with its corners swapped
    y0, y1 = sorted(values[[1, 3]])
    clipped = np.array([max(x0, 0.0), max(y0, 0.0), min(x1, float(width)), min(y1, float(height))])
    if clipped[2] - clipped[0] < 2 or clipped[3] - clipped[1] < 2:
        raise SegmenterError(
            f"the box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is degenerate: it must span at least 2 x 2 pixels "
            f"inside the {width} x {height} image"
        )
    return clipped


def checked_request(image: Any, include, exclude, box) -> tuple[np.ndarray, Any]:
    """The validated image and prompts every segmenter starts from; prompts None when there is nothing to select
    (only exclude clicks), which is an empty mask rather than an error so a first Shift+click does no harm."""
    image = check_image(image)
    prompts = check_prompts(image.shape, include, exclude, box)
    if not len(prompts.include) and prompts.box is None:
        return image, None
    return image, prompts


class RecentImages:
    """The per-image state of the last `capacity` images, most recently used last."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._items: OrderedDict[str, Any] = OrderedDict()

    def get(self, key: str) -> Any:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key: str, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


# --- the offline segmenter -------------------------------------------------------------------------------------


class FallbackSegmenter:
    """Colour region growing (see backend.segment_fallback); no model, no torch, a few tens of milliseconds."""

    name = "fallback"

    def __init__(self, working_side: int = 256, cached_images: int = 4, reason: str = "") -> None:
        """`working_side`: bigger images are segmented at this size and the mask's edges refined at full size.
        `reason`: why SAM is not used, when it was asked for (reported with each answer)."""
        self.working_side = working_side
        self.reason = reason
        self._prepared = RecentImages(cached_images)

    def segment(
        self,
        image: np.ndarray,
        include: Sequence[Point] | None = (),
        exclude: Sequence[Point] | None = (),
        box: Box | None = None,
    ) -> np.ndarray:
        """uint8 H x W mask, 255 on the object the prompts point at."""
        image, prompts = checked_request(image, include, exclude, box)
        if prompts is None:
            return np.zeros(image.shape[:2], np.uint8)  # exclude clicks alone select nothing
        from backend import segment_fallback  # scipy: loaded on first use (or by load_fallback), not at import

        key = image_digest(image)
        prepared = self._prepared.get(key)
        if prepared is None:
            prepared = segment_fallback.prepare(image, self.working_side)
            self._prepared.put(key, prepared)
        selection = segment_fallback.grow(prepared, *_working_prompts(prompts, prepared))
        mask = segment_fallback.to_image_size(selection, prepared, image)
        if prompts.box is not None:  # edge refinement at full size must not spill past the box
            x0, y0, x1, y1 = prompts.box
            outside = np.ones(mask.shape, bool)
            outside[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = False
            mask[outside] = 0
        return mask


def _working_prompts(prompts: Prompts, prepared: PreparedImage) -> tuple[Any, ...]:
    """Prompts in working pixels: points to the pixel they fall in, the box outwards to whole pixels."""
    height, width = prepared.lab.shape[:2]
    scale = np.array([width / prepared.shape[1], height / prepared.shape[0]])  # per axis: sizes were rounded
    limit = np.array([width - 1, height - 1])

    def pixels(points: np.ndarray) -> np.ndarray:
        return np.clip(np.floor(points * scale), 0, limit).astype(np.int64).reshape(-1, 2)

    box = None
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box * np.tile(scale, 2)
        box = np.array([int(x0), int(y0), min(width, math.ceil(x1)), min(height, math.ceil(y1))])
    return pixels(prompts.include), pixels(prompts.exclude), box


def load_fallback() -> None:
    """Load the offline segmenter's code (scipy) now rather than on the first click: measured 0.4 s on a 2-core
    CPU and 0.9 s while an edit keeps it busy, where a click has 0.5 s in all."""
    from backend import segment_fallback  # noqa: F401


# --- which segmenter, and the answer to a query ------------------------------------------------------------


def sam_checkpoint_setting(settings: Mapping[str, Any] | None) -> str:
    """The SAM checkpoint `settings` ask for; "" when none is set, and then the fallback segmenter answers."""
    return str((settings or {}).get("sam_checkpoint") or "").strip()


def answer_segment_query(
    query: Query, segmenter: Callable[[], Segmenter], out_of_memory: tuple[type[BaseException], ...] = ()
) -> Event:
    """args image, include, exclude, box -> `result` with metadata {mask, segmenter, seconds} (+ note: why not SAM),
    or `error`; never raises.

    `segmenter()` hands out the segmenter (making it counts in the seconds). `out_of_memory`: the exceptions that
    mean the GPU ran out (torch's, which the worker passes in: this module stays torch-free)."""
    args = query.args
    started = time.perf_counter()
    try:
        chosen = segmenter()
        mask = chosen.segment(args.get("image"), args.get("include"), args.get("exclude"), args.get("box"))
    except AtelierError as error:
        log.info("segment query %s: %s: %s", query.job_id, error.kind, error)
        return Event(kind="error", job_id=query.job_id, error_kind=error.kind, message=str(error), hint=error.hint)
    except out_of_memory:
        return Event(kind="error", job_id=query.job_id, error_kind="out-of-memory", message="the GPU ran out of memory")
    except Exception as error:  # a segmenter bug must not take its process down; the log has the trace
        log.exception("segment query %s failed", query.job_id)
        message = f"segmentation failed: {type(error).__name__}: {error}"
        return Event(kind="error", job_id=query.job_id, error_kind="method-failed", message=message)
    metadata = {"mask": mask, "segmenter": chosen.name, "seconds": round(time.perf_counter() - started, 4)}
    if getattr(chosen, "reason", ""):
        metadata["note"] = chosen.reason
    return Event(kind="result", job_id=query.job_id, metadata=metadata)
