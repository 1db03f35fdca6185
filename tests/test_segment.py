"""Click-to-segment: the offline segmenter against the toy world's ground truth, prompt checking, the worker query
and the client call, and SAM's loading rules and embedding cache (with a stub predictor: no SAM weights here)."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time

import numpy as np
import pytest
from scipy import ndimage

from backend.client import BackendClient, BackendError
from backend.eval.toyworld import mask_iou
from backend.models.toyworld.world import Background, Scene, SceneObject, ground_truth, render, scene_for_seed
from backend.protocol import Event, Query
from backend.segment import (
    FallbackSegmenter,
    SamSegmenter,
    SegmenterError,
    SegmenterUnavailable,
    check_prompts,
    make_segmenter,
    sam_model_type,
    segment,
)

SIZE = 128
SCENES = 64  # seeded toy-world scenes (1-3 objects each: ~110 objects)


def body_point(mask: np.ndarray) -> tuple[int, int]:
    """Where a user clicks an object: the pixel of its body nearest its centroid. The body is the mask less its
    anti-aliased rim, so a ring is clicked on the ring itself, not on its hole or its half-covered edge."""
    ys, xs = np.nonzero(mask)
    centre = xs.mean(), ys.mean()
    body = ndimage.binary_erosion(mask)
    ys, xs = np.nonzero(body if body.any() else mask)
    nearest = np.argmin((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2)
    return int(xs[nearest]), int(ys[nearest])


def padded_box(mask: np.ndarray, pad: int = 3) -> tuple[int, int, int, int]:
    """A box a user drags loosely around an object."""
    ys, xs = np.nonzero(mask)
    height, width = mask.shape
    return (
        max(0, xs.min() - pad),
        max(0, ys.min() - pad),
        min(width, xs.max() + 1 + pad),
        min(height, ys.max() + 1 + pad),
    )


@pytest.fixture(scope="module")
def world() -> list[tuple[Scene, np.ndarray, list]]:
    scenes = []
    for index in range(SCENES):
        scene = scene_for_seed(11, index)
        image, masks = render(scene, SIZE)
        scenes.append((scene, image, ground_truth(scene, SIZE, masks)))
    return scenes


def report(label: str, ious: list[float]) -> np.ndarray:
    values = np.array(ious)
    print(f"\n{label}: {len(values)} objects, IoU mean {values.mean():.3f}, min {values.min():.3f}")
    return values


# --- the offline segmenter on the toy world -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def clicked(world) -> list[tuple[Scene, object, np.ndarray]]:
    """(scene, object truth, mask from one click on the object's body) for every object of the world."""
    segmenter = FallbackSegmenter()
    return [
        (scene, truth, segmenter.segment(image, include=[body_point(truth.mask)]))
        for scene, image, truths in world
        for truth in truths
    ]


def test_one_click_selects_each_toy_world_object(clicked) -> None:
    ious, worst = [], (1.0, "")
    for scene, truth, mask in clicked:
        assert mask.shape == truth.mask.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        iou = mask_iou(mask > 0, truth.mask)
        ious.append(iou)
        worst = min(worst, (iou, f"{truth.fill} {truth.shape} on {scene.background.texture} background"))
    values = report("one click per object", ious)
    print(f"worst: {worst[1]} ({worst[0]:.3f})")
    assert len(values) >= 60
    assert values.mean() >= 0.9 and values.min() >= 0.7


def test_rings_keep_their_hole_and_patterned_fills_are_whole(clicked) -> None:
    for _, truth, mask in clicked:
        if truth.shape == "ring":
            hole = ndimage.binary_fill_holes(truth.mask) & ~ndimage.binary_dilation(truth.mask, iterations=2)
            assert not (mask[hole]).any(), "a ring's hole is background"
        if truth.fill != "solid":
            assert (mask[truth.mask] > 0).mean() > 0.95, f"the tint of a {truth.fill} fill is part of the object"


def test_a_box_alone_selects_the_object_in_it(world) -> None:
    segmenter = FallbackSegmenter()
    ious = [
        mask_iou(segmenter.segment(image, box=padded_box(truth.mask)) > 0, truth.mask)
        for _, image, truths in world
        for truth in truths
    ]
    values = report("box without clicks", ious)
    assert values.mean() >= 0.85 and values.min() >= 0.6


def test_big_images_are_segmented_as_well(world) -> None:
    segmenter = FallbackSegmenter()
    ious = []
    for scene, _, _ in world[:12]:
        image, masks = render(scene, 512)
        ious += [mask_iou(segmenter.segment(image, include=[body_point(mask)]) > 0, mask) for mask in masks]
    values = report("one click per object at 512 px", ious)
    assert values.mean() >= 0.9


def test_non_square_images_keep_x_and_y_apart(world) -> None:
    segmenter = FallbackSegmenter()
    ious = []
    for _, image, truths in world[:16]:
        wide = np.concatenate([image, np.repeat(image[:, -1:], SIZE // 2, axis=1)], axis=1)  # background widened
        tall = np.concatenate([image, np.repeat(image[-1:], SIZE, axis=0)], axis=0)
        for padded in (wide, tall):
            for truth in truths:
                expected = np.zeros(padded.shape[:2], bool)
                expected[:SIZE, :SIZE] = truth.mask
                ious.append(mask_iou(segmenter.segment(padded, include=[body_point(truth.mask)]) > 0, expected))
    values = report("one click per object, 192 x 128 and 128 x 256 images", ious)
    assert values.mean() >= 0.9


def touching(first: str, second: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A circle and a square side by side and touching (the world itself always leaves a gap)."""
    circle = SceneObject("circle", first, "big", "solid", 0.35, 0.5)
    square = SceneObject("square", second, "big", "solid", 0.35 + 0.2 + 0.176, 0.5)
    image, (circle_mask, square_mask) = render(Scene((circle, square), Background("white")), SIZE)
    assert (ndimage.binary_dilation(circle_mask) & square_mask).any()
    return image, circle_mask, square_mask


@pytest.mark.parametrize("colours", [("red", "orange"), ("blue", "purple"), ("red", "red")])
def test_an_exclude_click_keeps_a_touching_neighbour_out(colours) -> None:
    image, circle, square = touching(*colours)
    mask = segment(image, include=[body_point(circle)], exclude=[body_point(square)]) > 0
    assert mask_iou(mask, circle) >= 0.9
    assert mask[square].mean() <= 0.02


def test_more_clicks_select_more_objects_and_excludes_alone_select_nothing(world) -> None:
    _, image, truths = next(item for item in world if len(item[2]) >= 2)
    first, second = truths[0].mask, truths[1].mask
    both = segment(image, include=[body_point(first), body_point(second)]) > 0
    assert mask_iou(both, first | second) >= 0.85
    assert not segment(image, exclude=[body_point(first)]).any()


def test_box_corners_in_any_order_rgba_and_grey_images(world) -> None:
    _, image, truths = world[0]
    x0, y0, x1, y1 = padded_box(truths[0].mask)
    expected = segment(image, box=(x0, y0, x1, y1))
    np.testing.assert_array_equal(segment(image, box=(x1, y1, x0, y0)), expected)  # dragged up-left
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
    np.testing.assert_array_equal(segment(rgba, box=(x0, y0, x1, y1)), expected)
    grey = np.full((32, 48), 40, np.uint8)
    grey[8:24, 10:30] = 220
    assert mask_iou(segment(grey, include=[(20, 16)]) > 0, grey > 100) == 1.0


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({}, "nothing to segment"),
        ({"include": [(200, 5)]}, "include point (200, 5) is outside the 128 x 128 image"),
        ({"include": [(5, -1)]}, "outside"),
        ({"exclude": [(5, 128)], "include": [(5, 5)]}, "exclude point (5, 128) is outside"),
        ({"include": [(float("nan"), 3)]}, "not a finite position"),
        ({"include": [(1, 2, 3)]}, "(x, y) pairs"),
        ({"include": ["here"]}, "(x, y) pairs"),
        ({"box": (10, 10, 10, 60)}, "degenerate"),
        ({"box": (10, 10, 11, 60)}, "at least 2 x 2 pixels"),
        ({"box": (130, 130, 160, 160)}, "degenerate"),
        ({"box": (1, 2, 3)}, "four finite numbers"),
        ({"box": (0, 0, 40, 40), "include": [(60, 60)]}, "outside the box"),
    ],
)
def test_bad_prompts_say_what_is_wrong(prompts, message) -> None:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    with pytest.raises(SegmenterError) as raised:
        segment(image, **prompts)
    assert message in str(raised.value)
    assert raised.value.kind == "bad-input"


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (None, "no image"),
        ([[1, 2], [3, 4]], "numpy array"),
        (np.zeros((8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 2), np.uint8), "H x W x 3"),
        (np.zeros((1, 8, 3), np.uint8), "too small"),
    ],
)
def test_bad_images_say_what_is_wrong(image, message) -> None:
    with pytest.raises(SegmenterError) as raised:
        segment(image, include=[(0, 0)])
    assert message in str(raised.value)


def test_a_box_reaching_past_the_image_is_clipped() -> None:
    prompts = check_prompts((100, 80, 3), include=[(10.5, 20)], box=(-10, 5, 500, 60))
    np.testing.assert_array_equal(prompts.box, [0, 5, 80, 60])
    np.testing.assert_array_equal(prompts.include, [[10.5, 20]])


def test_timing_per_click() -> None:
    """Not an assert (timings are benchmarks): the UX target is <= 0.5 s per click, printed for the report."""
    scene = scene_for_seed(11, 3)
    for size in (128, 512):
        image, masks = render(scene, size)
        segmenter = FallbackSegmenter()
        point = body_point(masks[0])
        started = time.perf_counter()
        segmenter.segment(image, include=[point])
        first = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(3):
            segmenter.segment(image, include=[point], exclude=[(1, 1)])
        again = (time.perf_counter() - started) / 3
        print(f"\n{size} x {size}: first click {first * 1000:.0f} ms, next clicks {again * 1000:.0f} ms each")


# --- the worker query and the client ------------------------------------------------------------------------------


def answer(state, **args) -> Event:
    from backend.jobs import handle

    events: list[Event] = []
    handle(Query(what="segment", args=args), state, events.append, threading.Event())
    assert len(events) == 1 and events[0].terminal
    return events[0]


def test_segment_query_returns_the_mask(world) -> None:
    from backend.jobs import WorkerState

    _, image, truths = world[0]
    state = WorkerState({"device": "cpu"})
    event = answer(state, image=image, include=[body_point(truths[0].mask)], exclude=[], box=None)
    assert event.kind == "result", event.message
    assert event.metadata["segmenter"] == "fallback" and isinstance(event.metadata["seconds"], float)
    assert mask_iou(event.metadata["mask"] > 0, truths[0].mask) >= 0.9
    assert "note" not in event.metadata
    assert state.segmenter() is state.segmenter()  # made once, kept with its per-image cache


def test_segment_query_bad_input_is_a_bad_input_error() -> None:
    from backend.jobs import WorkerState

    state = WorkerState({})
    event = answer(state, image=np.zeros((16, 16, 3), np.uint8), include=[(40, 2)])
    assert (event.kind, event.error_kind) == ("error", "bad-input") and "outside" in event.message
    event = answer(state, include=[(1, 1)])
    assert (event.kind, event.error_kind) == ("error", "bad-input") and "no image" in event.message


def test_segment_query_says_why_sam_was_not_used(tmp_path) -> None:
    from backend.jobs import WorkerState

    state = WorkerState({"sam_checkpoint": str(tmp_path / "sam_vit_b_01ec64.pth")})
    image = np.zeros((16, 16, 3), np.uint8)
    event = answer(state, image=image, box=(2, 2, 12, 12))
    assert event.kind == "result" and event.metadata["segmenter"] == "fallback"
    assert "does not exist" in event.metadata["note"]


class _Queue(queue.Queue):
    def cancel_join_thread(self) -> None:
        pass

    def close(self) -> None:
        pass


class _InThreadWorker:
    """A worker 'process' that is a thread running the real backend.jobs.handle (no torch import per test)."""

    def __init__(self, target: object, args: tuple, name: str, daemon: bool) -> None:
        from backend.jobs import WorkerState

        self.jobs, self.events, self.cancel, settings = args
        self.state = WorkerState(settings)
        self.pid, self.exitcode = 1, None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        from backend.jobs import handle

        while (job := self.jobs.get()) is not None:
            handle(job, self.state, self.events.put, self.cancel)
        self.exitcode = 0

    def start(self) -> None:
        self._thread.start()

    def is_alive(self) -> bool:
        return self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def terminate(self) -> None:
        self.exitcode = -15

    kill = terminate


class _InThreadContext:
    Queue = _Queue
    Event = threading.Event
    Process = _InThreadWorker


def test_client_segment(world) -> None:
    _, image, truths = world[1]
    with BackendClient(context=_InThreadContext()) as client:
        answer = client.segment(image, include=[body_point(truths[0].mask)], timeout=30)
        assert answer["segmenter"] == "fallback"
        assert mask_iou(answer["mask"] > 0, truths[0].mask) >= 0.9
        with pytest.raises(BackendError) as raised:
            client.segment(image, timeout=30)
        assert raised.value.event.error_kind == "bad-input" and "nothing to segment" in str(raised.value)


def test_without_sam_the_client_answers_segment_queries_itself_as_the_worker_would(world) -> None:
    from backend.jobs import WorkerState

    _, image, truths = world[2]
    state = WorkerState({})
    client = BackendClient({"sam_checkpoint": "  "})  # blank is unset, as in make_segmenter; never started
    for args in (
        dict(image=image, include=[body_point(truths[0].mask)], exclude=[], box=None),
        dict(image=image, include=[(500, 2)]),  # outside the image
        dict(include=[(1, 1)]),  # no image
        dict(image=image, box=(10, 10, 11, 40)),  # a degenerate box
    ):
        query = Query(what="segment", args=args)
        assert client.submit(query) == query.job_id
        here, worker_side = client.poll(0.0), answer(state, **args)
        assert here.job_id == query.job_id and here.terminal
        assert (here.kind, here.error_kind, here.message, here.hint) == (
            worker_side.kind,
            worker_side.error_kind,
            worker_side.message,
            worker_side.hint,
        )
        if here.kind == "result":
            assert here.metadata.keys() == worker_side.metadata.keys() == {"mask", "segmenter", "seconds"}
            np.testing.assert_array_equal(here.metadata["mask"], worker_side.metadata["mask"])
            assert mask_iou(here.metadata["mask"] > 0, truths[0].mask) >= 0.9
        else:
            assert here.error_kind == "bad-input"
    assert client.pid is None and client.poll(0.0) is None  # answered without a worker process


def test_with_a_sam_checkpoint_set_segment_queries_go_to_the_worker(world, tmp_path) -> None:
    _, image, truths = world[1]
    checkpoint = tmp_path / "sam_vit_b_01ec64.pth"  # missing: the worker falls back to the built-in segmenter
    with BackendClient({"sam_checkpoint": str(checkpoint)}, context=_InThreadContext()) as client:
        answer = client.segment(image, include=[body_point(truths[0].mask)], timeout=30)
        # Only the worker says why SAM is not used: the fast lane's segmenter was never asked for SAM.
        assert answer["segmenter"] == "fallback" and "does not exist" in answer["note"]
        assert mask_iou(answer["mask"] > 0, truths[0].mask) >= 0.9
        with pytest.raises(BackendError) as raised:
            client.segment(image, include=[(500, 2)], timeout=30)
        assert raised.value.event.error_kind == "bad-input" and "outside" in str(raised.value)


# --- SAM ----------------------------------------------------------------------------------------------------------


def test_missing_sam_checkpoint_falls_back_with_a_logged_reason(tmp_path, caplog) -> None:
    missing = tmp_path / "sam_vit_h_4b8939.pth"
    with caplog.at_level(logging.WARNING, logger="backend.segment"):
        segmenter = make_segmenter({"sam_checkpoint": str(missing)})
    assert isinstance(segmenter, FallbackSegmenter) and segmenter.name == "fallback"
    assert str(missing) in segmenter.reason and "does not exist" in segmenter.reason
    assert "using the built-in segmenter" in caplog.text and str(missing) in caplog.text
    assert make_segmenter({}).reason == "" and make_segmenter({"sam_checkpoint": "  "}).reason == ""


def test_sam_unavailable_messages_say_what_is_missing(tmp_path, monkeypatch) -> None:
    missing = tmp_path / "sam.pth"
    with pytest.raises(SegmenterUnavailable) as raised:
        SamSegmenter(missing)
    assert f"the SAM checkpoint {missing} does not exist" in str(raised.value) and raised.value.hint
    present = tmp_path / "sam_vit_b.pth"
    present.write_bytes(b"not weights")
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # as when torchvision is missing: import fails
    with pytest.raises(SegmenterUnavailable) as raised:
        SamSegmenter(present)
    assert "segment-anything can't be imported" in str(raised.value) and "torchvision" in str(raised.value)
    with pytest.raises(SegmenterUnavailable, match="unknown SAM model type"):
        SamSegmenter(present, model_type="vit_x", predictor=object())


def test_sam_model_type_from_name_or_size(tmp_path) -> None:
    assert sam_model_type(tmp_path / "sam_vit_b_01ec64.pth") == "vit_b"
    assert sam_model_type(tmp_path / "SAM-ViT-L.safetensors") == "vit_l"
    assert sam_model_type(tmp_path / "sam_vit_h_4b8939.pth") == "vit_h"
    for size, expected in ((375 * 2**20, "vit_b"), (1250 * 2**20, "vit_l"), (2560 * 2**20, "vit_h")):
        path = tmp_path / f"weights-{size}.pth"
        with open(path, "wb") as file:
            file.truncate(size)  # sparse: no disk used
        assert sam_model_type(path) == expected


class StubPredictor:
    """SamPredictor's surface: set_image computes 'features' (counted), predict returns three scored masks."""

    def __init__(self) -> None:
        self.encoded: list[int] = []
        self.calls: list[dict] = []
        self.features = None
        self.original_size = self.input_size = None
        self.is_image_set = False

    def set_image(self, image: np.ndarray) -> None:
        self.encoded.append(int(image.sum()))
        self.features = int(image.sum())  # stands for the embedding: which image the predictor now holds
        self.original_size = self.input_size = image.shape[:2]
        self.is_image_set = True

    def predict(self, point_coords, point_labels, box, multimask_output):
        self.calls.append(dict(points=point_coords, labels=point_labels, box=box, features=self.features))
        height, width = self.original_size
        masks = np.zeros((3, height, width), bool)
        masks[1, : height // 2] = True  # the best-scoring one
        return masks, np.array([0.2, 0.9, 0.5]), np.zeros((3, 256, 256))


def test_sam_embeds_each_image_once_and_keeps_the_last_few(tmp_path) -> None:
    stub = StubPredictor()
    sam = SamSegmenter(tmp_path / "sam_vit_b.pth", predictor=stub, cached_images=2)
    first, second, third = (np.full((16, 16, 3), value, np.uint8) for value in (1, 2, 3))
    mask = sam.segment(first, include=[(3, 4)])
    sam.segment(first, include=[(3, 4), (8, 8)], exclude=[(1, 1)], box=(0, 0, 12, 12))
    assert stub.encoded == [first.sum()]  # two clicks on one image: one embedding
    assert mask.dtype == np.uint8 and mask[:8].all() and not mask[8:].any()  # the best-scoring mask, as 0/255
    call = stub.calls[-1]
    np.testing.assert_array_equal(call["points"], [[3, 4], [8, 8], [1, 1]])
    np.testing.assert_array_equal(call["labels"], [1, 1, 0])
    np.testing.assert_array_equal(call["box"], [0, 0, 12, 12])
    sam.segment(second, include=[(3, 4)])
    assert stub.encoded == [first.sum(), second.sum()]  # a new image: embedded
    sam.segment(first, include=[(3, 4)])
    assert len(stub.encoded) == 2 and stub.calls[-1]["features"] == first.sum()  # back: restored, not re-embedded
    sam.segment(third, box=(1, 1, 9, 9))
    assert stub.calls[-1]["points"] is None and stub.calls[-1]["labels"] is None
    sam.segment(second, include=[(3, 4)])  # evicted by the third (two kept): embedded again
    assert stub.encoded == [first.sum(), second.sum(), third.sum(), second.sum()] and sam.encoded == 4
    with pytest.raises(SegmenterError):
        sam.segment(first, include=[(99, 0)])
    assert not sam.segment(first, exclude=[(2, 2)]).any()
