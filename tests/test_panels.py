"""Layers and History panels: set the model, check the widget (and drive the widget, check the model).

Every change a panel makes must be one command on the undo stack, and every row must follow the document's
events, so undo/redo is exercised alongside each action.
"""

from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QModelIndex, QPoint, QPointF, Qt
from PySide6.QtGui import QDragEnterEvent, QDragMoveEvent, QDropEvent, QUndoStack
from PySide6.QtWidgets import QAbstractItemView, QApplication, QLineEdit, QStyle, QStyleOptionViewItem

from desktop_app.document import ROLE_COLOURS, Document, HistoryEntry, MaskLayer, ObjectLayer, RasterLayer
from desktop_app.history import RemoveLayer, SetProperty
from desktop_app.panels import HistoryPanel, LayersPanel
from desktop_app.panels.layer_list import BADGE_ROLE, LAYER_ID_ROLE, THUMBNAIL_DELAY_MS
from desktop_app.panels.thumbnails import THUMBNAIL_SIZE, reduce_max, rgba_thumbnail

W, H = 32, 24


@pytest.fixture(autouse=True)
def _observers_never_fail(caplog):
    """The document logs and swallows an observer's exception; for the panels' own tests that is a failure."""
    yield
    failures = [r.getMessage() for r in caplog.records if r.name == "desktop_app.document.events"]
    assert not failures, failures


@pytest.fixture
def document() -> Document:
    document = Document(W, H)
    document.add_layer(RasterLayer(name="Background", pixels=np.full((H, W, 4), 200, np.uint8)))
    document.add_layer(MaskLayer(name="Edit area", mask=np.zeros((H, W), np.uint8), role="edit"))
    document.add_layer(ObjectLayer(name="Cat", mask=np.zeros((H, W), np.uint8), prompt="a dog"))
    document.set_modified(False)
    return document


@pytest.fixture
def stack() -> QUndoStack:
    return QUndoStack()


@pytest.fixture
def panel(qtbot, document: Document, stack: QUndoStack) -> LayersPanel:
    panel = LayersPanel()
    qtbot.addWidget(panel)
    panel.set_document(document, stack)
    panel.resize(300, 420)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def rows(panel: LayersPanel) -> list[tuple[str, str]]:
    model = panel.model
    return [(model.index(r).data(), model.index(r).data(BADGE_ROLE)) for r in range(model.rowCount())]


def ids(document: Document) -> list[str]:
    return [layer.id for layer in document.layers]


def icon_pixel(panel: LayersPanel, row: int) -> tuple[int, int, int]:
    icon = panel.model.index(row).data(Qt.ItemDataRole.DecorationRole)
    colour = icon.pixmap(THUMBNAIL_SIZE, THUMBNAIL_SIZE).toImage().pixelColor(THUMBNAIL_SIZE // 2, THUMBNAIL_SIZE // 2)
    return colour.red(), colour.green(), colour.blue()


def check_box_centre(panel: LayersPanel, row: int) -> QPoint:
    index = panel.model.index(row)
    option = QStyleOptionViewItem()
    option.rect = panel.view.visualRect(index)
    option.widget = panel.view
    panel.view.itemDelegate().initStyleOption(option, index)
    element = QStyle.SubElement.SE_ItemViewItemCheckIndicator
    return panel.view.style().subElementRect(element, option, panel.view).center()


# --- Layers panel ---------------------------------------------------------------------------------------------


def test_rows_show_the_layers_top_first_with_badges(panel):
    assert rows(panel) == [("Cat", "object: 'a dog'"), ("Edit area", "mask · edit"), ("Background", "raster")]
    assert panel.view.currentIndex().row() == 0  # the active (last added) layer is selected


def test_add_layer_action_adds_a_row_and_one_undo_step(panel, document, stack):
    before = ids(document)
    panel.add_raster_action.trigger()
    assert panel.model.rowCount() == 4 and stack.count() == 1
    assert rows(panel)[0] == ("Layer 1", "raster")  # above the active layer, which was on top
    assert panel.view.currentIndex().row() == 0 and document.active_layer.name == "Layer 1"
    stack.undo()
    assert ids(document) == before and [name for name, _ in rows(panel)] == ["Cat", "Edit area", "Background"]


def test_add_mask_with_a_role_lands_above_the_active_layer(panel, document, stack):
    document.set_active(document.layers[0].id)
    panel.add_mask_actions["keep"].trigger()
    assert rows(panel)[2] == ("Keep mask 1", "mask · keep")
    assert document.layers[1].role == "keep" and stack.count() == 1


def test_eye_check_box_hides_the_layer_and_undo_shows_it(panel, document, stack, qtbot):
    qtbot.mouseClick(panel.view.viewport(), Qt.MouseButton.LeftButton, pos=check_box_centre(panel, 1))
    mask = document.layers[1]
    assert mask.visible is False and stack.count() == 1
    assert panel.model.index(1).data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
    stack.undo()
    assert mask.visible is True
    assert panel.model.index(1).data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked


def test_rename_pushed_on_the_stack_updates_the_row(panel, document, stack):
    stack.push(SetProperty(document, document.layers[0].id, "name", "Photo"))
    assert rows(panel)[2][0] == "Photo"
    stack.undo()
    assert rows(panel)[2][0] == "Background"


def _rename_in_editor(panel, qtbot, row: int, text: str) -> None:
    panel.view.edit(panel.model.index(row))
    editor = panel.view.viewport().findChild(QLineEdit)
    assert editor is not None and editor.text() == panel.model.index(row).data()
    editor.setText(text)
    qtbot.keyClick(editor, Qt.Key.Key_Return)
    # The delegate commits and closes the editor through a queued call.
    qtbot.waitUntil(lambda: panel.view.state() != QAbstractItemView.State.EditingState)


def test_rename_in_the_list_is_one_undo_step(panel, document, stack, qtbot):
    _rename_in_editor(panel, qtbot, 1, "Sky mask")
    assert document.layers[1].name == "Sky mask" and rows(panel)[1][0] == "Sky mask"
    assert stack.count() == 1 and stack.undoText() == "Rename 'Edit area'"


def test_empty_name_is_refused_and_the_old_name_kept(panel, document, stack, qtbot):
    with qtbot.waitSignal(panel.message) as refused:
        _rename_in_editor(panel, qtbot, 1, "   ")
    assert "needs a name" in refused.args[0] and "needs a name" in panel.status.text()
    assert document.layers[1].name == "Edit area" and rows(panel)[1][0] == "Edit area"
    assert stack.count() == 0  # a refused value never becomes an (empty) undo step


def test_selecting_a_row_activates_the_layer_and_back(panel, document, qtbot):
    rect = panel.view.visualRect(panel.model.index(2))
    qtbot.mouseClick(panel.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert document.active_id == document.layers[0].id
    document.set_active(document.layers[1].id)
    assert panel.view.currentIndex().row() == 1
    assert [index.row() for index in panel.view.selectedIndexes()] == [1]


def test_move_up_and_down_reorder_and_undo_restores(panel, document, stack):
    background, mask, cat = ids(document)
    document.set_active(background)
    assert not panel.move_down_action.isEnabled()
    panel.move_up_action.trigger()
    assert ids(document) == [mask, background, cat]
    assert panel.model.index(1).data(LAYER_ID_ROLE) == background and panel.view.currentIndex().row() == 1
    panel.move_up_action.trigger()
    assert ids(document) == [mask, cat, background] and not panel.move_up_action.isEnabled()
    panel.move_down_action.trigger()
    assert ids(document) == [mask, background, cat]
    stack.undo()
    stack.undo()
    stack.undo()
    assert ids(document) == [background, mask, cat]
    assert [panel.model.index(r).data(LAYER_ID_ROLE) for r in range(3)] == [cat, mask, background]


# Qt 6 has only QPoint constructors for drag enter/move events, which PySide marks deprecated.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_drop_on_the_list_reorders_in_one_undo_step(panel, document, stack, qtbot):
    background, mask, cat = ids(document)
    press = panel.view.visualRect(panel.model.index(2)).center()
    qtbot.mouseClick(panel.view.viewport(), Qt.MouseButton.LeftButton, pos=press)  # a drag starts with a press
    mime = panel.model.mimeData([panel.model.index(2)])  # drag the background ...
    target = panel.view.visualRect(panel.model.index(0))
    point = QPoint(target.center().x(), target.top() + 2)  # ... onto the upper edge of the top row
    move, left, none = Qt.DropAction.MoveAction, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    for event in (
        QDragEnterEvent(point, move, mime, left, none),
        QDragMoveEvent(point, move, mime, left, none),
        QDropEvent(QPointF(point), move, mime, left, none),
    ):
        QApplication.sendEvent(panel.view.viewport(), event)
    assert ids(document) == [mask, cat, background] and stack.count() == 1
    assert panel.view.currentIndex().data(LAYER_ID_ROLE) == background
    stack.undo()
    assert ids(document) == [background, mask, cat]


def test_internal_row_move_goes_through_the_undo_stack(panel, document, stack):
    background, mask, cat = ids(document)
    # What QListView calls when a row is dragged within it: move row 0 (cat) before row 3 (the end).
    assert panel.model.moveRow(QModelIndex(), 0, QModelIndex(), 3)
    assert ids(document) == [cat, background, mask] and stack.count() == 1
    assert [name for name, _ in rows(panel)] == ["Edit area", "Background", "Cat"]
    stack.undo()
    assert ids(document) == [background, mask, cat]


def test_opacity_drag_is_one_undo_step(panel, document, stack):
    cat = document.active_layer
    panel.opacity_slider.setSliderDown(True)
    for value in (80, 60, 40):
        panel.opacity_slider.setValue(value)
    panel.opacity_slider.setSliderDown(False)
    assert cat.opacity == pytest.approx(0.4) and stack.count() == 1
    assert rows(panel)[0][1] == "object: 'a dog' · 40%" and panel.opacity_label.text() == "40%"
    stack.undo()
    assert cat.opacity == 1.0 and panel.opacity_slider.value() == 100


def test_two_opacity_drags_are_two_undo_steps(panel, document, stack):
    cat = document.active_layer
    for values in ((70, 50), (30, 10)):
        panel.opacity_slider.setSliderDown(True)
        for value in values:
            panel.opacity_slider.setValue(value)
        panel.opacity_slider.setSliderDown(False)
    assert stack.count() == 2 and cat.opacity == pytest.approx(0.1)
    stack.undo()
    assert cat.opacity == pytest.approx(0.5) and panel.opacity_slider.value() == 50


def test_role_combo_and_prompt_edit_push_commands(panel, document, stack):
    mask, cat = document.layers[1], document.layers[2]
    document.set_active(mask.id)
    assert panel.role_combo.isVisibleTo(panel) and not panel.prompt_edit.isVisibleTo(panel)
    panel.role_combo.setCurrentIndex(panel.role_combo.findData("keep"))
    assert mask.role == "keep" and rows(panel)[1][1] == "mask · keep"
    document.set_active(cat.id)
    assert panel.prompt_edit.isVisibleTo(panel) and panel.prompt_edit.text() == "a dog"
    panel.prompt_edit.setText("a wolf")
    panel.prompt_edit.editingFinished.emit()
    assert cat.prompt == "a wolf" and rows(panel)[0][1] == "object: 'a wolf'" and stack.count() == 2
    stack.undo()
    assert cat.prompt == "a dog" and panel.prompt_edit.text() == "a dog"


def test_delete_active_layer_and_undo_brings_it_back_in_place(panel, document, stack):
    mask = document.layers[1]
    document.set_active(mask.id)
    panel.delete_action.trigger()
    assert mask.id not in ids(document) and panel.model.rowCount() == 2 and stack.count() == 1
    assert document.active_id in ids(document)
    stack.undo()
    assert document.layers[1] is mask and document.layers[1].id == mask.id
    assert rows(panel)[1] == ("Edit area", "mask · edit") and panel.view.currentIndex().row() == 1


def test_mask_thumbnail_follows_painting_throttled(panel, document, qtbot):
    mask = document.layers[1]
    before = icon_pixel(panel, 1)
    document.write_patch(mask.id, 0, 0, np.full((H, W), 255, np.uint8))
    assert icon_pixel(panel, 1) == before  # not recomputed per dab ...
    qtbot.waitUntil(lambda: icon_pixel(panel, 1) != before, timeout=THUMBNAIL_DELAY_MS * 10)
    assert icon_pixel(panel, 1) == ROLE_COLOURS["edit"][:3]  # ... but shortly after, in the role's colour


def test_rebinding_follows_only_the_new_document(qtbot, document, stack):
    panel = LayersPanel()
    qtbot.addWidget(panel)
    panel.set_document(document, stack)
    other = Document(8, 8)
    panel.set_document(other, QUndoStack())
    document.add_layer(RasterLayer(name="Late", pixels=np.zeros((H, W, 4), np.uint8)))
    assert panel.model.rowCount() == 0 and not panel.delete_action.isEnabled()


def test_thumbnail_reduction_keeps_thin_strokes_and_tiny_layers():
    mask = np.zeros((1000, 1000), np.uint8)
    mask[500, :] = 255  # one pixel high: sampling every 25th row would lose it
    assert reduce_max(mask, 40).max() == 255
    tiny = rgba_thumbnail(np.full((1, 1, 4), 255, np.uint8), 40)
    assert tiny.width() == 40 and tiny.pixelColor(20, 20).red() == 255


def test_delete_key_in_the_list_deletes_the_active_layer(panel, document, stack, qtbot):
    panel.activateWindow()
    panel.view.setFocus()
    qtbot.waitUntil(panel.view.hasFocus)
    qtbot.keyClick(panel.view, Qt.Key.Key_Delete)
    assert [layer.name for layer in document.layers] == ["Background", "Edit area"] and stack.count() == 1


# --- History panel --------------------------------------------------------------------------------------------


@pytest.fixture
def history(qtbot, document: Document, stack: QUndoStack) -> HistoryPanel:
    panel = HistoryPanel()
    qtbot.addWidget(panel)
    panel.set_document(document, stack)
    return panel


def test_history_rows_follow_the_document(history, document):
    layer = document.layers[0]
    document.add_history(HistoryEntry("SDEdit: a dog", layer.id, {"method": "sdedit", "seed": 7}, {"seconds": 2.5}))
    document.add_history(HistoryEntry("Word swap", layer.id, {"method": "ddim-word-swap", "seed": 3}))
    texts = [history.results.item(r).text() for r in range(history.results.count())]
    assert texts == ["Word swap\nddim-word-swap · seed 3", "SDEdit: a dog\nsdedit · seed 7 · 2.5 s"]
    assert history.results.currentRow() == 0  # the newest result is selected


def test_reuse_parameters_emits_the_recipe_and_show_layer_activates(history, document, qtbot):
    background = document.layers[0]
    recipe = {"method": "sdedit", "seed": 7, "params": {"strength": 0.6}, "target_prompt": "a dog"}
    document.add_history(HistoryEntry("SDEdit: a dog", background.id, recipe))
    with qtbot.waitSignal(history.reuse_requested) as reused:
        history.reuse_action.trigger()
    assert reused.args == [recipe]
    history.show_layer_action.trigger()
    assert document.active_id == background.id


def test_show_layer_is_off_once_the_layer_is_deleted(history, document, stack):
    mask = document.layers[1]
    document.add_history(HistoryEntry("Mask result", mask.id, {"method": "sdedit"}))
    assert history.show_layer_action.isEnabled()
    stack.push(RemoveLayer(document, mask.id))
    history.results.setCurrentRow(0)
    assert not history.show_layer_action.isEnabled()
    stack.undo()
    assert history.show_layer_action.isEnabled()


def test_undo_view_lists_the_commands(history, panel, stack):
    panel.add_raster_action.trigger()
    panel.add_object_action.trigger()
    model = history.undo_view.model()
    assert model.rowCount() == 3  # the empty state, then one row per command
    texts = [model.index(r, 0).data() for r in range(model.rowCount())]
    assert texts == ["Opened", "Add raster layer 'Layer 1'", "Add object layer 'Object 1'"]


def test_panels_unbind_from_a_closed_document(panel, history, document, stack):
    panel.set_document(None, None)
    history.set_document(None, None)
    document.add_layer(RasterLayer(name="Late", pixels=np.zeros((H, W, 4), np.uint8)))
    document.add_history(HistoryEntry("Late result", document.layers[-1].id, {"method": "sdedit"}))
    assert panel.model.rowCount() == 0 and history.results.count() == 0
    assert not panel.add_raster_action.isEnabled() and panel.add_raster_layer() is None
