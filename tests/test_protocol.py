"""The GUI <-> backend protocol: lossless round trips, and parameter checks that name the problem."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from backend.protocol import (
    EVENT_KINDS,
    EditRequest,
    Event,
    MethodInfo,
    ObjectPrompt,
    ParamSpec,
    PointPair,
    validate_params,
)

sides = st.integers(1, 12)
images = st.tuples(sides, sides).flatmap(lambda hw: arrays(np.uint8, (*hw, 3)))
masks = st.tuples(sides, sides).flatmap(lambda hw: arrays(np.uint8, hw))
text = st.text(max_size=40)
coordinates_1d = st.floats(0, 4096, allow_nan=False)
coordinates = st.tuples(coordinates_1d, coordinates_1d)
scalars = st.one_of(st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False), st.booleans(), text)

requests = st.builds(
    EditRequest,
    method=st.sampled_from(["sdedit", "dragon-move", "mde-edit"]),
    image=st.none() | images,
    params=st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True), scalars, max_size=4),
    masks=st.dictionaries(st.sampled_from(["object", "target", "keep", "edit"]), masks, max_size=3),
    points=st.lists(st.builds(PointPair, handle=coordinates, target=coordinates), max_size=3),
    reference_image=st.none() | images,
    reference_mask=st.none() | masks,
    reference_placement=st.none() | st.tuples(coordinates_1d, coordinates_1d, st.floats(0.01, 100)),
    move=st.none() | st.tuples(coordinates_1d, coordinates_1d, st.floats(0.01, 100)),
    source_prompt=text,
    target_prompt=text,
    negative_prompt=text,
    object_prompts=st.lists(st.builds(ObjectPrompt, mask=masks, prompt=text, source=text), max_size=2),
    seed=st.integers(0, 2**32 - 1),
    model=st.sampled_from(["tiny", "sd15", "/models/my model"]),
)

events = st.builds(
    Event,
    kind=st.sampled_from(EVENT_KINDS),
    job_id=st.from_regex(r"[0-9a-f]{12}", fullmatch=True),
    step=st.integers(0, 1000),
    total=st.integers(0, 1000),
    stage=text,
    image=st.none() | images,
    message=text,
    error_kind=text,
    hint=text,
    metadata=st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), scalars, max_size=4),
)


@settings(max_examples=60, deadline=None)
@given(requests)
def test_edit_request_round_trips_through_json(request):
    data = json.loads(json.dumps(request.to_dict()))
    back = EditRequest.from_dict(data)
    assert back == request
    assert back.masks.keys() == request.masks.keys()
    for role, mask in request.masks.items():
        np.testing.assert_array_equal(back.masks[role], mask)
    if request.image is not None:
        np.testing.assert_array_equal(back.image, request.image)
    assert [p.handle for p in back.points] == [tuple(p.handle) for p in request.points]


@settings(max_examples=60, deadline=None)
@given(events)
def test_event_round_trips_through_json(event):
    back = Event.from_dict(json.loads(json.dumps(event.to_dict())))
    assert back == event
    assert back.terminal == (event.kind in ("result", "error", "cancelled"))


def test_unknown_event_kind_is_refused():
    with pytest.raises(ValueError, match="unknown event kind 'finished'"):
        Event(kind="finished", job_id="x")


def test_recipe_from_a_newer_protocol_is_refused():
    data = EditRequest(method="sdedit").to_dict() | {"protocol": 99}
    with pytest.raises(ValueError, match="newer Atelier"):
        EditRequest.from_dict(data)


def test_method_info_round_trips():
    info = MethodInfo(
        "m",
        "M",
        "d",
        ("sd1",),
        ("image", "mask:object"),
        (ParamSpec("mode", "choice", "a", choices=("a", "b")), ParamSpec("w", "float", 1.0, minimum=0, maximum=2)),
    )
    assert MethodInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


STEPS = ParamSpec("steps", "int", 50, minimum=1, maximum=200)
SCALE = ParamSpec("scale", "float", 7.5, minimum=1.0, maximum=30.0)
MODE = ParamSpec("mode", "choice", "move", choices=("move", "resize"))
FLAG = ParamSpec("flag", "bool", False)


def test_params_are_filled_with_defaults_and_coerced_from_strings():
    assert validate_params([STEPS, SCALE, MODE, FLAG], {"steps": "20", "flag": "yes"}) == {
        "steps": 20,
        "scale": 7.5,
        "mode": "move",
        "flag": True,
    }


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"steps": 0}, "'steps' = 0 is below its minimum 1"),
        ({"steps": 2.5}, "'steps' expects int"),
        ({"scale": 31}, "'scale' = 31.0 is above its maximum 30"),
        ({"scale": "high"}, "'scale' expects float"),
        ({"mode": "spin"}, "'mode' must be one of move, resize"),
        ({"flag": "maybe"}, "'flag' expects bool"),
        ({"stepz": 3}, "unknown parameter"),
    ],
)
def test_bad_params_name_the_problem(params, message):
    with pytest.raises(ValueError, match=message):
        validate_params([STEPS, SCALE, MODE, FLAG], params)
