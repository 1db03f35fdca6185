"""Multi-object editing on the toy world, judged by the world's ground truth (issue 7): MDE-Edit against
NTI + Prompt-to-Prompt, and MDE-Edit without its losses.

Each case is a world scene of two or three objects (a third of them pushed together so two objects overlap) in
which two objects change at once, each by a recolour (a colour the scene lacks) or a shape replacement (a shape the
scene lacks). The prompts are the scene's caption and the edited scene's caption; each edited object's mask binds
the word that changes (the new colour - Color Consistency Loss - or the new shape - Object Alignment Loss).

Judged per case:
- edited: each edited object is found with its new colour and shape, centroid within 12 px of where it is on the
  world's own rendering of the edited scene (colour and shape as the judge reads that rendering: an object partly
  hidden by another is read by its visible part);
- kept: each other object likewise (same colour and shape as before);
- BG-PSNR / BG-SSIM over everything outside the edited objects (old and new silhouettes, grown by 3 px), other
  objects included;
- success: both edits, every kept object, BG-PSNR >= 25 dB.

`python -m backend eval-mde --count 20` prints the table (methods x criteria); tests run a few fixed cases.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from backend.eval.metrics import background_psnr, ssim_map
from backend.eval.suite import draw_cases, suite_engine, suite_params
from backend.eval.toyworld import detect_objects, summarise
from backend.models.toyworld.world import COLOURS, SHAPES, Scene, caption, render, scene_for_seed
from backend.protocol import EditRequest, ObjectPrompt

SIDE = 128
SUITE_SEED = 7007
NEAR = 12.0  # px: a found object counts as "at its place" within this distance

VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "mde-edit": ("mde-edit", {}),
    "nti-p2p": ("nti-p2p", {}),
    "mde-no-oal": ("mde-edit", {"oal_weight": 0.0}),
    "mde-no-ccl": ("mde-edit", {"ccl_weight": 0.0}),
    "mde-no-losses": ("mde-edit", {"oal_weight": 0.0, "ccl_weight": 0.0}),
}


@dataclass
class Case:
    index: int
    scene: Scene
    edited_scene: Scene
    image: np.ndarray
    edited: list[int]  # indices of the objects that change
    kinds: list[str]  # "recolour" | "replace", per edited object
    masks: list[np.ndarray]  # the source scene's silhouettes
    new_masks: list[np.ndarray]  # the edited scene's silhouettes
    overlapping: bool
    request: EditRequest


def cases(count: int, seed: int = SUITE_SEED) -> list[Case]:
    return draw_cases(count, seed, lambda index, rng, _found: _make_case(index, rng, seed))


def _overlapped(scene: Scene, rng: np.random.Generator) -> Scene | None:
    """The scene with its second object pushed onto the first until their silhouettes overlap a little."""
    first, second = scene.objects[0], scene.objects[1]
    angle = float(rng.uniform(0, 2 * math.pi))
    distance = 0.75 * (first.radius + second.radius)
    x, y = first.x + distance * math.cos(angle), first.y + distance * math.sin(angle)
    margin = second.radius * 1.1
    if not (margin <= x <= 1 - margin and margin <= y <= 1 - margin):
        return None
    moved = dataclasses.replace(second, x=round(x, 4), y=round(y, 4))
    return Scene((first, moved, *scene.objects[2:]), scene.background)


def _make_case(index: int, rng: np.random.Generator, seed: int) -> Case | None:
    scene = scene_for_seed(seed, index, n_objects=int(rng.choice([2, 3], p=[0.6, 0.4])))
    overlapping = bool(rng.random() < 1 / 3)
    if overlapping:
        scene = _overlapped(scene, rng)
        if scene is None:
            return None
    image, masks = render(scene, SIDE)
    if overlapping and not np.logical_and(masks[0], ndimage.binary_dilation(masks[1], iterations=1)).any():
        return None
    edited = sorted(rng.choice(len(scene.objects), size=2, replace=False).tolist())
    kinds = [str(rng.choice(["recolour", "replace"])) for _ in edited]
    objects = list(scene.objects)
    free_colours = [c for c in COLOURS if c not in {o.colour for o in objects}]
    free_shapes = [s for s in SHAPES if s not in {o.shape for o in objects}]
    rng.shuffle(free_colours)
    rng.shuffle(free_shapes)
    words = []
    for position, kind in zip(edited, kinds):
        if kind == "recolour":
            colour = free_colours.pop()
            objects[position] = dataclasses.replace(objects[position], colour=colour)
            words.append(colour)
        else:
            shape = free_shapes.pop()
            objects[position] = dataclasses.replace(objects[position], shape=shape)
            words.append(shape)
    edited_scene = Scene(tuple(objects), scene.background)
    _, new_masks = render(edited_scene, SIDE)
    source, target = caption(scene), caption(edited_scene)
    if len(source.split()) != len(target.split()):
        return None
    request = EditRequest(
        method="mde-edit",
        image=image,
        source_prompt=source,
        target_prompt=target,
        object_prompts=[
            ObjectPrompt((masks[position] * 255).astype(np.uint8), word) for position, word in zip(edited, words)
        ],
    )
    return Case(index, scene, edited_scene, image, edited, kinds, masks, new_masks, overlapping, request)


# --- judging ---------------------------------------------------------------------------------------------------


def judge(case: Case, result: np.ndarray) -> dict[str, Any]:
    found = detect_objects(result)

    def centre(mask: np.ndarray) -> tuple[float, float]:
        ys, xs = np.nonzero(mask)
        return float(xs.mean()), float(ys.mean())

    # What the judge reads on the world's own rendering of the edited scene is the standard (an object partly
    # hidden by another reads as its visible part); each object must read the same on the result, at its place.
    ideal = detect_objects(render(case.edited_scene, SIDE)[0])

    def expected(index: int):
        colour = case.edited_scene.objects[index].colour
        where = centre(case.new_masks[index])
        readings = [d for d in ideal if d.colour == colour and math.dist(d.centroid, where) <= NEAR]
        return min(readings, key=lambda d: math.dist(d.centroid, where), default=None)

    def present(index: int) -> bool:
        want = expected(index)
        if want is None:  # the world's own rendering does not show it (hidden): nothing to ask of the result
            return True
        return any(
            d.colour == want.colour and d.shape == want.shape and math.dist(d.centroid, want.centroid) <= NEAR
            for d in found
        )

    edited_ok = [present(i) for i in case.edited]
    others = [i for i in range(len(case.scene.objects)) if i not in case.edited]
    kept_ok = [present(i) for i in others]
    region = np.zeros(result.shape[:2], bool)
    for i in case.edited:
        region |= case.masks[i] | case.new_masks[i]
    region = ndimage.binary_dilation(region, iterations=3)
    bg_psnr = background_psnr(result, case.image, region)
    # The edited region is taken out of both pictures (filled from the input) so it does not reach the background's
    # windows: an untouched background scores 1.
    outside = np.where(region[..., None], case.image, result)
    bg_ssim = float(ssim_map(outside, case.image)[~region].mean())
    row = {
        "edited": sum(edited_ok),
        "edits": len(edited_ok),
        "kept": sum(kept_ok),
        "others": len(kept_ok),
        "bg_psnr": round(bg_psnr, 2),
        "bg_ssim": round(bg_ssim, 4),
        "overlapping": case.overlapping,
        "kinds": "+".join(case.kinds),
    }
    row["success"] = all(edited_ok) and all(kept_ok) and bg_psnr >= 25.0
    return row


def run_case(engine, case: Case, variant: str, params: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
    from backend.methods.registry import get_method
    from backend.validation import validate_request

    method_id, variant_params = VARIANTS[variant]
    method = get_method(method_id)
    request = dataclasses.replace(
        case.request,
        method=method_id,
        object_prompts=case.request.object_prompts if method_id == "mde-edit" else [],
        params={**variant_params, **(params or {})},
    )
    result = method.run(engine, validate_request(request, method.info), engine.report)
    return result.image, result.metadata


def reconstruction_psnr(engine, case: Case, steps: int, guidance: float = 7.5) -> dict[str, float]:
    """How well the picture comes back from its inversion when sampled with CFG `guidance`: null-text inversion
    (per-step embeddings) against plain DDIM inversion (prompt only), and plain DDIM at w = 1 for reference."""
    import torch

    from backend.engine.inversion import cached_ddim_inversion
    from backend.engine.null_text import cached_null_text_inversion
    from backend.engine.sampling import make_scheduler, predict_noise

    prompt = case.request.source_prompt
    cond, uncond = engine.encode_prompts([prompt]), engine.encode_prompts([""])
    latents = engine.encode_image(case.image)
    inversion = cached_null_text_inversion(engine, case.image, latents, prompt, cond, uncond, steps, guidance)
    z_T = cached_ddim_inversion(engine, case.image, latents, prompt, cond, steps)[-1]

    @torch.no_grad()
    def regenerate(start, w, per_step=None) -> float:
        scheduler = make_scheduler(engine, steps)
        z = start
        for index, t in enumerate(scheduler.timesteps):
            negative = uncond if per_step is None else per_step.conditioning(index, uncond)
            z = scheduler.step(predict_noise(engine, z, t, cond, negative, w), t, z).prev_sample
        return background_psnr(engine.decode_latents(z), case.image)

    return {
        "nti": round(regenerate(inversion.z_T, guidance, inversion), 2),
        "ddim_cfg": round(regenerate(z_T, guidance), 2),
        "ddim_w1": round(regenerate(z_T, 1.0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend eval-mde", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--count", type=int, default=20, help="cases (scenes drawn from a fixed seed)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of every edit")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="a parameter of all runs")
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--json", type=Path, help="write every row and the summaries here")
    parser.add_argument("--images", type=Path, help="save input | result strips here")
    parser.add_argument(
        "--reconstruction", action="store_true", help="also: null-text vs DDIM inversion PSNR at CFG 7.5 per scene"
    )
    args = parser.parse_args(argv)

    # One null-text inversion per scene serves every variant (the cache key is the picture, prompt and steps).
    engine = suite_engine(args.model)
    params = suite_params(args.steps, args.param)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; expected some of {', '.join(VARIANTS)}")
    report: dict[str, Any] = {"params": params, "variants": {v: {"rows": []} for v in variants}}
    started = {v: 0.0 for v in variants}
    for case in cases(args.count):
        strip = [case.image]
        for variant in variants:
            began = time.perf_counter()
            image, _ = run_case(engine, case, variant, params)
            started[variant] += time.perf_counter() - began
            row = {"index": case.index, **judge(case, image)}
            report["variants"][variant]["rows"].append(row)
            print(variant, json.dumps(row), flush=True)
            strip.append(image)
        if args.reconstruction:
            row = {"index": case.index, **reconstruction_psnr(engine, case, args.steps)}
            report.setdefault("reconstruction", []).append(row)
            print("reconstruction", json.dumps(row), flush=True)
        if args.images:
            from PIL import Image

            args.images.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate(strip, axis=1)).save(args.images / f"mde-{case.index:03d}.png")
    for variant in variants:
        rows = report["variants"][variant]["rows"]
        summary = summarise(rows)
        summary["edits_done"] = f"{sum(r['edited'] for r in rows)}/{sum(r['edits'] for r in rows)}"
        summary["others_kept"] = f"{sum(r['kept'] for r in rows)}/{sum(r['others'] for r in rows)}"
        summary["overlapping_success"] = sum(r["success"] for r in rows if r["overlapping"])
        summary["overlapping_cases"] = sum(r["overlapping"] for r in rows)
        summary["seconds_per_edit"] = round(started[variant] / max(len(rows), 1), 2)
        report["variants"][variant]["summary"] = summary
        print(variant, "SUMMARY", json.dumps(summary), flush=True)
    if args.reconstruction:
        rows = report["reconstruction"]
        means = {key: round(float(np.mean([r[key] for r in rows])), 2) for key in ("nti", "ddim_cfg", "ddim_w1")}
        report["reconstruction_summary"] = means
        print("reconstruction SUMMARY", json.dumps(means), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0
