"""Which models Atelier knows and where each one comes from.

A model id is one of: a built-in name (`tiny`, `tiny-xl`; `sd15-random`, `sdxl-random`: full-size architectures
with random weights, for timing), the shipped toy-world model (`toyworld`, a diffusers folder under
resources/models/ trained by `python -m backend train-toyworld`), a known alias (`sd15`, `sdxl-turbo`, …), a hub id
(`owner/name`), a local diffusers folder, a single `.safetensors` checkpoint, or the name of a folder/file inside
the user's models folder.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from backend.paths import models_dir, resource_path

SourceKind = Literal["builtin", "folder", "hub", "single_file"]


class ModelNotFound(LookupError):
    """A model id that names nothing Atelier can load; the message says where it looked."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    source: SourceKind
    location: str
    family: str | None = None  # None: detected when loading
    default_size: int | None = None


BUILTIN_MODELS: dict[str, ModelSpec] = {
    "tiny": ModelSpec("tiny", "Tiny SD1-architecture test model (random weights)", "builtin", "sd1", "sd1", 64),
    "tiny-xl": ModelSpec(
        "tiny-xl", "Tiny SDXL-architecture test model (random weights)", "builtin", "sdxl", "sdxl", 64
    ),
    # Full-size architectures, random weights: what an edit costs (time, memory) without the weights
    "sd15-random": ModelSpec(
        "sd15-random", "SD 1.5 architecture, random weights (timing only)", "builtin", "full:sd1", "sd1", 512
    ),
    "sdxl-random": ModelSpec(
        "sdxl-random", "SDXL architecture, random weights (timing only)", "builtin", "full:sdxl", "sdxl", 512
    ),
}

TOYWORLD = "toyworld"
TOYWORLD_TITLE = "Toy world (Atelier's own model: coloured shapes, 128 px)"


def toyworld_folder() -> Path:
    return resource_path("models", TOYWORLD)


def shipped_models() -> dict[str, ModelSpec]:
    """Models that ship in resources/: the toy-world model, when this installation has its weights."""
    folder = toyworld_folder()
    if not (folder / "model_index.json").is_file():
        return {}
    return {TOYWORLD: ModelSpec(TOYWORLD, TOYWORLD_TITLE, "folder", str(folder), "sd1", 128)}


HUB_ALIASES: dict[str, ModelSpec] = {
    "sd15": ModelSpec("sd15", "Stable Diffusion 1.5", "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", "sd1", 512),
    "sd14": ModelSpec("sd14", "Stable Diffusion 1.4", "hub", "CompVis/stable-diffusion-v1-4", "sd1", 512),
    "sd21-base": ModelSpec(
        "sd21-base", "Stable Diffusion 2.1 base", "hub", "stabilityai/stable-diffusion-2-1-base", "sd2", 512
    ),
    "sdxl": ModelSpec(
        "sdxl", "Stable Diffusion XL base 1.0", "hub", "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024
    ),
    "sdxl-turbo": ModelSpec("sdxl-turbo", "SDXL-Turbo", "hub", "stabilityai/sdxl-turbo", "sdxl", 512),
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def resolve(model_id: str) -> ModelSpec:
    """Turn what the user typed into a ModelSpec, or raise ModelNotFound saying what was tried."""
    if not model_id or not model_id.strip():
        raise ModelNotFound("no model given")
    model_id = model_id.strip()
    if model_id in BUILTIN_MODELS:
        return BUILTIN_MODELS[model_id]
    if model_id == TOYWORLD:
        shipped = shipped_models()
        if not shipped:
            raise ModelNotFound(
                f"the toy-world model is not in this installation ({toyworld_folder()} has no model_index.json): "
                "train it with `python -m backend train-toyworld`, or choose the 'tiny' test model"
            )
        return shipped[TOYWORLD]
    if model_id in HUB_ALIASES:
        return HUB_ALIASES[model_id]
    for candidate in (Path(model_id).expanduser(), models_dir() / model_id):
        spec = _local_spec(model_id, candidate)
        if spec is not None:
            return spec
    if _HUB_ID.match(model_id) and Path(model_id).suffix != ".safetensors":
        return ModelSpec(model_id, model_id, "hub", model_id)
    raise ModelNotFound(
        f"no model '{model_id}': not a built-in ({', '.join(BUILTIN_MODELS)}), not an alias "
        f"({', '.join(HUB_ALIASES)}), not a folder or .safetensors file here or in {models_dir()}, "
        "and not a hub id of the form owner/name"
    )


def _local_spec(model_id: str, path: Path) -> ModelSpec | None:
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "unet").is_dir():
            raise ModelNotFound(f"folder {path} is not a diffusers model (no model_index.json, no unet/)")
        return ModelSpec(model_id, path.name, "folder", str(path.resolve()))
    if path.is_file():
        if path.suffix.lower() in _PICKLE_SUFFIXES:
            raise ModelNotFound(
                f"{path.name} is a pickle checkpoint; Atelier loads only .safetensors (pickles can run code). "
                "Convert it to .safetensors first."
            )
        if path.suffix.lower() == ".safetensors":
            return ModelSpec(model_id, path.stem, "single_file", str(path.resolve()))
    return None


def list_models() -> list[ModelSpec]:
    """Built-ins, known hub aliases, and whatever sits in the user's models folder (not the full-size random
    architectures: they are for `bench`, and draw noise)."""
    builtins = [spec for spec in BUILTIN_MODELS.values() if not spec.location.startswith("full:")]
    specs = [*shipped_models().values(), *builtins, *HUB_ALIASES.values()]
    folder = models_dir()
    if folder.is_dir():
        for entry in sorted(folder.iterdir()):
            try:
                spec = _local_spec(entry.name, entry)
            except ModelNotFound:
                continue
            if spec is not None:
                specs.append(spec)
    return specs
