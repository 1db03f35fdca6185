"""The Qt-free document model: structure events, validation, pixels and undo data, compositing, masks by role."""

from __future__ import annotations

import numpy as np
import pytest

from desktop_app.document import (
    Document,
    DragLayer,
    HistoryEntry,
    MaskLayer,
    ObjectLayer,
    RasterLayer,
    ReferenceLayer,
    RegionMove,
    to_rgba,
)

W, H = 8, 6


def solid(colour: tuple[int, int, int, int], width: int = W, height: int = H) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.uint8), (height, width, 4)).copy()


def mask(value: int = 0) -> np.ndarray:
    return np.full((H, W), value, np.uint8)


def raster_layer() -> RasterLayer:
    return RasterLayer(name="r", pixels=solid((0, 0, 0, 255)))


def mask_layer() -> MaskLayer:
    return MaskLayer(name="m", mask=mask())


def drag_layer() -> DragLayer:
    return DragLayer(name="d")


def reference_layer() -> ReferenceLayer:
    return ReferenceLayer(name="ref", image=np.zeros((4, 4, 3), np.uint8))


@pytest.fixture
def document() -> Document:
    return Document.from_image(np.zeros((H, W, 3), np.uint8))


@pytest.fixture
def recorded(document):
    """Every event the document emits, in order."""
    events = []
    document.events.connect_all(events.append)
    return events


def of_type(events, name):
    return [event for event in events if event.type == name]


# --- structure --------------------------------------------------------------------------------------------------


def test_add_layer_emits_one_layer_added_with_layer_and_index_and_becomes_active(document, recorded):
    layer = MaskLayer(name="edit area", mask=mask())
    document.add_layer(layer)
    [added] = of_type(recorded, "layer_added")
    assert added.layer is layer and added.index == 1 and added.source is document
    assert [event.layer for event in of_type(recorded, "active_changed")] == [layer]
    assert document.active_id == layer.id and document.layers[-1] is layer


def test_add_layer_at_index_and_twice_refused(document, recorded):
    layer = RasterLayer(name="under", pixels=solid((1, 2, 3, 255)))
    document.add_layer(layer, index=0)
    assert document.layers[0] is layer and of_type(recorded, "layer_added")[0].index == 0
    with pytest.raises(ValueError, match="already in the document"):
        document.add_layer(layer)
    assert len(of_type(recorded, "layer_added")) == 1


def test_add_layer_of_the_wrong_size_is_refused(document, recorded):
    with pytest.raises(ValueError, match="must be uint8 of shape"):
        document.add_layer(RasterLayer(name="small", pixels=solid((0, 0, 0, 0), 3, 3)))
    with pytest.raises(ValueError, match="mask role must be one of"):
        document.add_layer(MaskLayer(name="odd", mask=mask(), role="sky"))
    assert len(document.layers) == 1 and recorded == []


def test_remove_layer_emits_layer_removed_and_moves_the_active_layer(document, recorded):
    bottom = document.layers[0]
    top = document.add_layer(MaskLayer(name="m", mask=mask()))
    recorded.clear()
    layer, index = document.remove_layer(top.id)
    assert (layer, index) == (top, 1)
    [removed] = of_type(recorded, "layer_removed")
    assert removed.layer is top and removed.index == 1
    assert document.active_id == bottom.id and of_type(recorded, "active_changed")[0].layer is bottom
    with pytest.raises(KeyError):
        document.remove_layer(top.id)


def test_move_layer_emits_one_event_with_old_and_new_index(document, recorded):
    first = document.layers[0]
    second = document.add_layer(MaskLayer(name="a", mask=mask()))
    third = document.add_layer(MaskLayer(name="b", mask=mask()))
    recorded.clear()
    assert document.move_layer(third.id, 0) == 2
    [moved] = recorded[:1]
    assert moved.type == "layer_moved" and (moved.layer, moved.old_index, moved.index) == (third, 2, 0)
    assert document.layers == [third, first, second]
    recorded.clear()
    document.move_layer(third.id, 0)  # already there: nothing happens
    assert recorded == []


def test_modified_flag_changes_once_and_emits_once(document, recorded):
    assert document.modified is False
    document.add_layer(MaskLayer(name="a", mask=mask()))
    document.add_layer(MaskLayer(name="b", mask=mask()))
    assert [event.modified for event in of_type(recorded, "modified_changed")] == [True]
    document.set_modified(False)
    assert [event.modified for event in of_type(recorded, "modified_changed")] == [True, False]


def test_history_entries_are_kept_in_order_with_an_event(document, recorded):
    entry = HistoryEntry(title="CoRA: a cat", layer_id=document.layers[0].id, recipe={"method": "cora", "seed": 3})
    document.add_history(entry)
    assert document.history == [entry] and of_type(recorded, "history_changed")[0].entry is entry


# --- properties ---------------------------------------------------------------------------------------------------


def test_set_property_returns_old_value_and_emits_layer_changed(document, recorded):
    layer = document.layers[0]
    assert document.set_property(layer.id, "opacity", 0.25) == 1.0
    [changed] = of_type(recorded, "layer_changed")
    assert (changed.layer, changed.attribute, changed.old, changed.new) == (layer, "opacity", 1.0, 0.25)
    assert layer.opacity == 0.25


@pytest.mark.parametrize(
    ("make", "name", "value", "message"),
    [
        (
            raster_layer,
            "opacity",
            1.5,
            "opacity must be between 0 and 1",
        ),
        (raster_layer, "opacity", -0.1, "opacity must be between"),
        (raster_layer, "name", "   ", "a layer needs a name"),
        (mask_layer, "role", "sky", "mask role must be one of edit, keep"),
        (drag_layer, "points", [((1, 1), (W, 2))], rf"point \({W}, 2\) lies outside the {W}x{H}"),
        (drag_layer, "points", [((-1, 1), (2, 2))], "lies outside"),
        (drag_layer, "regions", [RegionMove("x", scale=-1.0)], "scale must be positive"),
        (
            reference_layer,
            "scale",
            -2,
            "scale must be positive",
        ),
        (reference_layer, "scale", 0, "scale must be positive"),
        (reference_layer, "mask", mask(), "reference mask"),
        (raster_layer, "role", "edit", "no editable property 'role'"),
    ],
)
def test_set_property_refuses_bad_values_and_changes_nothing(document, recorded, make, name, value, message):
    layer = document.add_layer(make())
    before = {field: getattr(layer, field) for field in layer.editable}
    recorded.clear()
    with pytest.raises(ValueError, match=message):
        document.set_property(layer.id, name, value)
    assert recorded == []
    for field, old in before.items():
        assert getattr(layer, field) is old


def test_points_and_regions_are_normalised(document):
    drag = document.add_layer(DragLayer(name="drag"))
    document.set_property(drag.id, "points", [([1, 2], [3, 4.5])])
    document.set_property(drag.id, "regions", [{"mask_layer_id": "m1", "dx": 2, "dy": -1, "scale": 1.5}])
    assert drag.points == [((1.0, 2.0), (3.0, 4.5))]
    assert drag.regions == [RegionMove("m1", 2, -1, 1.5)]


# --- pixels -------------------------------------------------------------------------------------------------------


def test_write_patch_clips_to_the_layer_and_reports_the_written_rect(document, recorded):
    layer = document.layers[0]
    layer.pixels[:] = np.arange(H * W * 4, dtype=np.uint8).reshape(H, W, 4)
    original = layer.pixels.copy()
    patch = solid((9, 9, 9, 9), 4, 3)
    old = document.write_patch(layer.id, -2, -1, patch)  # hangs over the top-left corner
    assert of_type(recorded, "pixels_changed")[0].rect == (0, 0, 2, 2)
    assert (layer.pixels[:2, :2] == 9).all()
    changed = np.zeros((H, W), bool)
    changed[:2, :2] = True
    assert np.array_equal(layer.pixels[~changed], original[~changed])
    assert old.shape == patch.shape


@pytest.mark.parametrize("origin", [(-2, -1), (3, 2), (W - 2, H - 1), (-3, H - 2), (W + 5, 0)])
def test_pixels_returned_by_write_patch_restore_exactly(document, origin):
    layer = document.layers[0]
    layer.pixels[:] = np.random.default_rng(1).integers(0, 256, (H, W, 4), dtype=np.uint8)
    original = layer.pixels.copy()
    old = document.write_patch(layer.id, *origin, solid((200, 100, 50, 255), 4, 3))
    document.write_patch(layer.id, *origin, old)
    assert np.array_equal(layer.pixels, original)


def test_write_patch_refuses_the_wrong_kind_of_patch_and_layers_without_pixels(document):
    raster = document.layers[0]
    with pytest.raises(ValueError, match="does not fit"):
        document.write_patch(raster.id, 0, 0, np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="does not fit"):
        document.write_patch(raster.id, 0, 0, np.zeros((2, 2, 4), np.float32))
    drag = document.add_layer(DragLayer(name="drag"))
    with pytest.raises(ValueError, match="has no pixels to paint"):
        document.write_patch(drag.id, 0, 0, np.zeros((2, 2), np.uint8))


def test_replace_pixels_returns_the_old_array(document):
    layer = document.add_layer(MaskLayer(name="m", mask=mask(7)))
    old = document.replace_pixels(layer.id, mask(200))
    assert (old == 7).all() and (layer.mask == 200).all()
    with pytest.raises(ValueError, match="new pixels are"):
        document.replace_pixels(layer.id, np.zeros((2, 2), np.uint8))


# --- what methods need --------------------------------------------------------------------------------------------


def test_composite_applies_opacity_over_an_opaque_layer():
    document = Document(W, H)
    document.add_layer(RasterLayer(name="red", pixels=solid((255, 0, 0, 255))))
    blue = document.add_layer(RasterLayer(name="blue", pixels=solid((0, 0, 255, 255)), opacity=0.5))
    # 0.5 * blue + 0.5 * red, opaque: 127.5 rounds to 128 (half to even).
    assert tuple(document.composite()[0, 0]) == (128, 0, 128, 255)
    document.set_property(blue.id, "visible", False)
    assert tuple(document.composite()[0, 0]) == (255, 0, 0, 255)


def test_composite_of_half_transparent_layers_over_nothing():
    document = Document(W, H)
    document.add_layer(RasterLayer(name="green", pixels=solid((0, 255, 0, 102))))  # alpha 0.4
    document.add_layer(RasterLayer(name="white", pixels=solid((255, 255, 255, 255)), opacity=0.6))
    # alpha = 0.6 + 0.4 * (1 - 0.6) = 0.76; colour = (0.6 * white + 0.16 * green) / 0.76
    assert tuple(document.composite()[0, 0]) == (201, 255, 201, 194)


def test_composite_ignores_masks_and_empty_documents_are_transparent():
    document = Document(W, H)
    assert not document.composite().any()
    document.add_layer(MaskLayer(name="m", mask=mask(255)))
    assert not document.composite().any()
    assert (document.composite_rgb() == 255).all()  # flattened over white


def test_masks_by_role_unions_visible_masks_per_role(document):
    a, b, keep = mask(), mask(), mask()
    a[0, :4] = 100
    b[0, 2:6] = 200
    keep[5, 5] = 255
    document.add_layer(MaskLayer(name="a", mask=a, role="edit"))
    document.add_layer(MaskLayer(name="b", mask=b, role="edit"))
    document.add_layer(MaskLayer(name="keep", mask=keep, role="keep"))
    hidden = document.add_layer(MaskLayer(name="hidden", mask=mask(255), role="edit"))
    document.add_layer(MaskLayer(name="empty", mask=mask(), role="target"))
    document.set_property(hidden.id, "visible", False)
    merged = document.masks_by_role()
    assert set(merged) == {"edit", "keep"}
    assert merged["edit"].dtype == np.uint8
    assert list(merged["edit"][0]) == [100, 100, 200, 200, 200, 200, 0, 0]
    assert np.array_equal(merged["keep"], keep)


def test_object_layers_are_not_masks_by_role(document):
    document.add_layer(ObjectLayer(name="cat", mask=mask(255), prompt="a tiger", source="cat"))
    assert document.masks_by_role() == {}


# --- construction -------------------------------------------------------------------------------------------------


def test_from_image_turns_rgb_into_opaque_rgba_and_is_unmodified():
    rgb = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    document = Document.from_image(rgb, name="Photo")
    [layer] = document.layers
    assert document.size == (W, H) and layer.name == "Photo" and layer.pixels.shape == (H, W, 4)
    assert np.array_equal(layer.pixels[..., :3], rgb) and (layer.pixels[..., 3] == 255).all()
    assert document.active_id == layer.id and document.modified is False


def test_to_rgba_handles_grey_and_refuses_other_arrays():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    rgba = to_rgba(grey)
    assert rgba.shape == (3, 4, 4) and np.array_equal(rgba[..., 1], grey) and (rgba[..., 3] == 255).all()
    with pytest.raises(ValueError, match="uint8"):
        to_rgba(np.zeros((3, 4, 3), np.float32))
    with pytest.raises(ValueError, match="H x W"):
        to_rgba(np.zeros((3, 4, 2), np.uint8))


def test_document_size_limits():
    with pytest.raises(ValueError, match="outside 1..16384"):
        Document(0, 10)
    with pytest.raises(ValueError, match="outside 1..16384"):
        Document(16385, 10)


# --- observers ----------------------------------------------------------------------------------------------------


def test_an_observer_that_raises_does_not_break_the_mutation_or_later_observers(document, caplog):
    calls = []

    def broken(event):
        raise RuntimeError("observer bug")

    document.events.layer_added.connect(broken)
    document.events.layer_added.connect(calls.append)
    layer = document.add_layer(MaskLayer(name="m", mask=mask()))
    assert document.layers[-1] is layer and document.active_id == layer.id and document.modified
    assert [event.layer for event in calls] == [layer]
    assert "observer of layer_added failed" in caplog.text


def test_disconnected_and_blocked_observers_hear_nothing(document):
    calls = []
    document.events.layer_changed.connect(calls.append)
    with document.events.layer_changed.blocker():
        document.set_property(document.layers[0].id, "name", "quiet")
    document.events.layer_changed.disconnect(calls.append)
    document.set_property(document.layers[0].id, "name", "still quiet")
    assert calls == [] and document.layers[0].name == "still quiet"
