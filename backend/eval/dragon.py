"""DragonDiffusion's five tasks on the toy world, judged by the world's ground truth (issue 6).

Each task draws its cases from world scenes (`cases`), runs the registered method on each (`run_case`) and judges
the result against what the world says should be there (`judge`). The criteria:

- move: the object's centroid moves >= 80 % of the requested vector (projected on it); its old place holds no
  object (no detection covers > 20 % of the vacated pixels); background PSNR outside old and new place >= 25 dB.
- resize: the object's area becomes gamma^2 x its area, within +-25 %. The world draws objects at two sizes (small,
  big: radius 0.12 or 0.2 of the side), so cases shrink big objects to small (gamma 0.6) and grow small ones to big
  (gamma 5/3): other factors ask the toy-world model for sizes it has never drawn (with gamma in {0.6, 0.75, 1.3,
  1.5} none of 20 cases kept its new size; the model drew the object at a size it knows).
- appearance: the object at the target's place (IoU >= 0.5 with it) has the reference object's colour and keeps
  its own shape; background PSNR outside it >= 25 dB.
- paste: an object of the reference's colour appears at the destination (centroid within 8 px); background PSNR
  outside the pasted object >= 25 dB.
- drag (handle = the object's centroid): the distance from the object's centroid to the target shrinks >= 60 %.

Prompts are the scene's caption without sizes and places (`caption(scene, layout=False)`): the layout words
would pin the object where and how big it was. Appearance and paste take two prompts, as in the paper: the base
image's (its inversion) and the result's (sampling; e.g. "a purple dotted square ..." when a square takes a purple
dotted star's look, or the scene's objects plus the pasted one): the toy-world model takes colour and presence
from the words, so a prompt naming the old colour, or not naming the pasted object, holds the result back.

`python -m backend eval-dragon --tasks move,resize --count 20` prints the table; tests run a few fixed cases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from backend.eval.metrics import background_psnr
from backend.eval.suite import suite_engine, suite_params
from backend.eval.toyworld import DetectedObject, detect_objects, mask_iou, summarise
from backend.models.toyworld.world import SIZES, Scene, SceneObject, caption, render, scene_for_seed
from backend.protocol import EditRequest, PointPair

TASKS = ("move", "resize", "appearance", "paste", "drag")
SIDE = 128
SUITE_SEED = 6006


@dataclass
class Case:
    """One edit to run and what the world says about it."""

    task: str
    index: int
    scene: Scene
    image: np.ndarray
    object_mask: np.ndarray  # bool: the edited object (target of appearance; the reference's object for paste)
    request: EditRequest
    expect: dict[str, Any] = field(default_factory=dict)


def _mask_u8(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


def _centroid(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.mean(), ys.mean()])


def _inside(mask: np.ndarray, dx: int, dy: int, margin: int = 2) -> bool:
    ys, xs = np.nonzero(mask)
    return (
        ys.min() + dy >= margin
        and ys.max() + dy < SIDE - margin
        and xs.min() + dx >= margin
        and xs.max() + dx < SIDE - margin
    )


def _shifted(mask: np.ndarray, dx: int, dy: int) -> np.ndarray:
    out = np.zeros_like(mask)
    ys, xs = np.nonzero(mask)
    out[ys + dy, xs + dx] = True
    return out


def _clear_of(mask: np.ndarray, others: list[np.ndarray], gap: int = 4) -> bool:
    grown = ndimage.binary_dilation(mask, iterations=gap)
    return not any((grown & other).any() for other in others)


def _vector(rng: np.random.Generator, mask: np.ndarray, others: list[np.ndarray]) -> tuple[int, int] | None:
    """A move of 24-40 px that keeps the object inside the image and clear of the other objects."""
    for _ in range(200):
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(24, 40)
        dx, dy = int(round(length * np.cos(angle))), int(round(length * np.sin(angle)))
        if _inside(mask, dx, dy) and _clear_of(_shifted(mask, dx, dy), others):
            return dx, dy
    return None


def cases(task: str, count: int, seed: int = SUITE_SEED) -> list[Case]:
    """`count` cases of `task` from the world drawn from `seed` (scenes that cannot host the edit are skipped)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    rng = np.random.default_rng([seed, TASKS.index(task)])
    found: list[Case] = []
    index = 0
    while len(found) < count:
        if index > 50 * count:
            raise RuntimeError(f"could not draw {count} {task} cases")
        case = _make_case(task, index, rng, seed)
        index += 1
        if case is not None:
            found.append(case)
    return found


def _make_case(task: str, index: int, rng: np.random.Generator, seed: int) -> Case | None:
    scene = scene_for_seed(seed + 1 + TASKS.index(task), index, n_objects=int(rng.integers(1, 3)))
    image, masks = render(scene, SIDE)
    obj, others = masks[0], masks[1:]
    prompt = caption(scene, layout=False)
    common = dict(method=f"dragon-{task}", image=image, source_prompt=prompt)
    if task in ("move", "drag"):
        vector = _vector(rng, obj, others)
        if vector is None:
            return None
        dx, dy = vector
        if task == "move":
            request = EditRequest(**common, masks={"object": _mask_u8(obj)}, move=(float(dx), float(dy), 1.0))
        else:
            cx, cy = _centroid(obj)
            request = EditRequest(**common, points=[PointPair((cx, cy), (cx + dx, cy + dy))])
        return Case(task, index, scene, image, obj, request, {"vector": (dx, dy), "others": others})
    if task == "resize":
        # The world knows two sizes (small 0.12, big 0.2 of the side): a big object shrinks to small, a small one
        # grows to big. Other factors ask for sizes the toy-world model has never drawn.
        ratio = SIZES["big"] / SIZES["small"]
        gamma = 1 / ratio if scene.objects[0].size == "big" else ratio
        rng.random()  # keeps the case stream of the earlier factor draw
        ys, xs = np.nonzero(obj)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 * gamma
        if gamma > 1 and (min(cy, cx) - half < 2 or max(cy, cx) + half > SIDE - 3):
            return None
        if gamma > 1 and not _clear_of(
            ndimage.binary_dilation(obj, iterations=int(half * (1 - 1 / gamma)) + 1), others
        ):
            return None
        request = EditRequest(**common, masks={"object": _mask_u8(obj)}, move=(0.0, 0.0, gamma))
        return Case(task, index, scene, image, obj, request, {"gamma": gamma, "others": others})
    # appearance and paste take a reference image: one object of a colour (and shape) the target lacks
    reference_scene = _reference_scene(rng, scene, seed, index)
    reference, reference_masks = render(reference_scene, SIDE)
    ref_obj = reference_masks[0]
    obj_ = scene.objects[0]
    if task == "appearance":
        edited = SceneObject(
            obj_.shape, reference_scene.objects[0].colour, obj_.size, reference_scene.objects[0].fill, obj_.x, obj_.y
        )
        result_prompt = caption(Scene((edited, *scene.objects[1:]), scene.background), layout=False)
        request = EditRequest(
            **common,
            masks={"object": _mask_u8(obj)},
            reference_image=reference,
            reference_mask=_mask_u8(ref_obj),
            target_prompt=result_prompt,
        )
        return Case(task, index, scene, image, obj, request, {"reference": reference_scene.objects[0]})
    # paste: the reference object goes to a free spot of the image, at scale 1
    for _ in range(200):
        tx, ty = rng.uniform(0.2, 0.8, size=2) * SIDE
        rx, ry = _centroid(ref_obj)
        dx, dy = int(round(tx - rx)), int(round(ty - ry))
        if _inside(ref_obj, dx, dy) and _clear_of(_shifted(ref_obj, dx, dy), list(masks)):
            break
    else:
        return None
    request = EditRequest(
        **common,
        reference_image=reference,
        reference_mask=_mask_u8(ref_obj),
        reference_placement=(float(dx), float(dy), 1.0),
        target_prompt=caption(Scene((*scene.objects, reference_scene.objects[0]), scene.background), layout=False),
    )
    expect = {"reference": reference_scene.objects[0], "placed": _shifted(ref_obj, dx, dy), "objects": masks}
    return Case(task, index, scene, image, ref_obj, request, expect)


def _reference_scene(rng: np.random.Generator, scene: Scene, seed: int, index: int) -> Scene:
    """A one-object scene whose object differs from the target in colour and shape."""
    target = scene.objects[0]
    taken = {obj.colour for obj in scene.objects}
    for attempt in range(100):
        candidate = scene_for_seed(seed + 100, index * 100 + attempt, n_objects=1)
        obj = candidate.objects[0]
        if obj.colour not in taken and obj.shape != target.shape:
            return Scene((SceneObject(obj.shape, obj.colour, obj.size, obj.fill, 0.5, 0.5),), candidate.background)
    raise RuntimeError("no reference object found")


# --- judging ---------------------------------------------------------------------------------------------------


def _same_colour(found: list[DetectedObject], colour: str) -> list[DetectedObject]:
    return [d for d in found if d.colour == colour]


def judge(case: Case, result: np.ndarray) -> dict[str, Any]:
    """The task's criteria on one result; `success` says whether all of them hold."""
    found = detect_objects(result)
    colour = case.scene.objects[0].colour
    if case.task in ("move", "drag"):
        dx, dy = case.expect["vector"]
        want = np.array([dx, dy], float)
        start = _centroid(case.object_mask)
        candidates = _same_colour(found, colour)
        best = max(candidates, key=lambda d: float(np.dot(np.array(d.centroid) - start, want)), default=None)
        reached = 0.0 if best is None else float(np.dot(np.array(best.centroid) - start, want) / want.dot(want))
        distance = math.inf if best is None else float(np.linalg.norm(start + want - np.array(best.centroid)))
        destination = _shifted(case.object_mask, dx, dy)
        vacated = case.object_mask & ~destination
        others = np.logical_or.reduce([np.zeros_like(case.object_mask), *case.expect["others"]])
        left = vacated & ~others
        left_behind = bool(left.any()) and any((d.mask & left).sum() > 0.2 * left.sum() for d in found)
        union = ndimage.binary_dilation(case.object_mask | destination, iterations=2)
        row = {
            "reached": round(reached, 3),
            "same_shape": best is not None and best.shape == case.scene.objects[0].shape,
            "left_behind": left_behind,
            "bg_psnr": round(background_psnr(result, case.image, union), 2),
            "distance_ratio": round(distance / float(np.linalg.norm(want)), 3),
        }
        if case.task == "move":
            row["success"] = reached >= 0.8 and not left_behind and row["bg_psnr"] >= 25.0
        else:
            row["success"] = row["distance_ratio"] <= 0.4
        return row
    if case.task == "resize":
        gamma = case.expect["gamma"]
        start = _centroid(case.object_mask)
        candidates = _same_colour(found, colour)
        best = min(candidates, key=lambda d: math.dist(d.centroid, start), default=None)
        ratio = 0.0 if best is None else best.area / float(case.object_mask.sum())
        grown = ndimage.binary_dilation(case.object_mask, iterations=int(math.ceil(6 * max(gamma, 1))))
        row = {
            "area_ratio": round(ratio, 3),
            "wanted": round(gamma**2, 3),
            "bg_psnr": round(background_psnr(result, case.image, grown), 2),
        }
        row["success"] = abs(ratio / gamma**2 - 1) <= 0.25
        return row
    reference: SceneObject = case.expect["reference"]
    if case.task == "appearance":
        target = case.object_mask
        at_place = [d for d in found if mask_iou(d.mask, target) >= 0.5]
        best = max(at_place, key=lambda d: mask_iou(d.mask, target), default=None)
        row = {
            "colour": None if best is None else best.colour,
            "wanted_colour": reference.colour,
            "shape": None if best is None else best.shape,
            "wanted_shape": case.scene.objects[0].shape,
            "iou": 0.0 if best is None else round(mask_iou(best.mask, target), 3),
            "bg_psnr": round(background_psnr(result, case.image, ndimage.binary_dilation(target, iterations=2)), 2),
        }
        row["colour_ok"] = row["colour"] == reference.colour
        row["shape_ok"] = row["shape"] == row["wanted_shape"]
        row["success"] = row["colour_ok"] and row["shape_ok"] and row["bg_psnr"] >= 25.0
        return row
    placed = case.expect["placed"]
    destination = _centroid(placed)
    candidates = _same_colour(found, reference.colour)
    best = min(candidates, key=lambda d: math.dist(d.centroid, destination), default=None)
    row = {
        "offset": math.inf if best is None else round(math.dist(best.centroid, destination), 2),
        "shape_ok": best is not None and best.shape == reference.shape,
        "iou": 0.0 if best is None else round(mask_iou(best.mask, placed), 3),
        "bg_psnr": round(background_psnr(result, case.image, ndimage.binary_dilation(placed, iterations=2)), 2),
    }
    row["success"] = row["offset"] <= 8.0 and row["bg_psnr"] >= 25.0
    return row


# --- running ---------------------------------------------------------------------------------------------------


def run_case(engine, case: Case, params: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
    """Run the case's method through the same validation as the app; returns (result image, metadata)."""
    from backend.methods.registry import get_method
    from backend.validation import validate_request

    method = get_method(case.request.method)
    request = dataclasses.replace(case.request, params={**case.request.params, **(params or {})})
    result = method.run(engine, validate_request(request, method.info), engine.report)
    return result.image, result.metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend eval-dragon", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, of: {', '.join(TASKS)}")
    parser.add_argument("--count", type=int, default=20, help="cases per task (scenes drawn from a fixed seed)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of every edit")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a method parameter")
    parser.add_argument("--model", default="toyworld", help="a model of the toy world's vocabulary")
    parser.add_argument("--json", type=Path, help="write every row and the summary here")
    parser.add_argument("--images", type=Path, help="save input | result strips here")
    args = parser.parse_args(argv)

    engine = suite_engine(args.model, cache_bytes=0)
    params = suite_params(args.steps, args.param)
    report: dict[str, Any] = {"params": params, "tasks": {}}
    for task in [t for t in args.tasks.split(",") if t]:
        rows, started = [], time.perf_counter()
        for case in cases(task, args.count):
            image, _ = run_case(engine, case, params)
            row = {"index": case.index, **judge(case, image)}
            rows.append(row)
            print(task, json.dumps(row), flush=True)
            if args.images:
                args.images.mkdir(parents=True, exist_ok=True)
                from PIL import Image

                strip = [
                    case.image,
                    *([case.request.reference_image] if case.request.reference_image is not None else []),
                    image,
                ]
                Image.fromarray(np.concatenate(strip, axis=1)).save(args.images / f"{task}-{case.index:03d}.png")
        summary = summarise(rows)
        summary["seconds_per_edit"] = round((time.perf_counter() - started) / max(len(rows), 1), 2)
        report["tasks"][task] = {"summary": summary, "rows": rows}
        print(task, "SUMMARY", json.dumps(summary), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0
