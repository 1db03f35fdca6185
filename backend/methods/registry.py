"""The method contract: `MethodInfo` (torch-free description) + `run(engine, request, report) -> MethodResult`.

No base classes: a method is a plain function registered with the `@method(...)` decorator in its paper's file.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.errors import UnknownMethod
from backend.protocol import MethodInfo, ParamSpec

# One module per paper or baseline; importing it registers its methods.
METHOD_MODULES = (
    "backend.methods.baselines",
    "backend.methods.dragon",
    "backend.methods.p2p",
    "backend.methods.mde_edit",
    "backend.methods.pix2pix_zero",
    "backend.methods.turboedit",
    "backend.methods.cora",
    "backend.methods.eye_for_an_eye",
)


@dataclass
class MethodResult:
    image: np.ndarray
    metadata: dict[str, Any] = field(default_factory=dict)


RunFunction = Callable[..., MethodResult]


@dataclass(frozen=True)
class Method:
    info: MethodInfo
    run: RunFunction


_METHODS: dict[str, Method] = {}


def method(
    id: str,
    title: str,
    description: str,
    families: tuple[str, ...],
    inputs: tuple[str, ...],
    params: tuple[ParamSpec, ...],
    optional_inputs: tuple[str, ...] = (),
) -> Callable[[RunFunction], RunFunction]:
    """Register `run` as method `id`; the GUI builds its form and the CLI its flags from `params`."""

    def register(run: RunFunction) -> RunFunction:
        if id in _METHODS and _METHODS[id].run is not run:
            raise ValueError(f"method id {id!r} registered twice")
        info = MethodInfo(id, title, description, families, inputs, params, optional_inputs)
        _METHODS[id] = Method(info, run)
        return run

    return register


def _load_all() -> None:
    for module in METHOD_MODULES:
        importlib.import_module(module)


def all_methods() -> list[Method]:
    _load_all()
    return list(_METHODS.values())


def get_method(method_id: str) -> Method:
    _load_all()
    if method_id not in _METHODS:
        known = ", ".join(sorted(_METHODS))
        raise UnknownMethod(f"unknown method '{method_id}'", hint=f"Available methods: {known}.")
    return _METHODS[method_id]


def unregister(method_id: str) -> None:
    """For tests that register a throw-away method."""
    _METHODS.pop(method_id, None)
