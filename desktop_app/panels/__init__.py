"""Dockable panels of the main window: layers and history. Each binds to a Document and the window's QUndoStack."""

from desktop_app.panels.history import HistoryPanel
from desktop_app.panels.layer_list import LayerListModel
from desktop_app.panels.layers import LayersPanel

__all__ = ["HistoryPanel", "LayerListModel", "LayersPanel"]
