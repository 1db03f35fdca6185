"""Dockable panels of the main window: layers, history, method and staging. Layers and history bind to a Document
and the window's QUndoStack; the method and staging panels talk to the window through signals."""

from desktop_app.panels.history import HistoryPanel
from desktop_app.panels.layer_list import LayerListModel
from desktop_app.panels.layers import LayersPanel
from desktop_app.panels.method import MethodPanel
from desktop_app.panels.staging import ImageView, StagingPanel

__all__ = ["HistoryPanel", "ImageView", "LayerListModel", "LayersPanel", "MethodPanel", "StagingPanel"]
