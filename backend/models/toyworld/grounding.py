"""Grounding loss for training the toy-world UNet: each object's words should attend to that object's pixels.

MDE-Edit and pix2pix-zero read cross-attention maps as "where is the word"; a model trained from scratch on a
small budget does not discover that by itself (the first CPU model's shape-word maps overlapped their objects
with IoU 0.08). TokenCompose (Wang et al., CVPR 2024, "TokenCompose: Text-to-Image Diffusion with Token-level
Supervision") adds two terms on the cross-attention maps of the object tokens, using segmentation masks:

- token loss  L_token = (1 - sum_{u in M} A_u / sum_u A_u)^2  - the share of a token's attention that falls
  inside its object's mask M, pushed to 1;
- pixel loss  L_pixel = BCE(A_u, M_u)  averaged over the map - the map itself shaped like the mask.

TokenCompose had to obtain masks with Grounded-SAM; the toy world gives them exactly. Every word of an object's
phrase (size, colour, fill, shape: "a big red striped circle") is supervised with that object's mask; the
other tokens (start/end, relations, background words) are left free, as in the paper.

The two terms do different work. The token loss is satisfied by a map *anywhere inside* the mask, however peaked;
the pixel loss, whose gradient -1/A_u is largest where the map is weakest inside the mask, flattens the map over
the whole object. With the pixel term at a tenth of the token term the shipped model's shape-word maps sat on their
objects (precision 0.85 after thresholding at half the maximum) but covered half of them (recall 0.45, IoU 0.43);
20 minutes of CPU training with the two terms equal (0.02 each) made that precision 0.80, recall 0.76, IoU 0.65.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from backend.models.toyworld.world import SHAPES, Scene, render

MAX_OBJECTS = 3
_COVERAGE_SUPERSAMPLE = 4


def object_word_spans(scene: Scene, text: str) -> list[list[int]]:
    """Word positions of each object's phrase in `text` (scene order; [] when the caption leaves it out).

    A phrase runs from the word after its "a" to its shape word; colours are distinct within a scene and never
    background colours, so the colour word identifies the object whatever order the caption chose."""
    words = text.split()
    spans = []
    for obj in scene.objects:
        if obj.colour not in words:
            spans.append([])
            continue
        at = words.index(obj.colour)
        start = at
        while start > 0 and words[start - 1] != "a":
            start -= 1
        end = at
        while end < len(words) and words[end] not in SHAPES:
            end += 1
        spans.append(list(range(start, min(end, len(words) - 1) + 1)))
    return spans


def token_weights(scenes: Sequence[Scene], texts: Sequence[str], length: int = 77) -> torch.Tensor:
    """(B, MAX_OBJECTS, length) with 1 where token k belongs to object o of sample b.

    The toy-world tokenizer has one token per word and a start token first, so word i is token i + 1."""
    weights = torch.zeros(len(scenes), MAX_OBJECTS, length)
    for b, (scene, text) in enumerate(zip(scenes, texts)):
        if not text:  # the unconditional (dropped) caption has no object words
            continue
        for o, span in enumerate(object_word_spans(scene, text)):
            tokens = [i + 1 for i in span if i + 1 < length - 1]  # the last position holds the end token
            weights[b, o, tokens] = 1.0
    return weights


def object_coverage(scene: Scene, side: int) -> np.ndarray:
    """float16 (MAX_OBJECTS, side, side): each object's area coverage of the cells of a side x side grid (the
    latent grid); zeros for missing objects."""
    _, masks = render(scene, side * _COVERAGE_SUPERSAMPLE)
    coverage = np.zeros((MAX_OBJECTS, side, side), np.float16)
    for o, mask in enumerate(masks[:MAX_OBJECTS]):
        cells = mask.reshape(side, _COVERAGE_SUPERSAMPLE, side, _COVERAGE_SUPERSAMPLE).mean(axis=(1, 3))
        coverage[o] = cells.astype(np.float16)
    return coverage


def grounding_loss(
    maps: Mapping[str, torch.Tensor], coverage: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token loss, pixel loss) averaged over the supervised tokens and layers.

    maps: layer -> cross-attention probabilities (B, Q, K), heads averaged, Q a square grid; coverage:
    (B, MAX_OBJECTS, S, S) object masks at the finest grid; weights: (B, MAX_OBJECTS, K) from `token_weights`."""
    tokens = weights.sum()
    zero = coverage.new_zeros(())
    if not maps or tokens == 0:
        return zero, zero
    token_terms, pixel_terms = [], []
    for probs in maps.values():
        probs = probs.float()
        side = int(round(probs.shape[1] ** 0.5))
        masks = F.adaptive_avg_pool2d(coverage.float(), side).flatten(2)  # (B, O, Q)
        inside = torch.einsum("bqk,boq->bok", probs, masks)
        share = inside / probs.sum(dim=1).unsqueeze(1).clamp_min(1e-8)  # (B, O, K)
        token_terms.append((((1 - share) ** 2) * weights).sum() / tokens)
        # BCE of every supervised token's map against its mask, averaged over the map's cells.
        clamped = probs.clamp(1e-6, 1 - 1e-6)
        log_in, log_out = clamped.log(), (1 - clamped).log()  # (B, Q, K)
        bce = -(torch.einsum("boq,bqk->bok", masks, log_in) + torch.einsum("boq,bqk->bok", 1 - masks, log_out))
        pixel_terms.append(((bce / probs.shape[1]) * weights).sum() / tokens)
    return torch.stack(token_terms).mean(), torch.stack(pixel_terms).mean()
