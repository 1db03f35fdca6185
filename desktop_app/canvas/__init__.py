"""The canvas: a QGraphicsView of a Document (view.py), its scene items (render.py, overlays.py) and the Qt-free
mask tools it drives (tools.py)."""

from desktop_app.canvas.tools import TOOLS, ToolState, UndoRecord
from desktop_app.canvas.view import CanvasView

__all__ = ["TOOLS", "CanvasView", "ToolState", "UndoRecord"]
