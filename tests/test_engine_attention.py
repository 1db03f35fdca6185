"""Attention control on a tiny real UNet2DConditionModel: identity, recording, injection, K/V bank, restore."""

from __future__ import annotations

import pytest
import torch

from backend.engine.attention import (
    AttentionController,
    AttentionRule,
    AttentionStore,
    ConcatKV,
    ControlledAttnProcessor,
    EditMaps,
    KVBank,
    MergeKV,
    RecordKV,
    RecordMaps,
    ReplaceKV,
    attention_layers,
    controlled,
    inject_source_maps,
    layer_resolution,
)

TOKENS = 7


@pytest.fixture()
def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    context = torch.randn(2, TOKENS, 32, generator=generator)
    return latents, torch.tensor(500), context


def forward(unet, inputs) -> torch.Tensor:
    latents, t, context = inputs
    with torch.no_grad():
        return unet(latents, t, encoder_hidden_states=context).sample


def all_layers(unet) -> list[str]:
    return attention_layers(unet)


def test_layer_names_and_resolutions(unet):
    self_layers = attention_layers(unet, kind="self", blocks=("up",))
    cross_layers = attention_layers(unet, kind="cross")
    assert self_layers and all(name.startswith("up_blocks.") and name.endswith(".attn1") for name in self_layers)
    assert all(name.endswith(".attn2") for name in cross_layers)
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn1" in self_layers
    assert layer_resolution(unet, "up_blocks.1.attentions.0.transformer_blocks.0.attn1") == (4, 4)
    assert layer_resolution(unet, "up_blocks.2.attentions.0.transformer_blocks.0.attn2") == (8, 8)
    assert layer_resolution(unet, "mid_block.attentions.0.transformer_blocks.0.attn1") == (2, 2)
    at_four = attention_layers(unet, resolution=4)
    assert at_four and all(layer_resolution(unet, name) == (4, 4) for name in at_four)
    assert attention_layers(unet, blocks=("up_blocks.1",)) == [n for n in all_layers(unet) if "up_blocks.1." in n]


def test_no_rule_is_identical_to_stock_processors(unet, inputs):
    expected = forward(unet, inputs)
    with controlled(unet, {name: () for name in all_layers(unet)}):
        assert all(isinstance(p, ControlledAttnProcessor) for p in unet.attn_processors.values())
        plain = forward(unet, inputs)
    # A pass-through recorder forces the explicit softmax path on every layer: same numbers as SDPA.
    store = AttentionStore()
    with controlled(unet, {name: RecordMaps(store) for name in all_layers(unet)}):
        explicit = forward(unet, inputs)
    assert (plain - expected).abs().max() < 1e-5
    assert (explicit - expected).abs().max() < 1e-5


def test_recorded_cross_maps_are_distributions_over_tokens(unet, inputs):
    layers = attention_layers(unet, kind="cross", blocks=("up",))
    per_head = AttentionStore(average_heads=False)
    averaged = AttentionStore(kind="cross")
    controller = AttentionController(unet)
    controller.step = 3
    with controller.installed({name: [RecordMaps(per_head), RecordMaps(averaged)] for name in layers}):
        forward(unet, inputs)
    for name in layers:
        h, w = layer_resolution(unet, name)
        maps = per_head.get(name, 3)
        assert maps.shape == (2, 8, h * w, TOKENS)
        assert averaged.get(name, 3).shape == (2, h * w, TOKENS)
        torch.testing.assert_close(maps.sum(-1), torch.ones(2, 8, h * w))
    assert averaged.layers() == sorted(layers)


def test_store_keeps_only_the_kind_asked_for_and_running_means(unet, inputs):
    store = AttentionStore(kind="self", per_step=False, running_sum=True)
    controller = AttentionController(unet)
    with controller.installed({name: RecordMaps(store) for name in all_layers(unet)}):
        for step in range(2):
            controller.step = step
            forward(unet, inputs)
    assert store.layers() and all(name.endswith("attn1") for name in store.layers())
    assert not store.maps
    name = store.layers()[0]
    assert store.counts[name] == 2
    torch.testing.assert_close(store.mean(name).sum(-1), torch.ones(store.mean(name).shape[:-1]))


def test_replacing_maps_changes_output_and_restore_brings_it_back(unet, inputs):
    expected = forward(unet, inputs)
    cross = attention_layers(unet, kind="cross")
    flipped = EditMaps(lambda layer, probs, is_cross: probs.flip(-1))
    with controlled(unet, {name: flipped for name in cross}):
        edited = forward(unet, inputs)
    assert (edited - expected).abs().max() > 1e-3
    assert torch.equal(forward(unet, inputs), expected)


def test_p2p_injection_gives_the_target_branch_the_source_maps(unet, inputs):
    latents, t, context = inputs
    # Same latent, different prompts: with source maps injected everywhere the branches differ only
    # through V of the target prompt, so injecting maps must change the target branch but not the source.
    same_latents = (latents[:1].expand(2, -1, -1, -1), t, context)
    plain = forward(unet, same_latents)
    layers = attention_layers(unet, kind="cross")
    store = AttentionStore(kind="cross")
    rules = {name: [EditMaps(inject_source_maps(branches=2), steps=range(1)), RecordMaps(store)] for name in layers}
    with controlled(unet, rules):
        injected = forward(unet, same_latents)
    torch.testing.assert_close(injected[0], plain[0])
    assert (injected[1] - plain[1]).abs().max() > 1e-4
    # The recorder after the injection sees the source maps in both branches, on every layer.
    for name in layers:
        maps = store.get(name, 0)
        torch.testing.assert_close(maps[1], maps[0])


def test_rule_steps_gate_the_rule(unet, inputs):
    expected = forward(unet, inputs)
    flipped = EditMaps(lambda layer, probs, is_cross: probs.flip(-1), steps=range(2))
    controller = AttentionController(unet)
    with controller.installed({name: flipped for name in attention_layers(unet, kind="cross")}):
        controller.step = 5
        assert torch.equal(forward(unet, inputs), expected)


def test_memory_bank_concat_of_identical_kv_is_plain_attention(unet, inputs):
    expected = forward(unet, inputs)
    layers = attention_layers(unet, kind="self", blocks=("up",))
    bank = KVBank()
    controller = AttentionController(unet)
    with controller.installed({name: RecordKV(bank) for name in layers}):
        controller.step = 7
        recorded = forward(unet, inputs)
    assert torch.equal(recorded, expected)
    assert len(bank) == len(layers) and bank.nbytes > 0
    name = layers[0]
    key, value = bank.get(name, 7)
    tokens = layer_resolution(unet, name)[0] * layer_resolution(unet, name)[1]
    assert key.shape == value.shape == (2, tokens, 64)

    class KeyLength(AttentionRule):
        lengths: list[int] = []

        def edit_kv(self, call, key, value):
            self.lengths.append(key.shape[1])
            return key, value

    with controller.installed({n: [ConcatKV(bank), KeyLength()] for n in layers}):
        concatenated = forward(unet, inputs)
    assert KeyLength.lengths[0] == 2 * tokens
    # Softmax over every key twice = the same weights halved twice: same output as plain attention.
    assert (concatenated - expected).abs().max() < 1e-4
    with controller.installed({n: ReplaceKV(bank) for n in layers}):
        assert (forward(unet, inputs) - expected).abs().max() < 1e-5


def test_merged_kv_takes_the_base_outside_and_the_reference_inside(unet, inputs):
    """DragonDiffusion's appearance / paste attention: base tokens where `keep`, then reference tokens where `take`;
    with all of the base kept and none of the reference taken it is the base bank replacing the layer's own K/V."""
    latents, t, context = inputs
    layers = attention_layers(unet, kind="self", blocks=("up",))
    base, reference = KVBank(), KVBank()
    with controlled(unet, {name: RecordKV(base) for name in layers}):
        expected = forward(unet, (latents[:1], t, context[:1]))
    with controlled(unet, {name: RecordKV(reference) for name in layers}):
        forward(unet, (latents[1:], t, context[1:]))
    name = layers[0]
    tokens = base.get(name, 0)[0].shape[1]
    keep = torch.arange(tokens) % 3 != 0
    take = torch.arange(tokens) < 5
    call = type("Call", (), {"layer": name, "step": 0, "is_cross": False})()
    own = torch.zeros(2, tokens, 64)
    key, value = MergeKV(base, reference, keep, take).edit_kv(call, own, own)
    assert key.shape == (2, int(keep.sum()) + 5, 64)
    torch.testing.assert_close(key[0, : int(keep.sum())], base.get(name, 0)[0][0, keep])
    torch.testing.assert_close(value[1, int(keep.sum()) :], reference.get(name, 0)[1][0, :5])
    everything = {
        n: MergeKV(
            base,
            reference,
            torch.ones(base.get(n, 0)[0].shape[1], dtype=torch.bool),
            torch.zeros(base.get(n, 0)[0].shape[1], dtype=torch.bool),
        )
        for n in layers
    }
    with controlled(unet, everything):
        assert (forward(unet, (latents[:1], t, context[:1])) - expected).abs().max() < 1e-5


def test_bank_recorded_at_batch_one_serves_a_cfg_batch(unet, inputs):
    latents, t, context = inputs
    layers = attention_layers(unet, kind="self", blocks=("up",))
    bank = KVBank(device="cpu", dtype=torch.float16)
    single = (latents[:1], t, context[:1])
    with controlled(unet, {name: RecordKV(bank) for name in layers}):
        forward(unet, single)
    assert bank.get(layers[0], 0)[0].dtype == torch.float16
    with controlled(unet, {name: ConcatKV(bank) for name in layers}):
        out = forward(unet, (latents[:1].expand(2, -1, -1, -1), t, context[:1].expand(2, -1, -1)))
    assert out.shape == (2, 4, 8, 8)
    torch.testing.assert_close(out[0], out[1])
    with (
        pytest.raises(KeyError, match="memory bank"),
        controlled(unet, {n: ReplaceKV(bank, steps=None) for n in layers}) as c,
    ):
        c.step = 99
        forward(unet, single)


def test_processors_restored_by_identity_even_after_an_exception(unet, inputs):
    before = dict(unet.attn_processors)
    with (
        pytest.raises(RuntimeError, match="boom"),
        controlled(unet, {name: RecordMaps(AttentionStore()) for name in all_layers(unet)}),
    ):
        forward(unet, inputs)
        raise RuntimeError("boom")
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[key] is before[key] for key in before)


def test_only_named_layers_get_the_controlled_processor(unet):
    before = dict(unet.attn_processors)
    name = attention_layers(unet, kind="cross")[0]
    with controlled(unet, {name: ()}):
        current = unet.attn_processors
        assert isinstance(current[name + ".processor"], ControlledAttnProcessor)
        others = [key for key in before if key != name + ".processor"]
        assert all(current[key] is before[key] for key in others)


def test_unknown_layer_names_are_refused_with_examples(unet):
    before = dict(unet.attn_processors)
    with pytest.raises(ValueError, match="valid names look like: down_blocks"):
        AttentionController(unet).install({"up_blocks.9.attn1": ()})
    assert all(unet.attn_processors[key] is before[key] for key in before)


def test_installing_twice_is_refused(unet):
    controller = AttentionController(unet)
    with controller.installed({}), pytest.raises(RuntimeError, match="already installed"):
        controller.install({})


def test_recorded_maps_keep_the_graph_when_asked(unet, inputs):
    latents, t, context = inputs
    context = context.clone().requires_grad_(True)
    layers = attention_layers(unet, kind="cross", blocks=("up",))
    store = AttentionStore(kind="cross", keep_grad=True)
    detached = AttentionStore(kind="cross")
    with controlled(unet, {name: [RecordMaps(store), RecordMaps(detached)] for name in layers}):
        unet(latents, t, encoder_hidden_states=context)
    assert not detached.get(layers[0], 0).requires_grad
    # An MDE-Edit-style object loss on token 2's map: its gradient must reach the inputs.
    loss = sum(store.get(name, 0)[..., 2].mean() for name in layers)
    loss.backward()
    assert context.grad is not None and context.grad.abs().sum() > 0


def test_a_query_rule_sees_each_batch_item_and_its_change_reaches_only_that_item(unet, inputs):
    """Cora permutes the target branch's queries: a rule that rewrites item 1's queries changes item 1's output
    and leaves item 0 exactly as it was."""

    class SwapQueryTokens(AttentionRule):
        def edit_query(self, call, query):
            changed = query.clone()
            changed[1] = query[1].flip(0)  # item 1's queries in reverse token order
            return changed

    expected = forward(unet, inputs)
    with controlled(unet, {name: SwapQueryTokens() for name in attention_layers(unet, kind="self", blocks=("up",))}):
        edited = forward(unet, inputs)
    assert torch.allclose(edited[0], expected[0], atol=1e-5)
    assert (edited[1] - expected[1]).abs().max() > 1e-3


def test_an_input_rule_rewrites_the_features_queries_keys_and_values_come_from(unet, inputs):
    """Eye-for-an-eye copies another item's input features into item 0 before Q/K/V: with item 1's features
    copied in every up self-attention layer, item 0 no longer computes what it did, item 1 is untouched; a rule
    that returns the features as they are changes nothing."""

    class CopyFeatures(AttentionRule):
        def edit_input(self, call, hidden_states):
            changed = hidden_states.clone()
            changed[0] = hidden_states[1]
            return changed

    class Keep(AttentionRule):
        def edit_input(self, call, hidden_states):
            return hidden_states

    layers = attention_layers(unet, kind="self", blocks=("up",))
    expected = forward(unet, inputs)
    with controlled(unet, {name: Keep() for name in layers}):
        assert torch.allclose(forward(unet, inputs), expected, atol=1e-6)
    with controlled(unet, {name: CopyFeatures() for name in layers}):
        edited = forward(unet, inputs)
    assert torch.allclose(edited[1], expected[1], atol=1e-5)
    assert (edited[0] - expected[0]).abs().max() > 1e-3
