"""Atelier's document model: layers, masks, objects, drag annotations, references, history. No Qt."""

from desktop_app.document.document import Document, HistoryEntry, to_rgba
from desktop_app.document.events import DocumentEvent, EmitterGroup, EventEmitter
from desktop_app.document.layers import (
    LAYER_TYPES,
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

__all__ = [
    "LAYER_TYPES",
    "MASK_ROLES",
    "ROLE_COLOURS",
    "Document",
    "DocumentEvent",
    "DragLayer",
    "EmitterGroup",
    "EventEmitter",
    "HistoryEntry",
    "Layer",
    "MaskLayer",
    "ObjectLayer",
    "RasterLayer",
    "ReferenceLayer",
    "RegionMove",
    "to_rgba",
]
