"""The offline segmenter: colour region growing in CIELAB with morphological clean-up (numpy + scipy only).

Used when no SAM checkpoint is configured. It takes prompts already checked by `backend.segment_core` (points and
box in *working* pixels) and works on a `PreparedImage`, made once per image and cached by the caller:

1. prepare: downscale big images to at most `working_side` px (the mask is upsampled at the end), convert to
   CIELAB with lightness at half weight (shading and pattern tints move L most), smooth a little so that
   anti-aliasing and JPEG noise do not split a region;
2. colour models: the *object* is the colours at the include clicks, the *background* the common colours along
   the image border (or along the box, which the user drew around the object) plus the colours at the exclude
   clicks; each model is a handful of prototypes;
3. classify: a pixel is object-like when it is nearer an object prototype than any background prototype and
   under an adaptive distance cap (Otsu on the distance histogram, bounded); the object is the connected
   components of object-like pixels that hold a click (a box alone: the largest one in the box);
4. refine: the object's prototypes are re-estimated from the region just found (so a striped or dotted fill
   contributes both of its tones) and step 3 runs once more;
5. clean up: closing bridges pattern gaps, holes are filled unless their colour is the background's (a ring's
   hole stays open), exclude clicks inside the mask cut away the part nearer to them than to any include click.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from backend.colour import rgb_to_lab

_LIGHTNESS_WEIGHT = 0.5
_REFERENCE_SIDE = 128.0  # the radii below are for a 128 x 128 image and scale with the working size
_FINE_SIGMA = 0.7
_CLOSING_RADIUS = 1.5
_SEED_RADIUS = 2.5  # the window around a click whose colours seed the object
_BIN = 5.0  # prototype quantisation step (weighted Lab units)
_MIN_SHARE = 0.02  # a colour bin is a prototype when it holds at least this share of the samples
_MAX_PROTOTYPES = 24
_CAP_BOUNDS = (14.0, 60.0)  # the adaptive distance cap stays within these (weighted Lab units)
_TIE = 1.05  # the object wins near-ties (within 5%): a half-covered edge pixel belongs to the silhouette
_SAME_COLOUR = 6.0  # a background prototype this near an object prototype is dropped: the user said "object"


@dataclass(frozen=True)
class PreparedImage:
    """An image made ready for segmentation: smoothed weighted Lab at working size, and the way back."""

    lab: np.ndarray  # float32 (h, w, 3) at working size
    shape: tuple[int, int]  # the original (H, W)


def prepare(image: np.ndarray, working_side: int) -> PreparedImage:
    """Step 1: downscale (box filter) to at most `working_side`, weighted Lab, light smoothing."""
    height, width = image.shape[:2]
    scale = min(1.0, working_side / max(height, width))
    small = image[..., :3]
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        small = np.asarray(Image.fromarray(np.ascontiguousarray(small)).resize(size, Image.Resampling.BOX))
    lab = rgb_to_lab(small) * np.array([_LIGHTNESS_WEIGHT, 1.0, 1.0], np.float32)
    sigma = _smoothing_sigma(lab.shape[:2])
    lab = ndimage.gaussian_filter(lab, sigma=(sigma, sigma, 0), mode="nearest")
    return PreparedImage(lab=lab.astype(np.float32), shape=(height, width))


@dataclass(frozen=True)
class Selection:
    """What `grow` found on working pixels, and the colour models that found it (for refining the edges)."""

    mask: np.ndarray  # bool (h, w)
    objects: np.ndarray  # (k, 3) weighted-Lab prototypes
    background: np.ndarray  # (m, 3)


def grow(prepared: PreparedImage, include: np.ndarray, exclude: np.ndarray, box: np.ndarray | None) -> Selection:
    """Steps 2-5 on working pixels: include/exclude (n, 2) int (x, y), box (x0, y0, x1, y1) int or None."""
    lab = prepared.lab
    region = _box_region(lab.shape[:2], box)
    background = _background_prototypes(lab, box, exclude)
    seeds = (
        _seed_prototypes(lab, include, background) if len(include) else _box_seed_prototypes(lab, region, background)
    )
    if seeds is None:
        return Selection(np.zeros(lab.shape[:2], bool), np.zeros((0, 3), np.float32), background)
    clicked = lab[include[:, 1], include[:, 0]].reshape(-1, 3)
    objects = seeds
    for _ in range(2):  # step 4: the second pass uses prototypes learned from the first region
        mask = _object_region(lab, region, objects, _drop_near(background, objects), include)
        if not mask.any():
            break
        objects = np.concatenate([clicked, _prototypes(lab[_interior(mask)])])
    background = _drop_near(background, objects)
    mask = _clean_up(lab, mask, region, objects, background, include)
    anchors = include if len(include) or box is None else np.array([[(box[0] + box[2]) // 2, (box[1] + box[3]) // 2]])
    return Selection(_cut_excluded(mask, anchors, exclude), objects, background)


def to_image_size(selection: Selection, prepared: PreparedImage, image: np.ndarray) -> np.ndarray:
    """The working-size mask -> uint8 0/255 at the image's size.

    Upsampled bilinearly; the pixels the interpolation leaves in between (the edge band, about one working pixel
    wide) are decided by their own full-resolution colour, so edges are as sharp as the image's, not the working
    size's. Only the mask's bounding box is upsampled: the rest of a big image stays zero at no cost."""
    height, width = prepared.shape
    mask = selection.mask
    result = np.zeros((height, width), np.uint8)
    if mask.shape == (height, width) or not mask.any():
        result[mask] = 255
        return result
    rows, cols = np.nonzero(mask)
    scale_y, scale_x = mask.shape[0] / height, mask.shape[1] / width
    x0, x1 = max(0, math.floor((cols.min() - 1) / scale_x)), min(width, math.ceil((cols.max() + 2) / scale_x))
    y0, y1 = max(0, math.floor((rows.min() - 1) / scale_y)), min(height, math.ceil((rows.max() + 2) / scale_y))
    source = (x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y)  # the crop in working pixels
    soft = Image.fromarray(mask.astype(np.uint8) * 255).resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, source)
    soft = np.asarray(soft)
    crop = soft >= 128
    band = (soft > 0) & (soft < 255)
    if band.any() and len(selection.objects) and len(selection.background):
        lab = rgb_to_lab(image[y0:y1, x0:x1, :3][band]) * np.array([_LIGHTNESS_WEIGHT, 1.0, 1.0], np.float32)
        crop[band] = _distance(lab, selection.objects) < _distance(lab, selection.background) * _TIE
    result[y0:y1, x0:x1] = crop * np.uint8(255)
    return result


def _image_scale(shape: tuple[int, ...]) -> float:
    """Working size relative to the 128 px the radii are tuned for (geometric mean of the sides: a panorama's
    objects are not as small as its long side suggests)."""
    return math.sqrt(shape[0] * shape[1]) / _REFERENCE_SIDE


def _smoothing_sigma(shape: tuple[int, ...]) -> float:
    return _FINE_SIGMA * _image_scale(shape)


# --- colour models -------------------------------------------------------------------------------------------


def _prototypes(samples: np.ndarray, min_share: float = _MIN_SHARE) -> np.ndarray:
    """The common colours of `samples` (n, 3): means of the quantisation bins holding >= `min_share` of them."""
    samples = samples.reshape(-1, 3)
    if not len(samples):
        return np.zeros((0, 3), np.float32)
    # One int64 key per bin (weighted Lab spans less than +-512 bins per axis): a 1-D unique, not a row-wise one.
    cells = np.round(samples / _BIN).astype(np.int64) + 512
    keys = (cells[:, 0] << 20) | (cells[:, 1] << 10) | cells[:, 2]
    _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    sums = np.stack([np.bincount(inverse, weights=samples[:, axis], minlength=len(counts)) for axis in range(3)], 1)
    order = np.argsort(-counts)
    keep = order[counts[order] >= max(1, min_share * len(samples))][:_MAX_PROTOTYPES]
    return (sums[keep] / counts[keep, None]).astype(np.float32)


def _seed_prototypes(lab: np.ndarray, include: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The colours around each click that are nearer the clicked colour than the background: a click on a dot or
    stripe of a patterned fill brings in the fill's other tone too, a click near an edge not the background."""
    radius = max(2, round(_SEED_RADIUS * _image_scale(lab.shape)))
    samples = []
    for x, y in include:
        clicked = lab[y, x]
        window = lab[max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1].reshape(-1, 3)
        to_click = np.sqrt(((window - clicked) ** 2).sum(-1))
        samples.append(window[to_click < _distance(window, background)])
        samples.append(clicked[None])
    return _prototypes(np.concatenate(samples), min_share=0.0)


def _background_prototypes(lab: np.ndarray, box: np.ndarray | None, exclude: np.ndarray) -> np.ndarray:
    """The image border's (or the box's surroundings') common colours, plus the colours at exclude clicks."""
    ring = _box_ring(lab.shape[:2], box) if box is not None else _image_border(lab.shape[:2])
    parts = [_prototypes(lab[ring])]
    if len(exclude):
        parts.append(lab[exclude[:, 1], exclude[:, 0]])
    return np.concatenate(parts).astype(np.float32)


def _interior(mask: np.ndarray) -> np.ndarray:
    """The region less its edge band, whose colours are blends with the background (when anything is left).

    The band is as wide as the smoothing spreads an edge: prototypes learned from blends would grow the next
    pass by the blend's width."""
    inner = ndimage.binary_erosion(mask, iterations=1 + math.ceil(2 * _smoothing_sigma(mask.shape)))
    return inner if inner.any() else mask


def _drop_near(background: np.ndarray, objects: np.ndarray) -> np.ndarray:
    if not len(background) or not len(objects):
        return background
    return background[_distance(background, objects) > _SAME_COLOUR]


def _box_seed_prototypes(lab: np.ndarray, region: np.ndarray, background: np.ndarray) -> np.ndarray | None:
    """A box without clicks: the object is the largest blob in the box unlike the box's surroundings."""
    distance = _distance(lab, background)
    inside = distance[region]
    cap = np.clip(_otsu(inside), *_CAP_BOUNDS) if len(inside) else _CAP_BOUNDS[0]
    candidate = region & (distance > cap)
    labels, count = ndimage.label(candidate)
    if not count:
        return None
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return _prototypes(lab[_interior(labels == 1 + int(np.argmax(sizes)))])


# --- classification ------------------------------------------------------------------------------------------


def _distance(lab: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Distance of each colour (..., 3) to its nearest prototype (k, 3); inf without prototypes.

    |x - p|^2 = |x|^2 - 2 x.p + |p|^2: one matrix product for all prototypes instead of k passes over the image."""
    if not len(prototypes):
        return np.full(lab.shape[:-1], np.inf, np.float32)
    flat = lab.reshape(-1, 3)
    cross = flat @ (-2.0 * prototypes.T.astype(np.float32))
    cross += (prototypes.astype(np.float32) ** 2).sum(-1)
    nearest = cross.min(axis=1) + (flat**2).sum(-1)
    return np.sqrt(np.maximum(nearest, 0.0)).reshape(lab.shape[:-1])


def _object_like(lab: np.ndarray, region: np.ndarray, objects: np.ndarray, background: np.ndarray) -> np.ndarray:
    to_object = _distance(lab, objects)
    to_background = _distance(lab, background)
    values = to_object[region]
    cap = np.clip(_otsu(values), *_CAP_BOUNDS) if len(values) else _CAP_BOUNDS[1]
    return region & (to_object < to_background * _TIE) & (to_object < cap)


def _object_region(
    lab: np.ndarray, region: np.ndarray, objects: np.ndarray, background: np.ndarray, include: np.ndarray
) -> np.ndarray:
    """Components of object-like pixels holding a click (without clicks: the largest in the region)."""
    candidate = _object_like(lab, region, objects, background)
    labels, count = ndimage.label(candidate)
    if not count:
        return candidate
    if len(include):
        keep = _labels_at(labels, include)
    else:
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        sizes[0] = 0
        keep = np.array([int(np.argmax(sizes))])
    return np.isin(labels, keep[keep > 0])


def _labels_at(labels: np.ndarray, points: np.ndarray, reach: int = 2) -> np.ndarray:
    """The label under each point, or of the nearest labelled pixel within `reach` (a click just off an edge)."""
    found = []
    for x, y in points:
        window = labels[max(0, y - reach) : y + reach + 1, max(0, x - reach) : x + reach + 1]
        if labels[y, x]:
            found.append(labels[y, x])
        elif window.any():
            ys, xs = np.nonzero(window)
            nearest = np.argmin((ys + max(0, y - reach) - y) ** 2 + (xs + max(0, x - reach) - x) ** 2)
            found.append(window[ys[nearest], xs[nearest]])
    return np.array(found, np.int64)


def _otsu(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of a 1-D sample (the split maximising the between-class variance)."""
    values = values[np.isfinite(values)]
    if not len(values) or values.min() == values.max():
        return float(values.max()) if len(values) else 0.0
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts)
    mean = np.cumsum(counts * centres)
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    between[~np.isfinite(between)] = 0
    return float(edges[int(np.argmax(between)) + 1])


# --- clean-up ------------------------------------------------------------------------------------------------


def _clean_up(
    lab: np.ndarray,
    mask: np.ndarray,
    region: np.ndarray,
    objects: np.ndarray,
    background: np.ndarray,
    include: np.ndarray,
) -> np.ndarray:
    """Close pattern gaps, fill holes that are not background-coloured, drop what is not attached to a click."""
    if not mask.any():
        return mask
    radius = _CLOSING_RADIUS * _image_scale(mask.shape)
    closed = ndimage.binary_closing(mask, structure=_disk(radius), border_value=0) & region
    closed |= mask
    holes = ndimage.binary_fill_holes(closed) & ~closed
    labels, count = ndimage.label(holes)
    if count:
        to_object = ndimage.mean(_distance(lab, objects), labels, np.arange(1, count + 1))
        to_background = ndimage.mean(_distance(lab, background), labels, np.arange(1, count + 1))
        fill = np.concatenate([[False], np.asarray(to_object) <= np.asarray(to_background)])
        closed |= fill[labels]
    labels, count = ndimage.label(closed)
    if count > 1:
        if len(include):
            keep = _labels_at(labels, include)
        else:
            sizes = np.bincount(labels.ravel())
            sizes[0] = 0
            keep = np.array([int(np.argmax(sizes))])
        closed = np.isin(labels, keep[keep > 0])
    return closed


def _cut_excluded(mask: np.ndarray, include: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """An exclude click inside the mask: drop the mask's pixels nearer to an exclude than to any include click
    (the box's centre stands in for the clicks of a box alone). Colour can't part two touching objects of one
    colour; where the user clicked can."""
    inside = [point for point in exclude if mask[point[1], point[0]]]
    if not inside:
        return mask
    ys, xs = np.nonzero(mask)
    near_exclude = _nearest_point_distance(xs, ys, np.array(inside))
    near_include = _nearest_point_distance(xs, ys, include) if len(include) else np.full(len(xs), np.inf)
    cut = mask.copy()
    drop = near_exclude < near_include
    cut[ys[drop], xs[drop]] = False
    return cut


def _nearest_point_distance(xs: np.ndarray, ys: np.ndarray, points: np.ndarray) -> np.ndarray:
    dx = xs[:, None] - points[None, :, 0]
    dy = ys[:, None] - points[None, :, 1]
    return np.sqrt(dx**2 + dy**2).min(axis=1)


# --- geometry ------------------------------------------------------------------------------------------------


def _disk(radius: float) -> np.ndarray:
    r = max(int(math.ceil(radius)), 1)
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return xx**2 + yy**2 <= radius**2 + 0.5


def _box_region(shape: tuple[int, int], box: np.ndarray | None) -> np.ndarray:
    region = np.zeros(shape, bool)
    if box is None:
        region[:] = True
    else:
        x0, y0, x1, y1 = box
        region[y0:y1, x0:x1] = True
    return region


def _box_ring(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    """A band along the box edge: a pixel inside and a few outside (clipped to the image)."""
    height, width = shape
    x0, y0, x1, y1 = box
    width_out = max(2, round(3 * _image_scale(shape)))
    outer = np.zeros(shape, bool)
    outer[max(0, y0 - width_out) : min(height, y1 + width_out), max(0, x0 - width_out) : min(width, x1 + width_out)] = (
        True
    )
    inner = np.zeros(shape, bool)
    inner[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = True
    return outer & ~inner


def _image_border(shape: tuple[int, int]) -> np.ndarray:
    width = max(1, round(2 * _image_scale(shape)))
    border = np.ones(shape, bool)
    border[width:-width, width:-width] = False
    return border
