"""The mask tools without any widget: generators driven with fake positions, as napari tests its brushes."""

from __future__ import annotations

import numpy as np
import pytest

from desktop_app.canvas import tools
from desktop_app.canvas.tools import MAX_SIZE, MIN_SIZE, ToolState
from desktop_app.document import Document, MaskLayer, RasterLayer


def mask_document(size: int = 64) -> tuple[Document, MaskLayer]:
    document = Document.from_image(np.full((size, size, 3), 128, np.uint8))
    layer = MaskLayer("Edit mask", mask=np.zeros((size, size), np.uint8))
    document.add_layer(layer)
    return document, layer


def apply(document: Document, record: tools.UndoRecord, which: str) -> None:
    document.write_patch(record.layer_id, *record.origin, getattr(record, which))


def test_a_stroke_paints_a_continuous_band_and_nothing_far_away():
    document, layer = mask_document()
    gesture = tools.stroke(document, layer.id, size=8, hardness=0.8)
    # One jump of 40 px in a single move: a naive stamp-per-event brush would leave a gap here.
    record = tools.play(gesture, [(10, 10), (50, 10)])
    assert record is not None
    assert (layer.mask[10, 10:51] > 0).all() and (layer.mask[9, 10:51] > 0).all()
    assert layer.mask[40:, :].max() == 0 and layer.mask[:, 58:].max() == 0


def test_a_soft_brush_has_a_full_centre_and_a_graded_edge():
    document, layer = mask_document()
    tools.play(tools.stroke(document, layer.id, size=20, hardness=0.3), [(32.5, 32.5)])
    column = layer.mask[32:, 32]  # from the centre outwards
    assert column[0] == 255
    assert 0 < column[8] < 255
    assert (np.diff(column.astype(int)) <= 0).all()  # falls off monotonically
    assert column[12] == 0


def test_a_hard_brush_is_opaque_out_to_its_radius():
    document, layer = mask_document()
    tools.play(tools.stroke(document, layer.id, size=20, hardness=1.0), [(32.5, 32.5)])
    assert (layer.mask[32, 24:41] == 255).all()
    assert layer.mask[32, 44] == 0


def test_a_one_pixel_brush_paints_one_pixel():
    document, layer = mask_document()
    tools.play(tools.stroke(document, layer.id, size=1, hardness=1.0), [(5.5, 7.5)])
    assert layer.mask[7, 5] == 255 and layer.mask.sum() == 255


def test_going_over_the_same_place_in_one_stroke_does_not_harden_the_edge():
    document, layer = mask_document()
    tools.play(tools.stroke(document, layer.id, size=20, hardness=0.3), [(32.5, 32.5)])
    once = layer.mask.copy()
    layer.mask[:] = 0
    tools.play(tools.stroke(document, layer.id, size=20, hardness=0.3), [(32.5, 32.5), (33.5, 32.5), (32.5, 32.5)])
    assert layer.mask[32, 32 - 8] == once[32, 32 - 8]


def test_the_eraser_removes_paint():
    document, layer = mask_document()
    layer.mask[:] = 255
    tools.play(tools.stroke(document, layer.id, size=10, hardness=1.0, erase=True), [(10, 32), (54, 32)])
    assert (layer.mask[32, 10:55] == 0).all()
    assert (layer.mask[0:20] == 255).all()


def test_one_stroke_is_one_record_that_restores_the_mask_exactly():
    document, layer = mask_document()
    layer.mask[20:30, 20:30] = 100  # something already there, partly under the stroke
    original = layer.mask.copy()
    points = [(5, 5), (20, 25), (40, 22), (60, 50), (30, 60)]
    record = tools.play(tools.stroke(document, layer.id, size=12, hardness=0.5), points)
    painted = layer.mask.copy()
    assert isinstance(record, tools.UndoRecord) and record.text == "Brush stroke"
    apply(document, record, "before")
    np.testing.assert_array_equal(layer.mask, original)
    apply(document, record, "after")
    np.testing.assert_array_equal(layer.mask, painted)


def test_a_stroke_that_changes_nothing_gives_no_record():
    document, layer = mask_document()
    assert tools.play(tools.stroke(document, layer.id, size=8, hardness=1.0, erase=True), [(10, 10), (30, 10)]) is None
    assert tools.play(tools.stroke(document, layer.id, size=8, hardness=1.0), [(-50, -50), (-40, -50)]) is None


def test_rectangle_fills_and_alt_subtracts():
    document, layer = mask_document()
    gesture = tools.rectangle(document, layer.id)
    assert gesture.send((10.0, 12.0)) is not None  # the outline to preview
    outline = gesture.send((30.0, 40.0))
    assert outline[2] == (30.0, 40.0)
    record = tools.finish(gesture)
    assert (layer.mask[12:40, 10:30] == 255).all() and layer.mask.sum() == 255 * 28 * 20
    tools.play(tools.rectangle(document, layer.id, subtract=True), [(15, 15), (20, 20)])
    assert (layer.mask[15:20, 15:20] == 0).all() and layer.mask[12, 10] == 255
    apply(document, record, "before")
    assert layer.mask[12:40, 10:30].max() == 0


def test_lasso_fills_the_inside_of_a_triangle():
    document, layer = mask_document()
    record = tools.play(tools.lasso(document, layer.id), [(10, 10), (50, 10), (10, 50)])
    assert record is not None and record.text == "Lasso"
    assert layer.mask[15, 15] == 255 and layer.mask[20, 25] == 255
    assert layer.mask[45, 45] == 0 and layer.mask[5, 5] == 0
    tools.play(tools.lasso(document, layer.id, subtract=True), [(0, 0), (64, 0), (0, 64)])
    assert layer.mask.max() == 0


def test_flood_fill_fills_the_inside_of_an_outline():
    document, layer = mask_document()
    layer.mask[10, 10:30] = layer.mask[29, 10:30] = 255
    layer.mask[10:30, 10] = layer.mask[10:30, 29] = 255
    record = tools.play(tools.fill(document, layer.id), [(20, 20)])
    assert record is not None
    assert (layer.mask[10:30, 10:30] == 255).all() and layer.mask[5, 5] == 0


def test_invert_fill_and_clear_are_one_record_each():
    document, layer = mask_document()
    layer.mask[0:8, 0:8] = 255
    record = tools.invert_mask(document, layer.id)
    assert layer.mask[0, 0] == 0 and layer.mask[30, 30] == 255
    apply(document, record, "before")
    assert layer.mask[0, 0] == 255 and layer.mask[30, 30] == 0
    record = tools.clear_mask(document, layer.id)
    assert layer.mask.max() == 0 and record.before.shape == (8, 8)  # only the changed box is kept for undo
    assert tools.clear_mask(document, layer.id) is None
    tools.fill_mask(document, layer.id)
    assert layer.mask.min() == 255


def test_tools_refuse_layers_without_a_mask():
    document, _ = mask_document()
    raster = document.layers_of(RasterLayer)[0]
    with pytest.raises(ValueError, match="mask layers only"):
        tools.stroke(document, raster.id, size=8, hardness=1.0)
    document.set_active(raster.id)
    assert tools.paintable_layer(document) is None


def test_brush_size_steps_by_a_quarter_within_bounds():
    state = ToolState(size=40)
    assert state.grow() == 50 and state.shrink() == 40
    state.size = MIN_SIZE
    assert state.shrink() == MIN_SIZE and state.grow() == 2
    state.size = MAX_SIZE - 10
    assert state.grow() == MAX_SIZE and state.grow() == MAX_SIZE
    with pytest.raises(ValueError):
        state.size = 0
    with pytest.raises(ValueError):
        state.hardness = 1.5
    with pytest.raises(ValueError):
        state.tool = "spray"


def test_tool_state_emits_one_event_per_attribute():
    state, seen = ToolState(), []
    state.events.tool.connect(lambda event: seen.append(("tool", event.value)))
    state.events.size.connect(lambda event: seen.append(("size", event.value)))
    state.tool = "eraser"
    state.grow()
    state.tool = "eraser"  # no change, no event
    assert seen == [("tool", "eraser"), ("size", 50)]
