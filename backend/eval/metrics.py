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

import math
from collections.abc import Callable, Sequence
from pathlib import Path
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


# --- preservation outside the edit: PSNR, SSIM, LPIPS ---------------------------------------------------------


def background_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """PSNR (dB) between two uint8 images over the pixels where `mask` is False (mask = objects / the edited
    region, excluded); inf for identical backgrounds."""
    keep = np.ones(a.shape[:2], bool) if mask is None else ~mask.astype(bool)
    if not keep.any():
        return math.inf
    diff = a[keep].astype(np.float64) - b[keep].astype(np.float64)
    mse = float((diff**2).mean())
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


def ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004: Gaussian window sigma 1.5, K1 0.01, K2 0.03) of two uint8 RGB images,
    on their luma."""
    from scipy import ndimage

    weights = np.array([0.299, 0.587, 0.114])
    x, y = a.astype(np.float64) @ weights, b.astype(np.float64) @ weights
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(image: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(image, 1.5, truncate=3.5)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def background_ssim(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean SSIM over the pixels where `mask` is False (the edited region excluded); 1 for identical images."""
    keep = np.ones(a.shape[:2], bool) if mask is None else ~np.asarray(mask).astype(bool)
    return float(ssim_map(_check_image(a), _check_image(b))[keep].mean()) if keep.any() else math.nan


LPIPS_TAPS = (3, 8, 15, 22, 29)  # VGG16 `features` indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class Lpips(torch.nn.Module):
    """LPIPS (Zhang et al. 2018, the `vgg` variant, v0.1): unit-normalised VGG16 activations at five ReLUs, squared
    differences weighted per channel by learned 1x1 layers, averaged over space and summed over layers.

    The layer names match torchvision's `vgg16().features` and the lpips package's `lin0.model.1.weight` ...
    `lin4.model.1.weight`, so both state dicts load as they are. `widths` shrinks the network for tests."""

    def __init__(self, widths: Sequence[int | str] = VGG16_LAYOUT) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        channels = 3
        for item in widths:
            if item == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(channels, int(item), 3, padding=1), torch.nn.ReLU(inplace=False)]
                channels = int(item)
        self.features = torch.nn.Sequential(*layers)
        tapped = [self._channels_before(index) for index in LPIPS_TAPS]
        for number, width in enumerate(tapped):
            head = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Conv2d(width, 1, 1, bias=False))
            self.add_module(f"lin{number}", torch.nn.Sequential())
            getattr(self, f"lin{number}").add_module("model", head)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))

    def _channels_before(self, index: int) -> int:
        convs = [m for m in list(self.features)[: index + 1] if isinstance(m, torch.nn.Conv2d)]
        return convs[-1].out_channels

    def _taps(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        found, h = [], (pixels - self.shift) / self.scale
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in LPIPS_TAPS:
                found.append(h)
            if index >= LPIPS_TAPS[-1]:
                break
        return found

    def forward(self, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Distances (N,) of images in [-1, 1], (N, 3, H, W); with a (N, 1, H, W) mask, the spatial average is over
        the mask (resized to each layer), as for a background-only LPIPS."""
        total = torch.zeros(a.shape[0], device=a.device)
        for number, (fa, fb) in enumerate(zip(self._taps(a), self._taps(b))):
            diff = (F.normalize(fa, dim=1, eps=1e-10) - F.normalize(fb, dim=1, eps=1e-10)) ** 2
            weighted = getattr(self, f"lin{number}").model(diff)
            if mask is None:
                total += weighted.mean(dim=(1, 2, 3))
            else:
                m = F.interpolate(mask.float(), size=weighted.shape[-2:], mode="area")
                total += (weighted * m).sum(dim=(1, 2, 3)) / m.sum(dim=(1, 2, 3)).clamp_min(1e-6)
        return total


def _vgg_layout(backbone: dict[str, torch.Tensor]) -> list[int | str]:
    """The `widths` of a VGG `features` state dict: each conv's output channels, "M" where a pool sits between."""
    last = max(int(key.split(".")[1]) for key in backbone if key.endswith(".weight"))
    widths: list[int | str] = []
    index = 0
    while index <= last:
        weight = backbone.get(f"features.{index}.weight")
        if weight is not None:
            widths.append(int(weight.shape[0]))
            index += 2  # conv, ReLU
        else:
            widths.append("M")
            index += 1
    return widths


class LpipsScorer:
    """LPIPS between uint8 images, whole or outside an edit mask (the background)."""

    def __init__(self, net: Lpips, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval().requires_grad_(False)

    def _pixels(self, image: np.ndarray) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(_check_image(image), copy=True))
        return pixels.permute(2, 0, 1)[None].to(self.device).float() / 127.5 - 1

    @torch.inference_mode()
    def distance(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
        """LPIPS of a and b (same size); with `mask` (True = edited), averaged over the pixels outside it."""
        if a.shape != b.shape:
            raise InputError(f"LPIPS of images of different sizes {a.shape} and {b.shape}")
        keep = None
        if mask is not None:
            keep = torch.from_numpy(~np.asarray(mask).astype(bool))[None, None].to(self.device)
            if not keep.any():
                return math.nan
        return float(self.net(self._pixels(a), self._pixels(b), keep)[0])


def load_lpips(spec: str, device: str | torch.device = "cpu") -> LpipsScorer:
    """LPIPS-VGG from a folder holding torchvision's VGG16 weights (e.g. vgg16-397923af.pth) and the lpips package's
    linear layers (lpips/weights/v0.1/vgg.pth); the files are told apart by their keys."""
    folder = Path(spec).expanduser()
    files = sorted(folder.glob("*.pth")) + sorted(folder.glob("*.pt")) if folder.is_dir() else []
    backbone = heads = None
    for file in files:
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - a file that is not a state dict is not one of ours
            continue
        if not isinstance(state, dict):
            continue
        if "features.0.weight" in state:
            backbone = {k: v for k, v in state.items() if k.startswith("features.")}
        elif "lin0.model.1.weight" in state:
            heads = state
    if backbone is None or heads is None:
        missing = " and ".join(
            name for name, got in (("VGG16 backbone", backbone), ("LPIPS linear layers", heads)) if got is None
        )
        raise InputError(
            f"LPIPS weights not found in {spec!r}: no {missing}",
            hint="Put torchvision's vgg16-397923af.pth and the lpips package's weights/v0.1/vgg.pth in one folder "
            "and pass that folder; metrics never download anything.",
        )
    net = Lpips(_vgg_layout(backbone))
    net.load_state_dict({**backbone, **heads}, strict=False)
    missing = [k for k in net.state_dict() if k not in backbone and k not in heads and k not in ("shift", "scale")]
    if missing:
        raise InputError(f"LPIPS weights in {spec!r} lack {', '.join(missing[:4])}")
    return LpipsScorer(net, device)


# --- text alignment of one picture: CLIP score, whole or in the edited region ---------------------------------


def mask_box(mask: np.ndarray, margin: float = 0.1) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the mask's bounding box grown by `margin` of its size, made square where the
    picture allows (CLIP crops to a square); None for an empty mask."""
    ys, xs = np.nonzero(np.asarray(mask))
    if len(ys) == 0:
        return None
    height, width = np.asarray(mask).shape[:2]
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) * (1 + 2 * margin)
    side = int(min(math.ceil(side), height, width))
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    top = int(np.clip(round(cy - side / 2), 0, height - side))
    left = int(np.clip(round(cx - side / 2), 0, width - side))
    return top, top + side, left, left + side


def clip_score(scorer: ClipScorer, images: Sequence[np.ndarray], prompts: Sequence[str], masks=None) -> list[float]:
    """CLIP score: 100 x max(cos(image, prompt), 0) per image (Hessel et al. 2021, without their w = 2.5); with
    `masks`, of the square crop around each mask (the edited region), as the masked-edit papers report it."""
    if len(images) != len(prompts) or (masks is not None and len(masks) != len(images)):
        raise InputError(f"{len(images)} images, {len(prompts)} prompts" + (f", {len(masks)} masks" if masks else ""))
    crops = []
    for index, image in enumerate(images):
        box = mask_box(masks[index]) if masks is not None and masks[index] is not None else None
        crops.append(image if box is None else np.ascontiguousarray(image[box[0] : box[1], box[2] : box[3]]))
    cosines = (scorer.image_embeddings(crops) * scorer.text_embeddings(prompts)).sum(-1)
    return (100 * cosines.clamp_min(0)).tolist()


# --- drag edits: mean distance (MD) ---------------------------------------------------------------------------


def drag_mean_distance(
    features: Callable[[np.ndarray], torch.Tensor],
    source: np.ndarray,
    edited: np.ndarray,
    handles: np.ndarray,
    targets: np.ndarray,
) -> float:
    """MD (DragDiffusion, as DragonDiffusion reports it): each handle point's content is found again in the edited
    picture by DIFT correspondence (`features(image)` -> (C, h, w), nearest neighbour by cosine), and MD is the mean
    pixel distance from where it was found to where it was dragged to. 0 = every point landed on its target."""
    from backend.engine.correspondence import match_points

    handles = np.asarray(handles, np.float32).reshape(-1, 2)
    targets = np.asarray(targets, np.float32).reshape(-1, 2)
    if len(handles) == 0 or handles.shape != targets.shape:
        raise InputError(f"{len(handles)} handle and {len(targets)} target points", hint="Give one target per handle.")
    found = match_points(features(source), features(edited), handles, source.shape[:2], edited.shape[:2])
    return float(np.linalg.norm(found.cpu().numpy() - targets, axis=1).mean())


def dift_extractor(engine, prompt: str = "", t: int = 261, ensemble: int = 4) -> Callable[[np.ndarray], torch.Tensor]:
    """`features(image)` for `drag_mean_distance` from the engine's own UNet (sd1 / sd2): DIFT (decoder block 1,
    t 261, features averaged over `ensemble` noise draws, the same draws for every picture)."""
    from backend.engine.features import dift_features
    from backend.engine.sampling import make_scheduler

    if engine.bundle.family == "sdxl":
        raise InputError("MD's DIFT features are taken from SD 1.x / 2.x models", hint="Measure with an SD 1.5 model.")
    context = engine.encode_prompts([prompt]).hidden
    scheduler = make_scheduler(engine, 50)

    def features(image: np.ndarray) -> torch.Tensor:
        latents = engine.encode_image(image)
        noise = engine.randn((ensemble, *latents.shape[1:]), seed=0).to(latents)
        found = dift_features(
            engine.unet, latents, t, context, blocks=(1,), scheduler=scheduler, ensemble=ensemble, noise=noise
        )
        return found[1][0].float()

    return features
