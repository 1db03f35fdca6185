"""A job from request to terminal event, in-process: bad input, errors, model safety, the baselines."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from backend.engine.attention import AttentionStore, RecordMaps, attention_layers, controlled
from backend.methods.registry import MethodResult, method, unregister
from backend.protocol import EditRequest, ObjectPrompt, ParamSpec, PointPair


def sdedit(scene, **changes) -> EditRequest:
    fields = dict(method="sdedit", image=scene, target_prompt="a green circle", params={"steps": 4}, model="tiny")
    return EditRequest(**(fields | changes))


def terminal(events):
    assert events[0].kind == "started"
    assert sum(e.terminal for e in events) == 1 and events[-1].terminal
    return events[-1]


def test_sdedit_result_has_the_input_size_and_a_recipe(run_job, scene):
    wide = np.concatenate([scene, scene], axis=1)  # 64 x 128: not the model's square size
    final = terminal(run_job(sdedit(wide, seed=7)))
    assert final.kind == "result", final.message
    assert final.image.shape == wide.shape and final.image.dtype == np.uint8
    recipe = final.metadata["recipe"]
    assert recipe["method"] == "sdedit" and recipe["seed"] == 7
    assert recipe["params"] == {"strength": 0.6, "steps": 4, "guidance": 7.5, "feather": 4.0, "max_side": 0}
    assert final.metadata["model"] == "tiny" and final.metadata["family"] == "sd1"


def test_masked_sdedit_leaves_pixels_outside_the_mask_untouched(run_job, scene):
    mask = np.zeros(scene.shape[:2], np.uint8)
    mask[16:48, 32:64] = 255
    final = terminal(run_job(sdedit(scene, masks={"edit": mask}, params={"steps": 4, "feather": 2})))
    changed = np.any(final.image != scene, axis=2)
    far_outside = np.ones_like(mask, bool)
    far_outside[10:54, 26:64] = False  # mask grown by the feather's reach
    assert not changed[far_outside].any()
    assert changed[mask > 0].mean() > 0.5


def test_sdedit_at_full_strength_recolours_a_masked_object_on_the_toy_world_model(run_job):
    """Strength 1 ignores the image inside the mask: the red circle of the shipped sample is gone on every seed and
    often becomes the prompt's green one (the judge reads it); the blue square outside the mask stays. Drawing a
    green circle exactly into a tight circle mask next to a blue square is hard for the toy-world model (it paints
    the mask blue about half the time): 4 of these 8 seeds, 5-7 of the first 10 for the weights shipped so far."""
    from PIL import Image

    from backend.eval.toyworld import detect_objects
    from desktop_app.resources import resource_path

    image = np.asarray(Image.open(resource_path("samples") / "red_circle_blue_square.png").convert("RGB"))
    circle = next(d for d in detect_objects(image) if d.colour == "red")
    mask = circle.mask.astype(np.uint8) * 255
    prompt = "a big green circle left of a blue square on a plain white background"
    found = []
    for seed in range(8):
        params = {"steps": 20, "strength": 1.0}
        request = EditRequest(
            method="sdedit", image=image, target_prompt=prompt, masks={"edit": mask}, seed=seed, params=params
        )
        final = terminal(run_job(request))
        assert final.kind == "result", final.message
        found.append({(d.colour, d.shape) for d in detect_objects(final.image)})
    assert not any(("red", "circle") in f for f in found), found
    assert sum(("green", "circle") in f for f in found) >= 3, found
    assert all(("blue", "square") in f for f in found), found


def test_same_request_same_result_and_seed_matters(run_job, scene):
    first = terminal(run_job(sdedit(scene, seed=1))).image
    again = terminal(run_job(sdedit(scene, seed=1))).image
    other = terminal(run_job(sdedit(scene, seed=2))).image
    np.testing.assert_array_equal(first, again)
    assert np.any(first != other)


def test_word_swap_and_reconstruct_run_on_sd1_and_sdxl(run_job, scene):
    for model in ("tiny", "tiny-xl"):
        swap = EditRequest(
            method="ddim-word-swap",
            image=scene,
            source_prompt="a red square",
            target_prompt="a blue square",
            params={"steps": 3},
            model=model,
        )
        assert terminal(run_job(swap)).kind == "result"
        rebuilt = terminal(run_job(EditRequest(method="reconstruct", image=scene, params={"steps": 3}, model=model)))
        assert rebuilt.kind == "result" and "psnr_to_input" in rebuilt.metadata


def test_previews_stream_every_step(run_job, scene):
    events = run_job(sdedit(scene, params={"steps": 10, "strength": 0.5}))
    previews = [e for e in events if e.kind == "preview"]
    assert [p.step for p in previews] == [1, 2, 3, 4, 5]
    assert all(p.image.ndim == 3 and p.image.dtype == np.uint8 for p in previews)


def test_cancel_before_the_first_step_reports_cancelled(run_job, scene):
    cancel = threading.Event()
    cancel.set()
    final = terminal(run_job(sdedit(scene), cancel=cancel))
    assert final.kind == "cancelled"


BAD_INPUTS = [
    (dict(method="no-such-method"), "unknown-method", "unknown method 'no-such-method'"),
    (dict(image=None), "bad-input", "needs an image"),
    (dict(image=np.zeros((64, 64), np.float32)), "bad-input", "must be 8-bit"),
    (dict(image=np.zeros((64, 64, 2), np.uint8)), "bad-input", "got shape"),
    (dict(image=np.zeros((4, 64, 3), np.uint8)), "bad-input", "sides must be between"),
    (dict(masks={"edit": np.zeros((32, 32), np.uint8)}), "bad-input", "mask 'edit' is 32x32 but the image is 64x64"),
    (dict(masks={"object": np.zeros((64, 64), np.uint8)}), "bad-input", "no mask role 'object'"),
    (dict(target_prompt="  "), "bad-input", "needs a target prompt"),
    (dict(target_prompt=" ".join(["red"] * 80)), "bad-input", "target prompt is 82 tokens long"),
    (dict(params={"strength": 1.5}), "bad-input", "'strength' = 1.5 is above its maximum 1"),
    (dict(params={"stepz": 3}), "bad-input", "unknown parameter"),
    (dict(params={"steps": "many"}), "bad-input", "'steps' expects int"),
    (dict(seed=-1), "bad-input", "seed must be between"),
    (dict(model="no-such-model"), "model-missing", "no model 'no-such-model'"),
]


@pytest.mark.parametrize(("changes", "kind", "message"), BAD_INPUTS, ids=[b[2][:30] for b in BAD_INPUTS])
def test_bad_input_gives_a_clear_error_and_the_next_job_runs(run_job, scene, changes, kind, message):
    final = terminal(run_job(sdedit(scene, **changes)))
    assert final.kind == "error"
    assert final.error_kind == kind
    assert message in final.message
    assert terminal(run_job(sdedit(scene))).kind == "result"


def test_empty_required_mask_is_named():
    from backend.errors import InputError
    from backend.protocol import MethodInfo
    from backend.validation import validate_request

    info = MethodInfo("m", "M", "", ("sd1",), ("image", "mask:object"), ())
    image = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(InputError, match="mask 'object' is empty"):
        validate_request(EditRequest("m", image, masks={"object": np.zeros((16, 16), np.uint8)}), info)
    with pytest.raises(InputError, match="needs a mask 'object'"):
        validate_request(EditRequest("m", image), info)


def test_points_and_objects_are_checked():
    from backend.errors import InputError
    from backend.protocol import MethodInfo
    from backend.validation import validate_request

    image = np.zeros((16, 16, 3), np.uint8)
    drag = MethodInfo("d", "D", "", ("sd1",), ("image", "points"), ())
    with pytest.raises(InputError, match="at least one handle"):
        validate_request(EditRequest("d", image), drag)
    with pytest.raises(InputError, match=r"target \(20, 3\) lies outside the 16x16 image"):
        validate_request(EditRequest("d", image, points=[PointPair((1, 1), (20, 3))]), drag)
    multi = MethodInfo("o", "O", "", ("sd1",), ("image", "object_prompts"), ())
    empty = ObjectPrompt(np.zeros((16, 16), np.uint8), "a cat")
    with pytest.raises(InputError, match="object 1's mask is empty"):
        validate_request(EditRequest("o", image, object_prompts=[empty]), multi)


def test_a_reference_placement_must_be_finite_with_a_positive_scale():
    from backend.errors import InputError
    from backend.protocol import MethodInfo
    from backend.validation import validate_request

    image, reference = np.zeros((16, 16, 3), np.uint8), np.zeros((8, 8, 3), np.uint8)
    paste = MethodInfo("p", "P", "", ("sd1",), ("image", "reference"), ())
    request = EditRequest("p", image, reference_image=reference, reference_placement=(2, 3, 0.5))
    assert validate_request(request, paste).reference_placement == (2, 3, 0.5)
    for bad in [(1, 2, 0), (1, float("nan"), 1), (1, 2)]:
        with pytest.raises(InputError, match="reference placement"):
            validate_request(EditRequest("p", image, reference_image=reference, reference_placement=bad), paste)


def test_a_region_move_is_required_where_declared_and_must_move_something():
    from backend.errors import InputError
    from backend.protocol import MethodInfo
    from backend.validation import validate_request

    image = np.zeros((16, 16, 3), np.uint8)
    mover = MethodInfo("m", "M", "", ("sd1",), ("image", "move"), ())
    assert validate_request(EditRequest("m", image, move=(3, -2, 1.5)), mover).move == (3, -2, 1.5)
    with pytest.raises(InputError, match="needs a region move") as caught:
        validate_request(EditRequest("m", image), mover)
    assert "Move Region tool" in caught.value.hint and "--move" in caught.value.hint
    with pytest.raises(InputError, match="region move is empty"):
        validate_request(EditRequest("m", image, move=(0, 0, 1)), mover)
    for bad in [(1, 2, 0), (1, float("inf"), 1), (1, 2)]:
        with pytest.raises(InputError, match="region move must be"):
            validate_request(EditRequest("m", image, move=bad), mover)


@pytest.fixture
def failing_method():
    """A method that installs attention processors and a hook, then fails half-way."""

    @method(
        id="test-fails",
        title="Fails",
        description="",
        families=("sd1",),
        inputs=("image",),
        params=(ParamSpec("steps", "int", 2),),
    )
    def run(engine, request, report):
        store = AttentionStore()
        rules = {name: RecordMaps(store) for name in attention_layers(engine.unet, kind="cross")}
        with controlled(engine.unet, rules):
            engine.unet.up_blocks[1].register_forward_hook(lambda *a: None)  # "forgotten" hook
            raise RuntimeError("boom in the middle of a method")
        return MethodResult(request.image)

    yield "test-fails"
    unregister("test-fails")


def test_a_failing_method_leaves_the_model_as_it_was(run_job, scene, tiny, failing_method):
    run_job(sdedit(scene))  # load the model into the worker state
    unet = run_job.state.bundle.unet
    processors = dict(unet.attn_processors)
    hooks = {name: dict(m._forward_hooks) for name, m in unet.named_modules()}
    final = terminal(run_job(EditRequest(method=failing_method, image=scene, model="tiny")))
    assert final.kind == "error" and final.error_kind == "method-failed"
    assert "boom in the middle of a method" in final.message
    assert all(unet.attn_processors[name] is proc for name, proc in processors.items())
    assert {name: dict(m._forward_hooks) for name, m in unet.named_modules()} == hooks
    assert terminal(run_job(sdedit(scene))).kind == "result"


def test_inversion_is_reused_when_only_guidance_changes(run_job, scene):
    swap = dict(
        method="ddim-word-swap", image=scene, source_prompt="a red square", target_prompt="a blue square", model="tiny"
    )
    first = run_job(EditRequest(**swap, params={"steps": 5, "guidance": 5.0}))
    second = run_job(EditRequest(**swap, params={"steps": 5, "guidance": 9.0}))
    assert [e.stage for e in first if e.kind == "progress"].count("inverting") == 5
    assert [e.stage for e in second if e.kind == "progress"].count("inverting") == 0
    assert any("cache" in e.message for e in second if e.kind == "log")


def test_queries_answer_methods_and_models(run_job):
    from backend.protocol import MethodInfo, Query

    methods = run_job(Query("methods"))[-1].metadata["methods"]
    ids = {MethodInfo.from_dict(m).id for m in methods}
    assert {"sdedit", "reconstruct", "ddim-word-swap"} <= ids
    models = run_job(Query("models"))[-1].metadata["models"]
    assert {"tiny", "tiny-xl", "sd15", "sdxl-turbo"} <= {m["id"] for m in models}


@pytest.fixture
def masked_method():
    @method(
        id="test-masked", title="Masked", description="", families=("sd1",), inputs=("image", "mask:object"), params=()
    )
    def run(engine, request, report):
        return MethodResult(request.image)

    yield "test-masked"
    unregister("test-masked")


def test_an_empty_required_mask_is_an_error_event(run_job, scene, masked_method):
    empty = np.zeros(scene.shape[:2], np.uint8)
    final = terminal(run_job(EditRequest(method=masked_method, image=scene, masks={"object": empty})))
    assert (final.kind, final.error_kind) == ("error", "bad-input")
    assert "mask 'object' is empty" in final.message and "Paint" in final.hint


@pytest.fixture
def oom_method():
    import torch

    @method(id="test-oom", title="OOM", description="", families=("sd1",), inputs=("image",), params=())
    def run(engine, request, report):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    yield "test-oom"
    unregister("test-oom")


def test_out_of_memory_says_what_to_change_and_frees_the_model(run_job, scene, oom_method):
    final = terminal(run_job(EditRequest(method=oom_method, image=scene)))
    assert (final.kind, final.error_kind) == ("error", "out-of-memory")
    assert "resolution" in final.hint and "fp16" in final.hint
    assert run_job.state.bundle is None  # nothing half-modified stays cached
    assert terminal(run_job(sdedit(scene))).kind == "result"


def test_the_model_stays_loaded_between_jobs(run_job, scene):
    first, second = run_job(sdedit(scene)), run_job(sdedit(scene))
    assert any(e.kind == "log" and e.message.startswith("loaded tiny") for e in first)
    assert not any(e.kind == "log" and e.message.startswith("loaded") for e in second)
    switched = run_job(sdedit(scene, model="tiny-xl"))
    assert any(e.kind == "log" and e.message.startswith("loaded tiny-xl") for e in switched)
    assert run_job.state.bundle.model_id == "tiny-xl"
