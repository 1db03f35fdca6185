"""Model registry and loading: built-in tiny models, local diffusers folders, hub ids, single files."""

from backend.models.bundle import FAMILIES, ModelBundle
from backend.models.loading import ModelLoadError, choose_device, choose_dtype, load_model
from backend.models.registry import ModelNotFound, ModelSpec, list_models, resolve

__all__ = [
    "FAMILIES",
    "ModelBundle",
    "ModelLoadError",
    "ModelNotFound",
    "ModelSpec",
    "choose_device",
    "choose_dtype",
    "list_models",
    "load_model",
    "resolve",
]
