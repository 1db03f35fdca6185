"""Click-to-segment, drag points and region moves: the Qt-free sessions and gestures, then the canvas driven with
synthetic mouse and key events and a fake segmenter (a flood fill of similar colour) that answers at once."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QKeyEvent, QUndoStack
from PySide6.QtTest import QTest
from qt_input import wheel as scroll
from scipy import ndimage

from desktop_app.canvas import CanvasView, drag, tools
from desktop_app.canvas.render import from_qimage
from desktop_app.canvas.segment import SegmentSession, as_mask
from desktop_app.document import Document, DragLayer, MaskLayer, RasterLayer, RegionMove

LEFT, NONE = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
SHIFT, ALT = Qt.KeyboardModifier.ShiftModifier, Qt.KeyboardModifier.AltModifier
RED_SQUARE = np.s_[30:80, 20:70]  # rows, cols of the red square in `picture()`


def picture(width: int = 160, height: int = 120) -> np.ndarray:
    """Light grey, a red square (x 20..70, y 30..80) and a blue disc around (115, 60)."""
    image = np.full((height, width, 3), 225, np.uint8)
    image[RED_SQUARE] = (200, 30, 30)
    yy, xx = np.mgrid[:height, :width]
    image[(yy - 60) ** 2 + (xx - 115) ** 2 < 20**2] = (30, 60, 200)
    return image


def flood_segmenter(image, include, exclude, box):
    """A stand-in for SAM: the connected region of colour similar to the first include point (or the box's
    centre), minus the region under any exclude point."""
    seed = include[0] if include else ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)

    def region(point):
        x, y = int(point[0]), int(point[1])
        similar = np.abs(image.astype(int) - image[y, x].astype(int)).sum(axis=2) < 40
        labels, _ = ndimage.label(similar)
        return labels == labels[y, x]

    inside = region(seed)
    for point in exclude:
        inside &= ~region(point)
    return inside.astype(np.uint8) * 255


@pytest.fixture
def canvas(qtbot):
    def build(document: Document, answer: bool = True) -> CanvasView:
        view = CanvasView(document, undo_stack=QUndoStack())
        qtbot.addWidget(view)
        view.resize(640, 480)
        view.show()
        qtbot.waitExposed(view)
        view.fit()
        view.requests, view.messages = [], []
        view.segment_requested.connect(lambda *request: view.requests.append(request))
        if answer:  # answer synchronously through the async signal/slot pair, as BackendLink will (later)
            view.segment_requested.connect(
                lambda rid, *prompts: view.show_segment_proposal(rid, flood_segmenter(*prompts))
            )
        view.message.connect(view.messages.append)
        return view

    return build


def new_document(with_mask: bool = True) -> Document:
    document = Document.from_image(picture())
    if with_mask:
        document.add_layer(MaskLayer("Object", mask=np.zeros((120, 160), np.uint8), role="object"))
    return document


def at(view: CanvasView, x: float, y: float) -> QPoint:
    return view.mapFromScene(QPointF(x, y))


def click(view: CanvasView, x: float, y: float, modifiers=NONE) -> None:
    QTest.mouseClick(view.viewport(), LEFT, modifiers, at(view, x, y))


def drag_mouse(view: CanvasView, points: list[tuple[float, float]], modifiers=NONE) -> None:
    viewport = view.viewport()
    QTest.mousePress(viewport, LEFT, modifiers, at(view, *points[0]))
    for point in points[1:]:
        QTest.mouseMove(viewport, at(view, *point))
    QTest.mouseRelease(viewport, LEFT, modifiers, at(view, *points[-1]))


def wheel(view: CanvasView, x: float, y: float, notches: float) -> None:
    scroll(view, at(view, x, y), notches)


def approx_point(x: float, y: float, tolerance: float = 0.5):
    return pytest.approx((x, y), abs=tolerance)


# --- SegmentSession, no Qt --------------------------------------------------------------------------------------


def test_a_session_numbers_its_requests_and_drops_stale_answers():
    session = SegmentSession((64, 48))
    first = session.add_point((10, 10))
    second = session.add_point((30, 20), include=False)
    assert second.request_id > first.request_id and session.request_id == second.request_id
    assert second.include == [(10.0, 10.0)] and second.exclude == [(30.0, 20.0)]
    assert session.labels == [1, 0]
    mask = np.zeros((48, 64), bool)
    assert not session.accept(first.request_id, mask)  # stale: the user clicked again since
    assert session.proposal is None
    assert session.accept(second.request_id, mask) and session.is_current()
    assert session.add_point((64, 10)) is None and len(session.points) == 2  # outside the image
    box = session.set_box((50, 40), (-5, 60))
    assert box.box == (0.0, 40.0, 50.0, 48.0)  # sorted and clipped
    assert not session.is_current()  # the proposal answers older prompts
    session.clear()
    assert session.is_empty() and session.proposal is None
    assert not session.accept(box.request_id, mask)


def test_remove_last_takes_back_points_then_the_box():
    session = SegmentSession((64, 48))
    session.set_box((1, 1), (20, 20))
    session.add_point((5, 5))
    assert session.remove_last().include == [] and session.box is not None
    assert session.remove_last() is None and session.is_empty()
    assert session.remove_last() is None


def test_applying_a_proposal_is_a_union_with_one_undo_record():
    document = Document.from_image(np.zeros((48, 64, 3), np.uint8))
    layer = document.add_layer(MaskLayer("Mask", mask=np.zeros((48, 64), np.uint8)))
    layer.mask[0:5, 0:5] = 255
    before = layer.mask.copy()
    session = SegmentSession((64, 48))
    request = session.add_point((20, 20))
    proposal = np.zeros((48, 64), np.uint8)
    proposal[10:30, 10:40] = 255
    session.accept(request.request_id, proposal)
    record = session.apply(document, layer.id)
    assert record.text == "Add segment" and record.origin == (10, 10) and record.before.shape == (20, 30)
    assert (layer.mask[10:30, 10:40] == 255).all() and (layer.mask[0:5, 0:5] == 255).all()
    assert session.is_empty()  # ready for the next object
    document.write_patch(record.layer_id, *record.origin, record.before)
    np.testing.assert_array_equal(layer.mask, before)
    layer.mask[:] = 255
    session.accept(session.add_point((20, 20)).request_id, proposal)
    session.apply(document, layer.id, subtract=True)
    assert layer.mask[20, 20] == 0 and layer.mask[0, 0] == 255


def test_segmenter_answers_of_every_common_kind_become_uint8_masks():
    assert as_mask(np.ones((2, 3), bool), (3, 2)).max() == 255
    assert as_mask(np.full((2, 3), 0.5, np.float32), (3, 2))[0, 0] == 128
    assert as_mask(np.ones((2, 3, 1), np.int64), (3, 2)).max() == 255  # 0/1 labels
    assert as_mask(np.full((2, 3), 200, np.uint8), (3, 2))[0, 0] == 200
    with pytest.raises(ValueError, match="2x3"):
        as_mask(np.zeros((3, 3), np.uint8), (3, 2))


# --- drag gestures, no Qt ---------------------------------------------------------------------------------------


def test_clicks_alternate_handle_then_target():
    edit = tools.play(drag.point_gesture([], None, (64, 48), 3.0), [(10, 10), (30, 30)])  # moves do not count
    assert edit.pairs is None and edit.pending == (10, 10)
    edit = tools.play(drag.point_gesture([], edit.pending, (64, 48), 3.0), [(40, 20)])
    assert edit.pairs == [((10, 10), (40, 20))] and edit.pending is None and edit.text == "Add drag point"
    refused = tools.play(drag.point_gesture(edit.pairs, None, (64, 48), 3.0), [(70, 20)])
    assert refused.pairs is None and refused.pending is None and "inside the image" in refused.refused


def test_pressing_on_a_point_drags_it_and_it_stays_inside_the_image():
    pairs = [((10.0, 10.0), (40.0, 20.0))]
    gesture = drag.point_gesture(pairs, None, (64, 48), 3.0)
    assert gesture.send((41.0, 21.0)) == pairs  # grabbed the target, 1.4 px away
    assert gesture.send((51.0, 31.0)) == [((10.0, 10.0), (50.0, 30.0))]  # no jump to the pointer
    gesture.send((200.0, -50.0))
    edit = tools.finish(gesture)
    ((handle, (tx, ty)),) = edit.pairs
    assert handle == (10.0, 10.0) and 63.9 < tx < 64 and ty == 0.0 and edit.text == "Move drag point"


def test_region_gesture_moves_inside_the_box_and_scales_from_a_corner():
    box = (10.0, 10.0, 30.0, 20.0)  # centre (20, 15)
    move = tools.play(drag.region_gesture(RegionMove("m"), box, (64, 48), 2.0), [(15, 15), (25, 20)])
    assert move == RegionMove("m", dx=10.0, dy=5.0, scale=1.0)
    assert drag.moved_box(box, move) == (20.0, 15.0, 40.0, 25.0)
    # The moved box's corner (40, 25) is 11.18 px from the moved centre (30, 20): drag it twice as far.
    scaled = tools.play(drag.region_gesture(move, box, (64, 48), 2.0), [(40, 25), (50, 30)])
    assert scaled.scale == pytest.approx(2.0) and (scaled.dx, scaled.dy) == (10.0, 5.0)
    assert drag.moved_box(box, scaled) == (10.0, 10.0, 50.0, 30.0)
    outside = drag.region_gesture(move, box, (64, 48), 2.0)
    assert outside.send((60, 40)) is None and tools.finish(outside) is None
    regions = drag.with_region([RegionMove("a"), RegionMove("m")], scaled)
    assert [r.mask_layer_id for r in regions] == ["a", "m"] and regions[1] == scaled


# --- segment tool on the canvas ---------------------------------------------------------------------------------


def test_clicking_the_red_square_asks_the_segmenter_and_shows_its_proposal(canvas):
    view = canvas(new_document())
    QTest.keyClick(view, Qt.Key.Key_S)
    assert view.tool_state.tool == "segment"
    click(view, 40, 50)
    ((request_id, image, include, exclude, box),) = view.requests
    assert image.shape == (120, 160, 3) and tuple(image[50, 40]) == (200, 30, 30)
    assert include == [approx_point(40, 50)] and exclude == [] and box is None
    proposal = view.segment_session.proposal
    assert proposal is not None and (proposal[RED_SQUARE] == 255).all() and proposal.sum() == 255 * 50 * 50
    outline = view.segment_tool.outline
    assert outline.isVisible() and outline.path().boundingRect().getCoords() == (20, 30, 70, 80)
    assert view.segment_tool.tint.isVisible() and view.segment_tool.prompts.isVisible()
    assert view.document.active_layer.mask.max() == 0  # a proposal, not yet in the document
    assert view.undo_stack.count() == 0


def test_shift_click_excludes_and_a_drag_makes_a_box(canvas):
    view = canvas(new_document())
    view.set_tool("segment")
    click(view, 40, 50)
    click(view, 115, 60, SHIFT)
    assert view.requests[-1][3] == [approx_point(115, 60)] and view.segment_session.labels == [1, 0]
    drag_mouse(view, [(100, 35), (120, 60), (140, 85)])
    _, _, include, exclude, box = view.requests[-1]
    assert box == pytest.approx((100, 35, 140, 85), abs=0.5) and len(include) == 1 and len(exclude) == 1
    assert len(view.requests) == 3


def test_enter_adds_the_proposal_to_the_active_mask_as_one_undo_step(canvas):
    document = new_document()
    mask = document.active_layer.mask
    view = canvas(document)
    view.set_tool("segment")
    click(view, 40, 50)
    QTest.keyClick(view, Qt.Key.Key_Return)
    assert (mask[RED_SQUARE] == 255).all() and mask.sum() == 255 * 50 * 50
    assert view.undo_stack.count() == 1 and view.undo_stack.text(0) == "Add segment"
    assert view.segment_session.is_empty() and not view.segment_tool.outline.isVisible()
    view.undo_stack.undo()
    assert mask.max() == 0
    view.undo_stack.redo()
    assert (mask[RED_SQUARE] == 255).all()
    # Alt+Enter cuts the next proposal out of the mask.
    click(view, 40, 50)
    QTest.keyClick(view, Qt.Key.Key_Return, ALT)
    assert mask.max() == 0 and view.undo_stack.count() == 2


def test_enter_on_the_picture_adds_an_object_mask_in_the_same_step(canvas):
    document = new_document(with_mask=False)
    view = canvas(document)
    view.set_tool("segment")
    click(view, 115, 60)
    QTest.keyClick(view, Qt.Key.Key_Enter)
    (layer,) = document.layers_of(MaskLayer)
    assert layer.role == "object" and layer.mask[60, 115] == 255 and layer.mask[50, 40] == 0
    assert view.undo_stack.count() == 1
    view.undo_stack.undo()
    assert document.layers_of(MaskLayer) == [] and isinstance(document.active_layer, RasterLayer)


def test_escape_and_backspace_take_prompts_back(canvas):
    view = canvas(new_document())
    view.set_tool("segment")
    click(view, 40, 50)
    click(view, 115, 60, SHIFT)
    QTest.keyClick(view, Qt.Key.Key_Backspace)
    assert view.segment_session.labels == [1] and view.requests[-1][3] == []
    QTest.keyClick(view, Qt.Key.Key_Escape)
    assert view.segment_session.is_empty() and view.segment_session.proposal is None
    assert not view.segment_tool.prompts.isVisible() and not view.segment_tool.outline.isVisible()
    QTest.keyClick(view, Qt.Key.Key_Return)
    assert view.undo_stack.count() == 0 and "first" in view.messages[-1]


def test_escape_is_the_canvas_s_while_it_holds_prompts(canvas):
    view = canvas(new_document())
    view.set_tool("segment")
    override = QKeyEvent(QEvent.Type.ShortcutOverride, Qt.Key.Key_Escape, NONE)
    view.event(override)
    assert not override.isAccepted()  # nothing to cancel: Esc may cancel the running job
    click(view, 40, 50)
    override = QKeyEvent(QEvent.Type.ShortcutOverride, Qt.Key.Key_Escape, NONE)
    view.event(override)
    assert override.isAccepted()


def test_stale_proposals_are_ignored(canvas):
    view = canvas(new_document(), answer=False)
    view.set_tool("segment")
    click(view, 40, 50)
    click(view, 115, 60)  # a second click before the first answer came back
    (first, *prompts_1), (second, *prompts_2) = view.requests
    assert not view.show_segment_proposal(first, flood_segmenter(*prompts_1))
    assert view.segment_session.proposal is None and not view.segment_tool.outline.isVisible()
    QTest.keyClick(view, Qt.Key.Key_Return)
    assert view.undo_stack.count() == 0 and "Still segmenting" in view.messages[-1]
    assert view.show_segment_proposal(second, flood_segmenter(*prompts_2))
    assert view.segment_tool.outline.isVisible()
    QTest.keyClick(view, Qt.Key.Key_Escape)
    assert not view.show_segment_proposal(second, flood_segmenter(*prompts_2))  # the prompts are gone


def test_an_in_process_segmenter_answers_at_once(canvas):
    view = canvas(new_document(), answer=False)
    view.set_segmenter(flood_segmenter)
    view.set_tool("segment")
    click(view, 40, 50)
    assert view.segment_session.is_current() and len(view.requests) == 1
    view.set_segmenter(lambda *prompts: (_ for _ in ()).throw(RuntimeError("no SAM checkpoint")))
    click(view, 45, 55)
    assert "no SAM checkpoint" in view.messages[-1]


def test_the_segmenter_sees_the_current_picture(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("segment")
    click(view, 40, 50)
    raster = document.layers_of(RasterLayer)[0]
    document.write_patch(raster.id, 0, 0, np.full((10, 10, 4), 255, np.uint8))
    click(view, 5, 5)
    assert tuple(view.requests[-1][1][5, 5]) == (255, 255, 255)


# --- drag points on the canvas ----------------------------------------------------------------------------------


def test_two_clicks_make_a_pair_on_a_new_drag_layer_in_one_undo_step(canvas):
    document = new_document()
    view = canvas(document)
    QTest.keyClick(view, Qt.Key.Key_D)
    click(view, 30, 40)
    assert view.drag_tool.pending == approx_point(30, 40) and view.drag_tool.pending_item.isVisible()
    assert document.layers_of(DragLayer) == [] and view.undo_stack.count() == 0
    click(view, 60, 70)
    (layer,) = document.layers_of(DragLayer)
    assert layer.name == "Drag points" and document.active_id == layer.id
    ((handle, target),) = layer.points
    assert handle == approx_point(30, 40) and target == approx_point(60, 70)
    assert view.drag_tool.pending is None and not view.drag_tool.pending_item.isVisible()
    assert view.undo_stack.count() == 1
    click(view, 110, 55)
    click(view, 140, 90)
    assert len(layer.points) == 2 and view.undo_stack.count() == 2
    assert view.layer_item(layer.id) is None and view.scene().items()  # drawn by its DragOverlay
    view.undo_stack.undo()  # just the second pair
    assert len(layer.points) == 1 and document.layers_of(DragLayer) == [layer]
    view.undo_stack.undo()  # the first gesture: the layer and its pair
    assert document.layers_of(DragLayer) == [] and isinstance(document.active_layer, MaskLayer)


def test_backspace_takes_back_the_pending_handle_then_the_last_pair(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("drag")
    for point in [(30, 40), (60, 70), (110, 55), (140, 90), (20, 100)]:
        click(view, *point)
    layer = document.layers_of(DragLayer)[0]
    assert view.drag_tool.pending is not None and len(layer.points) == 2
    QTest.keyClick(view, Qt.Key.Key_Backspace)
    assert view.drag_tool.pending is None and len(layer.points) == 2
    QTest.keyClick(view, Qt.Key.Key_Backspace)
    assert len(layer.points) == 1 and view.undo_stack.text(view.undo_stack.count() - 1) == "Remove drag point"
    view.undo_stack.undo()  # through the undo stack: the pair comes back
    assert len(layer.points) == 2


def test_dragging_a_point_moves_it_in_one_undo_step(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("drag")
    click(view, 30, 40)
    click(view, 60, 70)
    layer = document.layers_of(DragLayer)[0]
    drag_mouse(view, [(60, 70), (80, 75), (100, 80)])
    ((handle, target),) = layer.points
    assert handle == approx_point(30, 40) and target == approx_point(100, 80, 0.6)
    assert view.undo_stack.count() == 2 and view.drag_tool.pending is None
    view.undo_stack.undo()
    assert layer.points[0][1] == approx_point(60, 70)
    drag_mouse(view, [(30, 40), (-50, 200)])  # dragged off the picture: it stops at the edge
    (hx, hy), _ = layer.points[0]
    assert hx == 0.0 and 119.9 < hy < 120


def test_escape_while_dragging_a_point_puts_it_back(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("drag")
    click(view, 30, 40)
    click(view, 60, 70)
    layer = document.layers_of(DragLayer)[0]
    viewport = view.viewport()
    QTest.mousePress(viewport, LEFT, NONE, at(view, 60, 70))
    QTest.mouseMove(viewport, at(view, 100, 100))
    assert view.scene().item_for(layer.id).points()[0][1] == approx_point(100, 100, 0.6)  # the live preview
    QTest.keyClick(view, Qt.Key.Key_Escape)
    QTest.mouseRelease(viewport, LEFT, NONE, at(view, 100, 100))
    assert layer.points[0][1] == approx_point(60, 70) and view.undo_stack.count() == 1
    assert view.scene().item_for(layer.id).points() == layer.points


def test_clear_drag_points_empties_the_layer(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("drag")
    for point in [(30, 40), (60, 70), (110, 55), (140, 90), (20, 100)]:
        click(view, *point)
    assert view.clear_drag_points()
    assert document.layers_of(DragLayer)[0].points == [] and view.drag_tool.pending is None
    view.undo_stack.undo()
    assert len(document.layers_of(DragLayer)[0].points) == 2


def test_clicks_outside_the_image_place_no_point(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("drag")
    click(view, -5, 40)
    click(view, 30, 125)
    assert view.drag_tool.pending is None and document.layers_of(DragLayer) == []
    assert "inside the image" in view.messages[-1]
    click(view, 30, 40)
    click(view, 170, 40)
    assert view.drag_tool.pending == approx_point(30, 40) and document.layers_of(DragLayer) == []


def test_switching_tools_drops_a_pending_handle_but_keeps_the_pairs(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("drag")
    for point in [(30, 40), (60, 70), (110, 55)]:
        click(view, *point)
    QTest.keyClick(view, Qt.Key.Key_B)
    assert view.drag_tool.pending is None and len(document.layers_of(DragLayer)[0].points) == 1


# --- region move on the canvas ----------------------------------------------------------------------------------


def test_dragging_a_region_stores_its_move_and_keeps_the_mask_selected(canvas):
    document = new_document()
    mask_layer = document.active_layer
    mask_layer.mask[RED_SQUARE] = 255  # box (20, 30)-(70, 80), centre (45, 55)
    view = canvas(document)
    QTest.keyClick(view, Qt.Key.Key_M)
    assert view.tool_state.tool == "move"
    (shape,) = view.scene().regions.shapes()  # the active region, with its handles, before any move
    assert shape.box == (20, 30, 70, 80)
    drag_mouse(view, [(45, 55), (60, 60), (75, 75)])
    (layer,) = document.layers_of(DragLayer)
    (move,) = layer.regions
    assert move.mask_layer_id == mask_layer.id and (move.dx, move.dy) == pytest.approx((30, 20), abs=0.5)
    assert move.scale == 1.0 and document.active_id == mask_layer.id
    assert view.undo_stack.count() == 1
    (shape,) = view.scene().regions.shapes()
    assert shape.transform().map(QPointF(45, 55)).toTuple() == pytest.approx((75, 75), abs=0.5)
    # The moved box is (50, 50)-(100, 100): its corner is 35.4 px from the moved centre (75, 75).
    drag_mouse(view, [(100, 100), (110, 110)])
    assert layer.regions[0].scale == pytest.approx(49.5 / 35.36, abs=0.03)
    assert (layer.regions[0].dx, layer.regions[0].dy) == (move.dx, move.dy)
    assert view.undo_stack.count() == 2 and view.undo_stack.text(1) == "Scale region"
    view.undo_stack.undo()
    view.undo_stack.undo()
    assert document.layers_of(DragLayer) == []


def test_escape_while_moving_a_region_leaves_it_where_it_was(canvas):
    document = new_document()
    document.active_layer.mask[RED_SQUARE] = 255
    view = canvas(document)
    view.set_tool("move")
    viewport = view.viewport()
    QTest.mousePress(viewport, LEFT, NONE, at(view, 45, 55))
    QTest.mouseMove(viewport, at(view, 75, 75))
    (shape,) = view.scene().regions.shapes()
    assert (shape.move.dx, shape.move.dy) == pytest.approx((30, 20), abs=0.5)  # the live preview
    QTest.keyClick(view, Qt.Key.Key_Escape)
    QTest.mouseRelease(viewport, LEFT, NONE, at(view, 75, 75))
    (shape,) = view.scene().regions.shapes()
    assert shape.move == RegionMove(document.active_id)
    assert document.layers_of(DragLayer) == [] and view.undo_stack.count() == 0
    view.set_tool("brush")
    assert view.scene().regions.shapes() == []  # no stored move, no handles outside the move tool


def test_the_wheel_over_a_region_scales_it_in_one_step_and_elsewhere_zooms(canvas):
    document = new_document()
    document.active_layer.mask[RED_SQUARE] = 255
    document.add_layer(DragLayer("Drag points"))
    document.set_active(document.layers_of(MaskLayer)[0].id)
    view = canvas(document)
    view.set_tool("move")
    zoom = view.zoom()
    for _ in range(3):
        wheel(view, 45, 55, 1)
    (move,) = document.layers_of(DragLayer)[0].regions
    assert move.scale == pytest.approx(1.1**3) and view.zoom() == zoom
    assert view.undo_stack.count() == 1  # the notches merged
    wheel(view, 140, 100, 1)
    assert view.zoom() > zoom


def test_moving_a_region_needs_a_mask_with_something_in_it(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("move")
    drag_mouse(view, [(45, 55), (75, 75)])
    assert "empty" in view.messages[-1]
    document.set_active(document.layers_of(RasterLayer)[0].id)
    drag_mouse(view, [(45, 55), (75, 75)])
    assert "Select the mask layer" in view.messages[-1]
    assert document.layers_of(DragLayer) == [] and view.undo_stack.count() == 0


# --- on screen --------------------------------------------------------------------------------------------------


def test_points_and_the_proposal_are_visible_on_screen(canvas):
    document = new_document()
    view = canvas(document)
    view.set_tool("drag")
    for point in [(100, 20), (140, 20), (30, 100)]:
        click(view, *point)
    view.set_tool("segment")
    click(view, 40, 50)
    shown = from_qimage(view.grab().toImage()).astype(int)

    def colour(x, y, dx=0, dy=0):  # dx, dy: device pixels
        p = at(view, x, y)
        return shown[p.y() + dy, p.x() + dx, :3]

    red, green, blue = colour(100, 20)
    assert red > 180 and green < 100 and blue < 100  # the handle
    red, green, blue = colour(140, 20)
    assert blue > 180 and red < 100  # the target
    assert colour(120, 20).min() > 200  # the white arrow between them
    red, green, blue = colour(40, 50, 3, 3)  # beside the white + of the include dot
    assert green > 130 and red < 100  # the green include dot over the red square
    edge = [colour(20, y).min() for y in range(35, 75)] + [colour(20, y).max() for y in range(35, 75)]
    assert min(edge) < 60 and max(edge) > 240  # the dashed outline: dark and white along the square's edge


def test_a_moved_region_becomes_the_move_of_a_dragon_request(canvas):
    """The Move Region gesture is what DragonDiffusion's move receives: the vector, the scale and the moved mask as
    its object (whatever role the mask layer has); with no move, or two, the user is told what to do."""
    from backend.methods.registry import get_method
    from desktop_app.edit_request import MethodInputs, MissingInput, build_request

    move_method = get_method("dragon-move").info
    document = new_document()
    mask_layer = document.active_layer
    mask_layer.role = "edit"  # not the method's "object" role: the moved region is the object all the same
    mask_layer.mask[RED_SQUARE] = 255
    with pytest.raises(MissingInput, match="Move Region tool"):
        build_request(document, move_method, MethodInputs(), "toyworld")
    view = canvas(document)
    QTest.keyClick(view, Qt.Key.Key_M)
    drag_mouse(view, [(45, 55), (60, 60), (75, 75)])
    request = build_request(document, move_method, MethodInputs(), "toyworld")
    assert request.move == pytest.approx((30, 20, 1.0), abs=0.5)
    np.testing.assert_array_equal(request.masks["object"], mask_layer.mask)
    assert set(request.masks) == {"object"}
    second = MaskLayer("Other", mask=np.zeros((120, 160), np.uint8), role="object")
    second.mask[5:15, 5:15] = 255
    document.add_layer(second)
    drag_mouse(view, [(10, 10), (30, 30)])
    with pytest.raises(MissingInput, match="one region at a time"):
        build_request(document, move_method, MethodInputs(), "toyworld")
