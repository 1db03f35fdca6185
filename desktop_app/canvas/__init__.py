"""The canvas: a QGraphicsView of a Document (view.py), its scene items (render.py, overlays.py), the Qt-free
mask tools it drives (tools.py) and point tools: click-to-segment (segment.py + segment_tool.py), drag points and
region moves (drag.py + point_tools.py), placing a reference image (reference.py + reference_tool.py)."""

from desktop_app.canvas.tools import TOOLS, ToolState, UndoRecord
from desktop_app.canvas.view import CanvasView

__all__ = ["TOOLS", "CanvasView", "ToolState", "UndoRecord"]
