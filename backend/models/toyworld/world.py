"""The toy world: seeded scenes of 1-3 coloured shapes on plain or textured backgrounds, rendered with numpy.

A scene is pure data (`Scene`), positions in [0, 1] image units, so one scene renders at any size. Rendering is
vectorised (one numpy expression per shape over the object's bounding box, 4x4 supersampled edges) and
deterministic: the same scene gives the same pixels on every machine. Captions name colour, fill, shape, size
and rough position; `ground_truth` gives each object's mask, colour, shape, centroid and bbox for the judge.

Design choices that keep the world learnable by a tiny model and judgeable by simple image analysis:
- object colours are saturated hues, background colours are (near-)neutral, so "which pixels are objects" is
  a chroma question even on textured backgrounds; colours within one scene are distinct;
- patterned fills alternate the object colour with its own tint (40% towards white), so a pattern never shows a
  second hue and a blend of the two still reads as the object's colour;
- objects never overlap and two-object scenes are laid out along one clear axis, so "left of"/"above" are
  never ambiguous;
- textures and fills have fixed phase (anchored to the image or the object), so a caption fully determines the
  picture up to exact positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RGB = tuple[int, int, int]

# Saturated hues: with their pattern tints, pairwise >= 22 apart in CIELAB (lightness weighted 0.5, as the judge
# measures), so a generated image's colour drift stays classifiable.
COLOURS: dict[str, RGB] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (240, 215, 25),
    "green": (35, 160, 55),
    "cyan": (20, 185, 205),
    "blue": (35, 70, 215),
    "purple": (135, 50, 185),
    "pink": (240, 120, 185),
}
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
SIZES: dict[str, float] = {"small": 0.12, "big": 0.2}  # object "radius" as a fraction of the image side
FILLS = ("solid", "striped", "dotted")
PATTERN_TINT = 0.4  # the second colour of striped / dotted fills: the object colour this far towards white

# (base, second tone): textures alternate or blend the two; the second tone stays neutral too.
BACKGROUND_COLOURS: dict[str, tuple[RGB, RGB]] = {
    "white": ((240, 240, 236), (200, 200, 196)),
    "gray": ((128, 128, 128), (165, 165, 165)),
    "black": ((28, 28, 30), (72, 72, 74)),
    "beige": ((228, 216, 192), (196, 184, 160)),
}
TEXTURES = ("plain", "striped", "checkered", "gradient")
BACKGROUNDS = tuple(f"{texture} {colour}" for texture in TEXTURES for colour in BACKGROUND_COLOURS)
RELATIONS = ("left of", "right of", "above", "below")
REGIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)

_SUPERSAMPLE = 4
_MARGIN = 0.03  # objects keep this far (image units) from the border, so border pixels are background
_GAP = 0.04  # and this far from each other
_TEXTURE_CELLS = 8  # background stripes / checker cells per image side
_PATTERN_CELLS = 12  # object stripe / dot periods per image side (~11 px at 128: coarse enough for 8x latents)


@dataclass(frozen=True)
class SceneObject:
    shape: str
    colour: str
    size: str
    fill: str
    x: float  # centroid of the shape's area, image units in [0, 1], x to the right
    y: float  # y downwards, as in image rows

    @property
    def radius(self) -> float:
        return SIZES[self.size]


@dataclass(frozen=True)
class Background:
    colour: str
    texture: str = "plain"


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background


@dataclass
class ObjectTruth:
    """What the judge should find for one object: its silhouette (pattern included) and attributes."""

    colour: str
    shape: str
    size: str
    fill: str
    mask: np.ndarray  # bool (H, W)
    centroid: tuple[float, float]  # (x, y) in pixel indices (pixel centres at integers)
    bbox: tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive
    area: int


# --- sampling ------------------------------------------------------------------------------------------------


def sample_scene(rng: np.random.Generator, n_objects: int | None = None) -> Scene:
    """A random scene: 1-3 objects of distinct colours, laid out without overlap."""
    if n_objects is None:
        n_objects = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    if not 1 <= n_objects <= 3:
        raise ValueError(f"scenes hold 1 to 3 objects, not {n_objects}")
    texture = str(rng.choice(TEXTURES, p=[0.4, 0.2, 0.2, 0.2]))
    background = Background(str(rng.choice(list(BACKGROUND_COLOURS))), texture)
    while True:  # a layout fails rarely (three big objects); redraw sizes then
        objects = _sample_objects(rng, n_objects)
        if objects is not None:
            return Scene(objects, background)


def _sample_objects(rng: np.random.Generator, n_objects: int) -> tuple[SceneObject, ...] | None:
    colours = rng.choice(list(COLOURS), size=n_objects, replace=False)
    shapes = [str(rng.choice(SHAPES)) for _ in range(n_objects)]
    sizes = [str(rng.choice(list(SIZES))) for _ in range(n_objects)]
    fills = [str(rng.choice(FILLS, p=[0.5, 0.25, 0.25])) for _ in range(n_objects)]
    reaches = [_REACH[shape] * SIZES[size] for shape, size in zip(shapes, sizes)]
    centres: list[tuple[float, float]] = []
    for index, size in enumerate(sizes):
        half_side = _EXTENTS[shapes[index]] * SIZES[size]
        centre = _place(rng, half_side, reaches[index], centres, reaches[:index])
        if centre is None:
            return None
        centres.append(centre)
    return tuple(
        SceneObject(shape, str(colour), size, fill, round(x, 4), round(y, 4))
        for shape, colour, size, fill, (x, y) in zip(shapes, colours, sizes, fills, centres)
    )


def _place(
    rng: np.random.Generator, half_side: float, reach: float, centres: list[tuple[float, float]], reaches: list[float]
) -> tuple[float, float] | None:
    low, high = _MARGIN + half_side, 1 - _MARGIN - half_side
    for _ in range(200):
        x, y = rng.uniform(low, high, size=2)
        clear = all(math.hypot(x - cx, y - cy) >= reach + other + _GAP for (cx, cy), other in zip(centres, reaches))
        # Two objects: one axis must clearly dominate, so the caption's relation is unambiguous.
        if clear and (len(centres) != 1 or _dominant_axis(centres[0], (x, y)) is not None):
            return float(x), float(y)
    return None


def _dominant_axis(a: tuple[float, float], b: tuple[float, float]) -> str | None:
    dx, dy = abs(b[0] - a[0]), abs(b[1] - a[1])
    if dx >= 1.5 * dy:
        return "x"
    if dy >= 1.5 * dx:
        return "y"
    return None


# --- captions ------------------------------------------------------------------------------------------------


def relation(first: SceneObject, second: SceneObject) -> str:
    """Where `first` is relative to `second`: along the axis with the larger centre distance."""
    dx, dy = first.x - second.x, first.y - second.y
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"


def region(obj: SceneObject) -> str:
    """Rough position on a 3x3 grid: "top left", "center", "bottom", ..."""
    column = min(int(obj.x * 3), 2)
    row = min(int(obj.y * 3), 2)
    return REGIONS[row][column]


def _region_phrase(name: str) -> str:
    return "in the center" if name == "center" else f"at the {name}"


def _object_phrase(obj: SceneObject, with_size: bool = True, say_solid: bool = False) -> str:
    fill = obj.fill if obj.fill != "solid" or say_solid else ""
    words = ["a", obj.size if with_size else "", obj.colour, fill, obj.shape]
    return " ".join(word for word in words if word)


def _background_phrase(background: Background) -> str:
    return f"on a {background.texture} {background.colour} background"


def caption(scene: Scene, rng: np.random.Generator | None = None, layout: bool = True) -> str:
    """The scene in words, e.g. "a big red striped circle left of a small blue star on a checkered beige
    background". With `rng`, a training variant: object order swapped, size/position/background sometimes left
    out, "solid" sometimes said, so the model also follows the shorter prompts people type. `layout=False`
    leaves out sizes and where things are ("a red striped circle and a blue star on a checkered beige
    background"): the prompt for edits that move or resize objects, which the layout words would pin in place."""
    if not layout:
        phrases = " and ".join(_object_phrase(obj, with_size=False) for obj in scene.objects)
        return f"{phrases} {_background_phrase(scene.background)}"

    def chance(p: float) -> bool:
        return rng is not None and bool(rng.random() < p)

    objects = list(scene.objects)
    if len(objects) >= 2 and chance(0.5):
        objects[0], objects[1] = objects[1], objects[0]
    phrases = [_object_phrase(obj, with_size=not chance(0.2), say_solid=chance(0.3)) for obj in objects]
    if len(objects) == 1:
        text = phrases[0] if chance(0.2) else f"{phrases[0]} {_region_phrase(region(objects[0]))}"
    else:
        link = "and" if chance(0.15) else relation(objects[0], objects[1])
        text = f"{phrases[0]} {link} {phrases[1]}"
        if len(objects) == 3:
            third = phrases[2] if chance(0.2) else f"{phrases[2]} {_region_phrase(region(objects[2]))}"
            text = f"{text} and {third}"
    if chance(0.1):
        return text
    return f"{text} {_background_phrase(scene.background)}"


def vocabulary() -> list[str]:
    """Every word a caption can contain (each becomes one token of the toy-world tokenizer)."""
    words = {"a", "and", "on", "background", "of", "at", "the", "in"}
    words.update(COLOURS, SHAPES, SIZES, FILLS, TEXTURES, BACKGROUND_COLOURS)
    for phrase in (*RELATIONS, *(name for row in REGIONS for name in row)):
        words.update(phrase.split())
    return sorted(words)


# --- rendering -----------------------------------------------------------------------------------------------


def render(scene: Scene, size: int = 128) -> tuple[np.ndarray, list[np.ndarray]]:
    """(uint8 RGB (size, size, 3), one bool silhouette mask per object, in scene order)."""
    canvas = render_background(scene.background, size).astype(np.float32)
    masks = []
    for obj in scene.objects:
        masks.append(_paint_object(canvas, obj, size))
    return np.clip(np.round(canvas), 0, 255).astype(np.uint8), masks


def render_background(background: Background, size: int) -> np.ndarray:
    """float32 (size, size, 3): a plain colour or a two-tone texture with a fixed phase."""
    base, second = (np.array(c, np.float32) for c in BACKGROUND_COLOURS[background.colour])
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    cell = size / _TEXTURE_CELLS
    if background.texture == "plain":
        weight = np.zeros((size, size), np.float32)
    elif background.texture == "striped":
        weight = (np.floor(cols / cell) % 2).astype(np.float32)
    elif background.texture == "checkered":
        weight = ((np.floor(cols / cell) + np.floor(rows / cell)) % 2).astype(np.float32)
    elif background.texture == "gradient":
        weight = rows / max(size - 1, 1)
    else:
        raise ValueError(f"unknown texture {background.texture!r}; use one of {TEXTURES}")
    return base + weight[..., None] * (second - base)


def _paint_object(canvas: np.ndarray, obj: SceneObject, size: int) -> np.ndarray:
    """Composite `obj` onto `canvas` in place (anti-aliased by 4x4 supersampling); return its mask."""
    extent = _EXTENTS[obj.shape] * obj.radius * size
    x0, x1 = max(int(obj.x * size - extent) - 1, 0), min(int(obj.x * size + extent) + 2, size)
    y0, y1 = max(int(obj.y * size - extent) - 1, 0), min(int(obj.y * size + extent) + 2, size)
    ss = _SUPERSAMPLE
    # Sample points at the centres of the ss x ss sub-pixels, in units of the object's radius.
    xs = (np.arange(x0 * ss, x1 * ss, dtype=np.float32) + 0.5) / (ss * size)
    ys = (np.arange(y0 * ss, y1 * ss, dtype=np.float32) + 0.5) / (ss * size)
    u = (xs[None, :] - obj.x) / obj.radius
    v = (ys[:, None] - obj.y) / obj.radius
    u, v = np.broadcast_arrays(u, v)
    inside = shape_mask(obj.shape, u, v)
    colour = np.array(COLOURS[obj.colour], np.float32)
    pattern = _pattern_mask(obj, u, v)
    fill = np.where(pattern[..., None], np.array(tint(COLOURS[obj.colour]), np.float32), colour)
    coverage = _pool(inside.astype(np.float32), ss)
    painted = _pool(fill * inside[..., None], ss)
    box = canvas[y0:y1, x0:x1]
    box[:] = box * (1 - coverage[..., None]) + painted
    mask = np.zeros((size, size), bool)
    mask[y0:y1, x0:x1] = coverage >= 0.5
    return mask


def tint(rgb: RGB) -> RGB:
    """The second colour of a patterned fill."""
    return tuple(int(round(c + (255 - c) * PATTERN_TINT)) for c in rgb)  # type: ignore[return-value]


def _pool(samples: np.ndarray, ss: int) -> np.ndarray:
    """Average ss x ss blocks: supersampled -> pixel resolution."""
    h, w = samples.shape[0] // ss, samples.shape[1] // ss
    return samples.reshape(h, ss, w, ss, *samples.shape[2:]).mean(axis=(1, 3))


def _pattern_mask(obj: SceneObject, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Where the tint of a patterned fill shows; periods are fixed in image units."""
    period = 1.0 / _PATTERN_CELLS / obj.radius  # in radius units
    if obj.fill == "solid":
        return np.zeros(u.shape, bool)
    if obj.fill == "striped":
        # Horizontal bands anchored to the object's top, colour first: the silhouette edge stays coloured.
        return np.floor((v + _EXTENTS[obj.shape]) / (period / 2)) % 2 == 1
    if obj.fill == "dotted":
        du = (u / period) - np.round(u / period)
        dv = (v / period) - np.round(v / period)
        return du**2 + dv**2 < 0.28**2  # dot diameter ~ half a period
    raise ValueError(f"unknown fill {obj.fill!r}; use one of {FILLS}")


def _polygon(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    array = np.array(points, np.float32)
    return array[:, 0], array[:, 1]


def _star(points: int = 5, outer: float = 1.12, inner: float = 0.48) -> tuple[np.ndarray, np.ndarray]:
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return (radii * np.cos(angles)).astype(np.float32), (radii * np.sin(angles)).astype(np.float32)


_ARM = 0.36
_POLYGONS = {
    "square": _polygon([(-0.88, -0.88), (0.88, -0.88), (0.88, 0.88), (-0.88, 0.88)]),
    # Centred on its centroid (not its bbox), like every shape: an object's (x, y) is where the eye puts it.
    "triangle": _polygon([(0.0, -1.233), (1.08, 0.617), (-1.08, 0.617)]),
    "star": _star(),
    "cross": _polygon(
        [
            (-_ARM, -1),
            (_ARM, -1),
            (_ARM, -_ARM),
            (1, -_ARM),
            (1, _ARM),
            (_ARM, _ARM),
            (_ARM, 1),
            (-_ARM, 1),
            (-_ARM, _ARM),
            (-1, _ARM),
            (-1, -_ARM),
            (-_ARM, -_ARM),
        ]  # fmt: skip
    ),
}


def _reach(shape: str) -> float:
    """Largest distance from the centre to the shape's outline, in radius units (for non-overlap)."""
    if shape in _POLYGONS:
        px, py = _POLYGONS[shape]
        return float(np.sqrt(px**2 + py**2).max())
    return 1.0


def _extent(shape: str) -> float:
    """Half-side of the smallest centred square holding the shape, in radius units."""
    if shape in _POLYGONS:
        px, py = _POLYGONS[shape]
        return float(max(np.abs(px).max(), np.abs(py).max()))
    return 1.0


_REACH = {shape: _reach(shape) for shape in SHAPES}
_EXTENTS = {shape: _extent(shape) for shape in SHAPES}


def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test for `shape` centred at 0 with radius 1, on coordinate arrays u (right) and v (down)."""
    if shape == "circle":
        return u**2 + v**2 <= 1.0
    if shape == "ring":
        r2 = u**2 + v**2
        return (r2 <= 1.0) & (r2 >= 0.55**2)
    if shape in _POLYGONS:
        return _inside_polygon(u, v, *_POLYGONS[shape])
    raise ValueError(f"unknown shape {shape!r}; use one of {SHAPES}")


def _inside_polygon(u: np.ndarray, v: np.ndarray, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Even-odd rule, one vectorised half-line crossing test per edge."""
    inside = np.zeros(u.shape, bool)
    for i in range(len(px)):
        j = i - 1
        crosses = (py[i] > v) != (py[j] > v)
        x_at = px[i] + (v - py[i]) * (px[j] - px[i]) / (py[j] - py[i] + 1e-12)
        inside ^= crosses & (u < x_at)
    return inside


# --- ground truth --------------------------------------------------------------------------------------------


def ground_truth(scene: Scene, size: int = 128, masks: list[np.ndarray] | None = None) -> list[ObjectTruth]:
    """Per object: silhouette mask, colour, shape, centroid and bbox at `size` pixels."""
    if masks is None:
        masks = render(scene, size)[1]
    return [_truth(obj, mask) for obj, mask in zip(scene.objects, masks)]


def _truth(obj: SceneObject, mask: np.ndarray) -> ObjectTruth:
    rows, cols = np.nonzero(mask)
    return ObjectTruth(
        colour=obj.colour,
        shape=obj.shape,
        size=obj.size,
        fill=obj.fill,
        mask=mask,
        centroid=(float(cols.mean()), float(rows.mean())),
        bbox=(int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1),
        area=int(mask.sum()),
    )


def scene_for_seed(seed: int, index: int = 0, n_objects: int | None = None) -> Scene:
    """The `index`-th scene of the world drawn from `seed` (independent of any other index)."""
    return sample_scene(np.random.default_rng([seed, index]), n_objects)
