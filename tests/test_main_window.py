"""The editor's main window: canvas + docks + menus, files, autosave and recovery, and how a run is built from the
document. The backend is the fake client of tests/fake_backend.py; masks are painted with synthetic mouse events."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fake_backend import FakeClient, open_window, recorded_stream
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QImage
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication
from qt_input import paint

from backend.protocol import MethodInfo, ParamSpec
from desktop_app.app import call_after_first_paint
from desktop_app.canvas.render import to_qimage
from desktop_app.document import Document, DragLayer, MaskLayer, ObjectLayer, RasterLayer
from desktop_app.document.export import read_png_parameters, read_png_recipe
from desktop_app.document.ora import load_ora, save_ora
from desktop_app.settings import Settings, autosave_dir

LEFT, NONE = Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
W, H = 64, 48

METHODS = [
    MethodInfo(
        id="inpaint",
        title="Inpaint",
        description="Repaint the edit mask towards the prompt.",
        families=("sd1",),
        inputs=("image", "target_prompt", "mask:edit"),
        optional_inputs=("mask:keep",),
        params=(ParamSpec("strength", "float", 0.8, minimum=0.0, maximum=1.0),),
    ),
    MethodInfo(
        id="move-object",
        title="Move object",
        description="Move the object mask's content.",
        families=("sd1",),
        inputs=("image", "mask:object"),
        params=(),
    ),
    MethodInfo(
        id="drag",
        title="Drag",
        description="Move handle points to their targets.",
        families=("sd1",),
        inputs=("image", "points"),
        optional_inputs=("mask:edit",),
        params=(),
    ),
    MethodInfo(
        id="multi-object",
        title="Multi-object edit",
        description="Each object becomes its prompt.",
        families=("sd1",),
        inputs=("image", "object_prompts"),
        params=(),
    ),
]


@pytest.fixture(autouse=True)
def _own_folders(own_folders):
    """Autosaves and settings of this test only (conftest.own_folders)."""


@pytest.fixture
def fake() -> FakeClient:
    titles = {info.id: info.title for info in METHODS}
    return FakeClient(
        METHODS, script=lambda request: recorded_stream(request, {"method_title": titles[request.method]})
    )


@pytest.fixture
def picture_file(tmp_path) -> Path:
    image = np.full((H, W, 3), 220, np.uint8)
    image[10:30, 8:28] = (200, 40, 40)
    path = tmp_path / "scene.png"
    Image.fromarray(image).save(path)
    return path


@pytest.fixture
def make_window(qtbot, fake):
    links = []

    def make(settings: Settings | None = None, client: FakeClient | None = None):
        window = open_window(qtbot, client or fake, settings)
        links.append(window.link)
        return window

    yield make
    for link in links:
        link.shutdown()


@pytest.fixture
def window(make_window, picture_file):
    window = make_window()
    assert window.files.open(picture_file)
    return window


def select_method(window, method_id: str) -> None:
    combo = window.method_panel.method_combo
    combo.setCurrentIndex(combo.findData(method_id))


def run_and_wait(qtbot, window) -> None:
    assert window.run_edit() is not None
    qtbot.waitUntil(lambda: window.staging.metadata is not None)


# --- running an edit from the document ----------------------------------------------------------------------------


def test_a_painted_mask_goes_into_the_request_under_its_role(qtbot, window, fake):
    paint(window, [(10, 20), (30, 20), (50, 20)])
    document = window.document
    (edit_mask,) = document.layers_of(MaskLayer)  # painting on the picture made an edit mask
    assert edit_mask.role == "edit" and edit_mask.mask[20, 30] == 255 and edit_mask.mask[40, 30] == 0
    object_mask = MaskLayer("Unused", mask=np.full((H, W), 255, np.uint8), role="object")
    document.add_layer(object_mask)  # a role the method does not declare is not sent
    select_method(window, "inpaint")
    window.method_panel.target_prompt.setText("a blue stripe")
    run_and_wait(qtbot, window)
    (request,) = fake.edits()
    assert set(request.masks) == {"edit"}
    np.testing.assert_array_equal(request.masks["edit"], edit_mask.mask)
    np.testing.assert_array_equal(request.image, document.composite_rgb())
    assert request.target_prompt == "a blue stripe" and request.model == "tiny" and request.seed == 0


def test_a_method_missing_its_required_mask_refuses_to_run_and_says_which(qtbot, window, fake):
    select_method(window, "move-object")
    assert window.run_edit() is None
    message = window.statusBar().currentMessage()
    assert "Move object needs a 'object' mask" in message and "Add Mask" in message
    empty = MaskLayer("Object mask 1", mask=np.zeros((H, W), np.uint8), role="object")
    window.document.add_layer(empty)
    assert window.run_edit() is None
    assert "'Object mask 1' is empty" in window.statusBar().currentMessage()
    qtbot.wait(100)
    assert fake.edits() == [] and window.job_id is None and window.method_panel.run_button.isEnabled()


def test_objects_become_object_prompts(qtbot, window, fake):
    mask = np.zeros((H, W), np.uint8)
    mask[5:15, 5:15] = 255
    window.document.add_layer(ObjectLayer("Cat", mask=mask, prompt="a dog", source="cat"))
    window.document.add_layer(ObjectLayer("Empty", mask=np.zeros((H, W), np.uint8), prompt="ignored"))
    select_method(window, "multi-object")
    run_and_wait(qtbot, window)
    (request,) = fake.edits()
    (item,) = request.object_prompts
    assert (item.prompt, item.source) == ("a dog", "cat")
    np.testing.assert_array_equal(item.mask, mask)
    assert request.masks == {}


def test_drag_points_become_point_pairs_and_are_required(qtbot, window, fake):
    select_method(window, "drag")
    assert window.run_edit() is None and "handle → target" in window.statusBar().currentMessage()
    window.document.add_layer(DragLayer("Points", points=[((10.0, 12.0), (40.0, 30.0))]))
    window.document.add_layer(DragLayer("Hidden", visible=False, points=[((1.0, 1.0), (2.0, 2.0))]))
    run_and_wait(qtbot, window)
    (request,) = fake.edits()
    assert [(pair.handle, pair.target) for pair in request.points] == [((10.0, 12.0), (40.0, 30.0))]


def test_opening_another_file_cancels_the_running_job_and_ignores_its_result(qtbot, window, fake, picture_file):
    fake.hold_at_step = 2
    select_method(window, "inpaint")
    paint(window, [(10, 20), (50, 20)])
    job_id = window.run_edit()
    qtbot.waitUntil(lambda: window.method_panel.progress_bar.value() == 2)
    assert window.files.open(picture_file)
    assert window.job_id is None and window.method_panel.run_button.isEnabled()
    qtbot.waitUntil(lambda: fake.cancelled == [job_id])
    qtbot.wait(200)  # the job's late events (its 'cancelled') find no job of this window's
    assert window.staging.array() is None and "another document" in window.method_panel.stage_label.text()


def test_accepting_puts_the_result_above_the_picture_and_reuse_sends_its_parameters(qtbot, window, fake):
    recipe = {"method": "inpaint", "target_prompt": "a red door", "params": {"strength": 0.3}, "seed": 7}
    fake.script = lambda request: recorded_stream(request, {"method_title": "Inpaint", "recipe": recipe})
    paint(window, [(10, 20), (50, 20)])  # the edit mask is active now
    select_method(window, "inpaint")
    window.method_panel.target_prompt.setText("a red door")
    run_and_wait(qtbot, window)
    window.accept_result()
    names = [layer.name for layer in window.document.layers]
    assert names == ["Background", "Inpaint result", "Edit mask"]  # the mask stays on top, visible
    assert window.document.active_layer.name == "Edit mask"  # and active: adjust it, run again
    select_method(window, "move-object")
    window.method_panel.target_prompt.clear()
    window.history_panel.results.setCurrentRow(0)
    window.history_panel.reuse_selected()
    panel = window.method_panel
    assert panel.current_method().id == "inpaint" and panel.target_prompt.text() == "a red door"
    assert panel.param_form.editors["strength"].value() == 0.3 and panel.param_form.seed == 7
    run_and_wait(qtbot, window)
    assert fake.edits()[-1].params == {"strength": 0.3} and fake.edits()[-1].seed == 7
    panel.reset_params()
    assert panel.inputs().params == {"strength": 0.8} and panel.inputs().seed == 0  # the paper's default


# --- files --------------------------------------------------------------------------------------------------------


def test_save_then_open_in_a_fresh_window_gives_the_same_layers_and_masks(qtbot, make_window, window, tmp_path):
    paint(window, [(10, 20), (50, 20)])
    window.layers_panel.add_mask_layer("keep")
    paint(window, [(20, 40), (40, 40)])
    assert window.windowTitle() == "scene.png* — Atelier"
    path = tmp_path / "project.ora"
    window.files.ask_save_path = lambda *_: str(path)
    qtbot.keyClick(window, Qt.Key.Key_S, Qt.KeyboardModifier.ControlModifier)  # first save asks where
    assert path.exists() and window.windowTitle() == "project.ora — Atelier"
    assert not window.document.modified and str(path.resolve()) == window.settings.recent_files[0]
    window.window_actions.recent_menu.aboutToShow.emit()
    assert window.window_actions.recent_menu.actions()[0].text() == "project.ora"

    other = make_window()
    assert other.files.open(path)
    before, after = window.document.layers, other.document.layers
    assert [(layer.kind, layer.name) for layer in after] == [(layer.kind, layer.name) for layer in before]
    for saved, loaded in zip(window.document.layers_of(MaskLayer), other.document.layers_of(MaskLayer)):
        assert saved.role == loaded.role
        np.testing.assert_array_equal(saved.mask, loaded.mask)
    assert other.files.project_path == path and other.windowTitle() == "project.ora — Atelier"


def test_export_png_carries_the_recipe_of_the_result(qtbot, window, tmp_path):
    select_method(window, "inpaint")
    paint(window, [(10, 20), (50, 20)])
    window.method_panel.target_prompt.setText("a wooden door")
    run_and_wait(qtbot, window)
    window.accept_result()
    path = tmp_path / "out.png"
    assert window.files.export_png(path)
    recipe = read_png_recipe(path)
    assert recipe["method"] == "inpaint" and recipe["target_prompt"] == "a wooden door" and "edit" in recipe["masks"]
    assert read_png_parameters(path).splitlines()[0] == "a wooden door"
    np.testing.assert_array_equal(np.asarray(Image.open(path))[..., :3], window.document.composite_rgb())
    assert "with the recipe of 'Inpaint result'" in window.statusBar().currentMessage()


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims another size (CRC fixed): tiny on disk, huge if anyone decoded it."""
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = bytearray(data[12:29])
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)) & 0xFFFFFFFF)
    return bytes(data)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.png", b"", "is empty (0 bytes)"),
        ("truncated.png", None, "is truncated or damaged"),
        ("notes.png", b"hello, I am a text file\n", "is not an image Atelier can read"),
        ("huge.png", png_claiming_size(20000, 20000), "is too large (20000 x 20000 pixels)"),
        ("broken.ora", b"PK\x03\x04 not really a zip", "not an OpenRaster file"),
    ],
)
def test_bad_files_show_why_and_leave_the_document_and_window_alone(
    window, picture_file, tmp_path, name, content, reason
):
    path = tmp_path / name
    if content is None:  # a noisy picture, so that half its bytes are half its pixels
        noise = np.random.default_rng(0).integers(0, 256, (H, W, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, format="PNG")
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    document, layers = window.document, list(window.document.layers)
    window.document.add_layer(MaskLayer("Work", mask=np.full((H, W), 9, np.uint8)))
    assert not window.files.open(path)
    box = window.error_box
    assert box.isVisible() and not box.isModal() and name in box.text() and reason in box.text()
    assert window.document is document and document.layers[: len(layers)] == layers
    assert document.layers[-1].mask[0, 0] == 9 and window.isVisible()
    assert window.windowTitle() == "scene.png* — Atelier"


def drop(window, paths: list[Path]) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    centre, copy = QPointF(window.width() / 2, window.height() / 2), Qt.DropAction.CopyAction
    # In order, as a real drag delivers them: Qt drops a Drop whose DragEnter/DragMove nobody accepted.
    for event in (
        QDragEnterEvent(centre, copy, mime, LEFT, NONE),
        QDragMoveEvent(centre, copy, mime, LEFT, NONE),
        QDropEvent(centre, copy, mime, LEFT, NONE),
    ):
        QApplication.sendEvent(window, event)


def test_dropping_files_opens_pictures_and_projects(window, tmp_path):
    other = tmp_path / "other.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(other)
    drop(window, [other])
    assert window.document.size == (30, 20) and window.windowTitle() == "other.png — Atelier"
    project = tmp_path / "drop.ora"
    document = Document.from_image(np.zeros((12, 16, 3), np.uint8))
    document.add_layer(MaskLayer("Keep", mask=np.full((12, 16), 255, np.uint8), role="keep"))
    save_ora(document, project)
    drop(window, [project])
    assert [layer.name for layer in window.document.layers] == ["Background", "Keep"]
    assert window.files.project_path == project
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    drop(window, [bad])
    assert window.files.project_path == project and "bad.png" in window.error_box.text()


def test_paste_adds_a_layer_of_the_same_size_else_a_new_document(window):
    clipboard = QApplication.clipboard()
    same = np.zeros((H, W, 4), np.uint8)
    same[..., 2], same[..., 3] = 255, 255
    clipboard.setImage(to_qimage(same))
    window.window_actions.paste_action.trigger()
    assert [layer.name for layer in window.document.layers] == ["Background", "Pasted"]
    np.testing.assert_array_equal(window.document.layers[-1].pixels, same)
    assert "new layer" in window.statusBar().currentMessage()
    clipboard.setImage(QImage(to_qimage(np.full((10, 12, 3), 50, np.uint8))))
    window.window_actions.paste_action.trigger()
    assert window.document.size == (12, 10) and "new document" in window.statusBar().currentMessage()


def test_quit_asks_to_save_a_modified_document(qtbot, window, tmp_path):
    window.document.add_layer(MaskLayer("Work", mask=np.zeros((H, W), np.uint8)))
    asked = []
    window.files.ask_save_changes = lambda name: asked.append(name) or "cancel"
    window.window_actions.quit_action.trigger()
    assert asked == ["scene.png"] and window.isVisible()
    path = tmp_path / "kept.ora"
    window.files.ask_save_changes = lambda _name: "save"
    window.files.ask_save_path = lambda *_: str(tmp_path / "kept")  # no suffix typed: .ora is added
    window.window_actions.quit_action.trigger()
    assert not window.isVisible() and [layer.name for layer in load_ora(path).layers] == ["Background", "Work"]


# --- autosave, recovery, title --------------------------------------------------------------------------------


def test_autosave_writes_the_modified_document_on_its_timer(qtbot, make_window, picture_file):
    window = make_window(Settings(autosave_minutes=0.001))  # 60 ms
    assert window.files.open(picture_file)
    saver = window.files.autosaver
    assert saver is not None and saver.path.parent == autosave_dir() and saver.marker.exists()
    qtbot.wait(200)
    assert not saver.path.exists()  # nothing changed yet: nothing to save
    paint(window, [(10, 20), (50, 20)])
    qtbot.waitUntil(saver.path.exists, timeout=3000)
    assert [layer.name for layer in load_ora(saver.path).layers] == ["Background", "Edit mask"]
    window.close()  # a clean exit leaves nothing to recover
    assert not saver.path.exists() and not saver.marker.exists()


def test_startup_offers_the_autosave_of_a_crashed_session(qtbot, make_window):
    document = Document.from_image(np.full((H, W, 3), 128, np.uint8))
    document.add_layer(MaskLayer("Sky", mask=np.full((H, W), 200, np.uint8), role="keep"))
    crashed = save_ora(document, autosave_dir() / "autosave-crashed.ora")
    (autosave_dir() / "autosave-crashed.lock").write_text(json.dumps({"pid": 0, "label": "holiday.ora"}))
    window = make_window(Settings(autosave_minutes=3))
    offered = []
    window.files.choose_recovery = lambda paths: offered.append(paths) or paths[0]
    assert window.files.offer_recovery()
    assert offered == [[crashed]]  # this session's own autosave marker is alive: never offered
    assert [layer.name for layer in window.document.layers] == ["Background", "Sky"]
    assert window.document.layers[1].mask[0, 0] == 200
    assert window.windowTitle() == "holiday.ora (recovered)* — Atelier"
    assert not crashed.exists()  # this session's autosave takes over
    assert window.files.offer_recovery() is False  # nothing left to offer


def test_the_first_paint_hook_runs_once_after_show(qtbot, make_window):
    window = make_window()
    window.hide()
    calls = []
    call_after_first_paint(window, lambda: calls.append(1))
    window.show()
    qtbot.waitUntil(lambda: calls == [1])
    window.update()
    qtbot.wait(50)
    assert calls == [1]


def test_title_shows_a_star_while_modified_and_ctrl_y_redoes(qtbot, window):
    assert window.windowTitle() == "scene.png — Atelier"
    paint(window, [(10, 20), (50, 20)])
    mask = window.document.layers_of(MaskLayer)[0].mask
    painted = mask.copy()
    assert window.windowTitle() == "scene.png* — Atelier"
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert window.document.layers_of(MaskLayer) == [] and window.windowTitle() == "scene.png — Atelier"
    qtbot.keyClick(window, Qt.Key.Key_Y, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(window.document.layers_of(MaskLayer)[0].mask, painted)
    assert window.windowTitle() == "scene.png* — Atelier"
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    np.testing.assert_array_equal(window.document.layers_of(MaskLayer)[0].mask, painted)


# --- tools and shortcuts ----------------------------------------------------------------------------------------


def test_tool_shortcuts_work_anywhere_but_in_a_text_box(qtbot, window):
    state, actions = window.tool_state, window.window_actions
    list_view = window.layers_panel.view
    list_view.setFocus()
    for key, tool in ((Qt.Key.Key_E, "eraser"), (Qt.Key.Key_R, "rectangle"), (Qt.Key.Key_L, "lasso")):
        qtbot.keyClick(list_view, key)
        assert state.tool == tool and actions.tool_actions[tool].isChecked()
    qtbot.keyClick(window.canvas, Qt.Key.Key_G)
    assert state.tool == "fill"
    qtbot.keyClick(window.canvas, Qt.Key.Key_B)
    assert state.tool == "brush" and actions.tool_actions["brush"].isChecked()
    size = state.size
    qtbot.keyClick(list_view, Qt.Key.Key_BracketRight)
    assert state.size > size and actions.size_box.value() == state.size
    prompt = window.method_panel.target_prompt
    prompt.setFocus()
    qtbot.keyClicks(prompt, "ebb")
    assert prompt.text() == "ebb" and state.tool == "brush"
    actions.tool_actions["lasso"].trigger()  # the toolbar
    assert state.tool == "lasso"


def test_mask_commands_and_view_shortcuts(qtbot, window):
    paint(window, [(10, 20), (50, 20)])
    mask = window.document.layers_of(MaskLayer)[0].mask
    painted = mask.copy()
    qtbot.keyClick(window.canvas, Qt.Key.Key_I, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(mask, 255 - painted)
    qtbot.keyClick(window.canvas, Qt.Key.Key_Backspace, Qt.KeyboardModifier.ControlModifier)
    assert mask.max() == 0
    window.window_actions.fill_mask_action.trigger()
    assert mask.min() == 255
    qtbot.keyClick(window.canvas, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.zoom() == 1.0
    qtbot.keyClick(window.canvas, Qt.Key.Key_Equal, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.zoom() == pytest.approx(1.25)
    qtbot.keyClick(window.canvas, Qt.Key.Key_Minus, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.zoom() == pytest.approx(1.0)
    qtbot.keyClick(window.canvas, Qt.Key.Key_0, Qt.KeyboardModifier.ControlModifier)
    assert window.canvas.zoom() > 2  # a 64x48 picture fitted to the canvas


def test_without_a_document_the_window_says_how_to_start(make_window):
    window = make_window()
    assert window.canvas_stack.currentWidget() is window.welcome and "Ctrl+O" in window.welcome.text()
    assert not window.window_actions.save_action.isEnabled() and not window.window_actions.export_action.isEnabled()
    assert window.run_edit() is None and "open a picture first" in window.statusBar().currentMessage()
    assert window.windowTitle() == "Atelier"


def test_result_layers_keep_their_recipe_in_the_project(qtbot, window, tmp_path):
    select_method(window, "inpaint")
    paint(window, [(10, 20), (50, 20)])
    window.method_panel.target_prompt.setText("moss")
    run_and_wait(qtbot, window)
    window.accept_result()
    path = tmp_path / "with-result.ora"
    assert window.files.save_as(path)
    loaded = load_ora(path)
    result = next(layer for layer in loaded.layers if isinstance(layer, RasterLayer) and layer.recipe)
    assert result.recipe["target_prompt"] == "moss" and loaded.history[0].layer_id == result.id


def test_open_recent_forgets_a_file_that_is_gone(window, tmp_path):
    gone = tmp_path / "gone.ora"
    window.settings.recent_files = [str(gone)]
    assert not window.files.open_recent(gone)
    assert window.settings.recent_files == [] and "no longer exists" in window.statusBar().currentMessage()


# --- click-to-segment through the backend link ------------------------------------------------------------------


def test_a_segment_click_is_answered_by_the_backend_and_enter_applies_it(qtbot, window, fake):
    canvas = window.canvas
    window.tool_state.tool = "segment"
    canvas.setFocus()
    point = canvas.mapFromScene(QPointF(15, 20))  # inside the red square (x 8..27, y 10..29)
    QTest.mouseClick(canvas.viewport(), LEFT, NONE, point)
    queries = lambda: [job for job in fake.submitted if getattr(job, "what", "") == "segment"]  # noqa: E731
    qtbot.waitUntil(lambda: len(queries()) == 1)
    ((x, y),) = queries()[0].args["include"]
    assert abs(x - 15) <= 1 and abs(y - 20) <= 1
    qtbot.waitUntil(lambda: canvas.segment_session.proposal is not None)
    QTest.keyClick(canvas, Qt.Key.Key_Return)
    (mask_layer,) = window.document.layers_of(MaskLayer)
    expected = np.zeros((H, W), np.uint8)
    expected[10:30, 8:28] = 255
    np.testing.assert_array_equal(mask_layer.mask, expected)
    window.undo_stack.undo()
    assert not window.document.layers_of(MaskLayer)
