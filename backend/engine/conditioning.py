"""Text conditioning for sd1/sd2 (one CLIP encoder) and sdxl (two encoders, pooled embedding, size ids)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.errors import InputError
from backend.models.bundle import ModelBundle


@dataclass
class Conditioning:
    """What the UNet is conditioned on for a batch of prompts."""

    hidden: torch.Tensor  # (B, 77, D): encoder_hidden_states
    pooled: torch.Tensor | None = None  # (B, P): sdxl only
    time_ids: torch.Tensor | None = None  # (B, 6): sdxl only (original size, crop, target size)
    token_ids: torch.Tensor | None = None  # (B, 77) of the first tokenizer, for word -> token lookups

    def unet_kwargs(self) -> dict:
        kwargs: dict = {"encoder_hidden_states": self.hidden}
        if self.pooled is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return kwargs

    def __len__(self) -> int:
        return self.hidden.shape[0]

    def repeat(self, n: int) -> Conditioning:
        return Conditioning(*(None if x is None else x.repeat_interleave(n, 0) for x in self._parts()))

    def _parts(self) -> tuple:
        return (self.hidden, self.pooled, self.time_ids, self.token_ids)

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        parts = list(zip(*(item._parts() for item in items)))
        return Conditioning(*(None if any(p is None for p in group) else torch.cat(group) for group in parts))


def count_tokens(bundle: ModelBundle, text: str) -> int:
    """Tokens of `text` including the start and end tokens, as the 77-token limit counts them."""
    return len(bundle.tokenizers[0](text, truncation=False).input_ids)


def check_prompt(bundle: ModelBundle, text: str, what: str = "prompt") -> None:
    """A too-long prompt is an error, never a silent truncation: the tail would simply be ignored."""
    used, limit = count_tokens(bundle, text), bundle.max_tokens
    if used > limit:
        raise InputError(
            f"{what} is {used} tokens long; the text encoder reads at most {limit} (including start/end)",
            hint="Shorten the prompt; words past the limit would be ignored.",
        )


@torch.no_grad()
def encode_prompts(bundle: ModelBundle, prompts: list[str], size: tuple[int, int] | None = None) -> Conditioning:
    """Encode prompts as the model family expects (sdxl: penultimate layers of both encoders + pooled)."""
    for text in prompts:
        check_prompt(bundle, text)
    hidden_states, pooled, first_ids = [], None, None
    for index, (tokenizer, encoder) in enumerate(zip(bundle.tokenizers, bundle.text_encoders)):
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids.to(bundle.device)
        first_ids = ids if index == 0 else first_ids
        output = encoder(ids, output_hidden_states=bundle.family == "sdxl")
        if bundle.family == "sdxl":
            hidden_states.append(output.hidden_states[-2])
            if index == len(bundle.text_encoders) - 1:
                pooled = output.text_embeds if hasattr(output, "text_embeds") else output[0]
        else:
            hidden_states.append(output.last_hidden_state)
    hidden = torch.cat(hidden_states, dim=-1).to(bundle.dtype)
    if bundle.family != "sdxl":
        return Conditioning(hidden=hidden, token_ids=first_ids)
    height, width = size or (bundle.default_size, bundle.default_size)
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=bundle.dtype, device=bundle.device)
    return Conditioning(
        hidden=hidden, pooled=pooled.to(bundle.dtype), time_ids=time_ids.repeat(len(prompts), 1), token_ids=first_ids
    )


def token_indices(bundle: ModelBundle, prompt: str, word: str) -> list[int]:
    """Positions (in the 77-token sequence, start token = 0) of the tokens that spell `word` in `prompt`."""
    tokenizer = bundle.tokenizers[0]
    prompt_ids = tokenizer(prompt).input_ids
    word_ids = tokenizer(word, add_special_tokens=False).input_ids
    if not word_ids:
        raise InputError(f"'{word}' has no tokens")
    for start in range(1, len(prompt_ids) - len(word_ids) + 1):
        if prompt_ids[start : start + len(word_ids)] == word_ids:
            return list(range(start, start + len(word_ids)))
    raise InputError(f"the word '{word}' does not occur in the prompt '{prompt}'")
