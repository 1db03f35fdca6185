"""The shipped toy-world model (resources/models/toyworld): what the app loads by default, measured on the world.

Figures asserted here are regression guards below what the shipped weights reach (trained 12.5 min on a lent H200,
then ~4 h on a 2-core CPU); the issue's targets and the full evaluation live in
resources/models/toyworld/toyworld.json ("metrics").
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from backend.engine.context import Engine
from backend.models import load_model
from backend.models.registry import resolve, toyworld_folder
from backend.paths import resource_path
from backend.protocol import DEFAULT_MODEL

IOU_GUARD = 0.55  # shipped weights: 0.69 on these 6 scenes (0.68 on the evaluation's 20); the previous ones 0.46


@pytest.fixture(scope="module")
def toyworld():
    return load_model("toyworld", device="cpu")


def test_the_default_model_is_the_shipped_toy_world_model_within_its_budget():
    folder = toyworld_folder()
    assert DEFAULT_MODEL == "toyworld" and resolve(DEFAULT_MODEL).location == str(folder)
    files = [path for path in folder.rglob("*") if path.is_file()]
    weights = [path for path in files if path.suffix == ".safetensors"]
    assert weights and not [path for path in files if path.suffix in (".bin", ".pt", ".ckpt")]
    assert sum(path.stat().st_size for path in files) <= 60 * 2**20
    assert max(path.stat().st_size for path in weights) <= 16 * 2**20  # every file fits through the device tool
    info = json.loads((folder / "toyworld.json").read_text())
    assert info["config"]["image_size"] == 128 and info["unet_steps"] > 0


def test_it_loads_as_an_sd1_model_with_the_worlds_tokenizer(toyworld):
    assert (toyworld.family, toyworld.default_size, toyworld.vae_scale_factor) == ("sd1", 128, 8)
    assert toyworld.unet.config.cross_attention_dim == toyworld.text_encoders[0].config.hidden_size
    tokens = toyworld.tokenizers[0]("a big red striped circle left of a blue star").input_ids
    assert len(tokens) == 2 + 10  # start, one token per world word (10 of them), end
    assert toyworld.latent_scaling != 0.18215  # measured on its own VAE


def test_its_vae_reconstructs_the_world_samples(toyworld):
    engine = Engine(toyworld)
    entries = json.loads(resource_path("samples", "world_samples.json").read_text())
    scores = []
    for entry in entries:
        image = np.asarray(Image.open(resource_path("samples", entry["file"])).convert("RGB"))
        with torch.no_grad():
            latents = engine.encode_image(image)
            back = engine.decode_latents(latents)
        mse = np.mean((back.astype(np.float64) - image.astype(np.float64)) ** 2)
        scores.append(10 * np.log10(255.0**2 / mse))
    assert np.mean(scores) >= 30.0, scores  # the bar; 33.1 dB on these 8 samples, 33.0 held-out in training


def test_it_draws_what_the_caption_names(toyworld):
    """Generations from held-in captions (training scenes' captions, as the issue measures), judged by the world's
    judge: most get the named colour and shape. 12 prompts at 20 steps: 12/12 colour and 12/12 shape when shipped;
    an untrained or broken model gets next to none (the full 200-prompt figures: toyworld.json)."""
    from backend.models.toyworld.evaluate import generate, held_in_scenes, judge_images
    from backend.models.toyworld.world import caption

    info = json.loads((toyworld_folder() / "toyworld.json").read_text())
    scenes = held_in_scenes(info["seed"], info["scenes"], 1, 12)
    images = generate(Engine(toyworld), [caption(scene) for scene in scenes], steps=20, guidance=5.0)
    scores = judge_images(images, scenes)
    assert scores["colour"] >= 0.75 and scores["shape"] >= 0.6, scores


def test_a_shape_words_cross_attention_lies_on_its_object(toyworld):
    """What MDE-Edit and pix2pix-zero read: invert a world render with its caption, regenerate it, and the shape
    word's cross-attention (up_blocks.1/2, averaged over the steps, thresholded at half its maximum) covers the
    object and little else, and the regeneration matches the render. The issue's IoU bar is 0.5 (20 scenes:
    toyworld.json); a model without grounding got 0.08."""
    from backend.models.toyworld.evaluate import inversion_and_attention

    result = inversion_and_attention(Engine(toyworld), count=6, steps=50)
    assert result["cross_attention_iou"] >= IOU_GUARD, result
    assert result["cross_attention_precision"] >= 0.6 and result["cross_attention_recall"] >= 0.5, result
    assert result["inversion_psnr"] >= 27.0, result
