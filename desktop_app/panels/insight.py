"""Pictures of a result's insight (`metadata["insight"]`, contract in `backend.protocol.check_insight`): numpy in,
RGB uint8 out, no Qt, so each is tested without widgets. The staging pane shows them instead of the result.

- attention: one word's heat map, upsampled (bilinear) to the result and laid over it semi-transparently;
- correspondences: input and result side by side, a line from each source point to its match, red (weak) to
  green (strong), at most `MAX_LINES` so the picture stays readable.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# Inferno-like anchors, dark to bright: brightness rises with the value, so "brighter = more attention" holds
# in colour and in grey (and for most colour-blind users).
HEAT_ANCHORS = np.array(
    [(0, 0, 4), (66, 10, 104), (147, 38, 103), (221, 81, 58), (252, 165, 10), (252, 255, 164)], np.float32
)
HEAT_OPACITY = 0.6
MAX_LINES = 64
GAP = 8  # pixels between the two pictures of the correspondence view
GAP_COLOUR = (40, 40, 40)
UNSCORED_COLOUR = (0, 200, 255)

RESULT = "result"
CORRESPONDENCES = "correspondences"


def choices(insight: dict[str, Any] | None) -> list[tuple[str, str]]:
    """(label, key) of what the staging pane can show: the result, one entry per attention token, then the
    correspondences. Keys: "result", "attention:<index>", "correspondences"."""
    entries = [("Result", RESULT)]
    if not insight:
        return entries
    tokens = (insight.get("attention") or {}).get("tokens", [])
    entries += [(f"Attention: {token}", f"attention:{index}") for index, token in enumerate(tokens)]
    if insight.get("correspondences") is not None:
        entries.append(("Correspondences", CORRESPONDENCES))
    return entries


def render(key: str, result: np.ndarray, insight: dict[str, Any], before: np.ndarray | None) -> np.ndarray:
    """The picture for a `choices` key."""
    if key == RESULT:
        return result
    if key == CORRESPONDENCES:
        matches = insight["correspondences"]
        return correspondence_view(before, result, matches["source"], matches["target"], matches.get("score"))
    if key.startswith("attention:"):
        return attention_overlay(result, insight["attention"]["maps"][int(key.split(":", 1)[1])])
    raise ValueError(f"unknown insight view {key!r}")


# --- attention ----------------------------------------------------------------------------------------------


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 gray, RGB or RGBA -> RGB (alpha dropped: the staging pane shows pixels, not transparency)."""
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3]


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a uint8 image or map (no-op at the same size)."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.Resampling.BILINEAR))


def heat_colours(values: np.ndarray) -> np.ndarray:
    """uint8 (H, W) -> RGB (H, W, 3) through the heat colour map: 0 darkest, 255 brightest."""
    position = values.astype(np.float32) * ((len(HEAT_ANCHORS) - 1) / 255.0)
    low = np.minimum(position.astype(np.int32), len(HEAT_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    colours = HEAT_ANCHORS[low] * (1.0 - fraction) + HEAT_ANCHORS[low + 1] * fraction
    return np.round(colours).astype(np.uint8)


def attention_overlay(result: np.ndarray, heat: np.ndarray, opacity: float = HEAT_OPACITY) -> np.ndarray:
    """The heat map upsampled (bilinear) to the result's size and laid over it with `opacity`."""
    rgb = as_rgb(result)
    colours = heat_colours(resize(np.asarray(heat, np.uint8), *rgb.shape[:2]))
    blended = rgb.astype(np.float32) * (1.0 - opacity) + colours.astype(np.float32) * opacity
    return np.round(blended).astype(np.uint8)


# --- correspondences ----------------------------------------------------------------------------------------


def evenly(count: int, limit: int = MAX_LINES) -> np.ndarray:
    """Indices of at most `limit` of `count` items, spread evenly from the first to the last."""
    if count <= limit:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, limit)).astype(np.int64))


def score_colour(score: float | None) -> tuple[int, int, int]:
    """Red (0) through yellow (0.5) to green (1); one fixed colour when matches carry no score."""
    if score is None:
        return UNSCORED_COLOUR
    score = float(np.clip(score, 0.0, 1.0))
    return (round(255 * min(1.0, 2.0 - 2.0 * score)), round(220 * min(1.0, 2.0 * score)), 0)


def correspondence_view(
    before: np.ndarray | None,
    after: np.ndarray,
    source_xy: np.ndarray,
    target_xy: np.ndarray,
    score: np.ndarray | None = None,
    max_lines: int = MAX_LINES,
) -> np.ndarray:
    """Before (left) and after (right) side by side, a line from each source point to its target.

    `before` is scaled to the result's height (its points with it); without one, a grey panel of the result's
    size stands in for it and source points are taken to be in the result's pixels.
    """
    after = as_rgb(after)
    height, width = after.shape[:2]
    if before is None:
        left, scale = np.full_like(after, 128), 1.0
    else:
        before = as_rgb(before)
        scale = height / before.shape[0]
        left = resize(before, height, max(1, round(before.shape[1] * scale)))
    offset = left.shape[1] + GAP
    canvas = np.empty((height, offset + width, 3), np.uint8)
    canvas[:] = GAP_COLOUR
    canvas[:, : left.shape[1]], canvas[:, offset:] = left, after
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    thickness = max(1, round(height / 256))
    for index in evenly(len(source_xy), max_lines):
        start = (float(source_xy[index][0]) * scale, float(source_xy[index][1]) * scale)
        end = (float(target_xy[index][0]) + offset, float(target_xy[index][1]))
        colour = score_colour(None if score is None else score[index])
        draw.line([start, end], fill=colour, width=thickness)
        for x, y in (start, end):
            radius = thickness + 1
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    return np.asarray(picture)
