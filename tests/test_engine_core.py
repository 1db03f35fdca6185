"""Engine core: DDIM inversion, the sampling loop and its hook, cancel, prompts, image <-> latents."""

from __future__ import annotations

import dataclasses
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backend.engine.context import Engine
from backend.engine.inversion import cached_ddim_inversion, ddim_invert
from backend.engine.report import Reporter
from backend.engine.sampling import denoise, guided_predictor, make_scheduler, sample
from backend.errors import Cancelled, InputError


def _regenerate(engine, z_T, cond, steps):
    scheduler = make_scheduler(engine, steps)
    return denoise(engine, z_T, scheduler, scheduler.timesteps, guided_predictor(engine, cond, None, 1.0))


def _round_trip_error(engine, latents, cond, steps):
    trajectory = ddim_invert(engine, latents, cond, steps=steps)
    assert len(trajectory) == steps + 1
    rebuilt = _regenerate(engine, trajectory[-1], cond, steps)
    return ((rebuilt - latents).norm() / latents.norm()).item(), trajectory[-1]


class _TimeOnlyUNet(torch.nn.Module):
    """eps depends on t only: then DDIM is exactly reversible, so any error is in our step algebra."""

    def __init__(self, real):
        super().__init__()
        self.config = real.config

    def forward(self, latents, t, **kwargs):
        generator = torch.Generator().manual_seed(int(t))
        return SimpleNamespace(sample=torch.randn(latents.shape, generator=generator))


def test_ddim_inversion_step_algebra_is_exact(tiny, scene):
    engine = Engine(dataclasses.replace(tiny, unet=_TimeOnlyUNet(tiny.unet)))
    latents = Engine(tiny).encode_image(scene)
    cond = Engine(tiny).encode_prompts(["a red square"])
    error, z_T = _round_trip_error(engine, latents, cond, 50)
    assert error < 1e-4, error
    assert (z_T - latents).norm() > 0.5 * latents.norm(), "inversion must actually move towards noise"


def test_ddim_invert_then_regenerate_converges_to_the_input_latents(engine, scene):
    # A random-weight UNet is a stiff ODE (inversion evaluates eps one step early), so the round trip is only
    # approximate; it must approach the input as steps grow (first order), and beat fresh noise by far.
    latents = engine.encode_image(scene)
    cond = engine.encode_prompts(["a red square and a blue circle"])
    coarse, _ = _round_trip_error(engine, latents, cond, 10)
    fine, z_T = _round_trip_error(engine, latents, cond, 200)
    assert fine < 0.5 * coarse, (coarse, fine)
    assert fine < 0.5, fine
    fresh = _regenerate(engine, torch.randn_like(z_T), cond, 200)
    assert ((fresh - latents).norm() / latents.norm()).item() > 2 * fine


def test_inversion_cache_skips_the_second_inversion(tiny, scene):
    from backend.engine.cache import LRUBytesCache

    events = []
    engine = Engine(tiny, Reporter("j", events.append), LRUBytesCache(64 * 2**20))
    latents = engine.encode_image(scene)
    cond = engine.encode_prompts(["x"])
    first = cached_ddim_inversion(engine, scene, latents, "x", cond, 10)
    unet_calls = []
    handle = tiny.unet.register_forward_hook(lambda *a: unet_calls.append(1))
    try:
        second = cached_ddim_inversion(engine, scene, latents, "x", cond, 10)
    finally:
        handle.remove()
    assert unet_calls == []
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert any(e.kind == "log" and "cache" in e.message for e in events)
    cached_ddim_inversion(engine, scene, latents, "x", cond, 12)  # other steps: a new entry
    assert len(engine.inversion_cache) == 2


def test_the_step_hook_sees_every_step_and_can_replace_latents(engine):
    cond = engine.encode_prompts(["a circle"])
    seen = []

    def hook(step, t, latents, x0_pred):
        seen.append((step, int(t), tuple(x0_pred.shape)))
        return torch.zeros_like(latents)

    result = sample(engine, cond, None, (64, 64), steps=6, guidance_scale=1.0, seed=0, hook=hook)
    assert [s[0] for s in seen] == list(range(6))
    assert [s[1] for s in seen] == sorted((s[1] for s in seen), reverse=True)
    assert torch.count_nonzero(result) == 0


def test_sampling_streams_progress_and_x0_previews(tiny):
    events = []
    engine = Engine(tiny, Reporter("j", events.append))
    cond = engine.encode_prompts(["a circle"])
    sample(engine, cond, None, (64, 64), steps=4, guidance_scale=1.0, seed=0)
    progress = [e.step for e in events if e.kind == "progress"]
    previews = [e for e in events if e.kind == "preview"]
    assert progress == [1, 2, 3, 4]
    assert [p.step for p in previews] == [1, 2, 3, 4]
    assert previews[0].image.dtype == np.uint8 and previews[0].image.shape[2] == 3


def test_same_seed_same_picture_other_seed_other_picture(engine):
    cond = engine.encode_prompts(["a circle"])
    a = sample(engine, cond, None, (64, 64), 3, 1.0, seed=5)
    b = sample(engine, cond, None, (64, 64), 3, 1.0, seed=5)
    c = sample(engine, cond, None, (64, 64), 3, 1.0, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cancel_stops_within_one_step(tiny):
    cancel = threading.Event()
    events = []
    engine = Engine(tiny, Reporter("j", events.append, cancel))
    cond = engine.encode_prompts(["a circle"])
    unet_calls = []

    def hook(step, t, latents, x0_pred):
        if step == 3:
            cancel.set()  # the user presses Esc during step 4

    handle = tiny.unet.register_forward_hook(lambda *a: unet_calls.append(1))
    try:
        with pytest.raises(Cancelled) as stopped:
            sample(engine, cond, None, (64, 64), steps=50, guidance_scale=1.0, seed=0, hook=hook)
    finally:
        handle.remove()
    assert len(unet_calls) == 4, "no UNet evaluation may start after the cancel"
    assert stopped.value.step == 4


def test_a_prompt_over_77_tokens_is_an_error_not_a_truncation(engine):
    long_prompt = " ".join(["red"] * 80)
    with pytest.raises(InputError, match=r"prompt is 82 tokens long; the text encoder reads at most 77"):
        engine.encode_prompts([long_prompt])
    engine.encode_prompts([" ".join(["red"] * 75)])  # exactly 77 with start and end: fine


def test_working_size_keeps_aspect_and_unet_multiple(engine):
    assert engine.size_multiple == 32  # 8x VAE times two UNet downsamplings
    assert engine.working_size(96, 128) == (64, 64)  # long side 64 -> 48 rounds to 64
    assert engine.working_size(300, 600, max_side=256) == (128, 256)


def test_encode_decode_shapes_and_range(engine, scene):
    latents = engine.encode_image(scene)
    assert latents.shape == (1, 4, 8, 8)
    image = engine.decode_latents(latents)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_latent_mask_frees_every_cell_the_pixel_mask_touches_whatever_its_dtype(engine):
    mask = np.zeros((64, 64), np.uint8)
    mask[9:11, 17:40] = 255  # a 2-pixel line: no 8x8 cell is mostly inside it
    for given in (mask, mask > 0, mask.astype(np.float32) / 255):
        small = engine.mask_to_latent(given)[0, 0].cpu().numpy()
        assert small.shape == (8, 8) and small.max() == 1.0
        assert set(zip(*np.nonzero(small))) == {(1, x) for x in range(2, 5)}
