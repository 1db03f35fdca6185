"""Appearance transfer on the toy world, judged by the world's ground truth (issue 10): Eye-for-an-eye against the
Cross-Image-Attention K/V swap (no explicit correspondence) and the paper's ablations, on the same pairs.

Each case is a target picture with one object (the structure) and a reference picture with one object of another
shape, colour and place (the appearance); both masks are the objects' silhouettes grown 2 px, as click-to-segment
gives them. Kinds in turn:
- whole: the reference object is one colour and fill; the target object should take both;
- halves: the reference object's left half is one colour and its right half another (drawn for the test: the world
  has no such objects); the target's left half should take the left colour and its right half the right one - the
  case where correspondence matters, since a match by colour statistics alone cannot tell the halves apart.

Also read, from the method's matches themselves (every layer and step of the correspondence): `side_agreement`,
the share of matched target positions whose reference match lies on the same side (left / right of the object's
centre) as they do - 0.5 is chance, 1 a left-to-left, right-to-right correspondence.

Judged: the target object found where it was (within 12 px) with its shape (`shape_kept`) and a silhouette IoU
with the original; its colour and fill the reference's (`colour_ok`, `fill_ok`; halves: `halves_ok`, each half's
most common colour); A_hist (colour-histogram distance to the reference object, 0 same ... 1 disjoint); edge
agreement with the target inside its mask; BG-PSNR outside the target's silhouette (grown 3 px). Success: shape kept
in place with IoU >= 0.6, colour (halves: both halves) and fill right, BG-PSNR >= 25 dB.

`python -m backend eval-transfer --count 20` prints the table.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from backend.eval.metrics import background_psnr, edge_agreement, histogram_distance
from backend.eval.suite import draw_cases, report_runs, run_suite, suite_engine, suite_params, sweep_runs
from backend.eval.toyworld import colour_labels, detect_objects, mask_iou, summarise
from backend.models.toyworld.world import COLOURS, FILLS, SHAPES, Scene, SceneObject, render, scene_for_seed
from backend.protocol import EditRequest

SIDE = 128
SUITE_SEED = 10010
NEAR = 12.0
KINDS = ("whole", "halves")
METHOD = "eye-for-an-eye"
VARIANTS = {
    "eye-for-an-eye": {},
    "values": {"mode": "values"},
    "kv-swap": {"mode": "kv-swap"},
    "no-adain": {"adain": False},
}
NAMES = list(COLOURS)


@dataclass
class Case:
    index: int
    kind: str
    target: Scene
    reference: Scene
    image: np.ndarray
    reference_image: np.ndarray
    target_mask: np.ndarray  # bool, the target object's silhouette
    reference_mask: np.ndarray  # bool
    colours: tuple[str, str]  # the reference's colour (left half, right half; the same for `whole`)
    request: EditRequest
    side_agreement: float = math.nan  # of the last run (run_case sets it, judge reads it)


def cases(count: int, seed: int = SUITE_SEED, kinds: tuple[str, ...] = KINDS) -> list[Case]:
    return draw_cases(count, seed, lambda index, rng, found: _make_case(index, kinds[found % len(kinds)], rng, seed))


def _make_case(index: int, kind: str, rng: np.random.Generator, seed: int) -> Case | None:
    target = scene_for_seed(seed, index, n_objects=1)
    obj = target.objects[0]
    if obj.size == "small":
        return None  # too few cells on the 16 x 16 latent grid to carry two halves or a pattern
    shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
    colour = str(rng.choice([c for c in COLOURS if c != obj.colour]))
    fill = "solid" if kind == "halves" else str(rng.choice(FILLS))
    x, y = float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7))
    reference = Scene((SceneObject(shape, colour, "big", fill, x, y),), target.background)
    image, (target_mask,) = render(target, SIDE)
    reference_image, (reference_mask,) = render(reference, SIDE)
    colours = (colour, colour)
    if kind == "halves":
        second = str(rng.choice([c for c in COLOURS if c not in (colour, obj.colour)]))
        other, _ = render(Scene((dataclasses.replace(reference.objects[0], colour=second),), target.background), SIDE)
        right = np.zeros_like(reference_mask)
        right[:, int(round(np.nonzero(reference_mask)[1].mean())) :] = True
        reference_image = np.where(right[..., None], other, reference_image)
        colours = (colour, second)
    request = EditRequest(
        METHOD,
        image=image,
        reference_image=reference_image,
        masks={"edit": _grown(target_mask)},
        reference_mask=_grown(reference_mask),
        seed=0,
    )
    return Case(index, kind, target, reference, image, reference_image, target_mask, reference_mask, colours, request)


def _grown(mask: np.ndarray) -> np.ndarray:
    return (ndimage.binary_dilation(mask, iterations=2) * 255).astype(np.uint8)


def judge(case: Case, result: np.ndarray) -> dict[str, Any]:
    obj = case.target.objects[0]
    ys, xs = np.nonzero(case.target_mask)
    where = (float(xs.mean()), float(ys.mean()))
    found = [d for d in detect_objects(result) if math.dist(d.centroid, where) <= NEAR]
    best = max(found, key=lambda d: d.area, default=None)
    reference_fill = case.reference.objects[0].fill
    labels = colour_labels(result, case.target_mask)
    centre = int(round(where[0]))
    halves = [_most_common(labels[:, :centre][case.target_mask[:, :centre]])]
    halves.append(_most_common(labels[:, centre:][case.target_mask[:, centre:]]))
    colour_ok = best is not None and best.colour == case.colours[0] if case.kind == "whole" else False
    halves_ok = halves == list(case.colours) if case.kind == "halves" else None
    iou = mask_iou(best.mask, case.target_mask) if best is not None else 0.0
    bg_psnr = background_psnr(result, case.image, ndimage.binary_dilation(case.target_mask, iterations=3))
    row = {
        "kind": case.kind,
        "side_agreement": round(case.side_agreement, 3),
        "found": best is not None,
        "shape_kept": best is not None and best.shape == obj.shape,
        "iou": round(iou, 3),
        "colour_ok": colour_ok,
        "fill_ok": best is not None and best.fill == reference_fill,
        "halves": halves,
        "halves_ok": halves_ok,
        "a_hist": round(histogram_distance(result, case.target_mask, case.reference_image, case.reference_mask), 3),
        "a_hist_input": round(
            histogram_distance(case.image, case.target_mask, case.reference_image, case.reference_mask), 3
        ),
        "edges": round(edge_agreement(result, case.image, case.target_mask), 3),
        "bg_psnr": round(bg_psnr, 2),
    }
    appearance = (colour_ok if case.kind == "whole" else halves_ok) and row["fill_ok"]
    row["success"] = bool(row["shape_kept"] and iou >= 0.6 and appearance and bg_psnr >= 25.0)
    return row


def _most_common(labels: np.ndarray) -> str:
    labels = labels[labels >= 0]
    return NAMES[int(np.bincount(labels).argmax())] if len(labels) else "none"


def run_case(engine, case: Case, method_id: str, params: dict[str, Any]) -> np.ndarray:
    from backend.methods.registry import get_method
    from backend.validation import validate_request

    method = get_method(method_id)
    wanted = {spec.name for spec in method.info.params}
    request = dataclasses.replace(case.request, params={k: v for k, v in params.items() if k in wanted})
    with recorded_matches() as matches:
        image = method.run(engine, validate_request(request, method.info), engine.report).image
    case.side_agreement = side_agreement(case, matches)
    return image


@contextlib.contextmanager
def recorded_matches():
    """Collect (grid side, out positions, reference matches) of every correspondence the method computes meanwhile."""
    from backend.methods import eye_for_an_eye

    found: list[tuple[int, np.ndarray, np.ndarray]] = []
    original = eye_for_an_eye.CorrespondenceRule.edit_input

    def recording(rule, call, hidden_states):
        edited = original(rule, call, hidden_states)
        side = int(round(math.sqrt(hidden_states.shape[1])))
        for _, positions, indices in rule._matches:
            found.append((side, positions.cpu().numpy(), indices.cpu().numpy()))
        return edited

    eye_for_an_eye.CorrespondenceRule.edit_input = recording
    try:
        yield found
    finally:
        eye_for_an_eye.CorrespondenceRule.edit_input = original


def side_agreement(case: Case, matches) -> float:
    """Share of matched target positions whose match is on the same side of the reference object's centre."""
    same = total = 0
    for width, positions, indices in matches:
        target_x = np.nonzero(case.target_mask)[1].mean() * width / SIDE
        reference_x = np.nonzero(case.reference_mask)[1].mean() * width / SIDE
        left_out = (positions % width + 0.5) < target_x
        left_reference = (indices % width + 0.5) < reference_x
        same += int((left_out == left_reference).sum())
        total += len(positions)
    return same / total if total else math.nan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend eval-transfer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--count", type=int, default=20, help="cases (pairs drawn from a fixed seed)")
    parser.add_argument("--skip", type=int, default=0, help="leave out the first N cases (to split a run)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"kinds in turn, of: {', '.join(KINDS)}")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter of all runs")
    parser.add_argument("--sweep", action="append", default=[], metavar="NAME=V1,V2", help="grid over the method")
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--json", type=Path, help="write every row and the summaries here")
    parser.add_argument("--images", type=Path, help="save target | reference | results strips here")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if not kinds or any(k not in KINDS for k in kinds):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")
    engine = suite_engine(args.model)
    params = suite_params(args.steps, args.param)
    runs = [(variant, METHOD, {**params, **VARIANTS[variant]}) for variant in variants]
    runs += sweep_runs(args.sweep, METHOD, METHOD, params)
    drawn = cases(args.count + args.skip, kinds=kinds)[args.skip :]
    results = run_suite(
        drawn,
        runs,
        lambda case, method_id, run_params: run_case(engine, case, method_id, run_params),
        judge,
        args.images,
        "transfer",
    )

    def summary_of(result: dict[str, Any]) -> dict[str, Any]:
        rows = result["rows"]
        summary = summarise(rows)
        for flag in ("shape_kept", "colour_ok", "fill_ok", "halves_ok"):
            summary[flag] = sum(bool(r[flag]) for r in rows)
        for kind in kinds:
            of_kind = [r for r in rows if r["kind"] == kind]
            summary[f"{kind}_success"] = f"{sum(r['success'] for r in of_kind)}/{len(of_kind)}"
        return summary

    report_runs(results, params, summary_of, args.json)
    return 0
