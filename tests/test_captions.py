"""Source-prompt captions for prompt-free edits: a tiny random BLIP built from configs, saved to a folder and loaded
back the way real weights are ($ATELIER_CAPTIONER), and the toy-world judge's reading of a rendered scene."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
)

from backend.engine import captions
from backend.engine.captions import CAPTION_PREFIX, MAX_NEW_TOKENS, caption_image, fit_to_tokens, load_captioner
from backend.engine.conditioning import count_tokens
from backend.errors import InputError
from backend.models.toyworld.world import render, scene_for_seed

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]  # [DEC]: BLIP's decoder start, as the real one
WORDS = ["a", "photography", "of", "cat", "dog", "red", "blue", "circle", "house", "on", "the", "table", "tree"]
SIDE = 32


@pytest.fixture(scope="module")
def blip_folder(tmp_path_factory):
    """A tiny BLIP captioner folder. The decoder never ends a caption nor says a special token, so every caption
    runs the full MAX_NEW_TOKENS words: far past a 77-token text encoder."""
    folder = tmp_path_factory.mktemp("blip")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIALS}
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": SIDE, "width": SIDE}), tokenizer=tokenizer
    )
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            encoder_hidden_size=32,
            max_position_embeddings=MAX_NEW_TOKENS + 16,  # the prompt plus every new token
            pad_token_id=ids["[PAD]"],
            bos_token_id=ids["[DEC]"],
            eos_token_id=ids["[SEP]"],
            sep_token_id=ids["[SEP]"],  # BLIP's generate stops on the text config's sep token
            **small,
        ),
        vision_config=dict(image_size=SIDE, patch_size=8, **small),
        projection_dim=32,
    )
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.text_decoder.cls.predictions.bias[list(ids.values())] = -1e4
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture
def fresh_cache(monkeypatch):
    monkeypatch.setattr(captions, "_LOADED", {})


@pytest.fixture
def blip(blip_folder, monkeypatch, fresh_cache):
    monkeypatch.setenv("ATELIER_CAPTIONER", str(blip_folder))
    return blip_folder


@pytest.fixture
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (48, 64, 4), dtype=np.uint8)  # RGBA, not square: the captioner takes RGB


def test_the_captioner_loads_from_the_folder_and_is_kept(blip):
    captioner = load_captioner()
    assert captioner.spec == str(blip)
    assert isinstance(captioner.model, BlipForConditionalGeneration)
    assert captioner.model.config.vision_config.image_size == SIDE
    assert load_captioner() is captioner
    assert list(captions._LOADED.items()) == [((str(blip), "cpu"), captioner)]


def test_blip_captions_start_with_the_prefix_and_are_fitted_to_the_text_encoder(blip, tiny, photo):
    raw = load_captioner()(photo)
    # generate returns the prompt tokens too (the decoder start token is special, so decoding drops it)
    assert raw.startswith(CAPTION_PREFIX + " ")
    assert len(raw.split()) == len(CAPTION_PREFIX.split()) + MAX_NEW_TOKENS
    assert set(raw.split()) <= set(WORDS)
    assert count_tokens(tiny, raw) > tiny.max_tokens

    text, author = caption_image(tiny, photo)
    assert author == f"BLIP ({blip})"
    assert text.startswith(CAPTION_PREFIX + " ")
    assert len(text.split()) > len(CAPTION_PREFIX.split())
    assert count_tokens(tiny, text) <= tiny.max_tokens
    # the caption's leading words, as many as fit: one more would not
    words = text.split()
    assert raw.split()[: len(words)] == words
    assert count_tokens(tiny, " ".join(raw.split()[: len(words) + 1])) > tiny.max_tokens
    assert caption_image(tiny, photo) == (text, author)  # greedy decoding: the same picture, the same caption


def test_a_missing_captioner_asks_for_a_source_prompt(tmp_path, monkeypatch, fresh_cache, tiny, photo):
    missing = tmp_path / "missing"
    monkeypatch.setenv("ATELIER_CAPTIONER", str(missing))
    with pytest.raises(InputError) as caught:
        load_captioner()
    assert str(missing) in str(caught.value)
    assert "source prompt" in caught.value.hint.lower()
    with pytest.raises(InputError, match="no captioning model"):
        caption_image(tiny, photo)
    assert captions._LOADED == {}


def test_a_folder_without_a_blip_asks_for_a_source_prompt(tmp_path, monkeypatch, fresh_cache):
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("ATELIER_CAPTIONER", str(tmp_path / "empty"))
    with pytest.raises(InputError) as caught:
        load_captioner()
    assert "source prompt" in caught.value.hint.lower()


def test_the_captioner_spec_defaults_to_blip_base(monkeypatch):
    monkeypatch.setenv("ATELIER_CAPTIONER", "  ")
    assert captions.captioner_spec() == "Salesforce/blip-image-captioning-base"
    monkeypatch.setenv("ATELIER_CAPTIONER", " /models/blip ")
    assert captions.captioner_spec() == "/models/blip"


def test_fit_to_tokens_cuts_long_captions_and_keeps_short_ones(tiny):
    short = "a photography of a red house"
    assert fit_to_tokens(tiny, short) == short

    long = " ".join(f"word{i % 7} red" for i in range(100))  # 200 words
    assert count_tokens(tiny, long) > tiny.max_tokens
    fitted = fit_to_tokens(tiny, long)
    assert count_tokens(tiny, fitted) <= tiny.max_tokens
    assert long.startswith(fitted + " ")
    kept = len(fitted.split())
    assert count_tokens(tiny, " ".join(long.split()[: kept + 1])) > tiny.max_tokens  # nothing cut that would fit


@pytest.mark.parametrize("seed", [0, 4, 10])
def test_the_toy_world_caption_is_the_judges_reading(toyworld_engine, monkeypatch, fresh_cache, seed):
    # No BLIP is asked for the toy world: a captioner folder that does not exist must not matter.
    monkeypatch.setenv("ATELIER_CAPTIONER", "/nonexistent/blip")
    bundle = toyworld_engine.bundle
    scene = scene_for_seed(seed)
    rgb, _ = render(scene, size=2 * bundle.default_size)  # the user's picture is resized to the model's side
    text, author = caption_image(bundle, rgb)
    assert author == "toy-world judge"
    assert count_tokens(bundle, text) <= bundle.max_tokens
    for obj in scene.objects:
        fill = "" if obj.fill == "solid" else f" {obj.fill}"
        assert f"a {obj.size} {obj.colour}{fill} {obj.shape}" in text
    assert text.endswith(f"on a {scene.background.texture} {scene.background.colour} background")
    assert "solid" not in text
    assert captions._LOADED == {}
