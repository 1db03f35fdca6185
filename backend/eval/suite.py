"""What the toy-world suites' command lines share: the engine they run on and their --param values."""

from __future__ import annotations

import json
from collections.abc import Callable
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
