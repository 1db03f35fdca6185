"""Layer kinds of an Atelier document. Plain data; the Document validates and mutates them and emits events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

# What a mask is for; the method panel asks for masks by these roles.
# "fill": what a vacated place should look like (DragonDiffusion's move, m_ref).
MASK_ROLES = ("edit", "keep", "object", "target", "fill")

# Overlay tint per role (RGBA), used by the canvas.
ROLE_COLOURS = {
    "edit": (255, 60, 60, 110),
    "keep": (60, 200, 90, 110),
    "object": (60, 130, 255, 110),
    "target": (250, 200, 40, 110),
    "fill": (170, 90, 230, 110),
}


def new_id() -> str:
    return uuid.uuid4().hex[:10]


@dataclass(eq=False)
class Layer:
    """Common to every layer: a name, visibility and opacity. `kind` names the layer type in files."""

    name: str
    visible: bool = True
    opacity: float = 1.0
    id: str = field(default_factory=new_id)

    kind: ClassVar[str] = "layer"
    # Properties `Document.set_property` may change, with their validators.
    editable: ClassVar[tuple[str, ...]] = ("name", "visible", "opacity")

    def pixel_array(self) -> np.ndarray | None:
        """The array brush tools paint into (mask or pixels), or None for layers without pixels."""
        return None


@dataclass(eq=False)
class RasterLayer(Layer):
    """RGBA pixels at the document's size. `recipe` is set when the layer is a method's result."""

    pixels: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 4), np.uint8))
    recipe: dict[str, Any] | None = None

    kind: ClassVar[str] = "raster"

    def pixel_array(self) -> np.ndarray:
        return self.pixels


@dataclass(eq=False)
class MaskLayer(Layer):
    """A soft mask (0 = outside, 255 = inside) with a role: edit, keep, object or target."""

    mask: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.uint8))
    role: str = "edit"

    kind: ClassVar[str] = "mask"
    editable: ClassVar[tuple[str, ...]] = ("name", "visible", "opacity", "role")

    def pixel_array(self) -> np.ndarray:
        return self.mask


@dataclass(eq=False)
class ObjectLayer(Layer):
    """One object of a multi-object edit: its mask, the word naming it now, and the prompt it should become."""

    mask: np.ndarray = field(default_factory=lambda: np.zeros((1, 1), np.uint8))
    prompt: str = ""
    source: str = ""

    kind: ClassVar[str] = "object"
    editable: ClassVar[tuple[str, ...]] = ("name", "visible", "opacity", "prompt", "source")

    def pixel_array(self) -> np.ndarray:
        return self.mask


@dataclass
class RegionMove:
    """Move (and scale) the region of a mask layer: for DragonDiffusion's move / resize / paste."""

    mask_layer_id: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0


@dataclass(eq=False)
class DragLayer(Layer):
    """Handle -> target point pairs (image pixels) and region moves."""

    points: list[tuple[tuple[float, float], tuple[float, float]]] = field(default_factory=list)
    regions: list[RegionMove] = field(default_factory=list)

    kind: ClassVar[str] = "drag"
    editable: ClassVar[tuple[str, ...]] = ("name", "visible", "opacity", "points", "regions")


@dataclass(eq=False)
class ReferenceLayer(Layer):
    """A reference image (any size) with its own optional mask, placed at (x, y) with a scale."""

    image: np.ndarray = field(default_factory=lambda: np.zeros((1, 1, 4), np.uint8))
    mask: np.ndarray | None = None
    x: float = 0.0
    y: float = 0.0
    scale: float = 1.0

    kind: ClassVar[str] = "reference"
    editable: ClassVar[tuple[str, ...]] = ("name", "visible", "opacity", "x", "y", "scale", "mask")


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.kind: cls for cls in (RasterLayer, MaskLayer, ObjectLayer, DragLayer, ReferenceLayer)
}
