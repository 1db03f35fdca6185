"""The sample pictures shipped in resources/samples: scenes of the toy world with their captions and ground truth.

`python -m backend toyworld-samples resources/samples` writes them: two scenes per background texture (plain,
stripes, checker, gradient), one to three objects, solid and patterned fills, each as `world_NN_<words>.png`
beside `world_samples.json` (caption, objects with colour/shape/size/fill/centroid/bbox). A user opens one and
edits it with the toy-world model; a test can compare an edit with the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from backend.models.toyworld.world import TEXTURES, Scene, caption, ground_truth, render, scene_for_seed

SEED = 2026
PER_TEXTURE = 2
INDEX_FILE = "world_samples.json"


def pick_scenes(seed: int = SEED, per_texture: int = PER_TEXTURE) -> list[Scene]:
    """The first scenes of `seed` that cover every texture `per_texture` times, with 1, 2 and 3 objects."""
    chosen: list[Scene] = []
    index = 0
    while len(chosen) < per_texture * len(TEXTURES):
        count = 1 + len(chosen) % 3  # 1, 2, 3, 1, ... objects
        scene = scene_for_seed(seed, index, n_objects=count)
        index += 1
        taken = sum(other.background.texture == scene.background.texture for other in chosen)
        if taken < per_texture:
            chosen.append(scene)
    return chosen


def write_samples(folder: Path, size: int = 128, seed: int = SEED) -> list[Path]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries, paths = [], []
    for number, scene in enumerate(pick_scenes(seed)):
        image, masks = render(scene, size)
        words = "_".join(f"{obj.colour}_{obj.shape}" for obj in scene.objects)
        path = folder / f"world_{number:02d}_{words}.png"
        Image.fromarray(np.asarray(image, np.uint8)).save(path, optimize=True)
        truth = ground_truth(scene, size, masks)
        objects = [
            {
                "colour": item.colour,
                "shape": item.shape,
                "size": item.size,
                "fill": item.fill,
                "centroid": [round(value, 2) for value in item.centroid],
                "bbox": list(item.bbox),
            }
            for item in truth
        ]
        background = {"colour": scene.background.colour, "texture": scene.background.texture}
        entries.append({"file": path.name, "caption": caption(scene), "background": background, "objects": objects})
        paths.append(path)
    (folder / INDEX_FILE).write_text(json.dumps(entries, indent=2) + "\n")
    return paths


__all__ = ["INDEX_FILE", "pick_scenes", "write_samples"]
