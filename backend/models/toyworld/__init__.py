"""Atelier's own toy world: a procedural scene generator, a CLIP-format tokenizer of its words, model configs,
a latent dataset and the trainer of the embedded SD-architecture demo model (`python -m backend train-toyworld`).

The judge that measures generated images against the world's ground truth lives in backend/eval/toyworld.py.
"""

from backend.models.toyworld.world import (
    BACKGROUNDS,
    COLOURS,
    FILLS,
    RELATIONS,
    SHAPES,
    SIZES,
    TEXTURES,
    Background,
    ObjectTruth,
    Scene,
    SceneObject,
    caption,
    ground_truth,
    render,
    sample_scene,
    scene_for_seed,
    vocabulary,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "FILLS",
    "RELATIONS",
    "SHAPES",
    "SIZES",
    "TEXTURES",
    "Background",
    "ObjectTruth",
    "Scene",
    "SceneObject",
    "caption",
    "ground_truth",
    "render",
    "sample_scene",
    "scene_for_seed",
    "vocabulary",
]
