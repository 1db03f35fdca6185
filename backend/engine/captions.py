"""Source prompts for prompt-free edits (pix2pix-zero): a caption of the user's picture when they type none.

- The toy-world model: the judge's reading of the picture in the world's own caption grammar
  (backend/eval/toyworld.py `read_scene`), e.g. "a big red striped circle left of a small blue star on a plain
  white background". Exact where the judge is.
- Any other model: BLIP (Li et al. 2022) through transformers, as the diffusers pix2pix-zero pipeline does
  (`Salesforce/blip-image-captioning-base`, text prefix "a photography of", up to 128 new tokens; the official
  code used LAVIS's BLIP base_coco on the 512 px LANCZOS-resized image). The captioner comes from
  $ATELIER_CAPTIONER (a hub id or a local folder) or the default hub id, loaded from local files only: with
  neither, the user is asked to type the source prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from backend.engine.conditioning import count_tokens
from backend.errors import InputError
from backend.models.bundle import ModelBundle

DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"
CAPTION_PREFIX = "a photography of"
MAX_NEW_TOKENS = 128
CAPTION_SIDE = 512

_LOADED: dict[tuple[str, str], Captioner] = {}


@dataclass
class Captioner:
    spec: str
    model: Any
    processor: Any
    device: torch.device

    @torch.no_grad()
    def __call__(self, rgb: np.ndarray) -> str:
        image = Image.fromarray(rgb[..., :3]).resize((CAPTION_SIDE, CAPTION_SIDE), Image.Resampling.LANCZOS)
        inputs = self.processor(images=image, text=CAPTION_PREFIX, return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        ids = self.model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS)
        return " ".join(self.processor.decode(ids[0], skip_special_tokens=True).split())


def captioner_spec() -> str:
    return os.environ.get("ATELIER_CAPTIONER", "").strip() or DEFAULT_CAPTIONER


def load_captioner(spec: str | None = None, device: torch.device | str = "cpu") -> Captioner:
    """BLIP from a local folder or the local hub cache (never the network); InputError when it is not there."""
    spec = spec or captioner_spec()
    key = (spec, str(device))
    if key not in _LOADED:
        from transformers import BlipForConditionalGeneration, BlipProcessor

        try:
            processor = BlipProcessor.from_pretrained(spec, local_files_only=True)
            model = BlipForConditionalGeneration.from_pretrained(spec, local_files_only=True).to(device).eval()
        except (OSError, ValueError) as error:
            raise InputError(
                f"no captioning model: BLIP '{spec}' is not on this machine ({type(error).__name__})",
                hint="Type a source prompt describing the picture, or set ATELIER_CAPTIONER to a BLIP folder.",
            ) from None
        _LOADED[key] = Captioner(spec, model, processor, torch.device(device))
    return _LOADED[key]


def caption_image(bundle: ModelBundle, rgb: np.ndarray) -> tuple[str, str]:
    """(caption, who wrote it) for the user's picture, fitted to the text encoder's token limit."""
    from backend.models.registry import TOYWORLD

    if bundle.model_id == TOYWORLD:
        from backend.eval.toyworld import read_scene
        from backend.models.toyworld.world import caption

        side = bundle.default_size
        small = np.asarray(Image.fromarray(rgb[..., :3]).resize((side, side), Image.Resampling.LANCZOS))
        text, author = caption(read_scene(small)), "toy-world judge"
    else:
        captioner = load_captioner(device=bundle.device)
        text, author = captioner(rgb), f"BLIP ({captioner.spec})"
    return fit_to_tokens(bundle, text), author


def fit_to_tokens(bundle: ModelBundle, text: str) -> str:
    """Drop trailing words until the caption fits the text encoder (a caption is ours to shorten; a typed prompt
    that is too long is an error instead)."""
    words = text.split()
    while len(words) > 1 and count_tokens(bundle, " ".join(words)) > bundle.max_tokens:
        words.pop()
    return " ".join(words)
