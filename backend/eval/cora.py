"""Few-step structural edits on the toy world, judged by the world's ground truth (issue 9): Cora against TurboEdit
alone (no correspondence) on the same scenes and seeds.

Each case is a world scene and one edit of its caption, the kinds in turn:
- shape: an object's shape (unique in the scene) becomes one the scene lacks (square -> star);
- move: a lone object in the left third moves to the mirrored place ("at the left" -> "at the right");
- add: a lone object gets a small circle of a new colour beside it (the caption gains "... left of a small blue
  circle").
The prompts are the world's captions of the scene and of the edited scene. For the alpha sweep there is a fourth
kind, not in the default suite (`--kinds colour,shape`):
- colour: an object's colour (unique in the scene) becomes another.

Judged against the edited scene: every object found with its colour, shape and fill - appearance kept: the edited
object's colour and pattern when the prompt does not change them - within 12 px of its place (a moved object: in
the right third, nothing left at the old place; an added one anywhere the two-object caption allows - it drops the
first object's place words - right of the first object, found in its place, by the world's relation); BG-PSNR
outside all old and new silhouettes and the added object found (grown 3 px) against the input; success: all
objects right and BG-PSNR >= 20 dB. For the alpha / beta sweeps, per case: `look_change` (Lab distance of the
edited object's mean colour from the source object's: appearance from the source near 0), the silhouette's IoU with
the source object's (`iou_source`: the source's layout) and with the edited scene's (`iou_prompt`: the prompt's),
and `toward_prompt`, how far the result went from the source (0) to the prompt (1): on colour edits along the Lab
line from the object's colour as drawn in the input to its colour as the edited scene draws it (median over the
object's chromatic pixels), on moves along x (the mean
x of every pixel of the object's colour found).

`python -m backend eval-cora --count 20` prints the table; `--sweep alpha=0,0.5,1` runs Cora over a grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from backend.colour import rgb_to_lab
from backend.eval.metrics import background_psnr
from backend.eval.suite import draw_cases, report_runs, run_suite, suite_engine, suite_params, sweep_runs
from backend.eval.toyworld import detect_objects, mask_iou, summarise
from backend.models.toyworld.world import COLOURS, SHAPES, Scene, SceneObject, caption, render, scene_for_seed
from backend.protocol import EditRequest

SIDE = 128
SUITE_SEED = 9009
NEAR = 12.0
KINDS = ("shape", "move", "add")
EXTRA_KINDS = ("colour",)
VARIANTS = {"turboedit": "turboedit", "cora": "cora"}


@dataclass
class Case:
    index: int
    kind: str
    scene: Scene
    edited_scene: Scene
    image: np.ndarray
    changed: int  # index in the edited scene of the object the edit is about
    request: EditRequest


def cases(count: int, seed: int = SUITE_SEED, kinds: tuple[str, ...] = KINDS) -> list[Case]:
    """The kinds in turn: shape, move, add, shape, ..."""
    return draw_cases(count, seed, lambda index, rng, found: _make_case(index, kinds[found % len(kinds)], rng, seed))


def _make_case(index: int, kind: str, rng: np.random.Generator, seed: int) -> Case | None:
    scene = scene_for_seed(seed, index, n_objects=1 if kind in ("move", "add") else int(rng.choice([1, 2])))
    objects = list(scene.objects)
    if kind == "colour":
        position = int(rng.integers(len(objects)))
        colours = [c for c in COLOURS if c not in {o.colour for o in objects}]
        objects[position] = dataclasses.replace(objects[position], colour=str(rng.choice(colours)))
        changed = position
    elif kind == "shape":
        position = int(rng.integers(len(objects)))
        shapes = [s for s in SHAPES if s not in {o.shape for o in objects}]
        objects[position] = dataclasses.replace(objects[position], shape=str(rng.choice(shapes)))
        changed = position
    elif kind == "move":
        obj = objects[0]
        if obj.x > 1 / 3 - 0.02:
            return None
        objects[0] = dataclasses.replace(obj, x=round(1 - obj.x, 4))
        changed = 0
    else:
        obj = objects[0]
        if not 0.2 <= obj.x <= 0.45 or obj.size != "small":
            return None
        colour = str(rng.choice([c for c in COLOURS if c != obj.colour]))
        objects.append(SceneObject("circle", colour, "small", "solid", round(obj.x + 0.4, 4), obj.y))
        changed = 1
    edited = Scene(tuple(objects), scene.background)
    request = EditRequest("cora", source_prompt=caption(scene), target_prompt=caption(edited), seed=57)
    return Case(index, kind, scene, edited, render(scene, SIDE)[0], changed, request)


def judge(case: Case, result: np.ndarray) -> dict[str, Any]:
    found = detect_objects(result)
    _, old_masks = render(case.scene, SIDE)
    _, new_masks = render(case.edited_scene, SIDE)
    rows, added = [], []
    for index, (obj, mask) in enumerate(zip(case.edited_scene.objects, new_masks)):
        ys, xs = np.nonzero(mask)
        where = (float(xs.mean()), float(ys.mean()))
        same_colour = [d for d in found if d.colour == obj.colour]
        best = min(same_colour, key=lambda d: math.dist(d.centroid, where), default=None)
        if best is None:
            rows.append({"found": False, "right": False, "appearance": False, "distance": math.inf})
            continue
        distance = math.dist(best.centroid, where)
        if case.kind == "move":
            placed = best.centroid[0] > 2 * SIDE / 3
        elif case.kind == "add" and index == case.changed:
            placed = _right_of(best.centroid, [d for d in found if d is not best], case.scene.objects[0])
            added.append(best.mask)
        else:
            placed = distance <= NEAR
        rows.append(
            {
                "found": True,
                "right": best.shape == obj.shape and best.fill == obj.fill and placed,
                "appearance": best.fill == obj.fill,  # colour matched by construction
                "distance": distance,
            }
        )
    # For the sweeps: how far the edited object's look and silhouette are from the source's and the prompt's.
    changed = case.edited_scene.objects[case.changed]
    ys, xs = np.nonzero(new_masks[case.changed])
    got = min(
        (d for d in found if d.colour == changed.colour),
        key=lambda d: math.dist(d.centroid, (float(xs.mean()), float(ys.mean()))),
        default=None,
    )
    source_index = case.changed if case.changed < len(case.scene.objects) else None
    look = layout_source = layout_prompt = math.nan
    lab_result = rgb_to_lab(result[..., :3])
    if got is not None and source_index is not None:
        lab_input = rgb_to_lab(case.image[..., :3])
        look = float(np.linalg.norm(lab_result[got.mask].mean(0) - lab_input[old_masks[source_index]].mean(0)))
        layout_source = mask_iou(got.mask, old_masks[source_index])
        layout_prompt = mask_iou(got.mask, new_masks[case.changed])
    toward = _toward_prompt(case, found, lab_result, old_masks, new_masks)
    left_behind = False
    if case.kind == "move":
        ys0, xs0 = np.nonzero(old_masks[0])
        old_place = (float(xs0.mean()), float(ys0.mean()))
        left_behind = any(d.colour == changed.colour and math.dist(d.centroid, old_place) <= NEAR for d in found)
    covered = np.logical_or.reduce([*old_masks, *new_masks, *added])
    bg_psnr = background_psnr(result, case.image, ndimage.binary_dilation(covered, iterations=3))
    edited = rows[case.changed]
    row = {
        "kind": case.kind,
        "edit_ok": edited["right"] and not left_behind,
        "left_behind": left_behind,
        "appearance_kept": edited["appearance"],
        "others_ok": all(r["right"] for i, r in enumerate(rows) if i != case.changed),
        "distance": round(edited["distance"], 2) if math.isfinite(edited["distance"]) else math.inf,
        "bg_psnr": round(bg_psnr, 2),
        "look_change": round(look, 2),  # Lab distance of the object's mean colour from the source object's
        "iou_source": round(layout_source, 3),  # silhouette vs the source object's
        "iou_prompt": round(layout_prompt, 3),  # silhouette vs the edited scene's
        "toward_prompt": round(toward, 3),  # colour / move: 0 at the source, 1 at the prompt
    }
    row["success"] = row["edit_ok"] and row["others_ok"] and bg_psnr >= 20.0
    return row


def _right_of(centroid: tuple[float, float], others: list, anchor: SceneObject) -> bool:
    """Whether an added object stands where "<anchor> left of <added>" puts it: the anchor object, found near its
    place with its colour, is left of it by the world's relation (the larger centre offset is along x)."""
    where = (anchor.x * SIDE, anchor.y * SIDE)
    kept = [d for d in others if d.colour == anchor.colour and math.dist(d.centroid, where) <= NEAR]
    if not kept:
        return False
    dx, dy = kept[0].centroid[0] - centroid[0], kept[0].centroid[1] - centroid[1]
    return dx < 0 and abs(dx) >= abs(dy)


def _toward_prompt(case: Case, found, lab_result: np.ndarray, old_masks, new_masks) -> float:
    """How far a colour edit or a move went, from the source (0) to the prompt (1); NaN for other kinds."""
    if case.kind == "colour":

        def chromatic(lab: np.ndarray) -> np.ndarray:
            return lab[np.hypot(lab[:, 1], lab[:, 2]) > 20]

        # The ends: the object as drawn in the input and as the edited scene draws it (fills and tints included)
        start = np.median(chromatic(rgb_to_lab(case.image[..., :3])[old_masks[case.changed]]), axis=0)
        drawn = render(case.edited_scene, SIDE)[0]
        end = np.median(chromatic(rgb_to_lab(drawn)[new_masks[case.changed]]), axis=0)
        pixels = chromatic(lab_result[old_masks[case.changed] | new_masks[case.changed]])
        if not len(pixels):
            return math.nan
        direction = end - start
        return float(np.median((pixels - start) @ direction / (direction @ direction)))
    if case.kind == "move":
        colour = case.scene.objects[0].colour
        pixels = np.logical_or.reduce([d.mask for d in found if d.colour == colour] or [np.zeros((SIDE, SIDE), bool)])
        if not pixels.any():
            return math.nan
        start, end = (float(np.nonzero(m[0])[1].mean()) for m in (old_masks, new_masks))
        return (float(np.nonzero(pixels)[1].mean()) - start) / (end - start)
    return math.nan


def edit_mask(case: Case) -> np.ndarray:
    """The mask a user would paint for the edit: the old and new silhouettes and the space between, grown 6 px
    (an added object: the right half of the picture from the first object's left edge on)."""
    _, old_masks = render(case.scene, SIDE)
    _, new_masks = render(case.edited_scene, SIDE)
    changed = new_masks[case.changed] | (old_masks[case.changed] if case.changed < len(old_masks) else False)
    ys, xs = np.nonzero(changed)
    region = np.zeros((SIDE, SIDE), bool)
    if case.kind == "add":
        first = np.nonzero(old_masks[0])[1]
        region[:, first.min() :] = True
    else:
        region[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
    return (ndimage.binary_dilation(region, iterations=6) * 255).astype(np.uint8)


def run_case(engine, case: Case, method_id: str, params: dict[str, Any], masked: bool = False) -> np.ndarray:
    from backend.methods.registry import get_method
    from backend.validation import validate_request

    method = get_method(method_id)
    wanted = {spec.name for spec in method.info.params}
    request = dataclasses.replace(
        case.request,
        method=method_id,
        image=case.image,
        params={k: v for k, v in params.items() if k in wanted},
        masks={"edit": edit_mask(case)} if masked and "mask:edit" in method.info.optional_inputs else {},
    )
    return method.run(engine, validate_request(request, method.info), engine.report).image


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend eval-cora", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--count", type=int, default=20, help="cases (scenes drawn from a fixed seed)")
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help=f"edit kinds in turn, of: {', '.join(KINDS + EXTRA_KINDS)}"
    )
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter of all runs")
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="NAME=V1,V2", help="grid over Cora's parameters"
    )
    parser.add_argument("--mask", action="store_true", help="give every edit a mask around what it changes")
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--json", type=Path, help="write every row and the summaries here")
    parser.add_argument("--images", type=Path, help="save input | result strips here")
    args = parser.parse_args(argv)
    engine = suite_engine(args.model, cache_bytes=0)
    params = suite_params(4, args.param)
    params["steps"] = str(params["steps"])
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or any(k not in KINDS + EXTRA_KINDS for k in kinds):
        parser.error(f"--kinds takes some of {', '.join(KINDS + EXTRA_KINDS)}")
    runs = [(variant, VARIANTS[variant], params) for variant in variants]
    runs += sweep_runs(args.sweep, "cora", "cora", params)
    results = run_suite(
        cases(args.count, kinds=kinds),
        runs,
        lambda case, method_id, run_params: run_case(engine, case, method_id, run_params, args.mask),
        judge,
        args.images,
        "cora",
    )

    def summary_of(result: dict[str, Any]) -> dict[str, Any]:
        rows = result["rows"]
        summary = summarise(rows)
        for kind in kinds:
            of_kind = [r for r in rows if r["kind"] == kind]
            summary[f"{kind}_edits"] = f"{sum(r['edit_ok'] for r in of_kind)}/{len(of_kind)}"
            for measure in ("toward_prompt", "iou_source", "iou_prompt"):
                values = [r[measure] for r in of_kind if math.isfinite(r[measure])]
                if values:
                    summary[f"{kind}_{measure}"] = round(float(np.mean(values)), 3)
        summary["appearance_kept"] = sum(r["appearance_kept"] for r in rows)
        return summary

    report_runs(results, params, summary_of, args.json)
    return 0
