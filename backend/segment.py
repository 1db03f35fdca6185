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
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backend.digest import image_digest
from backend.errors import AtelierError

# The torch-free half, re-exported: prompt checks, the offline segmenter, the query answer (see segment_core).
from backend.segment_core import (
    Box,
    FallbackSegmenter,
    Point,
    Prompts,
    RecentImages,
    Segmenter,
    SegmenterError,
    answer_segment_query,
    check_image,
    check_prompts,
    checked_request,
    sam_checkpoint_setting,
)

__all__ = [
    "SAM_HINT",
    "SAM_MODEL_TYPES",
    "Box",
    "FallbackSegmenter",
    "Point",
    "Prompts",
    "SamSegmenter",
    "Segmenter",
    "SegmenterError",
    "SegmenterUnavailable",
    "answer_segment_query",
    "check_image",
    "check_prompts",
    "checked_request",
    "load_sam_predictor",
    "make_segmenter",
    "sam_checkpoint_setting",
    "sam_model_type",
    "segment",
]

log = logging.getLogger(__name__)

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_HINT = "Download a SAM checkpoint (e.g. sam_vit_b_01ec64.pth) and set it in Preferences, or clear the setting."
# Checkpoint sizes: vit_b ~375 MB, vit_l ~1.25 GB, vit_h ~2.56 GB (fp32); the bounds sit between them.
_SIZE_BOUNDS = ((800 * 2**20, "vit_b"), (1900 * 2**20, "vit_l"))


class SegmenterUnavailable(AtelierError):
    """A SAM segmenter can't be made: no checkpoint file, segment-anything not importable, unreadable weights."""

    kind = "model-missing"


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
        self._embeddings = RecentImages(cached_images)
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
    checkpoint = sam_checkpoint_setting(settings)
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
