"""Measure a trained toy-world model against issue #3's bar, with the judge (backend/eval/toyworld.py):

- generations from held-in captions (scenes of the training set, as the issue asks): one-object colour >= 95 % and
  shape >= 85 %, two-object both right >= 75 %; the same on held-out captions (scenes no training run draws), and
  the judge on the model's own VAE reconstructions of the held-in scenes: the ceiling the generations can reach;
- VAE reconstruction PSNR >= 30 dB; 50-step DDIM inversion -> reconstruction PSNR >= 27 dB;
- cross-attention maps of the shape word (up_blocks.1/2, recorded while reconstructing) overlap the object:
  IoU >= 0.5 of the map thresholded at half its maximum;
- seconds for one 50-step 128 px generation with CFG on the CPU (aim <= 10 s on 2 cores).

Everything goes through the app's own engine (Engine, DDIM loop, inversion, attention controller), so these
numbers are what the methods will see.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from backend.engine.attention import AttentionStore, RecordMaps, attention_layers, controlled
from backend.engine.conditioning import token_indices
from backend.engine.context import Engine
from backend.engine.inversion import ddim_invert
from backend.engine.sampling import denoise, guided_predictor, make_scheduler
from backend.eval.toyworld import detect_objects, mask_iou, match
from backend.models.bundle import ModelBundle
from backend.models.toyworld.world import Scene, caption, ground_truth, render, scene_for_seed

log = logging.getLogger(__name__)

HELD_OUT_SEED = 990_001  # scenes no training run draws (training uses small seeds)


@torch.no_grad()
def generate(
    engine: Engine, prompts: list[str], steps: int = 50, guidance: float = 5.0, seed: int = 0, batch: int = 50
) -> np.ndarray:
    """uint8 (N, S, S, 3): DDIM samples of `prompts`, sample i from noise seed `seed + i`."""
    size, factor = engine.bundle.default_size, engine.bundle.vae_scale_factor
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        cond, uncond = engine.encode_prompts(chunk), engine.encode_prompts([""] * len(chunk))
        shape = (1, engine.unet.config.in_channels, size // factor, size // factor)
        latents = torch.cat([engine.randn(shape, seed + start + i) for i in range(len(chunk))])
        scheduler = make_scheduler(engine, steps)
        predict = guided_predictor(engine, cond, uncond, guidance)
        latents = denoise(engine, latents, scheduler, scheduler.timesteps, predict, stage="evaluating")
        images.append(decode(engine, latents))
    return np.concatenate(images)


@torch.no_grad()
def decode(engine: Engine, latents: torch.Tensor) -> np.ndarray:
    vae = engine.bundle.vae
    pixels = vae.decode(latents.to(vae.dtype) / engine.bundle.latent_scaling).sample.float().clamp(-1, 1)
    return ((pixels + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def held_in_scenes(seed: int, scenes: int, objects: int, count: int) -> list[Scene]:
    """The first `count` training scenes (`scene_for_seed(seed, i)`, i < `scenes`: the trainer's cache) that
    have exactly `objects` objects: their captions are the held-in prompts."""
    found = []
    for index in range(scenes):
        scene = scene_for_seed(seed, index)
        if len(scene.objects) == objects:
            found.append(scene)
            if len(found) == count:
                return found
    raise ValueError(f"the {scenes} training scenes of seed {seed} hold only {len(found)} with {objects} object(s)")


def held_out_scenes(objects: int, count: int) -> list[Scene]:
    return [scene_for_seed(HELD_OUT_SEED + objects, i, n_objects=objects) for i in range(count)]


def judge_images(images: np.ndarray, scenes: list[Scene]) -> dict:
    """Shares of objects whose colour / colour and shape the judge finds, and of images with every object right."""
    colour, shape, right = [], [], []
    for image, scene in zip(images, scenes, strict=True):
        truth = ground_truth(scene, image.shape[0])
        paired = match(detect_objects(image), truth)
        colour += [d is not None and d.colour == t.colour for d, t in zip(paired, truth)]
        shape += [d is not None and d.colour == t.colour and d.shape == t.shape for d, t in zip(paired, truth)]
        right.append(all(shape[-len(truth) :]))
    return {"colour": float(np.mean(colour)), "shape": float(np.mean(shape)), "all_right": float(np.mean(right))}


GROUPS = {"one_object": 1, "two_objects": 2}


def judge_generations(
    engine: Engine, groups: dict[str, list[Scene]], steps: int = 50, guidance: float = 5.0
) -> dict[str, dict]:
    """judge_images on generations from the captions of each group's scenes."""
    return {
        name: judge_images(generate(engine, [caption(s) for s in scenes], steps, guidance), scenes)
        for name, scenes in groups.items()
    }


def judge_reconstructions(engine: Engine, groups: dict[str, list[Scene]]) -> dict[str, dict]:
    """judge_images on VAE reconstructions of the scenes' renders: what generations can reach at best."""
    size = engine.bundle.default_size
    report = {}
    for name, scenes in groups.items():
        images = np.stack([render(scene, size)[0] for scene in scenes])
        chunks = np.array_split(images, max(1, len(images) // 50))
        report[name] = judge_images(np.concatenate([decode(engine, _encode(engine, c)) for c in chunks]), scenes)
    return report


@torch.no_grad()
def vae_psnr(engine: Engine, count: int = 200) -> float:
    images = np.stack([render(scene_for_seed(HELD_OUT_SEED, i), engine.bundle.default_size)[0] for i in range(count)])
    decoded = np.concatenate(
        [decode(engine, _encode(engine, chunk)) for chunk in np.array_split(images, max(1, count // 50))]
    )
    return float(psnr(decoded, images))


def _encode(engine: Engine, images: np.ndarray) -> torch.Tensor:
    return torch.cat([engine.encode_image(image) for image in images])


def inversion_and_attention(engine: Engine, count: int = 20, steps: int = 50) -> dict:
    """DDIM-invert renders with their captions (no CFG), regenerate them while recording the cross-attention of
    up_blocks.1/2, and measure reconstruction PSNR and the IoU of the shape word's map with the true mask; with
    the IoU, the map's precision (share of the thresholded map on the object) and recall (share of the object the
    thresholded map covers): low recall with high precision is a map peaked inside its object."""
    layers = attention_layers(engine.unet, "cross", blocks=("up_blocks.1", "up_blocks.2"))
    psnrs, ious, precisions, recalls = [], [], [], []
    for index in range(count):
        scene = scene_for_seed(HELD_OUT_SEED + 3, index, n_objects=1)
        image, masks = render(scene, engine.bundle.default_size)
        prompt = caption(scene)
        cond = engine.encode_prompts([prompt])
        trajectory = ddim_invert(engine, engine.encode_image(image), cond, steps)
        store = AttentionStore(kind="cross", per_step=False, running_sum=True)
        with torch.no_grad(), controlled(engine.unet, {layer: RecordMaps(store) for layer in layers}):
            scheduler = make_scheduler(engine, steps)
            predict = guided_predictor(engine, cond, None, 1.0)
            latents = denoise(engine, trajectory[-1], scheduler, scheduler.timesteps, predict)
        psnrs.append(psnr(decode(engine, latents)[0], image))
        token = token_indices(engine.bundle, prompt, scene.objects[0].shape)[0]
        found, truth = word_map(store, layers, token, image.shape[0]) >= 0.5, masks[0] > 0.5
        ious.append(mask_iou(found, truth))
        overlap = float((found & truth).sum())
        precisions.append(overlap / max(int(found.sum()), 1))
        recalls.append(overlap / max(int(truth.sum()), 1))
    return {
        "inversion_psnr": float(np.mean(psnrs)),
        "cross_attention_iou": float(np.mean(ious)),
        "cross_attention_precision": float(np.mean(precisions)),
        "cross_attention_recall": float(np.mean(recalls)),
    }


def word_map(store: AttentionStore, layers: list[str], token: int, size: int) -> np.ndarray:
    """A token's cross-attention averaged over layers and steps, upsampled to `size`, scaled to max 1."""
    total = torch.zeros(size, size)
    for layer in layers:
        probs = store.mean(layer)[0, :, token].float().cpu()  # (query pixels,)
        side = int(round(probs.numel() ** 0.5))
        grid = probs.reshape(1, 1, side, side)
        total += F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    return (total / total.max().clamp_min(1e-12)).numpy()


def sampling_seconds(engine: Engine, steps: int = 50, threads: int = 2) -> float:
    """Wall time of one CFG generation at the native size on the CPU with `threads` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        generate(engine, ["a big red circle in the center on a plain white background"], steps)  # warm-up
        began = time.perf_counter()
        generate(engine, ["a small blue striped star left of a big yellow ring"], steps)
        return time.perf_counter() - began
    finally:
        torch.set_num_threads(previous)


def evaluate(
    bundle: ModelBundle,
    cpu_bundle: ModelBundle | None = None,
    count: int = 200,
    steps: int = 50,
    training: tuple[int, int] | None = None,
) -> dict:
    """All of the issue's figures for one loaded model (`cpu_bundle`: the same model on the CPU, for timing).

    `training` = (seed, scenes) of the training cache: "judge" is then measured on `count` held-in captions per
    group and "judge_held_out" on count // 2 held-out ones; without it "judge" is held-out only."""
    engine = Engine(bundle)
    held_out_count = count if training is None else max(1, count // 2)
    held_out = {name: held_out_scenes(n, held_out_count) for name, n in GROUPS.items()}
    if training is None:
        results = {"judge": {"prompts": "held-out", **judge_generations(engine, held_out, steps)}}
    else:
        held_in = {name: held_in_scenes(*training, n, count) for name, n in GROUPS.items()}
        results = {
            "judge": {"prompts": "held-in", **judge_generations(engine, held_in, steps)},
            "judge_held_out": judge_generations(engine, held_out, steps),
            "judge_on_vae_reconstructions": judge_reconstructions(engine, held_in),
        }
    results["vae_psnr"] = vae_psnr(engine, count)
    results.update(inversion_and_attention(engine, max(1, count // 10), steps))
    if cpu_bundle is not None:
        results["cpu_seconds_per_image"] = sampling_seconds(Engine(cpu_bundle), steps)
    log.info("evaluation: %s", results)
    return results
