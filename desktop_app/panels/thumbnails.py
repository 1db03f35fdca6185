"""Layer thumbnails: numpy arrays -> small square QImages, vectorised so a refresh costs milliseconds.

Downscaling is by area (np.*.reduceat over bin edges), not by sampling: a thin brush stroke in a 1024 px mask must
still show in a 40 px thumbnail, so masks take the maximum of each bin and colours the (alpha-weighted) mean.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QIcon, QImage, QPainter, QPen, QPixmap, QPolygonF

from desktop_app.document.layers import (
    ROLE_COLOURS,
    DragLayer,
    Layer,
    MaskLayer,
    ObjectLayer,
    RasterLayer,
    ReferenceLayer,
)

THUMBNAIL_SIZE = 40
# Reducing a whole 4096 px layer costs 0.2 s (mask) to 1 s (RGBA): too slow for a refresh every 150 ms while
# painting. So a layer is first subsampled by a whole step to at most this many pixels per thumbnail pixel:
# generously for masks (a brush stroke must still show), less for colour, where a sampled mean looks the same.
_MASK_PRESAMPLE, _COLOUR_PRESAMPLE = 32, 8
_GROUND = (44, 44, 48)  # behind masks and drag arrows: dark, so every role colour stands out
_MASK_BACKGROUND = np.array(_GROUND, np.float32)
_CHECKER = (200, 160)  # light / dark squares behind transparent pixels, as paint programs show them
_HANDLE, _TARGET = QColor(230, 50, 50), QColor(60, 120, 255)  # drag points: handle red -> target blue (UX.md)


def _edges(length: int, bins: int) -> np.ndarray:
    return np.arange(bins) * length // bins


def _fit(height: int, width: int, size: int) -> tuple[int, int]:
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _presample(array: np.ndarray, limit: int) -> np.ndarray:
    step = -(-max(array.shape[:2]) // limit)  # ceil; a strided view, so nothing is copied
    return array[::step, ::step] if step > 1 else array


def reduce_max(mask: np.ndarray, size: int) -> np.ndarray:
    """HxW uint8 -> the maximum of each bin, fitted into size x size (aspect kept)."""
    mask = _presample(mask, size * _MASK_PRESAMPLE)
    out_h, out_w = _fit(*mask.shape[:2], size)
    rows = np.maximum.reduceat(mask, _edges(mask.shape[0], out_h), axis=0)
    return np.maximum.reduceat(rows, _edges(mask.shape[1], out_w), axis=1)


def reduce_mean(array: np.ndarray, size: int) -> np.ndarray:
    """HxWxC -> the float32 mean of each bin, fitted into size x size (aspect kept)."""
    array = _presample(array, size * _COLOUR_PRESAMPLE)
    height, width = array.shape[:2]
    out_h, out_w = _fit(height, width, size)
    ys, xs = _edges(height, out_h), _edges(width, out_w)
    sums = np.add.reduceat(np.add.reduceat(array.astype(np.float32), ys, axis=0), xs, axis=1)
    # A bin narrower than one pixel (a layer smaller than the thumbnail) is one repeated pixel, not an empty sum.
    rows, cols = (np.maximum(np.diff(np.append(e, n)), 1) for e, n in ((ys, height), (xs, width)))
    counts = rows[:, None] * cols[None, :]
    return sums / counts[..., None]


def _checker(height: int, width: int, cell: int = 5) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    light = ((yy // cell + xx // cell) % 2 == 0)[..., None]
    return np.where(light, _CHECKER[0], _CHECKER[1]).astype(np.float32)


def rgba_thumbnail(rgba: np.ndarray, size: int = THUMBNAIL_SIZE) -> QImage:
    """RGBA pixels over a checkerboard, so transparent layers are visible as such."""
    rgba = _presample(rgba, size * _COLOUR_PRESAMPLE)  # before the float copy, which is the costly part
    premultiplied = rgba[..., :3].astype(np.float32) * (rgba[..., 3:4] / np.float32(255))
    small = reduce_mean(np.concatenate([premultiplied, rgba[..., 3:4]], axis=2), size)
    alpha = small[..., 3:4] / 255
    flat = small[..., :3] + _checker(*small.shape[:2]) * (1 - alpha)
    return to_square_qimage(flat, size)


def mask_thumbnail(mask: np.ndarray, colour: tuple[int, ...], size: int = THUMBNAIL_SIZE) -> QImage:
    """The mask tinted with its role colour (fully, not the canvas overlay's alpha) on a dark ground."""
    weight = reduce_max(mask, size)[..., None].astype(np.float32) / 255
    tint = np.asarray(colour[:3], np.float32)
    return to_square_qimage(_MASK_BACKGROUND * (1 - weight) + tint * weight, size)


def to_square_qimage(rgb: np.ndarray, size: int) -> QImage:
    """An h x w x 3 float/uint8 array centred in a transparent size x size RGBA QImage that owns its pixels."""
    height, width = rgb.shape[:2]
    canvas = np.zeros((size, size, 4), np.uint8)
    top, left = (size - height) // 2, (size - width) // 2
    canvas[top : top + height, left : left + width, :3] = np.clip(np.rint(rgb), 0, 255)
    canvas[top : top + height, left : left + width, 3] = 255
    return QImage(canvas.data, size, size, 4 * size, QImage.Format.Format_RGBA8888).copy()


def drag_thumbnail(layer: DragLayer, document_size: tuple[int, int], size: int = THUMBNAIL_SIZE) -> QImage:
    """The layer's handle -> target arrows scaled to the thumbnail; one sample arrow while it has no points."""
    image = QImage(size, size, QImage.Format.Format_RGBA8888)
    image.fill(QColor(*_GROUND))
    width, height = document_size
    scale = size / max(width, height, 1)
    offset = QPointF((size - width * scale) / 2, (size - height * scale) / 2)
    pairs = [(QPointF(*h) * scale + offset, QPointF(*t) * scale + offset) for h, t in layer.points]
    if not pairs:
        pairs = [(QPointF(size * 0.22, size * 0.72), QPointF(size * 0.78, size * 0.28))]
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    for handle, target in pairs:
        _arrow(painter, handle, target, max(2.0, size / 12))
    painter.end()
    return image


def _arrow(painter: QPainter, start: QPointF, end: QPointF, radius: float) -> None:
    painter.setPen(QPen(QColor("white"), max(1.5, radius / 2)))
    painter.drawLine(start, end)
    direction = end - start
    length = max((direction.x() ** 2 + direction.y() ** 2) ** 0.5, 1e-6)
    unit = direction / length
    normal = QPointF(-unit.y(), unit.x())
    tip = end - unit * radius  # the head stops at the target dot's edge so the dot stays visible
    head = QPolygonF([tip, tip - unit * radius * 1.6 + normal * radius, tip - unit * radius * 1.6 - normal * radius])
    painter.setBrush(QColor("white"))
    painter.drawPolygon(head)
    painter.setPen(Qt.PenStyle.NoPen)
    for centre, colour in ((start, _HANDLE), (end, _TARGET)):
        painter.setBrush(colour)
        painter.drawEllipse(centre, radius, radius)


def layer_thumbnail(layer: Layer, document_size: tuple[int, int], size: int = THUMBNAIL_SIZE) -> QImage:
    """The thumbnail a layers list shows for any layer kind."""
    if isinstance(layer, RasterLayer):
        return rgba_thumbnail(layer.pixels, size)
    if isinstance(layer, MaskLayer):
        return mask_thumbnail(layer.mask, ROLE_COLOURS[layer.role], size)
    if isinstance(layer, ObjectLayer):
        return mask_thumbnail(layer.mask, ROLE_COLOURS["object"], size)
    if isinstance(layer, DragLayer):
        return drag_thumbnail(layer, document_size, size)
    if isinstance(layer, ReferenceLayer):
        return rgba_thumbnail(layer.image, size)
    empty = QImage(size, size, QImage.Format.Format_RGBA8888)
    empty.fill(Qt.GlobalColor.transparent)
    return empty


def layer_icon(layer: Layer, document_size: tuple[int, int], size: int = THUMBNAIL_SIZE) -> QIcon:
    pixmap = QPixmap.fromImage(layer_thumbnail(layer, document_size, size))
    icon = QIcon(pixmap)
    # Without its own Selected pixmap, Qt tints the thumbnail with the highlight colour: a blue mask would vanish.
    icon.addPixmap(pixmap, QIcon.Mode.Selected)
    return icon
