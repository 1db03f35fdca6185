"""Opening the user's pictures (files, clipboard, drops) as RGBA uint8, with errors a user can act on.

Everything a method edits starts here, so the rules are strict and the messages name the file: a picture is
refused by its header size *before* it is decoded (a 20000 x 20000 PNG is a few hundred bytes on disk and
1.6 GB in memory), phone photos are turned upright (EXIF orientation), and 16-bit, CMYK, palette and grey
pictures become ordinary 8-bit RGBA. Only well-known raster formats are tried, never Pillow's whole plugin
list (EPS would start Ghostscript).
"""

from __future__ import annotations

import io
import logging
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_SIDE = 16384  # the document's own limit (document.MAX_SIDE)
MAX_PIXELS = 2**28
FORMATS = ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG's opener also returns phones' MPO pictures
FORMAT_NAMES = "PNG, JPEG, WebP, TIFF, BMP or GIF"

# Pillow's own bomb guard is a process-wide setting that would refuse legal 16384 x 16384 pictures; we raise it
# only while opening (under a lock, restored after) and apply our own limit to the header size instead.
_PIL_LIMIT_LOCK = threading.Lock()


class ImageFileError(ValueError):
    """A picture could not be opened; the message names the file and says why in the user's words."""


def load_image(path: str | Path) -> np.ndarray:
    """The picture at `path` as a writable H x W x 4 uint8 array, upright, alpha kept."""
    path = Path(path)
    label = f"'{path}'"
    check_file(path, label)
    try:
        with open(path, "rb") as stream:
            return _decode(stream, label)
    except OSError as error:  # opening failed (permissions, a vanished network drive)
        raise ImageFileError(f"{label} could not be read: {error.strerror or error}") from None


def load_image_bytes(data: bytes, name: str = "the pasted image") -> np.ndarray:
    """Like load_image for bytes from the clipboard or a drag-and-drop; `name` is what messages call it."""
    if not data:
        raise ImageFileError(f"{name} is empty")
    return _decode(io.BytesIO(data), name)


def check_file(path: Path, label: str) -> None:
    """Refuse a missing, folder or empty path with its own message (Pillow would say 'cannot identify')."""
    if not path.exists():
        raise ImageFileError(f"{label} does not exist")
    if path.is_dir():
        raise ImageFileError(f"{label} is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageFileError(f"{label} is empty (0 bytes)")


def load_mask_bytes(data: bytes, name: str = "the mask") -> np.ndarray:
    """A mask picture as H x W uint8 (0 = outside, 255 = inside): its alpha channel if it has one, else grey."""
    if not data:
        raise ImageFileError(f"{name} is empty")
    return _decode(io.BytesIO(data), name, to_mask_array)


def _decode(
    stream: BinaryIO, label: str, convert: Callable[[Image.Image, str], np.ndarray] | None = None
) -> np.ndarray:
    image = _open_checked(stream, label)
    try:
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as error:
            raise ImageFileError(f"{label} is truncated or damaged ({error})") from None
        return (convert or to_rgba_array)(_upright(image, label), label)
    finally:
        image.close()


def _open_checked(stream: BinaryIO, label: str) -> Image.Image:
    """Read only the header and refuse pictures too large to edit, before any pixel is decoded."""
    try:
        image = _open_header(stream)
    except UnidentifiedImageError:
        raise ImageFileError(f"{label} is not an image Atelier can read (it is not {FORMAT_NAMES})") from None
    except Image.DecompressionBombError:
        raise ImageFileError(f"{label} is too large: {_limit_text()}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageFileError(f"{label} is truncated or damaged ({error})") from None
    width, height = image.size
    if width > MAX_SIDE or height > MAX_SIDE or width * height > MAX_PIXELS:
        image.close()
        raise ImageFileError(f"{label} is too large ({width} x {height} pixels): {_limit_text()}")
    if width < 1 or height < 1:
        image.close()
        raise ImageFileError(f"{label} has no pixels ({width} x {height})")
    return image


def _open_header(stream: BinaryIO) -> Image.Image:
    with _PIL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
        try:
            return Image.open(stream, formats=FORMATS)
        finally:
            Image.MAX_IMAGE_PIXELS = previous


def _limit_text() -> str:
    return f"Atelier opens pictures up to {MAX_SIDE} pixels per side and {MAX_PIXELS // 1_000_000} megapixels"


def _upright(image: Image.Image, label: str) -> Image.Image:
    """Apply the EXIF orientation a camera wrote, as every viewer does; a broken EXIF block is ignored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)  # in place: no copy of an upright picture
    except Exception as error:  # malformed EXIF must not make a good picture unreadable
        log.warning("ignoring the EXIF orientation of %s: %s", label, error)
    return image


def to_rgba_array(image: Image.Image, label: str = "the image") -> np.ndarray:
    """Any Pillow mode -> writable RGBA uint8. 16-bit and float data are scaled, not clipped (Pillow clips)."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        grey = _to_8bit(np.asarray(image), image.mode)
        return np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    if image.mode == "CMYK":
        image = image.convert("RGB")
    if image.mode != "RGBA":
        try:
            image = image.convert("RGBA")
        except ValueError as error:
            raise ImageFileError(f"{label} uses colour mode {image.mode}, which Atelier cannot convert") from error
    # np.asarray of a Pillow image is read-only; the document paints into these arrays in place.
    return np.array(image, dtype=np.uint8)


def to_mask_array(image: Image.Image, label: str = "the mask") -> np.ndarray:
    """Any Pillow mode -> writable H x W uint8; an alpha channel wins over the colours (tinted mask layers)."""
    if "A" in image.getbands():
        return np.array(image.getchannel("A"), dtype=np.uint8)
    if image.mode == "P" and "transparency" in image.info:
        return np.array(image.convert("RGBA").getchannel("A"), dtype=np.uint8)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _to_8bit(np.asarray(image), image.mode)
    if image.mode != "L":
        try:
            image = image.convert("L")
        except ValueError as error:
            raise ImageFileError(f"{label} uses colour mode {image.mode}, which Atelier cannot convert") from error
    return np.array(image, dtype=np.uint8)


def _to_8bit(values: np.ndarray, mode: str) -> np.ndarray:
    """16-bit 0..65535 -> 0..255 by /257 (65535 -> 255 exactly); floats in 0..1 by x255."""
    if mode == "F":
        values = np.nan_to_num(values.astype(np.float32))
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return np.clip(values * scale, 0, 255).round().astype(np.uint8)
    values = np.clip(values.astype(np.float32), 0, 65535)
    return (values / 257.0).round().astype(np.uint8)


__all__ = [
    "FORMATS",
    "MAX_PIXELS",
    "MAX_SIDE",
    "ImageFileError",
    "check_file",
    "load_image",
    "load_image_bytes",
    "load_mask_bytes",
    "to_mask_array",
    "to_rgba_array",
]
