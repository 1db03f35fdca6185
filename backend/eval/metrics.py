"""Image-editing metrics of "step-injection reconstruction guidance" (section 3.7), an extension of pix2pix-zero:
how well an edit follows its target prompt (CLIP) and how much of the source image's structure it keeps (DINO-ViT).

Text alignment, from a CLIP model (cosines of the projected image and text embeddings):

- S_e^i = cos(image_i, target prompt_i) and S_o^i = cos(image_i, source prompt_i), image_i being the *edited* image;
- CLIP-Acc = (1/N) * #{i : S_e^i > S_o^i}, the share of edits closer to their target prompt than to their source
  prompt (strictly: a tie counts as a miss);
- CLIP-Acc_v (Eq. 11) = (1/N) * sum_i S_e^i / S_o^i. The ratio is meaningful while S_o > 0, as it is for trained
  CLIP models (cosines of matching and unrelated captions both lie around 0.15-0.35).

Structure preservation, from a DINO ViT (transformers `ViTModel`, e.g. facebook/dino-vits8 or facebook/dino-vitb8):

- Dist (as in pix2pix-zero, from Splice, Tumanyan et al. 2022): take the keys of the self-attention of the last
  layer, heads concatenated (the key projection's output, tokens x hidden), for *all* tokens, the CLS token
  included, as Splice does; S(I)[a, b] = cos(k_a, k_b) is the image's key self-similarity matrix, and
  Dist(I1, I2) = mean over (a, b) of (S(I1)[a, b] - S(I2)[a, b])^2, i.e. Splice's F.mse_loss of the two matrices.
- Dist_v (Eq. 12) = 1 - (1/N) * sum_n cos(f1_n, f2_n) over the N patch positions, f being the last layer's output
  hidden states (after the final layer norm, `last_hidden_state`) of the patch tokens, the CLS token excluded.

Both models are loaded with transformers from a hub id or a local folder, `local_files_only=True`: Atelier never
downloads them, and without the weights `load_clip` / `load_dino` raise InputError. Images are uint8 HxWx3 numpy
arrays; each model's own image processor resizes and normalises them.

    clip, dino = load_clip("openai/clip-vit-base-patch16"), load_dino("facebook/dino-vitb8")
    edit_metrics(sources, edits, source_prompts, target_prompts, clip=clip, dino=dino)
    # {"count": N, "clip_acc": ..., "clip_acc_v": ..., "dist": ..., "dist_v": ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from backend.errors import InputError

Scores = list[tuple[float, float]]
"""Per example (S_e, S_o): cosine of the edited image with its target prompt, and with its source prompt."""


def _not_local(kind: str, spec: str, exc: Exception, example: str) -> InputError:
    return InputError(
        f"{kind} weights {spec!r} are not available locally ({type(exc).__name__}: {exc})",
        hint=f"Pass a local folder holding the {kind} model saved by transformers, or download the model once "
        f"into the Hugging Face cache (e.g. `hf download {example}`); metrics never download anything.",
    )


def load_clip(spec: str, device: str | torch.device = "cpu") -> ClipScorer:
    """CLIP model, tokenizer and image processor from `spec` (hub id in the local cache, or a folder)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    try:
        model = CLIPModel.from_pretrained(spec, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _not_local("CLIP", spec, exc, "openai/clip-vit-base-patch16") from exc
    return ClipScorer(model, tokenizer, processor, device=device)


def load_dino(spec: str, device: str | torch.device = "cpu") -> DinoScorer:
    """DINO ViT (transformers ViTModel) and its image processor from `spec` (hub id in the local cache, or a folder)."""
    from transformers import AutoImageProcessor, ViTModel

    try:
        model = ViTModel.from_pretrained(spec, add_pooling_layer=False, local_files_only=True)
        processor = AutoImageProcessor.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise _not_local("DINO", spec, exc, "facebook/dino-vitb8") from exc
    return DinoScorer(model, processor, device=device)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"metrics take uint8 HxWx3 images, got {image.dtype} of shape {image.shape}",
            hint="Convert the image to 8-bit RGB first.",
        )
    return image


class ClipScorer:
    """A CLIP model with its tokenizer and image processor, scoring edited images against two prompts."""

    def __init__(self, model: Any, tokenizer: Any, processor: Any, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.processor = processor

    @torch.inference_mode()
    def image_embeddings(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Unit-length projected image embeddings, (N, projection_dim)."""
        pixels = self.processor(
            images=[_check_image(image) for image in images], input_data_format="channels_last", return_tensors="pt"
        )["pixel_values"]
        pooled = self.model.vision_model(pixel_values=pixels.to(self.device, torch.float32)).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-length projected text embeddings, (N, projection_dim); prompts longer than CLIP's limit are cut."""
        tokens = self.tokenizer(
            list(prompts),
            padding=True,
            truncation=True,
            max_length=self.model.config.text_config.max_position_embeddings,
            return_tensors="pt",
        )
        pooled = self.model.text_model(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)
        ).pooler_output
        return F.normalize(self.model.text_projection(pooled), dim=-1)

    def scores(
        self,
        edits: Sequence[np.ndarray],
        source_prompts: Sequence[str],
        target_prompts: Sequence[str],
        batch_size: int = 32,
    ) -> Scores:
        """(S_e, S_o) per edited image: its cosine with its target prompt, and with its source prompt."""
        if not len(edits) == len(source_prompts) == len(target_prompts):
            raise InputError(
                f"{len(edits)} images, {len(source_prompts)} source and {len(target_prompts)} target prompts",
                hint="Give one source and one target prompt per edited image.",
            )
        result: Scores = []
        for start in range(0, len(edits), batch_size):
            end = start + batch_size
            image = self.image_embeddings(edits[start:end])
            target = self.text_embeddings(target_prompts[start:end])
            source = self.text_embeddings(source_prompts[start:end])
            s_e = (image * target).sum(-1).tolist()
            s_o = (image * source).sum(-1).tolist()
            result.extend(zip(s_e, s_o))
        return result


def clip_accuracy(scores: Sequence[tuple[float, float]]) -> dict[str, float]:
    """CLIP-Acc (share of S_e > S_o) and CLIP-Acc_v (mean of S_e / S_o, Eq. 11) over per-example (S_e, S_o)."""
    if len(scores) == 0:
        raise InputError("CLIP accuracy of no examples", hint="Score at least one edited image.")
    pairs = np.asarray(scores, dtype=np.float64).reshape(-1, 2)
    s_e, s_o = pairs[:, 0], pairs[:, 1]
    return {"clip_acc": float(np.mean(s_e > s_o)), "clip_acc_v": float(np.mean(s_e / s_o))}


def _last_key_projection(model: torch.nn.Module) -> torch.nn.Module:
    """The key projection of the last layer's self-attention, whichever transformers layout the ViT has."""
    layers = model.layers if hasattr(model, "layers") else model.encoder.layer  # transformers >= 5 / 4.x
    attention = layers[-1].attention
    if hasattr(attention, "k_proj"):
        return attention.k_proj
    return attention.attention.key


class DinoScorer:
    """A DINO ViT with its image processor: structure distances (Dist, Dist_v) between two images."""

    def __init__(self, model: Any, processor: Any, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device, torch.float32).eval().requires_grad_(False)
        self.processor = processor
        self._key_projection = _last_key_projection(self.model)

    @torch.inference_mode()
    def features(self, images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, tokens) of a batch: the last layer's self-attention keys, heads concatenated, (B, 1 + P, hidden),
        and the last layer's output, (B, 1 + P, hidden); token 0 is CLS, then the P patches in raster order."""
        pixels = self.processor(
            images=[_check_image(image) for image in images], input_data_format="channels_last", return_tensors="pt"
        )["pixel_values"]
        captured: list[torch.Tensor] = []
        handle = self._key_projection.register_forward_hook(lambda _module, _args, output: captured.append(output))
        try:
            tokens = self.model(pixel_values=pixels.to(self.device, torch.float32)).last_hidden_state
        finally:
            handle.remove()
        return captured[-1], tokens

    def key_self_similarity(self, image: np.ndarray) -> torch.Tensor:
        """S(I): cosine self-similarity of the last layer's keys over all tokens, CLS included, (1 + P, 1 + P)."""
        keys = F.normalize(self.features([image])[0][0], dim=-1)
        return keys @ keys.T

    @torch.inference_mode()
    def distances(self, image1: np.ndarray, image2: np.ndarray) -> tuple[float, float]:
        """(Dist, Dist_v) of two images from one forward pass of both."""
        keys, tokens = self.features([image1, image2])
        keys = F.normalize(keys, dim=-1)
        self_similarity = keys @ keys.transpose(1, 2)
        dist = F.mse_loss(self_similarity[0], self_similarity[1]).item()
        patches = tokens[:, 1:]
        dist_v = 1.0 - F.cosine_similarity(patches[0], patches[1], dim=-1).mean().item()
        return dist, dist_v

    def structure_distance(self, image1: np.ndarray, image2: np.ndarray) -> float:
        """Dist: mean squared difference of the two images' key self-similarity matrices (Splice)."""
        return self.distances(image1, image2)[0]

    def patch_distance(self, image1: np.ndarray, image2: np.ndarray) -> float:
        """Dist_v (Eq. 12): 1 - mean cosine of the two images' last-layer patch tokens, position by position."""
        return self.distances(image1, image2)[1]


def edit_metrics(
    sources: Sequence[np.ndarray],
    edits: Sequence[np.ndarray],
    source_prompts: Sequence[str],
    target_prompts: Sequence[str],
    clip: ClipScorer | None = None,
    dino: DinoScorer | None = None,
) -> dict[str, float]:
    """Metrics of a set of edits (edits[i] made from sources[i]): clip_acc and clip_acc_v when `clip` is given,
    the means of dist and dist_v over the pairs when `dino` is given; `count` is the number of edits."""
    if not len(sources) == len(edits) == len(source_prompts) == len(target_prompts):
        raise InputError(
            f"{len(sources)} sources, {len(edits)} edits, {len(source_prompts)} source and {len(target_prompts)} "
            "target prompts",
            hint="Give one source image, edited image, source prompt and target prompt per example.",
        )
    if len(edits) == 0:
        raise InputError("metrics of no edits", hint="Give at least one edited image.")
    result: dict[str, float] = {"count": len(edits)}
    if clip is not None:
        result.update(clip_accuracy(clip.scores(edits, source_prompts, target_prompts)))
    if dino is not None:
        dist, dist_v = zip(*(dino.distances(source, edit) for source, edit in zip(sources, edits)))
        result["dist"], result["dist_v"] = float(np.mean(dist)), float(np.mean(dist_v))
    return result


# --- appearance transfer (Eye-for-an-eye) ----------------------------------------------------------------


def colour_histogram(image: np.ndarray, mask: np.ndarray | None = None, bins: int = 8) -> np.ndarray:
    """Normalised joint RGB histogram (bins^3,) of the pixels inside `mask` (all pixels without one)."""
    pixels = _check_image(image).reshape(-1, 3)
    if mask is not None:
        pixels = pixels[np.asarray(mask).reshape(-1) > 0]
    if not len(pixels):
        raise InputError("the mask selects no pixels", hint="Give a mask that covers the object.")
    cells = (pixels.astype(np.int64) * bins) // 256
    flat = (cells[:, 0] * bins + cells[:, 1]) * bins + cells[:, 2]
    counts = np.bincount(flat, minlength=bins**3).astype(np.float64)
    return counts / counts.sum()


def histogram_distance(
    image: np.ndarray,
    mask: np.ndarray | None,
    reference: np.ndarray,
    reference_mask: np.ndarray | None,
    bins: int = 8,
) -> float:
    """A_hist: how far the colours inside `mask` are from the reference's inside its mask - the total variation
    distance of the two joint RGB histograms, 0 (same colour distribution) ... 1 (no colour in common)."""
    a = colour_histogram(image, mask, bins)
    b = colour_histogram(reference, reference_mask, bins)
    return float(0.5 * np.abs(a - b).sum())


def edge_map(image: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Bool edges: Sobel gradient magnitude of the grey image above `threshold` of its range."""
    from scipy import ndimage

    grey = _check_image(image).astype(np.float32).mean(axis=-1) / 255.0
    magnitude = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    return magnitude > threshold * max(float(magnitude.max()), 1e-6)


def edge_agreement(
    image: np.ndarray, structure: np.ndarray, mask: np.ndarray | None = None, tolerance: int = 1
) -> float:
    """Structure kept, without extra models: F1 of the result's edges against the structure image's, an edge
    counted as found within `tolerance` pixels, inside `mask` grown by the tolerance (all pixels without one).
    Both without edges there: 1."""
    from scipy import ndimage

    region = np.ones(structure.shape[:2], bool) if mask is None else np.asarray(mask) > 0
    region = ndimage.binary_dilation(region, iterations=tolerance + 1)
    got, wanted = edge_map(image) & region, edge_map(structure) & region
    if not got.any() and not wanted.any():
        return 1.0
    near_wanted = ndimage.binary_dilation(wanted, iterations=tolerance)
    near_got = ndimage.binary_dilation(got, iterations=tolerance)
    precision = (got & near_wanted).sum() / max(got.sum(), 1)
    recall = (wanted & near_got).sum() / max(wanted.sum(), 1)
    return float(2 * precision * recall / max(precision + recall, 1e-12))


def clip_image_similarity(
    scorer: ClipScorer, images: Sequence[np.ndarray], references: Sequence[np.ndarray]
) -> list[float]:
    """A_CLIP: cosine of each result's CLIP image embedding with its reference's."""
    if len(images) != len(references):
        raise InputError(f"{len(images)} images but {len(references)} references")
    return (scorer.image_embeddings(images) * scorer.image_embeddings(references)).sum(-1).tolist()
