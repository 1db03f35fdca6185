"""Prompt-to-Prompt attention control (Hertz et al., ICLR 2023): edit a picture by editing its prompt while the
target's attention maps follow the source's.

Two branches denoise side by side: the source prompt (it regenerates the picture from a null-text inversion) and
the target prompt. In the first part of the steps the target branch's cross-attention maps are taken from the
source branch, re-indexed from source to target tokens:
- **replace** (same number of words, some swapped: "a red circle" -> "a blue circle"): M_t = M_s . mapper, where the
  mapper sends each source token to the target token at the same place, splitting a replaced word's attention
  evenly when the two words have different token counts (`replacement_mapper`);
- **refine** (words added or removed: "a circle" -> "a striped circle"): target tokens that a word alignment of the
  two prompts pairs with a source token take that token's map, new tokens keep their own (`refinement_mapper`).
Self-attention maps are copied from the source in [self_from, self_until) of the steps, on the coarse layers only
(P2P: at most 16 x 16 queries at 512 px, a quarter of the latent's side; MDE-Edit's code: 32 x 32, half of it).
A **LocalBlend** keeps everything outside the edited words' attention: after each step from 20 % of the steps on,
x_t(target) = x_t(source) + mask (x_t(target) - x_t(source)), the mask from the words' cross-attention on the
coarsest down/up layers (3 x 3 max-pool, upsampled, normalised by its max, > 0.3).

Branches run in one batch ([uncond source, uncond target, cond source, cond target]; `P2PControl.layout =
"batched"`) or as separate calls (MDE-Edit: the source call records, the target call - which may carry gradients -
injects; `layout = "separate"`, `branch` set before each call). Only the conditional half is edited, as in P2P.
Card: shared/METHODS.md section 5b.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from backend.engine.attention import AttentionCall, AttentionRule, attention_layers, layer_resolution
from backend.engine.insight import prompt_words
from backend.errors import InputError
from backend.models.bundle import ModelBundle

# --- word alignment ----------------------------------------------------------------------------------------------


def _token_count(bundle: ModelBundle, prompt: str) -> int:
    return len(bundle.tokenizers[0](prompt).input_ids)  # with the start and end tokens


def _max_tokens(bundle: ModelBundle) -> int:
    return int(bundle.tokenizers[0].model_max_length)


def _words(bundle: ModelBundle, prompt: str) -> list[tuple[str, list[int]]]:
    words = prompt_words(bundle, prompt)
    if len(words) != len(prompt.split()):
        raise InputError(f"some words of '{prompt}' have no tokens", hint="Use plain words separated by spaces.")
    return words


def replacement_mapper(bundle: ModelBundle, source: str, target: str) -> torch.Tensor:
    """(L, L) float: column j of the target takes sum_i M_s[:, i] mapper[i, j]. The prompts must have the same
    number of words; equal words map token to token, a swapped word's tokens spread over the new word's tokens
    (equal shares when the counts differ, one to one when they agree). Start, end and padding map by position
    from the end of each prompt."""
    source_words, target_words = _words(bundle, source), _words(bundle, target)
    if len(source_words) != len(target_words):
        raise InputError(
            f"a word swap needs prompts of the same number of words ('{source}' has {len(source_words)}, "
            f"'{target}' {len(target_words)})",
            hint="Use the refine mode for added or removed words.",
        )
    length = _max_tokens(bundle)
    mapper = torch.zeros(length, length)
    mapper[0, 0] = 1.0  # start token
    for (_, old_tokens), (_, new_tokens) in zip(source_words, target_words):
        if len(old_tokens) == len(new_tokens):
            mapper[old_tokens, new_tokens] = 1.0
        else:
            for token in new_tokens:
                mapper[old_tokens, token] = 1.0 / len(new_tokens)
    _map_tail(mapper, _token_count(bundle, source), _token_count(bundle, target))
    return mapper


def _map_tail(mapper: torch.Tensor, source_count: int, target_count: int) -> None:
    """End token and padding: target position j (from the end token on) takes the source position as far from
    the source's end token."""
    length = mapper.shape[0]
    for j in range(target_count - 1, length):
        i = min(j - target_count + source_count, length - 1)
        mapper[i, j] = 1.0


def _align(source: Sequence[str], target: Sequence[str]) -> list[int | None]:
    """Global alignment (Needleman-Wunsch: match +1, mismatch -1, gap 0, as P2P's seq_aligner): for each target
    item the index of the source item it is paired with as a match, or None (inserted or replaced)."""
    rows, cols = len(source) + 1, len(target) + 1
    score = [[0] * cols for _ in range(rows)]
    move = [[""] * cols for _ in range(rows)]
    for i in range(1, rows):
        move[i][0] = "up"
    for j in range(1, cols):
        move[0][j] = "left"
    for i in range(1, rows):
        for j in range(1, cols):
            diagonal = score[i - 1][j - 1] + (1 if source[i - 1] == target[j - 1] else -1)
            options = [(diagonal, "diag"), (score[i - 1][j], "up"), (score[i][j - 1], "left")]
            score[i][j], move[i][j] = max(options, key=lambda option: option[0])
    paired: list[int | None] = [None] * len(target)
    i, j = len(source), len(target)
    while i > 0 or j > 0:
        step = move[i][j]
        if step == "diag":
            if source[i - 1] == target[j - 1]:
                paired[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif step == "up":
            i -= 1
        else:
            j -= 1
    return paired


def refinement_mapper(bundle: ModelBundle, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (L,) long, alpha (L,) float): target token j takes source token index[j]'s map where alpha[j] = 1 and
    keeps its own where alpha[j] = 0 (words the alignment does not pair: added or changed words)."""
    source_words, target_words = _words(bundle, source), _words(bundle, target)
    paired = _align([w for w, _ in source_words], [w for w, _ in target_words])
    length = _max_tokens(bundle)
    index = torch.arange(length)
    alpha = torch.ones(length)
    for (_, tokens), match in zip(target_words, paired):
        if match is None:
            alpha[tokens] = 0.0
            index[tokens] = 0
        else:
            old_tokens = source_words[match][1]
            same = len(old_tokens) == len(tokens)
            index[tokens] = torch.tensor(old_tokens if same else [old_tokens[0]] * len(tokens))
    source_count, target_count = _token_count(bundle, source), _token_count(bundle, target)
    for j in range(target_count - 1, length):
        index[j] = min(j - target_count + source_count, length - 1)
    return index, alpha


def changed_words(bundle: ModelBundle, source: str, target: str) -> list[str]:
    """Target words the alignment does not pair with an equal source word (the edit's words)."""
    source_words, target_words = _words(bundle, source), _words(bundle, target)
    paired = _align([w for w, _ in source_words], [w for w, _ in target_words])
    return [word for (word, _), match in zip(target_words, paired) if match is None]


# --- which layers --------------------------------------------------------------------------------------------------


def attention_grids(unet, latent_size: tuple[int, int]) -> list[tuple[int, int]]:
    """The query grids of the UNet's attention layers at this latent size, coarsest first."""
    grids = {layer_resolution(unet, layer, latent_size) for layer in attention_layers(unet, "self")}
    return sorted(grids, key=lambda grid: grid[0] * grid[1])


P2P_SELF_FRACTION = 0.25  # P2P: self-attention maps of at most 16 x 16 queries at 512 px (latent 64): side / 4
MDE_SELF_FRACTION = 0.5  # MDE-Edit's code: at most 32 x 32 (side / 2)


def coarse_self_layers(unet, latent_size: tuple[int, int], fraction: float = P2P_SELF_FRACTION) -> list[str]:
    """Self-attention layers whose query grid is at most `fraction` of the latent's side: the same share of the
    picture's scale on any model (SD at 512 px: 16 x 16 and 8 x 8 for P2P; the toy-world model's 4 x 4 mid block)."""
    limit = (latent_size[0] * fraction, latent_size[1] * fraction)
    return [
        layer
        for layer in attention_layers(unet, "self")
        if all(side <= bound for side, bound in zip(layer_resolution(unet, layer, latent_size), limit))
    ]


def blend_layers(unet, latent_size: tuple[int, int]) -> list[str]:
    """Cross-attention layers of the down and up blocks on their coarsest grid (P2P's LocalBlend and MDE-Edit's
    losses: the 16 x 16 layers at 512 px; the toy-world model's 8 x 8 ones)."""
    layers = attention_layers(unet, "cross", blocks=("down", "up"))
    grids = {layer: layer_resolution(unet, layer, latent_size) for layer in layers}
    coarsest = min(grids.values(), key=lambda grid: grid[0] * grid[1])
    return [layer for layer in layers if grids[layer] == coarsest]


# --- the controller ------------------------------------------------------------------------------------------------


@dataclass
class P2PControl:
    """State shared by the P2P rules of one edit: the mode's token map, the step windows, the branch layout."""

    mode: str  # "replace" | "refine"
    mapper: torch.Tensor | None = None  # replace: (L, L)
    index: torch.Tensor | None = None  # refine: (L,)
    alpha: torch.Tensor | None = None  # refine: (L,)
    cross_until: int = 0  # cross-attention maps injected in steps [0, cross_until)
    self_from: int = 0
    self_until: int = 0
    layout: str = "batched"  # "batched" | "separate"
    branch: str = "source"  # separate layout: which branch the next UNet call is
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # separate layout: source maps of this step

    def cross_target(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The target's cross-attention maps (..., Lq, L) from the source's."""
        if self.mode == "replace":
            return torch.einsum("...qi,ij->...qj", source, self.mapper.to(source))
        gathered = source[..., self.index.to(source.device)]
        alpha = self.alpha.to(source)
        return gathered * alpha + target * (1 - alpha)


def p2p_control(
    bundle: ModelBundle,
    source: str,
    target: str,
    steps: int,
    mode: str = "auto",
    cross_fraction: float = 0.8,
    self_fraction: tuple[float, float] = (0.0, 0.4),
    layout: str = "batched",
) -> P2PControl:
    """A controller for `source` -> `target`; mode "auto" is replace for prompts of the same word count, else
    refine."""
    if mode == "auto":
        mode = "replace" if len(source.split()) == len(target.split()) else "refine"
    if mode not in ("replace", "refine"):
        raise InputError(f"unknown Prompt-to-Prompt mode {mode!r}", hint="Use replace, refine or auto.")
    control = P2PControl(
        mode=mode,
        cross_until=round(cross_fraction * steps),
        self_from=round(self_fraction[0] * steps),
        self_until=round(self_fraction[1] * steps),
        layout=layout,
    )
    if mode == "replace":
        control.mapper = replacement_mapper(bundle, source, target)
    else:
        control.index, control.alpha = refinement_mapper(bundle, source, target)
    return control


class P2PInject(AttentionRule):
    """Injects the source branch's maps into the target branch (module docstring); cross or self by layer."""

    needs_probs = True

    def __init__(self, control: P2PControl, is_cross: bool) -> None:
        super().__init__()
        self.control, self.is_cross = control, is_cross

    def _on(self, step: int) -> bool:
        c = self.control
        return step < c.cross_until if self.is_cross else c.self_from <= step < c.self_until

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        c = self.control
        if c.layout == "separate":
            if c.branch == "source":
                if self._on(call.step):
                    c.saved[call.layer] = probs[-1:].detach()
                return probs
            if not self._on(call.step) or call.layer not in c.saved:
                return probs
            source = c.saved[call.layer].to(probs.dtype)
            edited = self._target(source, probs[-1:])
            return torch.cat([probs[:-1], edited]) if probs.shape[0] > 1 else edited
        if not self._on(call.step):
            return probs
        # batched: [uncond source, uncond target, cond source, cond target]; only the conditional pair is edited
        half = probs.shape[0] // 2
        source, target = probs[half : half + 1], probs[half + 1 : half + 2]
        return torch.cat([probs[: half + 1], self._target(source, target), probs[half + 2 :]])

    def _target(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.control.cross_target(source, target) if self.is_cross else source.expand_as(target)


def p2p_rules(
    unet, control: P2PControl, latent_size: tuple[int, int], self_fraction: float = P2P_SELF_FRACTION
) -> dict[str, AttentionRule]:
    """P2P rules for every cross-attention layer and the coarse self-attention layers (`coarse_self_layers`)."""
    rules: dict[str, AttentionRule] = {layer: P2PInject(control, True) for layer in attention_layers(unet, "cross")}
    for layer in coarse_self_layers(unet, latent_size, self_fraction):
        rules[layer] = P2PInject(control, False)
    return rules


# --- LocalBlend ----------------------------------------------------------------------------------------------------


class BlendMaps(AttentionRule):
    """Keeps this step's conditional cross-attention of the blend layers (source and target items)."""

    needs_probs = True

    def __init__(self, blend: LocalBlend) -> None:
        super().__init__()
        self.blend = blend

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        half = probs.shape[0] // 2
        self.blend.maps.setdefault(call.step, []).append(probs[half:].detach().mean(dim=1))  # (2, Lq, L)
        return probs


@dataclass
class LocalBlend:
    """P2P's LocalBlend for the batched layout: `source_tokens`/`target_tokens` are the blend words' tokens in each
    prompt; from step `start` on, the target latent keeps the source's outside the words' attention mask."""

    source_tokens: list[int]
    target_tokens: list[int]
    latent_size: tuple[int, int]
    start: int
    threshold: float = 0.3
    maps: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    last_mask: torch.Tensor | None = None

    def rules(self, unet) -> dict[str, AttentionRule]:
        return {layer: BlendMaps(self) for layer in blend_layers(unet, self.latent_size)}

    def mask(self, step: int) -> torch.Tensor:
        """(1, 1, h, w) float: the union of the source and target words' masks at this step."""
        maps = torch.stack(self.maps.pop(step)).mean(dim=0)  # (2, Lq, L), layers averaged
        side = int(round(maps.shape[1] ** 0.5))
        grid = (side, maps.shape[1] // side)
        masks = []
        for item, tokens in ((0, self.source_tokens), (1, self.target_tokens)):
            word = maps[item][:, tokens].sum(dim=-1).reshape(1, 1, *grid)
            word = F.max_pool2d(word, 3, stride=1, padding=1)
            word = F.interpolate(word, size=self.latent_size, mode="nearest")
            word = word / word.amax().clamp_min(1e-8)
            masks.append(word > self.threshold)
        self.last_mask = (masks[0] | masks[1]).float()
        return self.last_mask

    def apply(self, step: int, latents: torch.Tensor) -> torch.Tensor:
        """latents (2, C, h, w) = [source, target] after the step's DDIM update."""
        if step not in self.maps:
            return latents
        mask = self.mask(step).to(latents)
        if step < self.start:
            return latents
        source = latents[:1]
        return torch.cat([source, source + mask * (latents[1:] - source)])


def word_tokens(bundle: ModelBundle, prompt: str, words: Sequence[str]) -> list[int]:
    """Token positions of `words` in `prompt` (each must occur)."""
    found = dict(_words(bundle, prompt))
    missing = [word for word in words if word not in found]
    if missing:
        raise InputError(f"the word(s) {', '.join(missing)} do not occur in '{prompt}'")
    return [token for word in words for token in found[word]]
