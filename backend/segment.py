"""Click-to-segment: include clicks, exclude clicks and a box in, a 0/255 mask out.

Two segmenters answer `segment(image, include, exclude, box)`:

- `SamSegmenter`: segment-anything's `SamPredictor` when a SAM checkpoint is configured. The image embedding (the
  expensive part: one ViT pass) is computed once per image and kept for the last few images, so every further
  click on the same image only runs the small prompt decoder (UX.md item 7: selection must feel instant).
  Weights are read without executing pickle code (safetensors, or `torch.load(weights_only=True)`).
- `FallbackSegmenter`: colour region growing with morphological clean-up (`backend.segment_fallback`), numpy and
  scipy only, so click-to-segment works offline with no model at all.

`make_segmenter(settings)` picks SAM when `settings["sam_checkpoint"]` is set and loads, otherwise the fallback,
logging why. Prompts follow SAM's conventions: points are (x, y) in image pixels (pixel (i, j) covers
[i, i+1) x [j, j+1)), the box is (x0, y0, x1, y1).

Module level stays torch-free: torch and segment_anything are imported only when a SAM model is loaded.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from backend import segment_fallback
from backend.engine.cache import image_digest
from backend.errors import AtelierError, InputError

log = logging.getLogger(__name__)

Point = tuple[float, float]
Box = tuple[float, float, float, float]

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_HINT = "Download a SAM checkpoint (e.g. sam_vit_b_01ec64.pth) and set it in Preferences, or clear the setting."
# Checkpoint sizes: vit_b ~375 MB, vit_l ~1.25 GB, vit_h ~2.56 GB (fp32); the bounds sit between them.
_SIZE_BOUNDS = ((800 * 2**20, "vit_b"), (1900 * 2**20, "vit_l"))


class SegmenterError(InputError):
    """The image or the prompts can't be segmented: no prompt, a point outside the image, a degenerate box..."""


class SegmenterUnavailable(AtelierError):
    """A SAM segmenter can't be made: no checkpoint file, segment-anything not importable, unreadable weights."""

    kind = "model-missing"


class Segmenter(Protocol):
    """What the worker asks: a 0/255 uint8 mask for the object the prompts point at."""

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


class _RecentImages:
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
        self._prepared = _RecentImages(cached_images)

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


def _working_prompts(prompts: Prompts, prepared: segment_fallback.PreparedImage) -> tuple[Any, ...]:
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


# --- SAM -------------------------------------------------------------------------------------------------------

# What SamPredictor.set_image leaves on the predictor: saved per image, put back to skip the image encoder.
_EMBEDDING_STATE = ("features", "original_size", "input_size", "is_image_set")


class SamSegmenter:
    """segment-anything's SamPredictor, with the image embedding cached per image (last `cached_images`)."""

    name = "sam"

    def __init__(
        self,
        checkpoint_path: str | os.PathLike[str],
        model_type: str | None = None,
        device: str = "auto",
        cached_images: int = 4,
        predictor: Any = None,
    ) -> None:
        """`model_type` is inferred from the file name or size when None. `predictor` replaces the loaded
        SamPredictor (tests inject a stub with set_image / predict and the attributes of _EMBEDDING_STATE)."""
        self.checkpoint = Path(checkpoint_path).expanduser()
        self.model_type = model_type or sam_model_type(self.checkpoint)
        if self.model_type not in SAM_MODEL_TYPES:
            raise SegmenterUnavailable(
                f"unknown SAM model type {self.model_type!r}; use one of {', '.join(SAM_MODEL_TYPES)}", SAM_HINT
            )
        self.predictor = (
            predictor if predictor is not None else load_sam_predictor(self.checkpoint, self.model_type, device)
        )
        self._embeddings = _RecentImages(cached_images)
        self._current: str | None = None  # the image whose embedding the predictor holds now
        self.encoded = 0  # image-encoder passes so far (each costs ~0.1-5 s; clicks on a cached image cost none)

    def segment(
        self,
        image: np.ndarray,
        include: Sequence[Point] | None = (),
        exclude: Sequence[Point] | None = (),
        box: Box | None = None,
    ) -> np.ndarray:
        """uint8 H x W mask, 255 on SAM's best-scoring mask for the prompts."""
        image, prompts = checked_request(image, include, exclude, box)
        if prompts is None:
            return np.zeros(image.shape[:2], np.uint8)  # exclude clicks alone select nothing
        self._use_image(image)
        points = np.concatenate([prompts.include, prompts.exclude]).astype(np.float32)
        labels = np.concatenate([np.ones(len(prompts.include)), np.zeros(len(prompts.exclude))]).astype(np.int64)
        masks, scores, _ = self.predictor.predict(
            point_coords=points if len(points) else None,
            point_labels=labels if len(points) else None,
            box=None if prompts.box is None else prompts.box.astype(np.float32),
            multimask_output=True,  # SAM proposes three nested masks; its own quality score picks one
        )
        best = np.asarray(masks)[int(np.argmax(np.asarray(scores)))]
        return np.where(best, 255, 0).astype(np.uint8)

    def _use_image(self, image: np.ndarray) -> None:
        """Make the predictor hold `image`'s embedding: already there, cached, or computed now (and cached)."""
        key = image_digest(image)
        if key == self._current:
            return
        saved = self._embeddings.get(key)
        if saved is None:
            self._current = None  # set_image resets the predictor first: if it fails, nothing is held
            self.predictor.set_image(image)
            self.encoded += 1
            saved = {name: getattr(self.predictor, name) for name in _EMBEDDING_STATE}
            self._embeddings.put(key, saved)
        else:
            for name, value in saved.items():
                setattr(self.predictor, name, value)
        self._current = key


def sam_model_type(checkpoint: Path) -> str:
    """vit_b / vit_l / vit_h from the file name (as the official checkpoints are named), else from its size."""
    name = checkpoint.name.lower().replace("-", "_")
    for model_type in SAM_MODEL_TYPES:
        if model_type in name:
            return model_type
    try:
        size = checkpoint.stat().st_size
    except OSError:
        return "vit_b"  # loading will say the file is missing
    return next((model_type for bound, model_type in _SIZE_BOUNDS if size < bound), "vit_h")


def load_sam_predictor(checkpoint: Path, model_type: str, device: str = "auto") -> Any:
    """A SamPredictor on `device`, its weights read without pickle code execution; SegmenterUnavailable says
    what is missing when it can't be made."""
    if not checkpoint.is_file():
        raise SegmenterUnavailable(f"the SAM checkpoint {checkpoint} does not exist", SAM_HINT)
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as error:  # segment_anything imports torchvision, which must match the installed torch
        raise SegmenterUnavailable(
            f"segment-anything can't be imported ({error}); install segment-anything and a torchvision that "
            "matches your torch",
            "Or clear the SAM checkpoint setting to use the built-in segmenter.",
        ) from None
    state_dict = _read_weights(checkpoint)
    model = sam_model_registry[model_type](checkpoint=None)
    problem = _load_weights(model, state_dict)
    if problem:
        raise SegmenterUnavailable(
            f"{checkpoint.name} does not hold {model_type} SAM weights: {problem}",
            "Pick the matching model type (vit_b, vit_l, vit_h) or another checkpoint.",
        )
    from backend.models.loading import ModelLoadError, choose_device

    try:
        target = choose_device(device)
    except ModelLoadError as error:
        raise SegmenterUnavailable(str(error)) from None
    model.to(target).eval()
    log.info("loaded SAM %s from %s on %s", model_type, checkpoint, target)
    return SamPredictor(model)


def _load_weights(model: Any, state_dict: Mapping[str, Any]) -> str:
    """Load into `model`; '' on success, else what does not match (in a few words)."""
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as error:  # shape mismatches: a header line, then one line per tensor
        lines = [line.strip() for line in str(error).splitlines()[1:] if line.strip()] or [str(error)]
        return lines[0][:200]
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if not missing and not unexpected:
        return ""
    example = (missing or unexpected)[0]
    return f"{len(missing)} tensor(s) missing and {len(unexpected)} unexpected (e.g. {example})"


def _read_weights(checkpoint: Path) -> Mapping[str, Any]:
    """safetensors, or a torch file read with weights_only=True (plain tensors only: no pickle code runs)."""
    import torch

    try:
        if checkpoint.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(checkpoint))
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SegmenterUnavailable(
            f"{checkpoint} is not a weights file Atelier can read safely (a .pth of plain tensors or a "
            ".safetensors file; files that need pickled code to load are refused)",
            SAM_HINT,
        ) from None
    except Exception as error:  # noqa: BLE001 - any unreadable file: the message says which and why
        raise SegmenterUnavailable(
            f"can't read the SAM checkpoint {checkpoint}: {type(error).__name__}: {str(error).splitlines()[0]}",
            SAM_HINT,
        ) from None
    if isinstance(state, Mapping) and isinstance(state.get("model"), Mapping):
        state = state["model"]  # some re-packaged checkpoints nest the weights one level down
    if not isinstance(state, Mapping):
        raise SegmenterUnavailable(f"{checkpoint} holds a {type(state).__name__}, not a SAM state dict", SAM_HINT)
    return state


# --- choosing one ----------------------------------------------------------------------------------------------


def make_segmenter(settings: Mapping[str, Any] | None = None) -> Segmenter:
    """SAM when settings["sam_checkpoint"] is set and loads (settings["sam_model_type"] overrides the inferred
    type), else the fallback segmenter, with the reason logged and kept on it."""
    settings = settings or {}
    checkpoint = str(settings.get("sam_checkpoint") or "").strip()
    if not checkpoint:
        return FallbackSegmenter()
    try:
        return SamSegmenter(
            checkpoint, model_type=settings.get("sam_model_type") or None, device=settings.get("device", "auto")
        )
    except SegmenterUnavailable as error:
        log.warning("SAM is not available, using the built-in segmenter instead: %s", error)
        return FallbackSegmenter(reason=str(error))


def segment(
    image: np.ndarray,
    include: Sequence[Point] | None = (),
    exclude: Sequence[Point] | None = (),
    box: Box | None = None,
    segmenter: Segmenter | None = None,
) -> np.ndarray:
    """One-off segmentation (the fallback unless a segmenter is given): uint8 H x W, 0/255."""
    return (segmenter or FallbackSegmenter()).segment(image, include, exclude, box)
