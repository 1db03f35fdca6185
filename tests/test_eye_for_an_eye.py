"""Eye-for-an-eye (backend/methods/eye_for_an_eye.py) and the edit-friendly DDPM inversion it stands on."""

from __future__ import annotations

import pytest
import torch

from backend.engine.attention import AttentionCall
from backend.engine.ddpm_inversion import ddpm_invert, ddpm_step, ddpm_timesteps, previous_timestep
from backend.engine.sampling import predict_noise
from backend.engine.turbo import train_alphas
from backend.methods.eye_for_an_eye import CorrespondenceRule, TransferState, masked_adain, transfer_layers
from backend.protocol import EditRequest


def test_ddpm_inversion_is_re_traced_exactly_with_its_noises(engine, scene):
    """Sampling again from the first drawn latent with the stored z and the same predictor lands on x_0."""
    x0 = engine.encode_image(scene)
    cond, uncond = engine.encode_prompts(["a red square"]), engine.encode_prompts([""])
    timesteps = ddpm_timesteps(engine, 20)
    (trajectory,) = ddpm_invert(engine, x0, cond, uncond, timesteps, 3.5, seed=1, start=5)
    assert trajectory.timesteps == timesteps[5:] and len(trajectory.noises) == 15
    alphas = train_alphas(engine)
    latents = trajectory.latents[0]
    for index, t in enumerate(trajectory.timesteps):
        eps = predict_noise(engine, latents, torch.tensor(t), cond, uncond, 3.5)
        latents = ddpm_step(
            alphas, latents, eps, t, previous_timestep(trajectory.timesteps, index), trajectory.noises[index]
        )
        assert torch.allclose(latents, trajectory.latents[index + 1], atol=1e-3)
    assert torch.allclose(latents, x0, atol=1e-3)


def test_masked_adain_takes_the_styles_statistics_inside_the_mask_and_keeps_the_outside():
    generator = torch.Generator().manual_seed(0)
    content = torch.randn(4, 8, 8, generator=generator)
    style = torch.randn(4, 8, 8, generator=generator) * 3 + 5
    content_mask, style_mask = torch.zeros(8, 8), torch.zeros(8, 8)
    content_mask[2:6, 2:6], style_mask[:, :4] = 1, 1
    result = masked_adain(content, style, content_mask, style_mask)
    inside, styled = result[:, 2:6, 2:6].flatten(1), style[:, :, :4].flatten(1)
    assert torch.allclose(inside.mean(1), styled.mean(1), atol=1e-4)
    assert torch.allclose(inside.std(1), styled.std(1), atol=1e-3)
    outside = content_mask == 0
    assert torch.equal(result[:, outside], content[:, outside])


def test_the_layers_are_the_decoders_self_attention_at_half_and_full_latent_side(unet):
    from backend.models.fullsize import build_full_size

    sd = build_full_size("sd1", device="meta")
    layers = transfer_layers(sd.unet, (64, 64))
    assert len(layers) == 6 and {name.split(".attentions")[0] for name in layers} == {"up_blocks.2", "up_blocks.3"}
    assert all(name.endswith("attn1") for name in transfer_layers(unet, (8, 8)))


def _rule(mode: str, counter: int = 11):
    state = TransferState(mode, range(10, 70), refresh_every=5, refresh_until=40, counter=counter)
    out_mask = torch.zeros(16, dtype=torch.bool)
    out_mask[:8] = True
    return state, CorrespondenceRule(state, out_mask, torch.ones(16, dtype=torch.bool))


def test_feature_injection_gives_each_masked_out_position_its_nearest_reference_feature():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(3, 16, 6, generator=generator)
    order = torch.randperm(16, generator=generator)
    features[0] = features[1, order] * 2 + 0.01 * torch.randn(16, 6, generator=generator)  # out = shuffled reference
    call = AttentionCall("layer", 11, is_cross=False)
    _, rule = _rule("features")
    edited = rule.edit_input(call, features)
    assert torch.equal(edited[0, :8], features[1, order[:8]])  # each masked position found its reference feature
    assert torch.equal(edited[0, 8:], features[0, 8:]) and torch.equal(edited[1:], features[1:])
    state, rule = _rule("features", counter=15)  # every 5th step below 40: the structure refresh
    assert torch.equal(rule.edit_input(call, features)[0], features[2])
    state.counter = 80  # outside the step range: nothing
    assert torch.equal(rule.edit_input(call, features), features)


def test_the_ablation_and_the_baseline_change_only_values_or_keys_and_values():
    generator = torch.Generator().manual_seed(1)
    features, key, value = (torch.randn(3, 16, 6, generator=generator) for _ in range(3))
    call = AttentionCall("layer", 11, is_cross=False)
    _, values = _rule("values")
    assert torch.equal(values.edit_input(call, features), features)  # features untouched
    new_key, new_value = values.edit_kv(call, key, value)
    assert torch.equal(new_key, key) and not torch.equal(new_value[0, :8], value[0, :8])
    assert torch.equal(new_value[0, 8:], value[0, 8:])
    _, swap = _rule("kv-swap")
    swap.edit_input(call, features)
    new_key, new_value = swap.edit_kv(call, key, value)
    assert torch.equal(new_key[0], key[1]) and torch.equal(new_value[0], value[1]) and torch.equal(new_key[2], key[2])
    guided = torch.cat([key, key + 1])  # with guidance only the conditional triple is touched
    new_key, _ = swap.edit_kv(call, guided, guided)
    assert torch.equal(new_key[:3], guided[:3]) and torch.equal(new_key[3], guided[4])


def test_without_correspondence_or_adain_the_target_comes_back_and_with_it_takes_the_reference_colour(
    toyworld_engine,
):
    """Toy world: with the correspondence steps and AdaIN off the out branch re-traces the target's inversion (the
    picture comes back); with the defaults the target square takes the reference star's colour in place, and the
    background outside the mask is the input's."""
    from backend.eval.toyworld import detect_objects
    from backend.eval.transfer import cases, judge, run_case

    case = next(c for c in cases(6) if c.kind == "whole")
    same = run_case(toyworld_engine, case, "eye-for-an-eye", {"feature_start": 0, "feature_end": 0, "adain": False})
    (found,) = detect_objects(same)
    assert (found.colour, found.shape) == (case.target.objects[0].colour, case.target.objects[0].shape)
    row = judge(case, run_case(toyworld_engine, case, "eye-for-an-eye", {}))
    assert row["colour_ok"] and row["shape_kept"] and row["iou"] > 0.6, row
    assert row["a_hist"] < row["a_hist_input"] and row["bg_psnr"] > 40


def test_a_transfer_runs_through_the_worker_and_needs_a_reference(run_job, scene):
    reference = scene[:, ::-1].copy()
    request = EditRequest("eye-for-an-eye", image=scene, reference_image=reference, params={"steps": 12}, model="tiny")
    events = run_job(request)
    assert events[-1].kind == "result", events[-1]
    assert [e.kind for e in events].count("preview") == 8 and events[-1].metadata["layers"] > 0
    missing = run_job(EditRequest("eye-for-an-eye", image=scene, model="tiny"))
    assert missing[-1].kind == "error" and "reference" in missing[-1].message


@pytest.mark.parametrize("bad", [{"skip_steps": 100}, {"mode": "nope"}])
def test_bad_settings_are_refused_before_any_work(run_job, scene, bad):
    request = EditRequest(
        "eye-for-an-eye", image=scene, reference_image=scene, params={"steps": 12, **bad}, model="tiny"
    )
    events = run_job(request)
    assert events[-1].kind == "error"
    assert not [e for e in events if e.kind == "progress" and e.stage in ("inverting", "transferring")]
