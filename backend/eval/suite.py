"""What the toy-world suites' command lines share: the engine they run on and their --param values."""

from __future__ import annotations

import json
from typing import Any


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
