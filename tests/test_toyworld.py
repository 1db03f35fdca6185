"""Toy world: scene generator, tokenizer, the judge measured on the world's own renders, and the trainer."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from backend.eval.metrics import background_psnr
from backend.eval.toyworld import detect_objects, judge_scene, mask_iou, match
from backend.models.toyworld.world import (
    BACKGROUND_COLOURS,
    COLOURS,
    FILLS,
    SHAPES,
    SIZES,
    TEXTURES,
    Background,
    caption,
    ground_truth,
    region,
    render,
    render_background,
    scene_for_seed,
    tint,
    vocabulary,
)

SIZE = 128

# --- world ---------------------------------------------------------------------------------------------------


def test_scenes_and_pixels_are_deterministic_per_seed():
    first, again, other = scene_for_seed(7, 3), scene_for_seed(7, 3), scene_for_seed(8, 3)
    assert first == again and first != other
    assert np.array_equal(render(first, SIZE)[0], render(again, SIZE)[0])
    assert caption(first) == caption(again)


def test_every_attribute_of_the_world_is_reachable():
    scenes = [scene_for_seed(1, i) for i in range(400)]
    objects = [obj for scene in scenes for obj in scene.objects]
    assert {o.colour for o in objects} == set(COLOURS) and len(COLOURS) >= 8
    assert {o.shape for o in objects} == set(SHAPES) and len(SHAPES) >= 5
    assert {o.size for o in objects} == set(SIZES) == {"small", "big"}
    assert {o.fill for o in objects} == set(FILLS) == {"solid", "striped", "dotted"}
    assert {s.background.texture for s in scenes} == set(TEXTURES)
    assert {s.background.colour for s in scenes} == set(BACKGROUND_COLOURS)
    assert {len(s.objects) for s in scenes} == {1, 2, 3}


def test_captions_agree_with_ground_truth():
    for index in range(200):
        scene = scene_for_seed(2, index)
        text = caption(scene)
        truth = ground_truth(scene, SIZE)
        for obj in scene.objects:
            words = [obj.size, obj.colour] + ([obj.fill] if obj.fill != "solid" else []) + [obj.shape]
            assert " ".join(words) in text, (text, obj)
        assert f"on a {scene.background.texture} {scene.background.colour} background" in text
        if len(scene.objects) == 1:
            x, y = truth[0].centroid
            near_a_border = min(abs(c / SIZE * 3 - round(c / SIZE * 3)) for c in (x, y)) < 3 / SIZE
            if not near_a_border:  # within a pixel of a third of the image the eye could go either way
                assert region(dataclasses.replace(scene.objects[0], x=x / SIZE, y=y / SIZE)) in text
        else:
            (ax, ay), (bx, by) = truth[0].centroid, truth[1].centroid
            horizontal = abs(ax - bx) > abs(ay - by)
            assert ("left of" in text) == (horizontal and ax < bx), text
            assert ("right of" in text) == (horizontal and ax > bx), text
            assert ("above" in text) == (not horizontal and ay < by), text
            assert ("below" in text) == (not horizontal and ay > by), text


def test_training_captions_vary_but_keep_colours_and_shapes():
    scene = scene_for_seed(3, 1, n_objects=2)
    rng = np.random.default_rng(0)
    variants = {caption(scene, rng) for _ in range(50)}
    assert len(variants) > 5
    for text in variants:
        assert all(o.colour in text and o.shape in text for o in scene.objects)
        assert set(text.split()) <= set(vocabulary())


def test_masks_match_rendered_pixels_and_never_overlap():
    for index in range(60):
        scene = scene_for_seed(4, index)
        rgb, masks = render(scene, SIZE)
        background = np.round(render_background(scene.background, SIZE)).astype(np.uint8)
        union = np.logical_or.reduce(masks)
        assert sum(m.sum() for m in masks) == union.sum(), "objects overlap"
        outside = ~ndimage.binary_dilation(union, iterations=3)  # the anti-aliased fringe of star tips
        assert np.array_equal(rgb[outside], background[outside])
        for obj, mask in zip(scene.objects, masks):
            core = rgb[ndimage.binary_erosion(mask, iterations=1)]
            allowed = {COLOURS[obj.colour], tint(COLOURS[obj.colour])}
            # Inner pixels show the colour or, for patterns, its tint (blends only at pattern edges).
            exact = np.mean([tuple(p) in allowed for p in core])
            assert exact > (0.99 if obj.fill == "solid" else 0.6), (obj, exact)
            assert not mask[:2].any() and not mask[-2:].any() and not mask[:, :2].any() and not mask[:, -2:].any()


# --- tokenizer -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    from backend.models.toyworld.tokenizer import write_tokenizer_files

    folder = write_tokenizer_files(tmp_path_factory.mktemp("tokenizer"))
    return CLIPTokenizer.from_pretrained(str(folder))


def test_tokenizer_is_clip_format_with_one_token_per_world_word(world_tokenizer):
    tokenizer = world_tokenizer
    assert tokenizer.model_max_length == 77 and len(tokenizer) < 1000
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == "<|endoftext|>"
    for word in vocabulary():
        tokens = tokenizer.tokenize(word)
        assert tokens == [f"{word}</w>"], (word, tokens)
    # Words outside the world still encode (through byte tokens), nothing is lost.
    assert tokenizer.decode(tokenizer("a green dog").input_ids, skip_special_tokens=True) == "a green dog"
    assert tokenizer.tokenize("dog!") == ["do", "g</w>", "!</w>"]


def test_captions_round_trip_through_the_tokenizer(world_tokenizer):
    for index in range(50):
        text = caption(scene_for_seed(5, index))
        ids = world_tokenizer(text).input_ids
        assert ids[0] == world_tokenizer.bos_token_id and ids[-1] == world_tokenizer.eos_token_id
        assert len(ids) == len(text.split()) + 2 <= 77
        assert world_tokenizer.decode(ids, skip_special_tokens=True) == text


# --- the judge, measured on the ground-truth renderer ----------------------------------------------------------


def _jpeg(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "JPEG", quality=40)
    return np.asarray(Image.open(buffer).convert("RGB"))


def _noise(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)


def _blur(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(ndimage.gaussian_filter(rgb.astype(np.float32), (1.0, 1.0, 0)).round(), 0, 255).astype(np.uint8)


def _all(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _jpeg(_noise(_blur(rgb, rng), rng), rng)


PERTURBATIONS = {"clean": lambda rgb, rng: rgb, "noise": _noise, "blur": _blur, "jpeg": _jpeg, "all": _all}


def _judge_accuracy(count: int, perturb, seed: int = 11) -> dict:
    """Judge `count` scenes (1, 2, 3 objects in turn) rendered at 128 px and perturbed."""
    rng = np.random.default_rng(seed)
    colour, one, two, ious = [], [], [], []
    for index in range(count):
        scene = scene_for_seed(seed, index, n_objects=1 + index % 3)
        rgb, masks = render(scene, SIZE)
        truth = ground_truth(scene, SIZE, masks)
        paired = match(detect_objects(perturb(rgb, rng)), truth)
        right = [d is not None and d.colour == t.colour and d.shape == t.shape for d, t in zip(paired, truth)]
        colour += [d is not None and d.colour == t.colour for d, t in zip(paired, truth)]
        ious += [mask_iou(d.mask, t.mask) for d, t in zip(paired, truth) if d is not None and d.colour == t.colour]
        if len(truth) == 1:
            one.append(right[0])
        elif len(truth) == 2:
            two.append(all(right))
    return {
        "colour": float(np.mean(colour)),
        "shape_one": float(np.mean(one)),
        "both_two": float(np.mean(two)),
        "iou_mean": float(np.mean(ious)),
        "iou_min": float(np.min(ious)),
    }


def test_judge_on_clean_renders_meets_the_bar():
    result = _judge_accuracy(240, PERTURBATIONS["clean"])
    print("\njudge on 240 clean 128 px renders:", {k: round(v, 3) for k, v in result.items()})
    assert result["colour"] >= 0.98
    assert result["shape_one"] >= 0.95
    assert result["both_two"] >= 0.90
    assert result["iou_min"] > 0.85


@pytest.mark.parametrize("kind", ["noise", "blur", "jpeg", "all"])
def test_judge_stays_accurate_on_imperfect_images(kind):
    result = _judge_accuracy(90, PERTURBATIONS[kind], seed=12)
    print(f"\njudge on 90 renders with {kind}:", {k: round(v, 3) for k, v in result.items()})
    assert result["colour"] >= 0.95
    assert result["shape_one"] >= 0.9
    assert result["both_two"] >= 0.85
    assert result["iou_mean"] > 0.8


def test_patterned_fills_are_found_as_one_object():
    for fill in ("striped", "dotted"):
        for index in range(12):
            scene = scene_for_seed(13, index, n_objects=1)
            obj = dataclasses.replace(scene.objects[0], fill=fill)
            scene = dataclasses.replace(scene, objects=(obj,))
            found = detect_objects(render(scene, SIZE)[0])
            assert [(d.colour, d.shape) for d in found] == [(obj.colour, obj.shape)], (fill, obj)


@pytest.mark.parametrize("kind, bar", [("clean", 0.95), ("blur", 0.95), ("noise", 0.95), ("jpeg", 0.9), ("all", 0.8)])
def test_judge_reads_fills(kind, bar):
    rng = np.random.default_rng(15)
    right, total = 0, 0
    for fill in FILLS:
        for index in range(20):
            scene = scene_for_seed(15, index, n_objects=1)
            obj = dataclasses.replace(scene.objects[0], fill=fill)
            rgb = render(dataclasses.replace(scene, objects=(obj,)), SIZE)[0]
            found = detect_objects(PERTURBATIONS[kind](rgb, rng))
            right += bool(found) and found[0].fill == fill
            total += 1
    print(f"\nfills read right on {kind} renders: {right}/{total}")
    assert right >= bar * total


def test_judge_scene_reports_what_changed():
    scene = scene_for_seed(14, 0, n_objects=2)
    rgb = render(scene, SIZE)[0]
    report = judge_scene(rgb, scene)
    assert report["all_correct"] and report["extra_objects"] == 0
    assert math.isinf(report["background_psnr"])
    assert all(o["centroid_error"] < 1.0 and o["iou"] > 0.9 for o in report["objects"])
    first = scene.objects[0]
    others = [c for c in COLOURS if c not in {o.colour for o in scene.objects}]
    recoloured = dataclasses.replace(scene, objects=(dataclasses.replace(first, colour=others[0]), scene.objects[1]))
    report = judge_scene(render(recoloured, SIZE)[0], scene)
    assert [o["colour_ok"] for o in report["objects"]] == [False, True]
    assert report["objects"][0]["detected_colour"] == others[0]


def test_detection_can_be_restricted_to_a_region():
    scene = scene_for_seed(15, 0, n_objects=2)
    rgb, masks = render(scene, SIZE)
    found = detect_objects(rgb, region=ndimage.binary_dilation(masks[1], iterations=3))
    assert [d.colour for d in found] == [scene.objects[1].colour]


def test_background_psnr_is_infinite_when_unchanged_and_drops_when_changed():
    scene = scene_for_seed(16, 0, n_objects=1)
    rgb, masks = render(scene, SIZE)
    assert math.isinf(background_psnr(rgb, rgb.copy()))
    other_texture = "checkered" if scene.background.texture != "checkered" else "striped"
    changed = render(dataclasses.replace(scene, background=Background(scene.background.colour, other_texture)), SIZE)
    assert background_psnr(rgb, changed[0], masks[0]) < 30
    edited = rgb.copy()
    edited[masks[0]] = 0  # only the object changed: the background is untouched
    assert math.isinf(background_psnr(rgb, edited, masks[0]))
    assert background_psnr(rgb, edited) < 30


def test_held_in_prompts_are_captions_of_the_training_cache():
    from backend.models.toyworld.evaluate import held_in_scenes, held_out_scenes

    training = [scene_for_seed(5, i) for i in range(60)]
    for objects in (1, 2):
        chosen = held_in_scenes(5, 60, objects, 4)
        assert len(chosen) == 4 and all(len(s.objects) == objects for s in chosen)
        assert all(s in training for s in chosen)
        assert not any(s in training for s in held_out_scenes(objects, 4))
    with pytest.raises(ValueError, match="hold only"):
        held_in_scenes(5, 6, 2, 10)


def test_judge_images_scores_renders_as_right_and_empty_backgrounds_as_wrong():
    from backend.models.toyworld.evaluate import judge_images

    scenes = [scene_for_seed(17, i, n_objects=2) for i in range(6)]
    renders = np.stack([render(s, SIZE)[0] for s in scenes])
    assert judge_images(renders, scenes) == {"colour": 1.0, "shape": 1.0, "all_right": 1.0}
    empty = np.stack([render(dataclasses.replace(s, objects=()), SIZE)[0] for s in scenes])
    assert judge_images(empty, scenes) == {"colour": 0.0, "shape": 0.0, "all_right": 0.0}
    swapped = renders.copy()
    swapped[0] = renders[1]  # another scene's objects in image 0
    assert judge_images(swapped, scenes)["all_right"] == pytest.approx(5 / 6)


# --- trainer -------------------------------------------------------------------------------------------------


def _train(work, out, *extra: str) -> int:
    from backend.models.toyworld.train import main

    flags = ["--preset", "tiny", "--work-dir", str(work), "--output-dir", str(out), "--seed", "3"]
    flags += ["--vae-steps", "4", "--vae-batch", "4", "--vae-images", "16", "--eval-every", "2"]
    flags += ["--scenes", "24", "--unet-steps", "6", "--batch-size", "4", "--warmup", "2"]
    flags += [
        "--log-every",
        "1",
        "--checkpoint-every",
        "2",
        "--device",
        "cpu",
        "--eval-count",
        "2",
        "--eval-steps",
        "2",
    ]
    return main([*flags, *extra])


def train_log(work) -> list[dict]:
    from backend.models.toyworld.train import iter_log

    return list(iter_log(work))


def _losses(work) -> dict[tuple[str, int], float]:
    from backend.models.toyworld.train import iter_log

    return {(e["stage"], e["step"]): e["loss"] for e in iter_log(work) if "loss" in e}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One uninterrupted tiny run and one interrupted every 3 steps and resumed until done."""
    base = tmp_path_factory.mktemp("toyworld-train")
    assert _train(base / "straight", base / "straight-model") == 0
    # Evaluation is measured once, on the uninterrupted run (it does not depend on how training went).
    resume = ["--stop-after", "3", "--stages", "vae,cache,unet,export"]
    codes = [_train(base / "resumed", base / "resumed-model", *resume) for _ in range(4)]
    return base, codes


def test_trainer_resumes_where_it_stopped_with_the_same_trajectory(trained):
    base, codes = trained
    assert codes == [3, 3, 0, 0]  # vae stops at 3/4; vae done + unet 3/6; unet done + export; nothing left
    straight, resumed = _losses(base / "straight"), _losses(base / "resumed")
    assert sorted(k for k in straight if k[0] == "unet") == [("unet", step) for step in range(1, 7)]
    assert straight.keys() == resumed.keys()
    for key, loss in straight.items():
        assert resumed[key] == pytest.approx(loss, rel=1e-5, abs=1e-6), key
    assert (base / "resumed" / "unet_checkpoint.pt").is_file()
    # The grounding loss (on by default) was part of every UNet step, and logged.
    logged = [e for e in train_log(base / "straight") if e["stage"] == "unet" and "loss" in e]
    assert all(e["token"] > 0 and e["loss"] > e["denoising"] for e in logged)


def test_an_interrupted_trainer_saves_where_it_was_and_resumes_from_there(tmp_path, monkeypatch):
    import torch

    from backend.models.toyworld import train

    real_step = train.Trainer._vae_batch
    calls = []

    def interrupt_on_third(self, images, index, *rest, **kw):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl+C or SIGTERM in the middle of step 2
        return real_step(self, images, index, *rest, **kw)

    monkeypatch.setattr(train.Trainer, "_vae_batch", interrupt_on_third)
    assert _train(tmp_path / "work", tmp_path / "model", "--stages", "vae") == 130
    assert torch.load(tmp_path / "work" / "vae_checkpoint.pt", weights_only=True)["step"] == 2
    monkeypatch.setattr(train.Trainer, "_vae_batch", real_step)
    assert _train(tmp_path / "work", tmp_path / "model", "--stages", "vae") == 0
    assert (tmp_path / "work" / "vae" / "config.json").is_file()
    assert [e["step"] for e in train.iter_log(tmp_path / "work") if e["stage"] == "vae" and "loss" in e][-2:] == [3, 4]


def test_a_time_budget_ends_stages_finished_with_the_learning_rate_decayed(trained, tmp_path):
    """--unet-minutes: as many steps as fit, the cosine schedule fitted to them, the stage then complete (a
    re-run trains nothing more) and exported; what a lent GPU's few minutes rely on."""
    import shutil

    import torch

    from backend.models.toyworld.train import iter_log

    work = tmp_path / "work"
    shutil.copytree(trained[0] / "straight", work)
    (work / "unet_checkpoint.pt").unlink()
    budget = ["--unet-steps", "100000", "--unet-minutes", "0.15", "--stages", "unet,export", "--lr", "1e-3"]
    assert _train(work, tmp_path / "model", *budget) == 0
    state = torch.load(work / "unet_checkpoint.pt", weights_only=True)
    steps = [e for e in iter_log(work) if e["stage"] == "unet" and "loss" in e]
    assert 20 < state["step"] == state["total"] == steps[-1]["step"] < 100000
    assert steps[-1]["lr"] == pytest.approx(1e-4, rel=0.05)  # the schedule's floor, 10 % of --lr
    assert (tmp_path / "model" / "unet").is_dir()
    assert _train(work, tmp_path / "model", *budget) == 0
    assert len([e for e in iter_log(work) if e["stage"] == "unet" and "loss" in e]) == len(steps)
    # A budget shorter than the first steps (before the speed is known) still ends the stage on time, finished.
    (work / "unet_checkpoint.pt").unlink()
    short = ["--unet-steps", "100000", "--unet-minutes", "0.0003", "--stages", "unet,export"]
    assert _train(work, tmp_path / "model", *short) == 0
    state = torch.load(work / "unet_checkpoint.pt", weights_only=True)
    assert state["step"] == state["total"] < 20


def test_training_goes_on_from_an_exported_model(trained, tmp_path):
    """--init-from: the export's VAE becomes the work dir's VAE (no VAE steps), its UNet and text encoder start
    the UNet stage, and the steps add up; a model of another config is refused with a clear message."""
    import json

    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from backend.models.toyworld.train import iter_log

    source = trained[0] / "straight-model"
    work, out = tmp_path / "work", tmp_path / "model"
    assert _train(work, out, "--init-from", str(source), "--unet-steps", "0", "--stages", "vae,cache,unet,export") == 0
    assert not [e for e in iter_log(work) if e["stage"] == "vae" and "loss" in e]
    for name in ("vae", "unet"):
        cls = AutoencoderKL if name == "vae" else UNet2DConditionModel
        before, after = cls.from_pretrained(source / name).state_dict(), cls.from_pretrained(out / name).state_dict()
        assert all(torch.equal(before[key], after[key]) for key in before), name
    steps = json.loads((source / "toyworld.json").read_text())["unet_steps"]
    assert json.loads((out / "toyworld.json").read_text())["unet_steps"] == steps
    assert _train(work, out, "--init-from", str(source), "--unet-steps", "3", "--stages", "unet,export") == 0
    assert json.loads((out / "toyworld.json").read_text())["unet_steps"] == steps + 3

    with pytest.raises(SystemExit, match="another model config"):
        _train(tmp_path / "other", out, "--init-from", str(source), "--image-size", "32", "--stages", "vae")


def test_a_latent_cache_of_another_scene_count_is_extended_or_cut_not_re_encoded(trained, tmp_path):
    """Going from 24 to 40 scenes encodes only scenes 24..39 (the first 24 are the old cache's); going down to 10
    takes the first 10 of the larger cache; both equal what encoding from scratch gives."""
    import shutil

    import torch

    from backend.models.toyworld.dataset import cache_path, cached_counts, load_latents, save_latents
    from backend.models.toyworld.train import Trainer, parse_args

    work = tmp_path / "work"
    shutil.copytree(trained[0] / "straight", work)
    assert cached_counts(work, 3, 64) == [24]
    marked = load_latents(cache_path(work, 3, 24, 64)) + 1  # a mark that re-encoding would lose
    save_latents(cache_path(work, 3, 24, 64), marked, 1.0)
    assert _train(work, tmp_path / "out", "--scenes", "40", "--stages", "vae,cache") == 0
    grown = load_latents(cache_path(work, 3, 40, 64))
    assert torch.equal(grown[:24], marked)  # kept, not re-encoded

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copytree(work / "vae", fresh / "vae")
    shutil.copy(work / "run.json", fresh / "run.json")
    assert _train(fresh, tmp_path / "out2", "--scenes", "40", "--stages", "vae,cache") == 0
    assert torch.allclose(load_latents(cache_path(fresh, 3, 40, 64))[24:].float(), grown[24:].float(), atol=2e-3)

    argv = ["--preset", "tiny", "--work-dir", str(work), "--output-dir", str(tmp_path / "out"), "--seed", "3"]
    cut = Trainer(parse_args([*argv, "--scenes", "10"])).latent_cache(None)  # no VAE needed to cut
    assert torch.equal(cut, grown[:10])
    assert cached_counts(work, 3, 64) == [24, 40]


def test_scenes_rendered_and_encoded_in_worker_processes_match_one_process():
    import torch

    from backend.models.toyworld import config
    from backend.models.toyworld.dataset import encode_latents, render_images

    assert np.array_equal(render_images(4, 600, 64, workers=2), render_images(4, 600, 64))
    vae = config.build_vae(config.TINY).eval()
    with torch.no_grad():
        pooled = encode_latents(vae, 4, 1100, 64, batch_size=128, workers=2)  # several blocks, one pool
        alone = encode_latents(vae, 4, 1100, 64, batch_size=128)
    assert pooled.shape == (1100, 4, 8, 8) and torch.equal(pooled, alone)


def test_batches_built_in_worker_processes_are_the_same_batches_in_the_same_order(world_tokenizer):
    import torch

    from backend.models.toyworld.dataset import LatentCaptionDataset
    from backend.models.toyworld.train import _BatchMaker, batch_stream

    latents = torch.randn(40, 4, 8, 8).half()
    make = _BatchMaker(LatentCaptionDataset(latents, world_tokenizer, 5, 0.5, 0.1, grounding=True), 6)
    streams = [batch_stream(make, 3, 9, workers) for workers in (0, 2)]
    try:
        for step in range(3, 9):
            threaded, spawned = (stream.get(step) for stream in streams)
            assert len(threaded) == len(spawned) == 4
            assert all(torch.equal(a, b) for a, b in zip(threaded, spawned))
    finally:
        for stream in streams:
            stream.close()


def test_decoder_fine_tuning_keeps_the_latent_space_and_sharpens_reconstructions(trained, tmp_path):
    """The decoder stage may run after the UNet trained: the encoder (hence the cached latents) must not move,
    the decoder must get better, and the export must carry it. It extends when asked for more steps."""
    import shutil

    import torch
    from diffusers import AutoencoderKL

    from backend.models.toyworld.train import Trainer, iter_log, parse_args, reconstruction_psnr

    work = tmp_path / "work"
    shutil.copytree(trained[0] / "straight", work)
    tune = ["--decoder-lr", "3e-3", "--decoder-batch", "4", "--eval-every", "100"]
    assert _train(work, tmp_path / "model", "--stages", "decoder,export", "--decoder-steps", "6", *tune) == 0
    base = AutoencoderKL.from_pretrained(work / "vae")
    tuned = AutoencoderKL.from_pretrained(work / "vae_decoder")
    for name, tensor in base.state_dict().items():
        same = torch.equal(tensor, tuned.state_dict()[name])
        assert same == (name.startswith(("encoder.", "quant_conv."))), name
    trainer = Trainer(parse_args(["--preset", "tiny", "--work-dir", str(work), "--seed", "3", "--device", "cpu"]))
    held_out = trainer._validation_images()
    assert reconstruction_psnr(tuned, held_out) > reconstruction_psnr(base, held_out) + 0.5
    exported = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae")
    assert torch.equal(exported.decoder.conv_out.weight, tuned.decoder.conv_out.weight)
    # Asking for more steps resumes at 6 instead of starting over.
    assert _train(work, tmp_path / "model", "--stages", "decoder", "--decoder-steps", "8", *tune) == 0
    steps = [e["step"] for e in iter_log(work) if e["stage"] == "decoder" and "loss" in e]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]


def test_trainer_evaluates_the_exported_model(trained):
    import json

    metrics = json.loads((trained[0] / "straight-model" / "toyworld.json").read_text())["metrics"]
    assert (
        set(metrics["judge"]) == {"prompts", "one_object", "two_objects"} and metrics["judge"]["prompts"] == "held-in"
    )
    assert (
        set(metrics["judge_held_out"]) == set(metrics["judge_on_vae_reconstructions"]) == {"one_object", "two_objects"}
    )
    assert all(0 <= v <= 1 for group in metrics["judge_held_out"].values() for v in group.values())
    assert metrics["vae_psnr"] > 0 and 0 <= metrics["cross_attention_iou"] <= 1
    assert metrics["inversion_psnr"] > 0 and metrics["cpu_seconds_per_image"] > 0


def test_exported_model_loads_like_a_real_one_and_generates(trained):
    import torch

    from backend.engine.context import Engine
    from backend.engine.sampling import sample
    from backend.models import load_model

    folder = trained[0] / "resumed-model"
    assert not list(folder.rglob("*.bin")) and list(folder.rglob("*.safetensors"))
    bundle = load_model(str(folder), device="cpu")
    assert bundle.family == "sd1" and bundle.default_size == 64 and bundle.vae_scale_factor == 8
    assert bundle.latent_scaling != 0.18215  # measured from the trained VAE's latents
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor" in bundle.unet.attn_processors
    assert bundle.tokenizers[0].tokenize("red circle") == ["red</w>", "circle</w>"]
    engine = Engine(bundle)
    cond, uncond = engine.encode_prompts(["a big red circle"]), engine.encode_prompts([""])
    latents = sample(engine, cond, uncond, (64, 64), steps=3, guidance_scale=5.0, seed=0)
    image = engine.decode_latents(latents)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    straight = load_model(str(trained[0] / "straight-model"), device="cpu")
    for name, tensor in straight.unet.state_dict().items():
        assert torch.allclose(tensor, bundle.unet.state_dict()[name], atol=1e-6), name


def test_cli_passes_flags_through_to_the_trainer(capsys):
    from backend.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["train-toyworld", "--help"])
    assert stopped.value.code == 0
    assert "--max-minutes" in capsys.readouterr().out


def test_the_shipped_world_samples_are_what_the_generator_writes_and_the_judge_reads_them(tmp_path):
    from backend.eval.toyworld import detect_objects
    from backend.models.toyworld import TEXTURES
    from backend.models.toyworld.samples import INDEX_FILE, write_samples
    from backend.paths import resource_path

    written = write_samples(tmp_path)
    shipped = resource_path("samples")
    assert len(written) == 8
    assert json.loads((tmp_path / INDEX_FILE).read_text()) == json.loads((shipped / INDEX_FILE).read_text())
    entries = json.loads((shipped / INDEX_FILE).read_text())
    assert {entry["background"]["texture"] for entry in entries} == set(TEXTURES)
    for entry in entries:
        pixels = np.asarray(Image.open(shipped / entry["file"]).convert("RGB"))
        np.testing.assert_array_equal(pixels, np.asarray(Image.open(tmp_path / entry["file"]).convert("RGB")))
        found = {(obj.colour, obj.shape) for obj in detect_objects(pixels)}
        assert {(obj["colour"], obj["shape"]) for obj in entry["objects"]} <= found, entry["file"]
        assert all(word in entry["caption"] for obj in entry["objects"] for word in (obj["colour"], obj["shape"]))
