"""What the toy-world suites' command lines share: the engine they run on and their --param values."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

CaseT = TypeVar("CaseT")


def suite_engine(model: str, cache_bytes: int = 2**30):
    """An Engine on `model` with an inversion cache, so the variants and settings of one case invert it once."""
    import torch

    from backend.engine.cache import LRUBytesCache
    from backend.engine.context import Engine
    from backend.models import load_model

    torch.manual_seed(0)
    return Engine(load_model(model), inversion_cache=LRUBytesCache(cache_bytes))


def param_value(text: str) -> Any:
    """A --param / --sweep value: JSON (numbers, strings in quotes), true/false, or a plain word (a choice)."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def suite_params(steps: int, items: list[str]) -> dict[str, Any]:
    """{"steps": steps} plus each NAME=VALUE item."""
    params: dict[str, Any] = {"steps": steps}
    for item in items:
        name, _, value = item.partition("=")
        params[name] = param_value(value)
    return params


def draw_cases(count: int, seed: int, make: Callable[[int, np.random.Generator, int], CaseT | None]) -> list[CaseT]:
    """`count` cases from `make(scene index, rng, cases found so far)`, which returns None for a scene that does not
    fit (it is skipped); one rng from `seed` for all, so a suite's cases are the same on every run."""
    rng = np.random.default_rng(seed)
    found: list[CaseT] = []
    index = 0
    while len(found) < count:
        if index > 50 * count:
            raise RuntimeError(f"could not draw {count} cases")
        case = make(index, rng, len(found))
        index += 1
        if case is not None:
            found.append(case)
    return found


Run = tuple[str, str, dict[str, Any]]  # (label, what to run - a variant or method id, its parameters)


def sweep_runs(items: list[str], prefix: str, target: str, params: dict[str, Any]) -> list[Run]:
    """One run of `target` per point of the grid the --sweep NAME=V1,V2 items span, labelled "prefix k=v ..."."""
    if not items:
        return []
    axes = [
        (name, [param_value(v) for v in values.split(",")]) for name, _, values in (i.partition("=") for i in items)
    ]
    runs = []
    for point in itertools.product(*(values for _, values in axes)):
        setting = dict(zip((name for name, _ in axes), point))
        label = prefix + " " + " ".join(f"{k}={v}" for k, v in setting.items())
        runs.append((label, target, {**params, **setting}))
    return runs


def run_suite(
    cases: list[Any],
    runs: list[Run],
    edit: Callable[[Any, str, dict[str, Any]], np.ndarray],
    judge: Callable[[Any, np.ndarray], dict[str, Any]],
    images: Path | None = None,
    prefix: str = "case",
) -> dict[str, dict[str, Any]]:
    """Every run on every case: {label: {"rows": judged rows, "results": [(case, image)], "seconds": total}}, each
    row printed as it comes; with `images`, one input | results strip per case."""
    report = {label: {"rows": [], "results": [], "seconds": 0.0} for label, _, _ in runs}
    for case in cases:
        strip = [case.image]
        if getattr(case, "reference_image", None) is not None:  # appearance transfer: show what was transferred
            strip.append(case.reference_image)
        for label, target, params in runs:
            began = time.perf_counter()
            image = edit(case, target, params)
            report[label]["seconds"] += time.perf_counter() - began
            row = {"index": case.index, **judge(case, image)}
            report[label]["rows"].append(row)
            report[label]["results"].append((case, image))
            print(label, json.dumps(row), flush=True)
            strip.append(image)
        if images:
            from PIL import Image

            images.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.concatenate(strip, axis=1)).save(images / f"{prefix}-{case.index:03d}.png")
    return report


def report_runs(
    results: dict[str, dict[str, Any]],
    params: dict[str, Any],
    summary_of: Callable[[dict[str, Any]], dict[str, Any]],
    json_path: Path | None = None,
) -> dict[str, Any]:
    """Each run's summary - `summary_of(run result)` (its rows, results and seconds), plus seconds per edit -
    printed as "<label> SUMMARY {...}"; with `json_path` the summaries and every row are written there too."""
    report: dict[str, Any] = {"params": params, "runs": {}}
    for label, result in results.items():
        rows = result["rows"]
        summary = summary_of(result)
        summary["seconds_per_edit"] = round(result["seconds"] / max(len(rows), 1), 3)
        report["runs"][label] = {"rows": rows, "summary": summary}
        print(label, "SUMMARY", json.dumps(summary), flush=True)
    if json_path:
        json_path.write_text(json.dumps(report, indent=2))
    return report
