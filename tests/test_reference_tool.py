"""The reference tool: Layer ▸ Add Reference Image…, the Reference side view where the reference's own mask is
painted, placing it on the canvas with the Move tool, pasting it onto the picture, and what a run sends. The window
runs on the fake backend of tests/fake_backend.py; the mouse is synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_backend import FakeClient, open_window, recorded_stream
from PIL import Image
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest
from qt_input import wheel

from backend.protocol import MethodInfo
from desktop_app.canvas import reference
from desktop_app.canvas.tools import play
from desktop_app.document import RasterLayer, ReferenceLayer
from desktop_app.edit_request import MethodInputs, MissingInput, build_request

LEFT, NONE, ALT = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, Qt.KeyboardModifier.AltModifier
W, H = 64, 48
PASTE = MethodInfo(
    id="paste-reference",
    title="Paste reference",
    description="Blend the reference's masked part into the picture.",
    families=("sd1",),
    inputs=("image", "reference"),
    params=(),
)


@pytest.fixture(autouse=True)
def _own_folders(own_folders):
    """Autosaves and settings of this test only (conftest.own_folders)."""


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient([PASTE], script=lambda request: recorded_stream(request, {"method_title": PASTE.title}))


@pytest.fixture
def window(qtbot, fake, tmp_path):
    picture = np.full((H, W, 3), 220, np.uint8)
    path = tmp_path / "scene.png"
    Image.fromarray(picture).save(path)
    window = open_window(qtbot, fake)
    assert window.files.open(path)
    yield window
    window.link.shutdown()


def swatch(width: int = 24, height: int = 16) -> np.ndarray:
    """An opaque reference whose every pixel differs from its neighbours, so a shifted paste cannot pass."""
    yy, xx = np.mgrid[:height, :width]
    rgb = np.stack([xx * 10 % 256, yy * 15 % 256, (xx + yy) * 7 % 256], axis=2).astype(np.uint8)
    return np.dstack([rgb, np.full((height, width), 255, np.uint8)])


def add_swatch(window) -> ReferenceLayer:
    """A 24x16 reference: fitted at scale 1 and centred in the 64x48 picture, at (20, 16)."""
    layer = window.reference_panel.add_reference_image(swatch(), "Swatch")
    assert (layer.x, layer.y, layer.scale) == (20.0, 16.0, 1.0)
    return layer


def drag(widget_view, points, modifiers=NONE, release=True) -> None:
    """Press, move and release at scene points of a QGraphicsView (canvas or side view)."""
    viewport = widget_view.viewport()

    def at(x: float, y: float) -> QPoint:
        return widget_view.mapFromScene(QPointF(x, y))

    QTest.mousePress(viewport, LEFT, modifiers, at(*points[0]))
    for point in points[1:]:
        QTest.mouseMove(viewport, at(*point))
    if release:
        QTest.mouseRelease(viewport, LEFT, modifiers, at(*points[-1]))


def side_view(qtbot, window):
    view = window.reference_panel.view
    qtbot.waitUntil(view.isVisible)  # adding a reference brings the Reference dock to the front
    view.fit()
    return view


def distance_to_segment(shape, start, end) -> np.ndarray:
    """Distance from each pixel centre to the segment start-end."""
    yy, xx = np.mgrid[: shape[0], : shape[1]] + 0.5
    (ax, ay), (bx, by) = start, end
    t = np.clip(((xx - ax) * (bx - ax) + (yy - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2), 0, 1)
    return np.hypot(xx - ax - t * (bx - ax), yy - ay - t * (by - ay))


# --- adding a reference ---------------------------------------------------------------------------------------


def test_layer_menu_adds_a_reference_fitted_and_centred_and_ctrl_z_removes_it(qtbot, window, tmp_path):
    logo = np.zeros((40, 100, 3), np.uint8)
    logo[:, :50] = (250, 200, 0)
    path = tmp_path / "logo.png"
    Image.fromarray(logo).save(path)
    window.reference_panel.ask_open_path = lambda _title, _filter: str(path)
    menu_actions = [action for menu in window.menuBar().actions() if menu.menu() for action in menu.menu().actions()]
    (add,) = [action for action in menu_actions if action.text() == "Add &Reference Image…"]
    add.trigger()
    layer = window.document.layers[-1]
    assert isinstance(layer, ReferenceLayer) and layer.name == "logo" and window.document.active_id == layer.id
    assert np.array_equal(layer.image[..., :3], logo) and (layer.image[..., 3] == 255).all()
    # Its long side is half the picture's (100 -> 32 of 64), and it sits in the middle.
    assert layer.scale == pytest.approx(0.32)
    assert (layer.x, layer.y) == pytest.approx((16.0, 17.6))
    assert window.undo_stack.count() == 1
    assert window.reference_panel.view.layer is layer and window.reference_dock.isVisible()
    assert "logo" in window.reference_panel.title.text()
    QTest.keyClick(window.canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.document.layers_of(ReferenceLayer) == []
    assert window.reference_panel.view.layer is None
    assert "No reference image" in window.reference_panel.placeholder.text()


def test_a_file_that_is_no_picture_is_reported_and_adds_nothing(window, tmp_path, monkeypatch):
    errors = []
    monkeypatch.setattr(window, "show_error", lambda title, text, *rest, **options: errors.append((title, text)))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    window.reference_panel.ask_open_path = lambda _title, _filter: str(bad)
    layers = list(window.document.layers)
    window.reference_panel.add_action.trigger()
    ((title, text),) = errors
    assert title == "Could not add reference image" and "notes.png" in text and "not an image" in text
    assert "notes.png" in window.statusBar().currentMessage()
    assert window.document.layers == layers and window.undo_stack.count() == 0


def test_fit_placement_never_enlarges_and_keeps_inside_the_picture():
    assert reference.fit_placement((10, 10), (64, 48)) == reference.Placement(27.0, 19.0, 1.0)
    assert reference.fit_placement((400, 100), (64, 48)).scale == pytest.approx(0.08)  # half the long side
    banner = reference.fit_placement((100, 100), (200, 20))  # half of 200 would be 100 px: too high for 20
    assert banner.scale == pytest.approx(0.2) and (banner.x, banner.y) == pytest.approx((90.0, 0.0))


# --- the side view: the reference's own mask ----------------------------------------------------------------------


def test_a_stroke_on_the_side_view_paints_the_mask_under_it_only_in_one_undo_step(qtbot, window):
    layer = add_swatch(window)
    view = side_view(qtbot, window)
    window.tool_state.tool, window.tool_state.size, window.tool_state.hardness = "brush", 4, 1.0
    steps = window.undo_stack.count()
    drag(view, [(4, 8.5), (12, 8.5), (20, 8.5)])
    assert layer.mask is not None and layer.mask.shape == (16, 24)
    distance = distance_to_segment(layer.mask.shape, (4, 8.5), (20, 8.5))
    assert (layer.mask[distance < 1.3] == 255).all()  # the brush's hard core
    assert (layer.mask[distance > 2.7] == 0).all()  # nothing beyond its rim
    assert window.undo_stack.count() == steps + 1 and window.undo_stack.text(steps) == "Paint reference mask"
    assert "of the reference is used" in window.reference_panel.mask_state.text()
    # The canvas now shows only the painted part of the reference (what a paste would put there).
    shown = window.canvas.layer_item(layer.id)
    assert shown.rgba_at(12, 8)[3] == 255 and shown.rgba_at(12, 1)[3] == 0
    window.undo_stack.undo()
    assert layer.mask is None and shown.rgba_at(12, 1)[3] == 255
    assert "the whole reference is used" in window.reference_panel.mask_state.text()


def test_erasing_from_no_mask_cuts_a_hole_and_invert_and_clear_are_one_step_each(qtbot, window):
    layer = add_swatch(window)
    view = side_view(qtbot, window)
    window.tool_state.size, window.tool_state.hardness = 4, 1.0
    drag(view, [(12, 2), (12, 14)], modifiers=ALT)  # Alt erases, as on the canvas
    assert window.undo_stack.text(window.undo_stack.count() - 1) == "Erase reference mask"
    assert layer.mask[8, 12] == 0 and layer.mask[8, 2] == 255 and layer.mask[8, 22] == 255
    hole = layer.mask.copy()
    steps = window.undo_stack.count()
    QTest.mouseClick(window.reference_panel.invert_button, LEFT)
    np.testing.assert_array_equal(layer.mask, 255 - hole)
    QTest.mouseClick(window.reference_panel.clear_button, LEFT)
    assert layer.mask is None and not window.reference_panel.clear_button.isEnabled()
    assert window.undo_stack.count() == steps + 2
    window.undo_stack.undo()
    np.testing.assert_array_equal(layer.mask, 255 - hole)


def test_escape_drops_a_stroke_in_the_side_view(qtbot, window):
    layer = add_swatch(window)
    view = side_view(qtbot, window)
    window.tool_state.size = 4
    steps = window.undo_stack.count()
    drag(view, [(4, 8), (20, 8)], release=False)
    assert view.painted_mask()[8, 12] > 0  # painted live
    QTest.keyClick(view, Qt.Key.Key_Escape)
    QTest.mouseRelease(view.viewport(), LEFT, NONE, view.mapFromScene(QPointF(20, 8)))
    assert layer.mask is None and window.undo_stack.count() == steps


def test_a_mask_stroke_reads_its_base_and_writes_only_the_copy():
    before = np.zeros((10, 10), np.uint8)
    after = before.copy()
    changed = play(reference.mask_stroke(before, after, 3, 1.0), [(1, 5), (9, 5)])
    assert changed and not before.any() and after[5, 5] == 255 and after[0, 5] == 0


# --- placing it on the canvas -------------------------------------------------------------------------------------


def test_the_move_tool_moves_and_scales_the_active_reference(qtbot, window):
    layer = add_swatch(window)  # box (20, 16)-(44, 32), centre (32, 24)
    canvas = window.canvas
    QTest.keyClick(canvas, Qt.Key.Key_M)
    assert window.tool_state.tool == "move" and canvas.reference_tool.frame.isVisible()
    steps = window.undo_stack.count()
    drag(canvas, [(32, 24), (37, 27), (42, 30)])
    assert (layer.x, layer.y) == pytest.approx((30, 22), abs=0.5) and layer.scale == 1.0
    assert window.undo_stack.count() == steps + 1 and window.undo_stack.text(steps) == "Move reference"
    assert canvas.reference_tool.frame.box() == pytest.approx((layer.x, layer.y, layer.x + 24, layer.y + 16))
    x, y = layer.x, layer.y
    # Its bottom-right corner is 14.4 px from the centre; dragged to 21.6 px, the reference grows 1.5 times.
    centre = (x + 12, y + 8)
    drag(canvas, [(x + 24, y + 16), (centre[0] + 18, centre[1] + 12)])
    assert layer.scale == pytest.approx(1.5, abs=0.05)
    assert (layer.x + 12 * layer.scale, layer.y + 8 * layer.scale) == pytest.approx(centre, abs=0.01)
    assert window.undo_stack.text(steps + 1) == "Scale reference"
    scale, zoom = layer.scale, canvas.zoom()
    for _ in range(2):
        wheel(canvas, canvas.mapFromScene(QPointF(*centre)), 1)
    assert layer.scale == pytest.approx(scale * 1.1**2) and canvas.zoom() == zoom
    assert window.undo_stack.count() == steps + 3  # the two notches are one step
    wheel(canvas, canvas.mapFromScene(QPointF(2, 2)), 1)  # beside it the wheel zooms, as usual
    assert canvas.zoom() > zoom
    for _ in range(3):
        window.undo_stack.undo()
    assert (layer.x, layer.y, layer.scale) == (20.0, 16.0, 1.0)


def test_escape_while_moving_the_reference_puts_it_back(qtbot, window):
    layer = add_swatch(window)
    canvas = window.canvas
    window.tool_state.tool = "move"
    steps = window.undo_stack.count()
    drag(canvas, [(32, 24), (42, 24)], release=False)
    item = canvas.layer_item(layer.id)
    assert item.pos().x() == pytest.approx(30, abs=0.5)  # the live preview
    QTest.keyClick(canvas, Qt.Key.Key_Escape)
    QTest.mouseRelease(canvas.viewport(), LEFT, NONE, canvas.mapFromScene(QPointF(42, 24)))
    assert (layer.x, layer.y) == (20.0, 16.0) and item.pos().toTuple() == (20.0, 16.0)
    assert window.undo_stack.count() == steps


def test_the_move_tool_still_asks_for_a_mask_or_a_reference(qtbot, window):
    add_swatch(window)
    window.document.set_active(window.document.layers[0].id)  # the picture
    window.tool_state.tool = "move"
    steps = window.undo_stack.count()
    drag(window.canvas, [(32, 24), (42, 30)])
    assert "reference image" in window.statusBar().currentMessage()
    assert window.undo_stack.count() == steps


# --- pasting and running --------------------------------------------------------------------------------------


def test_paste_puts_the_masked_reference_at_its_place_into_a_new_layer(qtbot, window):
    layer = add_swatch(window)
    window.document.set_property(layer.id, "x", 10.0)
    mask = np.zeros((16, 24), np.uint8)
    mask[:, :12] = 255  # its left half
    window.document.set_property(layer.id, "mask", mask)
    steps = window.undo_stack.count()
    QTest.mouseClick(window.reference_panel.paste_button, LEFT)
    document = window.document
    background, pasted, top = document.layers
    assert isinstance(pasted, RasterLayer) and top is layer and not layer.visible
    assert document.active_id == pasted.id and window.undo_stack.count() == steps + 1
    expected = np.zeros((H, W, 4), np.uint8)
    expected[16:32, 10:22] = swatch()[:, :12]
    np.testing.assert_array_equal(pasted.pixels, expected)
    np.testing.assert_array_equal(document.composite_rgb()[16:32, 10:22], swatch()[:, :12, :3])
    window.undo_stack.undo()
    assert document.layers == [background, layer] and layer.visible


def test_a_reference_method_gets_the_reference_image_and_its_mask(qtbot, window, fake):
    with pytest.raises(MissingInput, match="Add Reference Image"):
        build_request(window.document, PASTE, MethodInputs(), "tiny")
    layer = add_swatch(window)
    view = side_view(qtbot, window)
    window.tool_state.size = 6
    drag(view, [(6, 8), (18, 8)])
    request = build_request(window.document, PASTE, MethodInputs(), "tiny")
    np.testing.assert_array_equal(request.reference_image, layer.image)
    np.testing.assert_array_equal(request.reference_mask, layer.mask)
    assert request.reference_mask[8, 12] == 255 and request.reference_mask[0, 0] == 0
    assert request.reference_placement == (layer.x, layer.y, layer.scale)  # where the user put it
    assert window.run_edit() is not None  # and through the window, to the backend
    qtbot.waitUntil(lambda: bool(fake.edits()))
    (sent,) = fake.edits()
    np.testing.assert_array_equal(sent.reference_mask, layer.mask)


def test_the_panel_follows_the_open_document(qtbot, window, tmp_path):
    add_swatch(window)
    assert window.reference_panel.view.layer is not None
    other = tmp_path / "other.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(other)
    assert window.files.open(Path(other))
    assert window.reference_panel.document is window.document and window.reference_panel.view.layer is None
    assert window.reference_panel.add_reference_image(swatch(), "Again").scale == pytest.approx(15 / 24)
