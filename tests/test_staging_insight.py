"""The staging pane's before/after compare and the "why" viewer (insight): what the user sees, the Qt-free
renderers, the protocol's insight contract, and the real producer (ddim-word-swap's cross-attention)."""

from __future__ import annotations

import json
from multiprocessing.reduction import ForkingPickler

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt

from backend.protocol import INSIGHT_KEY, EditRequest, check_insight, without_insight
from desktop_app.canvas.render import from_qimage
from desktop_app.panels import insight as views
from desktop_app.panels.staging import StagingPanel

RED, BLUE, GREY = (220, 30, 30), (30, 40, 210), (128, 128, 128)


def flat(colour, height=64, width=64) -> np.ndarray:
    return np.full((height, width, 3), colour, np.uint8)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


@pytest.fixture
def panel(qtbot) -> StagingPanel:
    panel = StagingPanel()
    qtbot.addWidget(panel)
    panel.resize(360, 420)
    panel.show()
    qtbot.waitExposed(panel)
    return panel


def shown(panel: StagingPanel) -> np.ndarray:
    """What the image view shows, as RGB."""
    return from_qimage(panel.view.grab().toImage())[..., :3]


def pixel(panel: StagingPanel, x: int) -> tuple[int, ...]:
    """The shown colour at widget column x, on the image's middle row."""
    return tuple(int(v) for v in shown(panel)[panel.view.image_rect().center().y(), x])


def near(colour, expected, tolerance=12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(colour, expected, strict=True))


# --- compare ------------------------------------------------------------------------------------------------


def test_compare_split_shows_before_left_and_result_right(panel, qtbot):
    result = flat(RED)
    panel.show_result(result, {"method": "sdedit"}, "Result", before=flat(BLUE, 32, 32))  # other size: fitted
    assert panel.compare_bar.isVisible() and panel.before_button.isVisible()
    panel.compare_slider.setValue(300)
    rect, split = panel.view.image_rect(), panel.view.split_x()
    assert split == rect.left() + round(0.3 * rect.width())
    assert near(pixel(panel, split - 4), BLUE) and near(pixel(panel, rect.left() + 2), BLUE)
    assert near(pixel(panel, split + 4), RED) and near(pixel(panel, rect.right() - 2), RED)
    assert min(pixel(panel, split)) > 200  # the thin light line at the split

    # dragging on the picture moves the split and the slider with it
    middle = rect.center().y()
    qtbot.mousePress(panel.view, Qt.MouseButton.LeftButton, pos=QPoint(rect.left() + rect.width() // 2, middle))
    qtbot.mouseMove(panel.view, QPoint(rect.left() + round(0.8 * rect.width()), middle))
    qtbot.mouseRelease(
        panel.view, Qt.MouseButton.LeftButton, pos=QPoint(rect.left() + round(0.8 * rect.width()), middle)
    )
    assert abs(panel.compare_slider.value() - 800) <= 10
    assert near(pixel(panel, rect.left() + round(0.7 * rect.width())), BLUE)
    assert panel.array() is result


def test_before_button_and_backslash_show_the_picture_before(panel, qtbot):
    result = flat(RED)
    panel.show_result(result, {"method": "sdedit"}, "Result", before=flat(BLUE))
    rect = panel.view.image_rect()
    panel.compare_slider.setValue(0)  # all result
    assert near(pixel(panel, rect.center().x()), RED)

    qtbot.mouseClick(panel.before_button, Qt.MouseButton.LeftButton)
    assert panel.before_button.isChecked()
    everywhere = shown(panel)[rect.top() + 2 : rect.bottom() - 2, rect.left() + 2 : rect.right() - 2]
    assert near(everywhere.reshape(-1, 3).min(axis=0), BLUE) and near(everywhere.reshape(-1, 3).max(axis=0), BLUE)
    np.testing.assert_array_equal(panel.array(), result)  # accepting takes the result, whatever is shown

    panel.activateWindow()
    qtbot.waitUntil(panel.isActiveWindow)
    qtbot.keyClick(panel, Qt.Key.Key_Backslash)
    assert not panel.before_button.isChecked() and near(pixel(panel, rect.center().x()), RED)
    qtbot.keyClick(panel, Qt.Key.Key_Backslash)
    assert panel.before_button.isChecked() and near(pixel(panel, rect.center().x()), BLUE)


def test_previews_and_results_without_a_before_show_no_compare(panel):
    panel.show_result(flat(RED), {"method": "sdedit"}, "Result", before=flat(BLUE))
    panel.before_button.setChecked(True)
    panel.show_preview(flat(GREY), 3)
    assert not panel.compare_bar.isVisible() and not panel.insight_bar.isVisible()
    rect = panel.view.image_rect()
    assert near(pixel(panel, rect.left() + 2), GREY) and near(pixel(panel, rect.right() - 2), GREY)
    panel.show_result(flat(RED), {"method": "sdedit"}, "Result")
    assert not panel.compare_bar.isVisible() and near(pixel(panel, rect.left() + 2), RED)
    panel.clear()
    assert panel.array() is None and not panel.compare_bar.isVisible()


# --- the insight selector -----------------------------------------------------------------------------------


def hot_left_insight() -> dict:
    maps = np.zeros((2, 4, 4), np.uint8)
    maps[1, :, :2] = 255  # "cat" attends to the left half
    return {
        "attention": {"tokens": ["a", "cat"], "maps": maps},
        "correspondences": {"source": [[8.0, 32.0]], "target": [[56.0, 32.0]], "score": [1.0]},
        "note": "cross-attention of the target prompt, averaged over steps",
    }


def test_selector_lists_tokens_and_shows_the_chosen_heat_map(panel):
    result = flat(GREY)
    panel.show_result(result, {"method": "m", INSIGHT_KEY: hot_left_insight()}, "Result", before=flat(BLUE))
    combo = panel.insight_combo
    assert panel.insight_bar.isVisible()
    assert [combo.itemText(i) for i in range(combo.count())] == [
        "Result",
        "Attention: a",
        "Attention: cat",
        "Correspondences",
    ]
    assert "averaged over steps" in panel.insight_note.text()

    combo.setCurrentIndex(2)
    rect = panel.view.image_rect()
    left, right = pixel(panel, rect.left() + rect.width() // 5), pixel(panel, rect.right() - rect.width() // 5)
    assert luminance(np.array(left)) > luminance(np.array(right)) + 60
    assert not panel.compare_bar.isEnabled()  # the split compares result and before only
    assert panel.array() is result

    combo.setCurrentIndex(3)  # before and after side by side: wider than the result alone
    assert panel.view.array().shape[1] == 2 * 64 + views.GAP
    combo.setCurrentIndex(0)
    assert panel.compare_bar.isEnabled() and panel.view.array() is result


def test_metadata_without_insight_shows_no_selector(panel):
    panel.show_result(flat(GREY), {"method": "m", INSIGHT_KEY: hot_left_insight()}, "Result")
    assert panel.insight_bar.isVisible()
    panel.show_result(flat(GREY), {"method": "m"}, "Result")
    assert not panel.insight_bar.isVisible() and panel.insight_combo.count() == 1


def test_malformed_insight_is_ignored_not_fatal(panel):
    bad = {"attention": {"tokens": ["a", "b"], "maps": np.zeros((3, 4, 4), np.uint8)}}
    panel.show_result(flat(GREY), {"method": "m", INSIGHT_KEY: bad}, "Result")
    assert not panel.insight_bar.isVisible() and panel.metadata is not None


# --- renderers (no widgets) ---------------------------------------------------------------------------------


def test_heat_overlay_is_brightest_where_the_map_is_high():
    heat = np.zeros((8, 8), np.uint8)
    heat[:4, :4] = 255
    overlay = views.attention_overlay(flat(GREY, 64, 96), heat)
    assert overlay.shape == (64, 96, 3) and overlay.dtype == np.uint8  # upsampled to the result
    light = luminance(overlay)
    assert light[:24, :40].mean() > light[40:, 56:].mean() + 60
    ramp = luminance(views.heat_colours(np.arange(256, dtype=np.uint8)[None]))[0]
    assert np.all(np.diff(ramp) >= -0.5)  # brighter colour for every higher value


def test_correspondence_view_draws_lines_between_matched_points():
    before, after = flat((0, 0, 0), 40, 40), flat((0, 0, 0), 40, 40)
    picture = views.correspondence_view(before, after, np.array([[5.0, 20.0]]), np.array([[35.0, 20.0]]), [1.0])
    offset = 40 + views.GAP
    assert picture.shape == (40, offset + 40, 3)
    row = picture[20, 5 : offset + 35]
    assert (row[:, 1] > 150).all() and (row[:, 0] < 60).all()  # a green (score 1) line all the way
    assert picture[5, :40].max() == 0 and picture[35, offset:].max() == 0  # nothing away from it

    weak = views.correspondence_view(before, after, np.array([[5.0, 20.0]]), np.array([[35.0, 20.0]]), [0.0])
    assert weak[20, 20, 0] > 200 and weak[20, 20, 1] < 60  # a weak match is red


def test_correspondence_source_points_follow_a_differently_sized_input():
    before, after = flat((0, 0, 0), 20, 20), flat((0, 0, 0), 40, 40)  # the input was half the result's size
    picture = views.correspondence_view(before, after, np.array([[10.0, 5.0]]), np.array([[30.0, 10.0]]))
    assert picture[10, 20].max() > 150  # (10, 5) in the input's pixels lands at (20, 10) in the view
    assert picture[5, 10].max() == 0


def test_many_matches_are_subsampled_evenly():
    chosen = views.evenly(500)
    assert len(chosen) == views.MAX_LINES and chosen[0] == 0 and chosen[-1] == 499
    assert np.ptp(np.diff(chosen)) <= 1
    np.testing.assert_array_equal(views.evenly(10), np.arange(10))


def test_choices_follow_the_insight():
    assert views.choices(None) == [("Result", "result")]
    assert [label for label, _ in views.choices(check_insight(hot_left_insight()))][1:] == [
        "Attention: a",
        "Attention: cat",
        "Correspondences",
    ]


# --- the contract -------------------------------------------------------------------------------------------


def test_check_insight_normalises_and_names_what_is_wrong():
    floats = {"attention": {"tokens": ["dog"], "maps": np.array([[0.0, 0.5], [0.25, 2.0]])}}
    maps = check_insight(floats)["attention"]["maps"]
    assert maps.dtype == np.uint8 and maps.shape == (1, 2, 2) and maps.max() == 255 and maps[0, 0, 1] == 64
    matches = check_insight({"correspondences": {"source": [[1, 2], [np.nan, 0]], "target": [[3, 4], [5, 6]]}})
    assert matches["correspondences"]["source"].tolist() == [[1.0, 2.0]]  # the non-finite row is dropped
    with pytest.raises(ValueError, match="tokens=2"):
        check_insight({"attention": {"tokens": ["a", "b"], "maps": np.zeros((3, 4, 4), np.uint8)}})
    with pytest.raises(ValueError, match="as many source as target"):
        check_insight({"correspondences": {"source": [[0, 0]], "target": [[0, 0], [1, 1]]}})
    with pytest.raises(ValueError, match="unknown insight part"):
        check_insight({"heatmap": 1})
    assert without_insight({"seed": 1, INSIGHT_KEY: {}}) == {"seed": 1}


# --- the producers ------------------------------------------------------------------------------------------


def test_attention_insight_puts_each_word_where_it_attended():
    import torch

    from backend.engine.attention import AttentionCall, AttentionStore
    from backend.engine.insight import attention_insight

    store = AttentionStore(kind="cross", per_step=False, running_sum=True)
    for layer, side in (("up_blocks.1.attn2", 2), ("up_blocks.2.attn2", 4)):  # two resolutions of a 4x4 latent
        probs = torch.full((1, 2, side, side, 77), 0.01)
        probs[..., : side // 2, 2] = 1.0  # token 2 attends to the left half
        probs[..., side // 2 :, 3] = 1.0  # token 3 to the right half
        store.record(AttentionCall(layer, 0, True), probs.reshape(1, 2, side * side, 77))
    insight = attention_insight(store, [("red", [2]), ("ball", [3])], (4, 4), note="test")
    maps = insight["attention"]["maps"]
    assert insight["attention"]["tokens"] == ["red", "ball"] and maps.shape == (2, 4, 4) and maps.dtype == np.uint8
    assert maps[0, :, :2].mean() > maps[0, :, 2:].mean() + 50 and maps[1, :, 2:].mean() > maps[1, :, :2].mean() + 50
    assert maps.max(axis=(1, 2)).tolist() == [255, 255]


def test_correspondence_insight_helper_follows_the_contract():
    import torch

    from backend.engine.insight import correspondence_insight

    insight = correspondence_insight(torch.tensor([[1.0, 2.0]]), [[3.0, 4.0]], [1.5], note="matches")
    assert insight["correspondences"]["source"].dtype == np.float32
    assert insight["correspondences"]["score"].tolist() == [1.0] and insight["note"] == "matches"


def test_word_swap_returns_one_heat_map_per_target_word(run_job, scene, tiny, tmp_path):
    from backend.engine.insight import prompt_words
    from backend.imageio import write_result

    request = EditRequest(
        method="ddim-word-swap",
        image=scene,
        source_prompt="a red square",
        target_prompt="a shiny blue square",
        params={"steps": 2},
        model="tiny",
    )
    final = run_job(request)[-1]
    assert final.kind == "result", final.message
    insight = final.metadata[INSIGHT_KEY]
    attention = insight["attention"]
    assert attention["tokens"] == ["a", "shiny", "blue", "square"] and insight["note"]
    assert attention["maps"].dtype == np.uint8 and attention["maps"].shape == (4, 8, 8)  # the 8x8 latent grid
    assert attention["maps"].max(axis=(1, 2)).tolist() == [255] * 4
    # the worker pickles events onto the queue: the maps arrive intact
    sent = ForkingPickler.loads(ForkingPickler.dumps(final))
    np.testing.assert_array_equal(sent.metadata[INSIGHT_KEY]["attention"]["maps"], attention["maps"])
    # saved results carry no insight
    path = write_result(tmp_path / "out.png", final.image, final.metadata)
    from PIL import Image

    with Image.open(path) as saved:
        assert INSIGHT_KEY not in json.loads(saved.text["atelier"])
    assert [positions for _, positions in prompt_words(tiny, "a shiny blue square")] == [[1], [2], [3], [4]]
