"""Your own evaluation cases: a folder with pictures and a `cases.json` (or `cases.yaml`) saying what to edit.

Real pictures have no ground truth, so these cases are measured with the papers' metrics, each where it applies and
its weights are on the machine (`python -m backend eval --cases FOLDER --clip ... --dino ... --lpips ...`):

- always: background PSNR and SSIM against the input, outside the edited region (the union of the case's masks;
  the whole picture without masks);
- `--lpips FOLDER`: background LPIPS;
- `--clip`: CLIP score of the target prompt (whole picture, and in the edited region's crop), CLIP-Acc (edit closer
  to the target than to the source prompt: 1 / 0 per case, a rate in the report) and CLIP-Acc_v (the ratio);
- `--dino`: Dist and Dist_v (structure kept, against the input);
- a reference picture: A_hist (colour-histogram distance to the reference, inside the masks);
- drag points: MD, the mean distance from each target point to where DIFT finds the handle's content (the model's
  own UNet).

The file lists cases; paths are relative to the folder. Every key but `name` and `image` is optional:

    {"cases": [
      {"name": "red-to-blue", "image": "scene.png", "methods": ["mde-edit", "nti-p2p"],
       "source_prompt": "a red circle and a blue square", "target_prompt": "a blue circle and a blue square",
       "objects": [{"mask": "circle.png", "prompt": "a blue circle", "source": "circle"}],
       "params": {"steps": 50}},
      {"name": "drag", "image": "scene.png", "method": "dragon-drag", "points": [[[40, 64], [80, 64]]],
       "masks": {"edit": "circle.png"}},
      {"name": "look", "image": "scene.png", "method": "eye-for-an-eye", "reference": "ref.png",
       "reference_mask": "ref_mask.png", "masks": {"edit": "circle.png"}}
    ]}

`method` (one) or `methods` (several) name what runs on the case; `--methods` on the command line narrows them.
Also read: `move` ([dx, dy] or [dx, dy, scale]), `reference_placement` ([x, y, scale]), `negative_prompt`, `seed`.
A case that names a file that is not there, a method that does not exist, or a key the format does not have is
refused before anything runs, with the case's name.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backend.errors import InputError
from backend.protocol import EditRequest, ObjectPrompt, PointPair

KEYS = {
    "name",
    "image",
    "method",
    "methods",
    "source_prompt",
    "target_prompt",
    "negative_prompt",
    "masks",
    "objects",
    "points",
    "move",
    "reference",
    "reference_mask",
    "reference_placement",
    "params",
    "seed",
}


@dataclass
class UserCase:
    name: str
    methods: list[str]
    request: EditRequest
    region: np.ndarray | None  # the edited region (union of the masks), None = no mask given
    image: np.ndarray = field(repr=False, default=None)


def read_cases(folder: Path) -> list[UserCase]:
    """The folder's cases, checked: every file there, every method known, no unknown keys."""
    from backend.imageio import read_image, read_mask
    from backend.methods.registry import all_methods

    folder = Path(folder)
    files = [folder / name for name in ("cases.json", "cases.yaml", "cases.yml") if (folder / name).exists()]
    if not files:
        raise InputError(f"no cases.json or cases.yaml in {folder}", hint="See backend/eval/cases.py for the format.")
    text = files[0].read_text()
    try:
        if files[0].suffix == ".json":
            document = json.loads(text)
        else:
            import yaml

            document = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the file's
        raise InputError(f"{files[0]} could not be read: {exc}") from exc
    entries = document.get("cases") if isinstance(document, dict) else document
    if not isinstance(entries, list) or not entries:
        raise InputError(f"{files[0]} lists no cases", hint='Write {"cases": [{"name": ..., "image": ...}, ...]}.')
    known = {m.info.id for m in all_methods()}
    cases, names = [], set()
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict):
            raise InputError(f"case {number} in {files[0]} is not a mapping")
        name = str(entry.get("name") or f"case-{number}")
        where = f"case '{name}' ({files[0].name})"
        if name in names:
            raise InputError(f"{where}: the name is used twice")
        names.add(name)
        unknown = sorted(set(entry) - KEYS)
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}", hint=f"Keys: {', '.join(sorted(KEYS))}.")
        methods = entry.get("methods") or ([entry["method"]] if entry.get("method") else [])
        if not methods:
            raise InputError(f"{where} names no method", hint="Add 'method' or 'methods'.")
        missing = [m for m in methods if m not in known]
        if missing:
            raise InputError(f"{where}: unknown method(s) {', '.join(missing)}", hint="python -m backend list-methods")

        def path(value: Any, what: str, where: str = where) -> Path:
            found = folder / str(value)
            if not found.is_file():
                raise InputError(f"{where}: {what} {found} is not there")
            return found

        if "image" not in entry:
            raise InputError(f"{where} has no image")
        image = read_image(path(entry["image"], "image"))
        masks = {role: read_mask(path(p, f"mask '{role}'")) for role, p in (entry.get("masks") or {}).items()}
        objects = [
            ObjectPrompt(read_mask(path(o["mask"], "object mask")), str(o["prompt"]), str(o.get("source", "")))
            for o in entry.get("objects") or []
        ]
        try:
            points = [PointPair(tuple(map(float, h)), tuple(map(float, t))) for h, t in entry.get("points") or []]
            move = entry.get("move")
            move = None if move is None else tuple([*map(float, move), 1.0][:3])
            placement = entry.get("reference_placement")
            placement = None if placement is None else tuple(map(float, placement))
        except (TypeError, ValueError) as exc:
            raise InputError(f"{where}: points / move / placement are not numbers ({exc})") from exc
        request = EditRequest(
            method=methods[0],
            image=image,
            params=dict(entry.get("params") or {}),
            masks=masks,
            points=points,
            reference_image=read_image(path(entry["reference"], "reference")) if entry.get("reference") else None,
            reference_mask=read_mask(path(entry["reference_mask"], "reference mask"))
            if entry.get("reference_mask")
            else None,
            reference_placement=placement,
            move=move,
            source_prompt=str(entry.get("source_prompt", "")),
            target_prompt=str(entry.get("target_prompt", "")),
            negative_prompt=str(entry.get("negative_prompt", "")),
            object_prompts=objects,
            seed=int(entry.get("seed", 0)),
        )
        regions = [m > 0 for m in masks.values()] + [o.mask > 0 for o in objects]
        region = np.logical_or.reduce(regions) if regions else None
        cases.append(UserCase(name, list(methods), request, region, image))
    return cases


class Judge:
    """The papers' metrics of one user edit, with the models loaded once (those given) and the suite's engine."""

    def __init__(self, suite, clip: str = "", dino: str = "", lpips: str = "") -> None:
        from backend.eval.metrics import load_clip, load_dino, load_lpips

        self.suite = suite
        self.clip = load_clip(clip) if clip else None
        self.dino = load_dino(dino) if dino else None
        self.lpips = load_lpips(lpips) if lpips else None
        self._dift = None

    def __call__(self, case: UserCase, result: np.ndarray) -> dict[str, Any]:
        from scipy import ndimage

        from backend.eval.metrics import (
            background_psnr,
            background_ssim,
            clip_score,
            drag_mean_distance,
            histogram_distance,
        )

        request, source = case.request, case.image
        if result.shape != source.shape:  # methods work at the model's size; measure at the input's
            from PIL import Image

            result = np.asarray(Image.fromarray(result).resize(source.shape[1::-1], Image.LANCZOS))
        # The edited region grown a little: the blend's soft edge is part of the edit, not of the background.
        region = None if case.region is None else ndimage.binary_dilation(case.region, iterations=3)
        row: dict[str, Any] = {
            "bg_psnr": round(background_psnr(result, source, region), 3),
            "bg_ssim": round(background_ssim(result, source, region), 4),
            "success": None,  # no ground truth
        }
        if self.lpips is not None:
            row["bg_lpips"] = round(self.lpips.distance(result, source, region), 4)
        if self.clip is not None and request.target_prompt:
            whole, inside = clip_score(self.clip, [result, result], [request.target_prompt] * 2, [None, case.region])
            row["clip_score"], row["clip_score_region"] = round(whole, 3), round(inside, 3)
            if request.source_prompt:
                ((s_e, s_o),) = self.clip.scores([result], [request.source_prompt], [request.target_prompt])
                row["clip_acc"] = float(s_e > s_o)
                row["clip_acc_v"] = round(s_e / s_o, 4) if s_o > 0 else math.nan
        if self.dino is not None:
            dist, dist_v = self.dino.distances(source, result)
            row["dist"], row["dist_v"] = round(dist, 5), round(dist_v, 4)
        if request.reference_image is not None:
            row["a_hist"] = round(
                histogram_distance(result, case.region, request.reference_image, request.reference_mask), 4
            )
        if request.points and self.suite.engine.bundle.family != "sdxl":
            if self._dift is None:
                from backend.eval.metrics import dift_extractor

                self._dift = dift_extractor(self.suite.engine)
            handles = [p.handle for p in request.points]
            targets = [p.target for p in request.points]
            row["md"] = round(drag_mean_distance(self._dift, source, result, handles, targets), 2)
        return row


def user_suite(folder: Path, model: str | None, clip: str = "", dino: str = "", lpips: str = ""):
    """The folder's cases as a report Suite: one run per method any case names, each on the cases that name it."""
    import dataclasses

    from backend.eval.report import Suite
    from backend.methods.registry import get_method
    from backend.protocol import DEFAULT_MODEL
    from backend.validation import validate_request

    cases = read_cases(folder)
    methods = list(dict.fromkeys(m for case in cases for m in case.methods))

    def edit(engine, case: UserCase, method_id: str, params: dict[str, Any]) -> np.ndarray:
        method = get_method(method_id)
        request = dataclasses.replace(case.request, method=method_id, params={**case.request.params, **params})
        return method.run(engine, validate_request(request, method.info), engine.report).image

    suite = Suite(
        name=f"cases-{Path(folder).name}",
        title=f"your cases in {folder} ({len(cases)}), measured by the papers' metrics",
        steps=0,
        count=len(cases),
        kinds=1,
        runs={m: (m, {}) for m in methods},
        make_cases=lambda _count: cases,
        edit=edit,
        judge=lambda case, image: judge(case, image),
        case_id=lambda case: case.name,
        group=lambda case: case.name,
        measures=("bg_ssim", "bg_lpips", "clip_score", "clip_score_region", "clip_acc", "dist", "a_hist", "md"),
        model=model or DEFAULT_MODEL,
        applies=lambda case, label: label in case.methods,
    )
    judge = Judge(suite, clip=clip, dino=dino, lpips=lpips)
    return suite
