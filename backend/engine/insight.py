"""Insight: what a method already computes that shows *why* its result looks as it does.

A method records it while it runs and returns it as `metadata["insight"]` in the contract of
`backend.protocol.check_insight`; the staging pane draws it (heat maps over the result, lines between matched
points). Word-level cross-attention is Prompt-to-Prompt's "average attention" view (Hertz et al., ICLR 2023,
fig. 4); MDE-Edit, pix2pix-zero and Cora reuse `cross_attention_recorder` + `attention_insight`, the
drag/correspondence methods `correspondence_insight`.

Insight is for looking at only: it is never stored with the accepted result (`without_insight`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.engine.attention import AttentionStore, RecordMaps, attention_layers
from backend.models.bundle import ModelBundle
from backend.protocol import check_insight

Word = tuple[str, list[int]]
"""A word as the user typed it and the positions of its tokens in the 77-token sequence."""


def cross_attention_recorder(
    unet: Any, layers: Sequence[str] | None = None
) -> tuple[AttentionStore, dict[str, RecordMaps]]:
    """A store summing cross-attention maps over every call, and rules that record them on `layers` (default:
    all cross-attention layers): `with controlled(unet, rules): denoise(...)`, then `attention_insight(store, ...)`.

    Only the last batch item is kept: the conditional branch in `predict_noise`'s [uncond, cond] batch. Summing
    instead of keeping every step bounds memory whatever the step count.
    """
    store = AttentionStore(kind="cross", per_step=False, running_sum=True, batch=slice(-1, None))
    names = attention_layers(unet, kind="cross") if layers is None else list(layers)
    return store, {layer: RecordMaps(store) for layer in names}


def prompt_words(bundle: ModelBundle, prompt: str) -> list[Word]:
    """The prompt's words (split at spaces) with their token positions; start, end and padding tokens belong to
    no word, and a word whose tokens cannot be found (the tokenizer cleaned it away) is left out."""
    tokenizer = bundle.tokenizers[0]
    ids = tokenizer(prompt).input_ids[1:-1]  # without the start and end tokens
    words: list[Word] = []
    cursor = 0
    for word in prompt.split():
        pieces = tokenizer(word, add_special_tokens=False).input_ids
        start = _find(ids, pieces, cursor)
        if start is None:
            continue
        words.append((word, [1 + index for index in range(start, start + len(pieces))]))  # +1: the start token
        cursor = start + len(pieces)
    return words


def _find(ids: list[int], pieces: list[int], start: int) -> int | None:
    if not pieces:
        return None
    for index in range(start, len(ids) - len(pieces) + 1):
        if ids[index : index + len(pieces)] == pieces:
            return index
    return None


@torch.no_grad()
def attention_insight(
    store: AttentionStore, words: Sequence[Word], latent_size: tuple[int, int], note: str = ""
) -> dict[str, Any]:
    """metadata["insight"] with one heat map per word at `latent_size`: each layer's maps averaged over its calls
    (the sampling steps) and resized to the latent grid, then averaged over layers; a word's tokens are summed
    and each map is scaled so its peak is 255."""
    insight: dict[str, Any] = {"note": note} if note else {}
    if not words:
        return check_insight(insight)
    layers = [_token_maps(_layer_mean(store, layer), latent_size) for layer in store.layers()]
    if not layers:
        raise ValueError("the attention store holds no maps: was it recording during sampling?")
    token_maps = torch.stack(layers).mean(dim=0)  # (tokens, h, w)
    word_maps = torch.stack([token_maps[positions].sum(dim=0) for _, positions in words])
    peaks = word_maps.amax(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(word_maps.dtype).tiny)
    maps = (255.0 * word_maps / peaks).round().to(torch.uint8).cpu().numpy()
    insight["attention"] = {"tokens": [word for word, _ in words], "maps": maps}
    return check_insight(insight)


def _layer_mean(store: AttentionStore, layer: str) -> torch.Tensor:
    """(query tokens, key tokens) of one layer: the mean over its calls, heads and the last batch item."""
    if layer in store.sums:
        maps = store.mean(layer)
    else:
        maps = torch.stack(list(store.maps[layer].values())).mean(dim=0)
    maps = maps[-1].float()
    return maps.mean(dim=0) if maps.ndim == 3 else maps  # heads, when the store kept them


def _token_maps(maps: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """(queries, tokens) -> (tokens, h, w) at the latent grid (bilinear from the layer's own grid)."""
    height, width = _grid(maps.shape[0], latent_size)
    grid = maps.T.reshape(1, -1, height, width)
    return F.interpolate(grid, size=latent_size, mode="bilinear", align_corners=False)[0]


def _grid(queries: int, latent_size: tuple[int, int]) -> tuple[int, int]:
    """The query grid of a layer: the latent grid halved (rounding up, as the UNet's strided convs do) until it
    has `queries` cells."""
    height, width = latent_size
    while height * width > queries and (height, width) != (1, 1):
        height, width = -(-height // 2), -(-width // 2)
    if height * width != queries:
        raise ValueError(f"{queries} attention queries fit no downsampling of a {latent_size} latent grid")
    return height, width


def correspondence_insight(source_xy: Any, target_xy: Any, score: Any | None = None, note: str = "") -> dict[str, Any]:
    """metadata["insight"] for matched points: (N, 2) x, y in the input's pixels -> (N, 2) in the result's pixels,
    with an optional (N,) match score in [0, 1]. Tensors are accepted."""
    matches = {"source": _numpy(source_xy), "target": _numpy(target_xy)}
    if score is not None:
        matches["score"] = _numpy(score)
    insight: dict[str, Any] = {"correspondences": matches}
    if note:
        insight["note"] = note
    return check_insight(insight)


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, np.float32)
