"""Editing metrics (CLIP-Acc, CLIP-Acc_v, DINO Dist and Dist_v) on tiny random CLIP and DINO-ViT models built from
configs, saved to folders and loaded back the way real weights are."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metric_models import PATCH, SIDE, save_tiny_clip, save_tiny_dino, save_tiny_lpips, tiny_lpips
from scipy import ndimage

from backend.errors import InputError
from backend.eval.metrics import (
    Lpips,
    LpipsScorer,
    _last_key_projection,
    background_psnr,
    background_ssim,
    clip_accuracy,
    clip_score,
    dift_extractor,
    drag_mean_distance,
    edit_metrics,
    load_clip,
    load_dino,
    load_lpips,
    mask_box,
)

TOKENS = 1 + (SIDE // PATCH) ** 2  # CLS + 16 patches


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory):
    return save_tiny_dino(tmp_path_factory.mktemp("dino"))


@pytest.fixture(scope="module")
def clip(clip_folder):
    return load_clip(str(clip_folder))


@pytest.fixture(scope="module")
def dino(dino_folder):
    return load_dino(str(dino_folder))


def _images(count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8) for _ in range(count)]


SOURCE_PROMPTS = ["a cat on a mat", "a red car", "a house by the lake at dawn", "a dog"]
TARGET_PROMPTS = ["a dog on a mat", "a blue car", "a castle by the lake at dawn", "a dog wearing a tiny hat"]


# CLIP-Acc and CLIP-Acc_v


def test_clip_accuracy_is_the_share_of_wins_and_the_mean_ratio():
    scores = [(0.3, 0.2), (0.1, 0.2), (0.25, 0.25), (0.4, 0.1)]  # win, loss, tie (a miss), win
    result = clip_accuracy(scores)
    assert result["clip_acc"] == pytest.approx(0.5)
    assert result["clip_acc_v"] == pytest.approx((1.5 + 0.5 + 1.0 + 4.0) / 4)


def test_clip_accuracy_of_nothing_is_refused():
    with pytest.raises(InputError):
        clip_accuracy([])


def test_clip_scores_are_cosines_and_swapping_prompts_flips_every_comparison(clip):
    edits = _images(4)
    scores = clip.scores(edits, SOURCE_PROMPTS, TARGET_PROMPTS)
    assert len(scores) == 4
    assert all(-1.0 <= value <= 1.0 for pair in scores for value in pair)
    assert all(abs(s_e - s_o) > 1e-6 for s_e, s_o in scores)  # no ties, so the flip below is exact
    swapped = clip.scores(edits, TARGET_PROMPTS, SOURCE_PROMPTS)
    np.testing.assert_allclose(np.asarray(swapped), np.asarray(scores)[:, ::-1], atol=1e-6)
    assert clip_accuracy(swapped)["clip_acc"] == pytest.approx(1.0 - clip_accuracy(scores)["clip_acc"])


def test_clip_scores_do_not_depend_on_batching_or_padding(clip):
    edits = _images(4, seed=3)
    together = clip.scores(edits, SOURCE_PROMPTS, TARGET_PROMPTS, batch_size=4)
    alone = [
        clip.scores([edit], [source], [target])[0]
        for edit, source, target in zip(edits, SOURCE_PROMPTS, TARGET_PROMPTS)
    ]
    np.testing.assert_allclose(np.asarray(together), np.asarray(alone), atol=1e-5)


def test_clip_scores_are_cosines_of_the_projected_embeddings(clip):
    edit = _images(1, seed=5)
    model, tokenizer = clip.model, clip.tokenizer
    pixels = clip.processor(images=edit, return_tensors="pt")["pixel_values"]
    tokens = tokenizer(["a red car"], return_tensors="pt")
    with torch.no_grad():
        image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
        text = model.text_projection(model.text_model(**tokens).pooler_output)
    expected = F.cosine_similarity(image, text).item()
    s_e, s_o = clip.scores(edit, ["a dog"], ["a red car"])[0]
    assert s_e == pytest.approx(expected, abs=1e-5)
    assert s_o != pytest.approx(expected, abs=1e-5)


def test_same_prompt_twice_is_a_tie_a_miss_and_a_ratio_of_one(clip):
    scores = clip.scores(_images(2), ["a cat", "a car"], ["a cat", "a car"])
    assert clip_accuracy(scores) == {"clip_acc": 0.0, "clip_acc_v": pytest.approx(1.0)}


def test_clip_scores_depend_on_the_image(clip):
    (first, _), (second, _) = clip.scores(_images(2, seed=7), ["a cat"] * 2, ["a dog"] * 2)
    assert abs(first - second) > 1e-6


# DINO-ViT Dist and Dist_v


def test_an_image_is_at_distance_zero_from_itself(dino):
    image = _images(1)[0]
    dist, dist_v = dino.distances(image, image.copy())
    assert dist == 0.0
    assert abs(dist_v) < 1e-6


def test_a_different_image_is_at_positive_distance(dino):
    first, second = _images(2, seed=11)
    assert dino.structure_distance(first, second) > 1e-8
    assert dino.patch_distance(first, second) > 1e-4
    assert dino.patch_distance(first, first[:, ::-1].copy()) > 1e-4  # same pixels, other places


def test_patch_distance_compares_the_last_layers_patch_tokens_without_cls(dino):
    first, second = _images(2, seed=13)
    pixels = dino.processor(images=[first, second], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = dino.model(pixel_values=pixels).last_hidden_state
    assert tokens.shape[1] == TOKENS
    cosines = F.cosine_similarity(tokens[0], tokens[1], dim=-1)
    expected = 1.0 - cosines[1:].mean().item()
    assert dino.patch_distance(first, second) == pytest.approx(expected, abs=1e-6)
    assert abs(expected - (1.0 - cosines.mean().item())) > 1e-6  # with CLS it would differ


def test_key_self_similarity_is_over_all_tokens_of_the_last_layer(dino):
    image = _images(1, seed=2)[0]
    similarity = dino.key_self_similarity(image)
    assert similarity.shape == (TOKENS, TOKENS)  # CLS included
    torch.testing.assert_close(similarity, similarity.T)
    torch.testing.assert_close(torch.diagonal(similarity), torch.ones(TOKENS))
    # Recomputed by hand from the last layer's input: its pre-attention layer norm, then its key projection.
    pixels = dino.processor(images=[image], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = dino.model(pixel_values=pixels, output_hidden_states=True).hidden_states
        last_layer = (dino.model.layers if hasattr(dino.model, "layers") else dino.model.encoder.layer)[-1]
        keys = F.normalize(_last_key_projection(dino.model)(last_layer.layernorm_before(hidden[-2]))[0], dim=-1)
    torch.testing.assert_close(similarity, keys @ keys.T, atol=1e-5, rtol=1e-5)
    # ... and not the first layer's keys.
    first_layer = (dino.model.layers if hasattr(dino.model, "layers") else dino.model.encoder.layer)[0]
    with torch.no_grad():
        first_keys = F.normalize(_last_key_projection(dino.model)(first_layer.layernorm_before(hidden[0]))[0], dim=-1)
    assert not torch.allclose(similarity, first_keys @ first_keys.T, atol=1e-3)


def _shuffle_patches(image: np.ndarray, order: np.ndarray) -> np.ndarray:
    per_side = SIDE // PATCH
    patches = image.reshape(per_side, PATCH, per_side, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(-1, PATCH, PATCH, 3)
    return patches[order].reshape(per_side, per_side, PATCH, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(SIDE, SIDE, 3)


def test_without_positions_shuffling_patches_permutes_the_self_similarity(dino_folder):
    """With no position embeddings a ViT is permutation-equivariant over patches: shuffling them permutes S(I)'s
    rows and columns (CLS stays first), so Dist is exactly the MSE between S and the permuted S."""
    scorer = load_dino(str(dino_folder))
    scorer.model.embeddings.position_embeddings.data.zero_()
    image = _images(1, seed=4)[0]
    order = np.random.default_rng(0).permutation(TOKENS - 1)
    shuffled = _shuffle_patches(image, order)
    tokens = torch.as_tensor(np.concatenate([[0], order + 1]))
    original = scorer.key_self_similarity(image)
    permuted = original[tokens][:, tokens]
    torch.testing.assert_close(scorer.key_self_similarity(shuffled), permuted, atol=1e-5, rtol=1e-5)
    dist = scorer.structure_distance(image, shuffled)
    assert dist == pytest.approx(F.mse_loss(original, permuted).item(), rel=1e-3)
    assert dist > 1e-8


# Loading and the whole set


def test_weights_that_are_not_here_are_an_input_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    for load in (load_clip, load_dino):
        with pytest.raises(InputError, match="not available locally") as caught:
            load(missing)
        assert missing in str(caught.value)
        assert caught.value.hint
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty"):
        load_dino(str(tmp_path / "empty"))


def test_images_must_be_uint8_rgb(dino):
    image = _images(1)[0]
    with pytest.raises(InputError, match="uint8 HxWx3"):
        dino.distances(image.astype(np.float32), image)
    with pytest.raises(InputError, match="uint8 HxWx3"):
        dino.distances(image[..., :1], image)


def test_edit_metrics_aggregates_the_set(clip, dino):
    sources, edits = _images(4, seed=20), _images(4, seed=21)
    result = edit_metrics(sources, edits, SOURCE_PROMPTS, TARGET_PROMPTS, clip=clip, dino=dino)
    assert result["count"] == 4
    assert result["clip_acc"] == clip_accuracy(clip.scores(edits, SOURCE_PROMPTS, TARGET_PROMPTS))["clip_acc"]
    pairs = [dino.distances(source, edit) for source, edit in zip(sources, edits)]
    assert result["dist"] == pytest.approx(np.mean([dist for dist, _ in pairs]))
    assert result["dist_v"] == pytest.approx(np.mean([dist_v for _, dist_v in pairs]))
    unchanged = edit_metrics(sources, sources, SOURCE_PROMPTS, TARGET_PROMPTS, dino=dino)
    assert set(unchanged) == {"count", "dist", "dist_v"}
    assert unchanged["dist"] == 0.0 and abs(unchanged["dist_v"]) < 1e-6
    assert edit_metrics(sources, edits, SOURCE_PROMPTS, TARGET_PROMPTS) == {"count": 4}
    with pytest.raises(InputError):
        edit_metrics(sources, edits[:3], SOURCE_PROMPTS, TARGET_PROMPTS, dino=dino)


def test_histogram_distance_reads_the_colours_inside_the_masks():
    from backend.eval.metrics import histogram_distance

    red, blue = np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32, 3), np.uint8)
    red[..., 0], blue[..., 2] = 220, 220
    half = np.zeros((32, 32), bool)
    half[:, :16] = True
    mixed = red.copy()
    mixed[:, 16:] = blue[:, 16:]
    assert histogram_distance(red, None, red, None) == 0.0
    assert histogram_distance(red, None, blue, None) == 1.0
    assert histogram_distance(mixed, half, red, None) == 0.0  # only the masked (red) half counts
    assert histogram_distance(mixed, None, red, None) == pytest.approx(0.5)
    with pytest.raises(InputError, match="no pixels"):
        histogram_distance(red, np.zeros((32, 32), bool), red, None)


def test_edge_agreement_is_one_for_the_same_structure_and_drops_when_it_moves():
    from backend.eval.metrics import edge_agreement

    square = np.full((64, 64, 3), 240, np.uint8)
    square[16:48, 16:48] = (200, 30, 30)
    recoloured = square.copy()
    recoloured[16:48, 16:48] = (30, 30, 200)  # same shape, other colour: the structure is kept
    moved = np.full((64, 64, 3), 240, np.uint8)
    moved[24:56, 24:56] = (200, 30, 30)
    assert edge_agreement(square, square) == 1.0
    assert edge_agreement(recoloured, square) > 0.95
    assert edge_agreement(moved, square) < 0.6


def test_clip_image_similarity_is_the_cosine_of_the_image_embeddings(clip):
    from backend.eval.metrics import clip_image_similarity

    images = _images(3)
    same = clip_image_similarity(clip, images, images)
    assert same == pytest.approx([1.0] * 3, abs=1e-5)
    crossed = clip_image_similarity(clip, images, images[::-1])
    assert crossed[0] == pytest.approx(crossed[2], abs=1e-6) and crossed[0] < 0.9999
    with pytest.raises(InputError):
        clip_image_similarity(clip, images, images[:2])


# --- preservation outside the edit, CLIP score, drag MD (issue 11) -------------------------------------------


def _picture(seed: int = 0, side: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = np.full((side, side, 3), 200, np.uint8)
    image[8:30, 10:40] = rng.integers(0, 255, 3)
    image[40:60, 30:50] = rng.integers(0, 255, 3)
    return image


def _edited_inside(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros(image.shape[:2], bool)
    mask[6:32, 8:42] = True
    edited = image.copy()
    edited[mask] = (10, 250, 10)
    return edited, mask


def test_background_psnr_and_ssim_ignore_what_changed_inside_the_mask():
    image = _picture()
    edited, mask = _edited_inside(image)
    assert background_ssim(image, image) == pytest.approx(1.0)
    assert background_ssim(image, edited) < 0.95  # the whole picture sees the edit
    assert background_psnr(image, edited) < 30
    # Outside the mask the pictures are the same; SSIM's window reaches a few pixels over the mask's edge, so use the
    # mask grown by that much, as the suites do.
    grown = ndimage.binary_dilation(mask, iterations=6)
    assert background_ssim(image, edited, grown) == pytest.approx(1.0, abs=1e-3)
    assert background_psnr(image, edited, mask) == float("inf")
    noisy = np.clip(edited.astype(int) + np.random.default_rng(1).integers(-40, 40, edited.shape), 0, 255)
    assert background_ssim(image, noisy.astype(np.uint8), grown) < 0.9


@pytest.fixture(scope="module")
def lpips():
    return LpipsScorer(tiny_lpips())


def test_lpips_is_zero_for_the_same_picture_and_grows_with_the_change(lpips):
    image = _picture()
    assert lpips.distance(image, image) == pytest.approx(0.0, abs=1e-7)
    rng = np.random.default_rng(2)
    small = np.clip(image.astype(int) + rng.integers(-10, 10, image.shape), 0, 255).astype(np.uint8)
    large = np.clip(image.astype(int) + rng.integers(-80, 80, image.shape), 0, 255).astype(np.uint8)
    assert 0 < lpips.distance(image, small) < lpips.distance(image, large)
    assert lpips.distance(image, large) == pytest.approx(lpips.distance(large, image), rel=1e-5)


def test_background_lpips_averages_outside_the_mask_only(lpips):
    image = _picture()
    edited, mask = _edited_inside(image)
    whole = lpips.distance(image, edited)
    # Features spread a few pixels per layer: a mask grown by the network's reach hides the change entirely.
    assert lpips.distance(image, edited, ndimage.binary_dilation(mask, iterations=24)) < 0.2 * whole
    assert np.isnan(lpips.distance(image, edited, np.ones_like(mask)))  # nothing left outside the mask


def test_lpips_loads_torchvision_and_lpips_state_dicts_from_one_folder(tmp_path):
    with pytest.raises(InputError, match="LPIPS weights not found"):
        load_lpips(str(tmp_path))
    net = Lpips()
    state = net.state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, tmp_path / "vgg16-397923af.pth")
    with pytest.raises(InputError, match="LPIPS linear layers"):
        load_lpips(str(tmp_path))
    heads = {k: torch.rand_like(v) for k, v in state.items() if k.startswith("lin")}
    torch.save(heads, tmp_path / "vgg.pth")
    scorer = load_lpips(str(tmp_path))
    assert torch.equal(scorer.net.lin2.model[1].weight, heads["lin2.model.1.weight"])
    assert torch.equal(scorer.net.features[28].weight, state["features.28.weight"])
    image = _picture()
    assert scorer.distance(image, _edited_inside(image)[0]) > 0
    # A smaller VGG loads by its own layout (the tests' tiny one), and scores as the network it was saved from.
    tiny = load_lpips(str(save_tiny_lpips(tmp_path / "tiny")))
    edited = _edited_inside(image)[0]
    assert tiny.distance(image, edited) == pytest.approx(LpipsScorer(tiny_lpips()).distance(image, edited), rel=1e-6)


class _ColourClip:
    """A stand-in CLIP whose image embedding is the picture's mean colour (centred) and whose prompts are colours:
    the score of a crop differs from the whole picture's exactly as the crop's colours do."""

    WORDS = {"red": (1.0, -0.5, -0.5), "green": (-0.5, 1.0, -0.5), "grey": (0.0, 0.0, 0.0)}

    def image_embeddings(self, images):
        seen = []
        for image in images:
            mean = image.reshape(-1, 3).mean(0) / 255
            seen.append(torch.tensor(np.append(mean - mean.mean(), 0.1), dtype=torch.float32))
        return F.normalize(torch.stack(seen), dim=-1)

    def text_embeddings(self, prompts):
        return F.normalize(torch.tensor([(*self.WORDS[p], 0.1) for p in prompts], dtype=torch.float32), dim=-1)


def test_clip_score_is_100_times_the_clamped_cosine_and_in_the_mask_scores_the_crop_around_it():
    scorer = _ColourClip()
    image = np.full((64, 64, 3), 128, np.uint8)
    image[10:20, 40:60] = (250, 20, 20)  # a red bar in a grey picture
    mask = np.zeros((64, 64), bool)
    mask[10:20, 40:60] = True
    top, bottom, left, right = mask_box(mask)
    assert bottom - top == right - left == 24  # the 20 px side grown by 10 % each way, made square
    assert top <= 10 and bottom >= 20 and left <= 40 and right >= 60
    whole, inside = clip_score(scorer, [image, image], ["red", "red"], masks=[None, mask])
    assert inside > whole > 0  # the crop is mostly the red bar
    crop = np.ascontiguousarray(image[top:bottom, left:right])
    assert inside == pytest.approx(clip_score(scorer, [crop], ["red"])[0], abs=1e-4)
    assert clip_score(scorer, [image], ["green"], masks=[mask]) == [0.0]  # negative cosine: 0
    cosine = (scorer.image_embeddings([image]) * scorer.text_embeddings(["red"])).sum().item()
    assert whole == pytest.approx(100 * cosine, abs=1e-4)
    with pytest.raises(InputError):
        clip_score(scorer, [image], ["red", "green"])


def test_clip_score_runs_on_a_tiny_clip(clip):
    image = _picture(3)
    _, mask = _edited_inside(image)
    scores = clip_score(clip, [image, image], ["a red square"] * 2, masks=[None, mask])
    cosines = (clip.image_embeddings([image]) * clip.text_embeddings(["a red square"])).sum(-1)
    assert scores[0] == pytest.approx(100 * max(cosines.item(), 0.0), abs=1e-4) and all(s >= 0 for s in scores)


def _colour_features(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)


def test_drag_mean_distance_finds_where_the_handle_content_went():
    source = np.full((64, 64, 3), 255, np.uint8)
    source[18:22, 10:14] = (255, 0, 0)  # a red dot at (12, 20), a blue one at (50, 40)
    source[38:42, 48:52] = (0, 0, 255)
    moved = np.full_like(source, 255)
    moved[18:22, 30:34] = (255, 0, 0)  # red dragged 20 px right, blue dragged 10 px up
    moved[28:32, 48:52] = (0, 0, 255)
    handles, targets = [(12, 20), (50, 40)], [(32, 20), (50, 30)]
    assert drag_mean_distance(_colour_features, source, moved, handles, targets) < 3  # found within the dot
    # Nothing moved: each handle is found where it was, its target's distance away (20 and 10 px).
    assert drag_mean_distance(_colour_features, source, source, handles, targets) == pytest.approx(15, abs=3)
    with pytest.raises(InputError):
        drag_mean_distance(_colour_features, source, moved, handles, targets[:1])


def test_dift_extractor_gives_one_feature_map_per_picture(engine):
    features = dift_extractor(engine, ensemble=2)
    image = _picture(side=64)
    first, again = features(image), features(image)
    assert first.ndim == 3 and first.shape[0] == engine.unet.config.block_out_channels[-2]  # decoder block 1
    assert torch.equal(first, again)  # the same noise draws for every picture
    assert not torch.equal(first, features(_edited_inside(image)[0]))
