"""Attention control for stock diffusers UNets: one processor class, small rules, small stores.

Every method that edits through attention (Prompt-to-Prompt map injection, DragonDiffusion's memory bank /
"visual cross-attention", MDE-Edit's and pix2pix-zero's cross-attention losses) needs the same few moves on a
named set of `Attention` layers: record the maps, record K/V, replace or extend K/V, rewrite the maps. Instead
of monkey-patching `forward` (what the official repos do, and what broke when diffusers renamed
`CrossAttention`), an `AttentionController` installs one `ControlledAttnProcessor` per named layer and puts the
original processor objects back in `finally`.

Rules see queries and K/V *after* the projection and *before* the head split, shaped (batch, tokens, channels), so a
memory bank recorded at batch 1 during inversion can be reused at any batch and masks index the token axis.
Rules see maps shaped (batch, heads, query tokens, key tokens). Maps are only materialised on layers whose
rules ask for them; everywhere else the processor takes the same SDPA path as diffusers' `AttnProcessor2_0`.

All state lives on the controller (`step`) and on the stores the rules write to, so no
`cross_attention_kwargs` are needed (diffusers silently drops undeclared processor kwargs anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

_PROCESSOR_SUFFIX = ".processor"

MapEdit = Callable[[str, torch.Tensor, bool], torch.Tensor]
"""(layer, probs (B, heads, Lq, Lk), is_cross) -> probs of the same shape."""


@dataclass(frozen=True)
class AttentionCall:
    """What a rule knows about the attention call it is acting on."""

    layer: str
    step: int
    is_cross: bool


# --------------------------------------------------------------------------------------------- stores


class AttentionStore:
    """Attention maps per layer and step, written by `RecordMaps`.

    Maps of a layer at a step are shaped (B, heads, Lq, Lk), or (B, Lq, Lk) with `average_heads`. A layer
    called twice in one step (e.g. MDE-Edit's inner optimisation loop) keeps the last call. With
    `running_sum`, a per-layer sum over all calls is kept too; set `per_step=False` to keep only the sum,
    which bounds memory for long runs (the P2P "average attention" view).
    """

    def __init__(
        self,
        *,
        average_heads: bool = True,
        kind: str = "all",
        keep_grad: bool = False,
        per_step: bool = True,
        running_sum: bool = False,
        device: torch.device | str | None = None,
        batch: slice | Sequence[int] | None = None,
    ) -> None:
        if kind not in ("all", "self", "cross"):
            raise ValueError(f"kind must be 'all', 'self' or 'cross', got {kind!r}")
        self.average_heads = average_heads
        self.kind = kind
        self.keep_grad = keep_grad
        self.per_step = per_step
        self.running_sum = running_sum
        self.device = device
        self.batch = batch
        self.maps: dict[str, dict[int, torch.Tensor]] = {}
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def wants(self, is_cross: bool) -> bool:
        return self.kind == "all" or (self.kind == "cross") == is_cross

    def record(self, call: AttentionCall, probs: torch.Tensor) -> None:
        if not self.wants(call.is_cross):
            return
        maps = probs if self.batch is None else probs[self.batch]
        if self.average_heads:
            maps = maps.mean(dim=1)
        # Losses on maps (MDE-Edit OAL/CCL, pix2pix-zero guidance) need the graph; everything else must not
        # keep it alive across steps.
        if not self.keep_grad:
            maps = maps.detach()
        if self.device is not None:
            maps = maps.to(self.device)
        if self.per_step:
            self.maps.setdefault(call.layer, {})[call.step] = maps
        if self.running_sum:
            previous = self.sums.get(call.layer)
            self.sums[call.layer] = maps if previous is None else previous + maps
            self.counts[call.layer] = self.counts.get(call.layer, 0) + 1

    def get(self, layer: str, step: int) -> torch.Tensor:
        try:
            return self.maps[layer][step]
        except KeyError:
            raise KeyError(f"no maps recorded for layer {layer!r} at step {step}") from None

    def at_step(self, step: int) -> dict[str, torch.Tensor]:
        """Maps of every recorded layer at one step."""
        return {layer: steps[step] for layer, steps in self.maps.items() if step in steps}

    def mean(self, layer: str) -> torch.Tensor:
        """Average over all recorded calls of a layer (needs `running_sum=True`)."""
        if layer not in self.sums:
            raise KeyError(f"no running sum for layer {layer!r} (was running_sum=True?)")
        return self.sums[layer] / self.counts[layer]

    def layers(self) -> list[str]:
        return sorted(set(self.maps) | set(self.sums))

    def clear(self) -> None:
        self.maps.clear()
        self.sums.clear()
        self.counts.clear()


class KVBank:
    """Key/value projections per (layer, step key): DragonDiffusion's KV memory bank.

    Entries are (B, tokens, channels), stored detached, optionally on another device (DragonDiffusion keeps the
    bank on the CPU: about 1.4 GB at 512 px for 9 layers x 50 steps in fp16) and moved back on `get`.
    """

    def __init__(self, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.entries: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def put(self, layer: str, step: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.entries[(layer, step)] = (self._stored(key), self._stored(value))

    def get(
        self, layer: str, step: int, *, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            key, value = self.entries[(layer, step)]
        except KeyError:
            raise KeyError(f"memory bank has no K/V for layer {layer!r} at step {step}") from None
        return key.to(device=device, dtype=dtype), value.to(device=device, dtype=dtype)

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.detach().to(device=self.device, dtype=self.dtype)

    def __contains__(self, layer_step: object) -> bool:
        return layer_step in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.entries.values() for t in kv)

    def clear(self) -> None:
        self.entries.clear()


# ---------------------------------------------------------------------------------------------- rules


class AttentionRule:
    """A rule acts on one attention call. Override `edit_input`, `edit_query`, `edit_kv` and/or `edit_probs`.

    `steps` limits the rule to some sampling steps (e.g. `range(10)` for P2P's first 10 steps); None = always.
    A rule with `needs_probs = True` makes its layer materialise softmax(QK^T * scale).
    """

    needs_probs: bool = False

    def __init__(self, steps: Container[int] | None = None) -> None:
        self.steps = steps

    def active(self, step: int) -> bool:
        return self.steps is None or step in self.steps

    def edit_input(self, call: AttentionCall, hidden_states: torch.Tensor) -> torch.Tensor:
        """The layer's input features (batch, tokens, channels), before Q/K/V are projected from them - the block's
        normalised hidden states (Eye-for-an-eye rearranges these); a self-attention layer takes K/V from them too."""
        return hidden_states

    def edit_query(self, call: AttentionCall, query: torch.Tensor) -> torch.Tensor:
        """Queries (batch, tokens, channels) after the projection, before the head split (Cora's alignment)."""
        return query

    def edit_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return key, value

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        return probs


class RecordMaps(AttentionRule):
    """Write the attention maps of the layer to an `AttentionStore` (maps pass through unchanged)."""

    needs_probs = True

    def __init__(self, store: AttentionStore, steps: Container[int] | None = None) -> None:
        super().__init__(steps)
        self.store = store

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        self.store.record(call, probs)
        return probs


class EditMaps(AttentionRule):
    """Rewrite the maps with a callable (layer, probs, is_cross) -> probs: P2P replace / refine / reweight."""

    needs_probs = True

    def __init__(self, edit: MapEdit, steps: Container[int] | None = None) -> None:
        super().__init__(steps)
        self.edit = edit

    def edit_probs(self, call: AttentionCall, probs: torch.Tensor) -> torch.Tensor:
        return self.edit(call.layer, probs, call.is_cross)


class RecordKV(AttentionRule):
    """Write the layer's K/V to a `KVBank` under the controller's current step (K/V pass through unchanged)."""

    def __init__(self, bank: KVBank, steps: Container[int] | None = None) -> None:
        super().__init__(steps)
        self.bank = bank

    def edit_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.bank.put(call.layer, call.step, key, value)
        return key, value


class ReplaceKV(AttentionRule):
    """Attend to the bank's K/V instead of the layer's own (DragonDiffusion, move/resize)."""

    def __init__(self, bank: KVBank, steps: Container[int] | None = None) -> None:
        super().__init__(steps)
        self.bank = bank

    def edit_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return bank_kv(self.bank, call, key, value)


class ConcatKV(AttentionRule):
    """Attend to the layer's own K/V followed by the bank's: DragonDiffusion's visual cross-attention (drag)."""

    def __init__(self, bank: KVBank, steps: Container[int] | None = None) -> None:
        super().__init__(steps)
        self.bank = bank

    def edit_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bank_key, bank_value = bank_kv(self.bank, call, key, value)
        return torch.cat([key, bank_key], dim=1), torch.cat([value, bank_value], dim=1)


class MergeKV(AttentionRule):
    """Attend to two banks' K/V, not the layer's own: `base`'s tokens where `keep` is True, then `reference`'s
    where `take` is True ((tokens,) bool each, on this layer's grid). DragonDiffusion's appearance replacing and
    object pasting: the base image outside the edited region, the reference image inside its object."""

    def __init__(
        self,
        base: KVBank,
        reference: KVBank,
        keep: torch.Tensor,
        take: torch.Tensor,
        steps: Container[int] | None = None,
    ) -> None:
        super().__init__(steps)
        self.base, self.reference, self.keep, self.take = base, reference, keep, take

    def edit_kv(self, call: AttentionCall, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        base_key, base_value = bank_kv(self.base, call, key, value)
        ref_key, ref_value = bank_kv(self.reference, call, key, value)
        keep, take = self.keep.to(key.device), self.take.to(key.device)
        return (
            torch.cat([base_key[:, keep], ref_key[:, take]], dim=1),
            torch.cat([base_value[:, keep], ref_value[:, take]], dim=1),
        )


def bank_kv(
    bank: KVBank, call: AttentionCall, key: torch.Tensor, value: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bank K/V for this call, broadcast over the batch: inversion records at batch 1, CFG edits at batch 2."""
    bank_key, bank_value = bank.get(call.layer, call.step, device=key.device, dtype=key.dtype)
    batch = key.shape[0]
    if bank_key.shape[0] == batch:
        return bank_key, bank_value
    if bank_key.shape[0] == 1:
        return bank_key.expand(batch, -1, -1), bank_value.expand(batch, -1, -1)
    raise ValueError(f"{call.layer}: memory bank batch {bank_key.shape[0]} does not fit batch {batch}")


def inject_source_maps(branches: int = 2, mapper: torch.Tensor | None = None) -> MapEdit:
    """Prompt-to-Prompt injection: every branch of a batch gets the source branch's maps.

    The batch is laid out as groups of `branches` items (e.g. [source, target] or, with CFG,
    [uncond source, uncond target, cond source, cond target]); item 0 of each group is the source.
    `mapper` (Lk_source, Lk_target) re-indexes cross-attention token columns for word swaps with
    different token counts (P2P's `get_replacement_mapper`); self-attention maps are copied as they are.
    """

    def edit(layer: str, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        grouped = probs.reshape(-1, branches, *probs.shape[1:])
        source = grouped[:, :1]
        if is_cross and mapper is not None:
            source = torch.einsum("gbhqi,ij->gbhqj", source, mapper.to(source))
        injected = torch.cat([grouped[:, :1], source.expand(-1, branches - 1, -1, -1, -1)], dim=1)
        return injected.reshape(probs.shape)

    return edit


# ------------------------------------------------------------------------------------------ processor


class ControlledAttnProcessor:
    """`AttnProcessor2_0` with hooks: identical output when its rules do nothing."""

    def __init__(self, layer: str, controller: AttentionController, rules: Sequence[AttentionRule] = ()) -> None:
        self.layer = layer
        self.controller = controller
        self.rules = tuple(rules)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        call = AttentionCall(self.layer, self.controller.step, is_cross=encoder_hidden_states is not None)
        rules = [rule for rule in self.rules if rule.active(call.step)]

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        for rule in rules:
            hidden_states = rule.edit_input(call, hidden_states)
        query = attn.to_q(hidden_states)
        for rule in rules:
            query = rule.edit_query(call, query)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        for rule in rules:
            key, value = rule.edit_kv(call, key, value)

        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        attention_mask = _fit_mask(attention_mask, key.shape[-2])

        if any(rule.needs_probs for rule in rules):
            probs = _attention_probs(attn, query, key, attention_mask)
            for rule in rules:
                probs = rule.edit_probs(call, probs)
            hidden_states = probs.to(value.dtype) @ value
        else:
            # Stock diffusers ignores attn.scale here (its TODO); in SD UNets it equals SDPA's default.
            hidden_states = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False
            )

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def _attention_probs(
    attn: Any, query: torch.Tensor, key: torch.Tensor, attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """softmax(QK^T * scale + mask), softmax in fp32 so fp16 maps still sum to 1 (as `upcast_softmax` does)."""
    scores = (query @ key.transpose(-1, -2)) * (query.shape[-1] ** -0.5)
    if attention_mask is not None:
        scores = scores + attention_mask
    return scores.float().softmax(dim=-1).to(query.dtype)


def _fit_mask(attention_mask: torch.Tensor | None, key_length: int) -> torch.Tensor | None:
    """Extend an additive mask over tokens a rule appended (ConcatKV appends after the layer's own)."""
    if attention_mask is None or attention_mask.shape[-1] == key_length:
        return attention_mask
    extra = key_length - attention_mask.shape[-1]
    if extra < 0:
        raise ValueError("a rule shortened K/V on a masked attention layer; the mask cannot follow")
    return F.pad(attention_mask, (0, extra), value=0.0)


# ----------------------------------------------------------------------------------------- controller


class AttentionController:
    """Installs `ControlledAttnProcessor` on named layers and restores the originals.

    The sampling loop sets `controller.step` before each UNet call; rules and stores key on it.
    """

    def __init__(self, unet: Any) -> None:
        self.unet = unet
        self.step = 0
        self._saved: dict[str, Any] | None = None

    def install(self, rules: Mapping[str, AttentionRule | Sequence[AttentionRule]]) -> None:
        if self._saved is not None:
            raise RuntimeError("attention control is already installed; restore() first")
        saved = dict(self.unet.attn_processors)
        _check_layers(rules, saved)
        processors = dict(saved)
        for layer, layer_rules in rules.items():
            if isinstance(layer_rules, AttentionRule):
                layer_rules = (layer_rules,)
            processors[layer + _PROCESSOR_SUFFIX] = ControlledAttnProcessor(layer, self, layer_rules)
        self.unet.set_attn_processor(processors)
        self._saved = saved

    def restore(self) -> None:
        """Put the very processor objects back that were there before `install` (no-op if not installed)."""
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        self.unet.set_attn_processor(dict(saved))

    @contextmanager
    def installed(self, rules: Mapping[str, AttentionRule | Sequence[AttentionRule]]) -> Iterator[AttentionController]:
        self.install(rules)
        try:
            yield self
        finally:
            self.restore()


@contextmanager
def controlled(
    unet: Any, rules: Mapping[str, AttentionRule | Sequence[AttentionRule]]
) -> Iterator[AttentionController]:
    """`with controlled(unet, rules) as controller:` — install, run, always restore."""
    with AttentionController(unet).installed(rules) as controller:
        yield controller


def _check_layers(rules: Mapping[str, Any], processors: Mapping[str, Any]) -> None:
    valid = [key.removesuffix(_PROCESSOR_SUFFIX) for key in processors]
    unknown = sorted(set(rules) - set(valid))
    if unknown:
        examples = ", ".join(valid[:4])
        raise ValueError(f"unknown attention layers {unknown[:4]}; valid names look like: {examples}")


# ------------------------------------------------------------------------------------------- layers


def attention_layers(
    unet: Any,
    kind: str = "all",
    blocks: Sequence[str] = ("down", "mid", "up"),
    resolution: int | tuple[int, int] | None = None,
    latent_size: int | tuple[int, int] | None = None,
) -> list[str]:
    """Attention layer names of a UNet, filtered.

    `kind`: "self" (attn1), "cross" (attn2) or "all". `blocks`: "down", "mid", "up" or any module-path
    prefix such as "up_blocks.1". `resolution`: keep layers whose query grid is this side (or (h, w)) at
    `latent_size` (default: the UNet's `sample_size`), e.g. 16 for P2P's 16x16 layers of SD at 512 px.
    """
    if kind not in ("all", "self", "cross"):
        raise ValueError(f"kind must be 'all', 'self' or 'cross', got {kind!r}")
    suffix = {"all": (".attn1", ".attn2"), "self": (".attn1",), "cross": (".attn2",)}[kind]
    # "up_blocks.1" must not also select a hypothetical "up_blocks.10": prefixes end at a dot.
    prefixes = tuple(_BLOCK_PREFIXES.get(block, block.rstrip(".") + ".") for block in blocks)
    names = [key.removesuffix(_PROCESSOR_SUFFIX) for key in unet.attn_processors]
    names = [name for name in names if name.endswith(suffix) and name.startswith(prefixes)]
    if resolution is not None:
        wanted = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
        names = [name for name in names if layer_resolution(unet, name, latent_size) == wanted]
    return names


_BLOCK_PREFIXES = {"down": "down_blocks.", "mid": "mid_block.", "up": "up_blocks."}


def layer_resolution(unet: Any, layer: str, latent_size: int | tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) of the query grid of an attention layer for a latent of `latent_size`.

    In UNet2DConditionModel every block but the last down block ends in a downsampler and every up block
    but the last in an upsampler, and attention runs before them; down sampling rounds up (3x3 conv, stride
    2, padding 1).
    """
    size = latent_size if latent_size is not None else unet.config.sample_size
    height, width = (size, size) if isinstance(size, int) else size
    levels = len(unet.config.block_out_channels) - 1
    parts = layer.split(".")
    if parts[0] == "down_blocks":
        halvings = int(parts[1])
    elif parts[0] == "mid_block":
        halvings = levels
    elif parts[0] == "up_blocks":
        halvings = levels - int(parts[1])
    else:
        raise ValueError(f"not a UNet attention layer: {layer!r}")
    for _ in range(halvings):
        height, width = -(-height // 2), -(-width // 2)
    return height, width
