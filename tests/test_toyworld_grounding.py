"""The toy-world trainer's grounding loss (TokenCompose): object words must attend to their object's pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.models.toyworld.grounding import (
    MAX_OBJECTS,
    grounding_loss,
    object_coverage,
    object_word_spans,
    token_weights,
)
from backend.models.toyworld.world import Background, Scene, SceneObject, caption, scene_for_seed

RED = SceneObject("circle", "red", "big", "striped", 0.25, 0.5)
BLUE = SceneObject("star", "blue", "small", "solid", 0.75, 0.5)
SCENE = Scene((RED, BLUE), Background("white", "plain"))


def _words(text: str, span: list[int]) -> list[str]:
    return [text.split()[i] for i in span]


@pytest.mark.parametrize(
    ("text", "red", "blue"),
    [
        (
            "a big red striped circle left of a small blue star on a plain white background",
            ["big", "red", "striped", "circle"],
            ["small", "blue", "star"],
        ),
        ("a blue solid star right of a red striped circle", ["red", "striped", "circle"], ["blue", "solid", "star"]),
        ("a red striped circle", ["red", "striped", "circle"], []),
    ],
)
def test_each_object_is_named_by_its_own_phrase_whatever_the_word_order(text, red, blue):
    spans = object_word_spans(SCENE, text)
    assert [_words(text, span) for span in spans] == [red, blue]


def test_token_weights_mark_the_tokens_of_each_object_and_nothing_for_the_empty_caption():
    text = "a big red striped circle left of a small blue star"
    weights = token_weights([SCENE, SCENE], [text, ""])
    assert weights.shape == (2, MAX_OBJECTS, 77)
    assert torch.nonzero(weights[0, 0]).flatten().tolist() == [2, 3, 4, 5]  # start token first, then words
    assert torch.nonzero(weights[0, 1]).flatten().tolist() == [9, 10, 11]
    assert weights[0, 2].sum() == 0 and weights[1].sum() == 0


def test_training_captions_always_ground_every_object_they_mention():
    rng = np.random.default_rng(0)
    for index in range(200):
        scene = scene_for_seed(5, index)
        text = caption(scene, rng)
        for obj, span in zip(scene.objects, object_word_spans(scene, text)):
            words = _words(text, span)
            assert words[-1] == obj.shape and obj.colour in words and "a" not in words, (text, words)


def test_object_coverage_is_the_objects_share_of_each_latent_cell():
    coverage = object_coverage(SCENE, 16)
    assert coverage.shape == (MAX_OBJECTS, 16, 16)
    red_cells = np.argwhere(coverage[0] > 0.5)
    assert red_cells[:, 1].mean() < 8 and np.argwhere(coverage[1] > 0.5)[:, 1].mean() > 8  # left / right
    assert coverage[0].max() == 1.0 and coverage[2].max() == 0  # a cell wholly inside; no third object
    assert np.all(coverage[0] + coverage[1] <= 1.0)


def _maps(coverage: torch.Tensor, inside: bool) -> torch.Tensor:
    """(1, Q, K) cross-attention where token 2 takes object 0's cells (inside) or every other cell; the rest of
    each cell's attention goes to the start token, as trained models do."""
    cells = coverage[0, 0].flatten() > 0.5
    where = cells if inside else ~cells
    probs = torch.zeros(1, cells.numel(), 8)
    probs[0, :, 0] = 1.0
    probs[0, where, 2], probs[0, where, 0] = 0.9, 0.1
    return probs


def test_grounding_loss_is_low_when_the_word_attends_to_its_object_and_high_elsewhere():
    coverage = torch.from_numpy(object_coverage(SCENE, 8)).float()[None]
    weights = torch.zeros(1, MAX_OBJECTS, 8)
    weights[0, 0, 2] = 1
    good_token, good_pixel = grounding_loss({"layer": _maps(coverage, True)}, coverage, weights)
    bad_token, bad_pixel = grounding_loss({"layer": _maps(coverage, False)}, coverage, weights)
    assert good_token < 0.05 < 0.5 < bad_token
    assert good_pixel < bad_pixel
    # Nothing supervised (a dropped caption): no loss at all.
    zero = grounding_loss({"layer": _maps(coverage, False)}, coverage, torch.zeros_like(weights))
    assert float(zero[0]) == 0 and float(zero[1]) == 0


def test_optimising_the_grounding_loss_moves_a_unets_word_attention_onto_the_object():
    """The maps are recorded with their graph through the engine's attention controller, so the loss trains
    the UNet: a few steps on one batch put most of the object words' attention inside the object."""
    from backend.engine.attention import AttentionStore, RecordMaps, attention_layers, controlled
    from backend.models.toyworld import config as model_config
    from backend.models.toyworld.train import GROUNDED_BLOCKS

    torch.manual_seed(0)
    unet = model_config.build_unet(model_config.TINY)
    side = model_config.TINY.latent_size
    scenes = [scene_for_seed(1, i) for i in range(4)]
    texts = [caption(scene) for scene in scenes]
    coverage = torch.from_numpy(np.stack([object_coverage(scene, side) for scene in scenes])).float()
    weights = token_weights(scenes, texts, length=12)
    hidden = torch.randn(4, 12, model_config.TINY.text_hidden)
    latents, timesteps = torch.randn(4, 4, side, side), torch.full((4,), 500)
    store = AttentionStore(kind="cross", keep_grad=True)
    layers = attention_layers(unet, "cross", blocks=GROUNDED_BLOCKS)
    optimizer = torch.optim.Adam(unet.parameters(), lr=3e-3)
    losses = []
    with controlled(unet, {layer: RecordMaps(store) for layer in layers}):
        for _ in range(30):
            unet(latents, timesteps, encoder_hidden_states=hidden)
            token, pixel = grounding_loss(store.at_step(0), coverage, weights)
            store.clear()
            optimizer.zero_grad()
            (token + 0.1 * pixel).backward()
            optimizer.step()
            losses.append(float(token.detach()))
    assert len(layers) == 6
    assert losses[-1] < 0.5 * losses[0]
