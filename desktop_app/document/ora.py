"""OpenRaster (.ora) projects: ordinary layers Krita, GIMP and MyPaint open, plus Atelier's extras inside.

Layout (OpenRaster 0.0.5): a ZIP whose first entry is `mimetype` (stored, uncompressed), `stack.xml` (topmost
layer first), one PNG per layer under `data/`, `mergedimage.png` and `Thumbnails/thumbnail.png`.

Atelier's extras survive a round trip two ways. Mask and object layers are also ordinary *hidden* layers (the
role's tint, alpha = the soft mask, so other apps show them as layers and the values come back exactly), tagged
with `atelier:` attributes. Everything stack.xml cannot say (layer ids and kinds, prompts, drag points, region
moves, the reference image and its placement, the active layer, history recipes) is in `atelier/document.json`,
which is the truth when present; a file from another app has none and opens as raster layers.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
from PIL import Image

from desktop_app.document.atomic import atomic_write
from desktop_app.document.document import Document, HistoryEntry
from desktop_app.document.imagefile import ImageFileError, load_image_bytes, load_mask_bytes
from desktop_app.document.layers import (
    MASK_ROLES,
    ROLE_COLOURS,
    DragLayer,
    Layer,
    MaskLayer,
    ObjectLayer,
    RasterLayer,
    ReferenceLayer,
    RegionMove,
)

log = logging.getLogger(__name__)

MIMETYPE = "image/openraster"
ORA_VERSION = "0.0.5"
ATELIER_NS = "urn:atelier:openraster:1"
DOCUMENT_ENTRY = "atelier/document.json"
FORMAT_VERSION = 1
THUMBNAIL_SIZE = 256
MAX_TEXT_ENTRY = 512 * 2**20  # stack.xml / document.json larger than this are not ours (zip bomb guard)

ElementTree.register_namespace("atelier", ATELIER_NS)


class ProjectFileError(ImageFileError):
    """A project could not be opened or saved; the message names the file and says why."""


def _ns(name: str) -> str:
    return f"{{{ATELIER_NS}}}{name}"


# --- saving -------------------------------------------------------------------------------------------------


@dataclass
class _LayerRecord:
    """One layer as it goes into the archive: its JSON entry and the pictures it needs, by entry name."""

    layer: Layer
    entry: dict[str, Any]
    pictures: dict[str, np.ndarray] = field(default_factory=dict)


def save_ora(document: Document, path: str | Path, *, compress_level: int = 6) -> Path:
    """Write `document` to `path` atomically (the old file survives any failure); returns the path.

    compress_level is zlib's 0-9 for the layer PNGs; autosave uses 1 (several times faster, files ~20% larger).
    """
    path = Path(path)
    try:
        return atomic_write(path, lambda temporary: _write_archive(document, temporary, compress_level))
    except OSError as error:
        raise ProjectFileError(f"could not save '{path}': {error.strerror or error}") from error


def _write_archive(document: Document, target: Path, level: int) -> None:
    records = [_record(layer, index) for index, layer in enumerate(document.layers)]
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        # The spec's magic: `mimetype` first and stored, so `file` and other apps can sniff the type.
        archive.writestr(zipfile.ZipInfo("mimetype"), MIMETYPE, compress_type=zipfile.ZIP_STORED)
        archive.writestr("stack.xml", _stack_xml(document, records))
        for record in records:
            for name, array in record.pictures.items():
                _write_png(archive, name, array, level)
        merged = document.composite()
        _write_png(archive, "mergedimage.png", merged, level)
        _write_png(archive, "Thumbnails/thumbnail.png", _thumbnail(merged), level)
        archive.writestr(DOCUMENT_ENTRY, json.dumps(_document_json(document, records), default=_json_default))


def _record(layer: Layer, index: int) -> _LayerRecord:
    entry: dict[str, Any] = {
        "id": layer.id,
        "kind": layer.kind,
        "name": layer.name,
        "visible": layer.visible,
        "opacity": layer.opacity,
    }
    record = _LayerRecord(layer, entry)
    if isinstance(layer, RasterLayer):
        record.pictures[_src(entry, f"data/layer-{index}.png")] = layer.pixels
        entry["recipe"] = layer.recipe
    elif isinstance(layer, (MaskLayer, ObjectLayer)):
        role = layer.role if isinstance(layer, MaskLayer) else "object"
        record.pictures[_src(entry, f"data/layer-{index}.png")] = _tinted(layer.mask, ROLE_COLOURS[role])
        entry.update({"role": layer.role} if isinstance(layer, MaskLayer) else _object_fields(layer))
    elif isinstance(layer, DragLayer):
        entry["points"] = [[list(handle), list(target)] for handle, target in layer.points]
        entry["regions"] = [asdict(region) for region in layer.regions]
    elif isinstance(layer, ReferenceLayer):
        _record_reference(record, layer, index)
    return record


def _src(entry: dict[str, Any], name: str) -> str:
    entry["src"] = name
    return name


def _object_fields(layer: ObjectLayer) -> dict[str, Any]:
    return {"prompt": layer.prompt, "source": layer.source}


def _record_reference(record: _LayerRecord, layer: ReferenceLayer, index: int) -> None:
    image_name = f"atelier/reference-{index}.png"
    record.pictures[image_name] = layer.image
    record.entry.update({"image": image_name, "mask": None, "x": layer.x, "y": layer.y, "scale": layer.scale})
    if layer.mask is not None:
        record.entry["mask"] = f"atelier/reference-{index}-mask.png"
        record.pictures[record.entry["mask"]] = layer.mask


def _tinted(mask: np.ndarray, colour: tuple[int, int, int, int]) -> np.ndarray:
    """The role's colour with alpha = the mask: other apps show a tint; the alpha gives back the exact mask."""
    rgba = np.empty(mask.shape + (4,), np.uint8)
    rgba[..., :3] = colour[:3]
    rgba[..., 3] = mask
    return rgba


def _stack_xml(document: Document, records: list[_LayerRecord]) -> bytes:
    root = ElementTree.Element("image", {"version": ORA_VERSION, "w": str(document.width), "h": str(document.height)})
    stack = ElementTree.SubElement(root, "stack")
    for record in reversed(records):  # OpenRaster lists the topmost layer first
        if "src" in record.entry:
            ElementTree.SubElement(stack, "layer", _stack_attributes(record, document.active_id))
    return ElementTree.tostring(root, encoding="UTF-8", xml_declaration=True)


def _stack_attributes(record: _LayerRecord, active_id: str | None) -> dict[str, str]:
    layer, entry = record.layer, record.entry
    is_raster = isinstance(layer, RasterLayer)
    attributes = {
        "name": _xml_safe(layer.name),
        "src": entry["src"],
        "x": "0",
        "y": "0",
        "opacity": repr(float(layer.opacity)),
        # Masks are annotations, not paint: hidden in other apps, whatever their tint's visibility is here.
        "visibility": "visible" if is_raster and layer.visible else "hidden",
        "composite-op": "svg:src-over",
        _ns("id"): layer.id,
        _ns("kind"): layer.kind,
    }
    if layer.id == active_id:
        attributes["selected"] = "true"
    for key in ("role", "prompt", "source"):
        if key in entry:
            attributes[_ns(key)] = _xml_safe(entry[key])
    return attributes


def _xml_safe(text: str) -> str:
    """XML 1.0 cannot hold most control characters; a name with one would make stack.xml unreadable."""
    return "".join(ch for ch in text if ch in "\t\n\r" or ord(ch) >= 0x20)


def _write_png(archive: zipfile.ZipFile, name: str, array: np.ndarray, level: int) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=level)
    # PNG is already deflated; deflating it again costs time and saves nothing.
    archive.writestr(name, buffer.getvalue(), compress_type=zipfile.ZIP_STORED)


def _thumbnail(merged: np.ndarray) -> np.ndarray:
    image = Image.fromarray(merged)
    image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
    return np.asarray(image)


def _document_json(document: Document, records: list[_LayerRecord]) -> dict[str, Any]:
    return {
        "format": "atelier",
        "version": FORMAT_VERSION,
        "width": document.width,
        "height": document.height,
        "active_id": document.active_id,
        "layers": [record.entry for record in records],  # bottom to top, as Document.layers
        "history": [asdict(entry) for entry in document.history],
    }


def _json_default(value: Any) -> Any:
    """Recipes are JSON already; numpy scalars from a method's metadata are the usual exception."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


# --- loading ------------------------------------------------------------------------------------------------

_DAMAGE = (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile, zlib.error, ElementTree.ParseError)


def load_ora(path: str | Path) -> Document:
    """Open an .ora written by Atelier (everything back) or by another app (its layers as raster layers)."""
    path = Path(path)
    label = f"'{path}'"
    _check_project_file(path, label)
    try:
        with zipfile.ZipFile(path) as archive:
            document = _load_archive(archive, label)
    except ProjectFileError:
        raise
    except ImageFileError as error:  # a layer PNG inside: its message already names it and the project
        raise ProjectFileError(str(error)) from None
    except zipfile.BadZipFile as error:
        raise ProjectFileError(f"{label} is not an OpenRaster file or it is damaged ({error})") from None
    except _DAMAGE as error:
        raise ProjectFileError(f"{label} is damaged or not an OpenRaster file Atelier can read ({error})") from None
    document.set_modified(False)
    return document


def _check_project_file(path: Path, label: str) -> None:
    if not path.exists():
        raise ProjectFileError(f"{label} does not exist")
    if path.is_dir():
        raise ProjectFileError(f"{label} is a folder, not a project file")
    if path.stat().st_size == 0:
        raise ProjectFileError(f"{label} is empty (0 bytes)")


def _load_archive(archive: zipfile.ZipFile, label: str) -> Document:
    _check_mimetype(archive, label)
    root = ElementTree.fromstring(_read(archive, "stack.xml", label, MAX_TEXT_ENTRY))
    if root.tag != "image":
        raise ProjectFileError(f"{label}: stack.xml has <{root.tag}> where OpenRaster has <image>")
    width, height = int(root.get("w", "0")), int(root.get("h", "0"))
    document = Document(width, height)
    if DOCUMENT_ENTRY in archive.namelist():
        _load_atelier(document, archive, label)
    else:
        _load_foreign(document, archive, root, label)
    return document


def _check_mimetype(archive: zipfile.ZipFile, label: str) -> None:
    names = archive.namelist()
    if "mimetype" not in names:
        if "stack.xml" not in names:
            raise ProjectFileError(f"{label} is a ZIP archive but not an OpenRaster file (no mimetype, no stack.xml)")
        log.warning("%s has no mimetype entry; reading it anyway", label)
        return
    mimetype = _read(archive, "mimetype", label, 1024).decode("ascii", "replace").strip()
    if mimetype != MIMETYPE:
        raise ProjectFileError(f"{label} is a {mimetype!r} file, not OpenRaster ({MIMETYPE})")


def _read(archive: zipfile.ZipFile, name: str, label: str, limit: int | None = None) -> bytes:
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ProjectFileError(f"{label} is incomplete: it has no {name!r}") from None
    if limit is not None and info.file_size > limit:
        raise ProjectFileError(f"{label}: {name!r} is implausibly large ({info.file_size} bytes)")
    return archive.read(info)


def _picture(archive: zipfile.ZipFile, name: str, label: str) -> np.ndarray:
    return load_image_bytes(_read(archive, name, label), f"layer picture {name!r} in {label}")


def _mask(archive: zipfile.ZipFile, name: str, label: str) -> np.ndarray:
    return load_mask_bytes(_read(archive, name, label), f"mask {name!r} in {label}")


# --- loading Atelier's own projects -------------------------------------------------------------------------


def _load_atelier(document: Document, archive: zipfile.ZipFile, label: str) -> None:
    data = json.loads(_read(archive, DOCUMENT_ENTRY, label, MAX_TEXT_ENTRY))
    version = data.get("version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ProjectFileError(f"{label} was saved by a newer Atelier (project format {version}); update Atelier")
    for entry in data.get("layers", []):
        layer = _layer_from_entry(entry, document, archive, label)
        if layer is not None:
            document.add_layer(layer)
    for entry in data.get("history", []):
        document.add_history(HistoryEntry(**_known(entry, ("title", "layer_id", "recipe", "metadata"))))
    active = data.get("active_id")
    document.set_active(active if any(layer.id == active for layer in document.layers) else None)


def _layer_from_entry(entry: dict[str, Any], document: Document, archive: zipfile.ZipFile, label: str) -> Layer | None:
    kind = entry.get("kind")
    common = {
        "id": str(entry["id"]),
        "name": str(entry.get("name") or str(kind).title()),
        "visible": bool(entry.get("visible", True)),
        "opacity": min(1.0, max(0.0, float(entry.get("opacity", 1.0)))),
    }
    if kind == "raster":
        return RasterLayer(**common, pixels=_picture(archive, entry["src"], label), recipe=entry.get("recipe"))
    if kind == "mask":
        return MaskLayer(**common, mask=_mask(archive, entry["src"], label), role=str(entry.get("role", "edit")))
    if kind == "object":
        texts = {key: str(entry.get(key, "")) for key in ("prompt", "source")}
        return ObjectLayer(**common, mask=_mask(archive, entry["src"], label), **texts)
    if kind == "drag":
        points = _points_inside(entry.get("points", []), document.size, label)
        fields = ("mask_layer_id", "dx", "dy", "scale")
        regions = [RegionMove(**_known(item, fields)) for item in entry.get("regions", [])]
        return DragLayer(**common, points=points, regions=[region for region in regions if region.scale > 0])
    if kind == "reference":
        return _reference_from_entry(entry, common, archive, label)
    log.warning("%s: skipping a layer of unknown kind %r", label, kind)
    return None


def _reference_from_entry(
    entry: dict[str, Any], common: dict[str, Any], archive: zipfile.ZipFile, label: str
) -> ReferenceLayer:
    image = _picture(archive, entry["image"], label)
    mask = _mask(archive, entry["mask"], label) if entry.get("mask") else None
    scale = float(entry.get("scale", 1.0))
    return ReferenceLayer(
        **common,
        image=image,
        mask=mask,
        x=float(entry.get("x", 0.0)),
        y=float(entry.get("y", 0.0)),
        scale=scale if scale > 0 else 1.0,
    )


def _points_inside(pairs: list[Any], size: tuple[int, int], label: str) -> list:
    """Handle/target pairs inside the image; a stray pair is dropped (and logged), not the whole project."""
    width, height = size
    kept = []
    for (hx, hy), (tx, ty) in pairs:
        if all(0 <= x < width and 0 <= y < height for x, y in ((hx, hy), (tx, ty))):
            kept.append(((float(hx), float(hy)), (float(tx), float(ty))))
        else:
            log.warning("%s: dropping drag points %s outside the %dx%d image", label, (hx, hy, tx, ty), width, height)
    return kept


def _known(entry: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {key: entry[key] for key in keys if key in entry}


# --- loading other apps' projects ---------------------------------------------------------------------------


def _load_foreign(document: Document, archive: zipfile.ZipFile, root: ElementTree.Element, label: str) -> None:
    """Every <layer> of the (possibly nested) stack, bottom first, placed at its x/y on a document-sized RGBA."""
    stack = root.find("stack")
    elements = list(_walk(stack, 1.0, True, 0, 0)) if stack is not None else []
    for number, (element, opacity, visible, x, y) in enumerate(reversed(elements), start=1):
        document.add_layer(_foreign_layer(element, opacity, visible, (x, y), document, archive, label, number))
    if not document.layers and "mergedimage.png" in archive.namelist():
        merged = _picture(archive, "mergedimage.png", label)
        document.add_layer(RasterLayer(name="Merged image", pixels=_placed(merged, 0, 0, document.size)))


def _walk(
    stack: ElementTree.Element, opacity: float, visible: bool, x: int, y: int
) -> Iterator[tuple[ElementTree.Element, float, bool, int, int]]:
    """Flatten groups: a group's opacity multiplies, its visibility hides, its offset adds (topmost first)."""
    for child in stack:
        child_opacity = opacity * _opacity(child)
        child_visible = visible and child.get("visibility", "visible") != "hidden"
        child_x, child_y = x + _int(child.get("x")), y + _int(child.get("y"))
        if child.tag == "stack":
            yield from _walk(child, child_opacity, child_visible, child_x, child_y)
        elif child.tag == "layer" and child.get("src"):
            yield child, child_opacity, child_visible, child_x, child_y


def _foreign_layer(
    element: ElementTree.Element,
    opacity: float,
    visible: bool,
    offset: tuple[int, int],
    document: Document,
    archive: zipfile.ZipFile,
    label: str,
    number: int,
) -> Layer:
    src = element.get("src", "")
    name = element.get("name") or f"Layer {number}"
    kind = element.get(_ns("kind"))
    if element.get("composite-op", "svg:src-over") != "svg:src-over":
        log.info("%s: layer %r blends with %s; Atelier shows it as normal", label, name, element.get("composite-op"))
    if kind in ("mask", "object"):  # an Atelier file whose document.json was lost: masks are still masks
        mask = _placed(_mask(archive, src, label)[..., None], *offset, document.size)[..., 0]
        if kind == "mask":
            role = element.get(_ns("role"), "edit")
            return MaskLayer(name=name, mask=mask, role=role if role in MASK_ROLES else "edit", opacity=opacity)
        prompt, source = element.get(_ns("prompt"), ""), element.get(_ns("source"), "")
        return ObjectLayer(name=name, mask=mask, prompt=prompt, source=source, opacity=opacity)
    pixels = _placed(_picture(archive, src, label), *offset, document.size)
    return RasterLayer(name=name, pixels=pixels, opacity=opacity, visible=visible)


def _placed(picture: np.ndarray, x: int, y: int, size: tuple[int, int]) -> np.ndarray:
    """The picture at (x, y) on a transparent canvas of the document's size; whatever falls outside is cut."""
    width, height = size
    if (x, y) == (0, 0) and picture.shape[:2] == (height, width):
        return picture
    canvas = np.zeros((height, width, picture.shape[2]), np.uint8)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + picture.shape[1]), min(height, y + picture.shape[0])
    if x0 < x1 and y0 < y1:
        canvas[y0:y1, x0:x1] = picture[y0 - y : y1 - y, x0 - x : x1 - x]
    return canvas


def _opacity(element: ElementTree.Element) -> float:
    try:
        return min(1.0, max(0.0, float(element.get("opacity", "1"))))
    except ValueError:
        return 1.0


def _int(text: str | None) -> int:
    try:
        return int(round(float(text))) if text else 0
    except ValueError:
        return 0


__all__ = ["ATELIER_NS", "DOCUMENT_ENTRY", "MIMETYPE", "ProjectFileError", "load_ora", "save_ora"]
