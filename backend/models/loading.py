"""Load a model from a built-in config, a local diffusers folder, the hub, or one .safetensors file.

Every source ends in the same `ModelBundle`; nothing here unpickles (safetensors only).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from backend.models.bundle import ModelBundle
from backend.models.fullsize import build_full_size
from backend.models.registry import ModelNotFound, ModelSpec, resolve
from backend.models.tiny import build_tiny

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class ModelLoadError(RuntimeError):
    """The model exists in name but could not be loaded; the message says what to do."""


def choose_device(preference: str = "auto") -> torch.device:
    """cuda > mps > cpu, unless the user asked for one."""
    if preference and preference != "auto":
        device = torch.device(preference)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ModelLoadError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu' or 'auto'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(device: torch.device, preference: str = "auto") -> torch.dtype:
    """fp16 on GPUs (half the memory), fp32 on the CPU (fp16 matmuls are slow or missing there)."""
    names = {"fp16": torch.float16, "float16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
    if preference and preference != "auto":
        if preference not in names:
            raise ModelLoadError(f"unknown dtype {preference!r}; use auto, fp16, bf16 or fp32")
        return names[preference]
    return torch.float16 if device.type in ("cuda", "mps") else torch.float32


def load_model(
    model_id: str, device: str = "auto", dtype: str = "auto", progress: Progress | None = None
) -> ModelBundle:
    """Load `model_id` (see registry.resolve) onto the chosen device in the chosen dtype."""
    spec = resolve(model_id)
    target_device = choose_device(device)
    target_dtype = choose_dtype(target_device, dtype)
    if spec.source == "builtin" and spec.location.startswith("full:"):
        bundle = build_full_size(spec.location.removeprefix("full:"), device=target_device)
    elif spec.source == "builtin":
        bundle = build_tiny(spec.location)
    elif spec.source == "folder":
        bundle = load_diffusers_folder(Path(spec.location), target_dtype, model_id=spec.id)
    elif spec.source == "hub":
        folder = download_from_hub(spec.location, target_dtype, progress)
        bundle = load_diffusers_folder(folder, target_dtype, model_id=spec.id)
    else:
        bundle = load_single_file(Path(spec.location), target_dtype, model_id=spec.id)
    return _place(bundle, target_device, target_dtype)


def _place(bundle: ModelBundle, device: torch.device, dtype: torch.dtype) -> ModelBundle:
    for module in bundle.modules():
        if module.device != device or module.dtype != dtype:
            module.to(device=device, dtype=dtype)
        module.eval().requires_grad_(False)
    if dtype == torch.float16 and bundle.family == "sdxl":
        # The SDXL VAE overflows in fp16 (METHODS.md §0): decode/encode it in fp32.
        bundle.vae.to(dtype=torch.float32)
    bundle.device, bundle.dtype = device, dtype
    return bundle


# --- local diffusers folders -------------------------------------------------------------------------------


def detect_folder_family(folder: Path) -> str:
    index_file = folder / "model_index.json"
    class_name = json.loads(index_file.read_text()).get("_class_name", "") if index_file.is_file() else ""
    if "XL" in class_name or (folder / "text_encoder_2").is_dir():
        return "sdxl"
    unet_config = folder / "unet" / "config.json"
    if unet_config.is_file() and json.loads(unet_config.read_text()).get("cross_attention_dim") == 1024:
        return "sd2"
    return "sd1"


def load_diffusers_folder(folder: Path, dtype: torch.dtype, model_id: str = "") -> ModelBundle:
    """Load each part of a diffusers-layout folder (the pipelines are not used: methods build their own loops)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    family = detect_folder_family(folder)
    missing = [
        part for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if not (folder / part).is_dir()
    ]
    if family == "sdxl":
        missing += [part for part in ("text_encoder_2", "tokenizer_2") if not (folder / part).is_dir()]
    if missing:
        raise ModelLoadError(f"model folder {folder} lacks {', '.join(missing)}; is the download complete?")
    variant = _variant(folder, dtype)
    common = dict(torch_dtype=dtype, use_safetensors=True, variant=variant)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", **common)
        text_encoders = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", **common)]
        tokenizers = [CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")]
        if family == "sdxl":
            text_encoders.append(
                CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2", **common)
            )
            tokenizers.append(CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"))
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"could not load the model in {folder}: {error}") from error
    scheduler_config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    sample_size = int(unet.config.sample_size) * 2 ** (len(vae.config.block_out_channels) - 1)
    return ModelBundle(
        model_id=model_id or folder.name,
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=scheduler_config,
        device=torch.device("cpu"),
        dtype=dtype,
        default_size=sample_size,
        source=str(folder),
    )


def _variant(folder: Path, dtype: torch.dtype) -> str | None:
    """Use the fp16 weight files when loading in fp16 and the folder has them (half the download and RAM)."""
    if dtype == torch.float16 and any((folder / "unet").glob("*.fp16.safetensors")):
        return "fp16"
    return None


# --- the hub -----------------------------------------------------------------------------------------------


def _progress_bar_class(progress: Progress | None):
    from tqdm.auto import tqdm

    class ReportingBar(tqdm):
        """tqdm that also reports to the job's event stream (download progress in the GUI)."""

        def update(self, n: float | None = 1) -> bool | None:
            # Counted here too: a disabled bar (HF_HUB_DISABLE_PROGRESS_BARS) does not advance self.n.
            self.reported = getattr(self, "reported", 0) + (n or 0)
            if progress is not None and self.total:
                progress("downloading model", int(self.reported), int(self.total))
            return super().update(n)

    return ReportingBar


def download_from_hub(repo_id: str, dtype: torch.dtype, progress: Progress | None = None) -> Path:
    """Fetch only what loading needs (configs, tokenizers, one weight variant) into the HF cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    variant = ".fp16" if dtype == torch.float16 else ""
    patterns = ["model_index.json", "*/*.json", "*/*.txt", f"*/*model{variant}.safetensors"]
    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        folder = Path(
            snapshot_download(
                repo_id,
                allow_patterns=patterns,
                local_files_only=offline,
                tqdm_class=_progress_bar_class(progress),
            )
        )
    except (LocalEntryNotFoundError, RepositoryNotFoundError, GatedRepoError, OSError) as error:
        where = constants.HF_HUB_CACHE
        why = "HF_HUB_OFFLINE is set and it is not in the cache" if offline else "it could not be downloaded"
        raise ModelNotFound(
            f"model '{repo_id}' is not available: {why} (cache: {where}). Download it once with network access, "
            f"or put its diffusers folder in the models folder and choose it by path. ({type(error).__name__})"
        ) from error
    if variant and not any((folder / "unet").glob(f"*{variant}.safetensors")):
        return download_from_hub(repo_id, torch.float32, progress)  # the repo has no fp16 files
    return folder


# --- single-file checkpoints -------------------------------------------------------------------------------


def detect_checkpoint_family(path: Path) -> str:
    """Read only the tensor names of an original-layout checkpoint to tell sd1 / sd2 / sdxl apart."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    if any(key.startswith("conditioner.embedders.1.") for key in keys):
        return "sdxl"
    if any(key.startswith("cond_stage_model.model.") for key in keys):
        return "sd2"  # OpenCLIP ViT-H text encoder
    if any(key.startswith("cond_stage_model.transformer.") for key in keys):
        return "sd1"
    raise ModelLoadError(
        f"{path.name} does not look like a Stable Diffusion checkpoint (no text-encoder weights under "
        "cond_stage_model.* or conditioner.*); is it a LoRA or a VAE?"
    )


def load_single_file(path: Path, dtype: torch.dtype, model_id: str = "") -> ModelBundle:
    """Original-layout .safetensors -> bundle, through diffusers' single-file loader."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from huggingface_hub import constants

    family = detect_checkpoint_family(path)
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    try:
        pipeline = pipeline_class.from_single_file(
            str(path), torch_dtype=dtype, local_files_only=bool(constants.HF_HUB_OFFLINE)
        )
    except Exception as error:  # diffusers raises many kinds here; the user needs one clear message
        raise ModelLoadError(
            f"could not load single-file checkpoint {path.name} ({family}): {error}. Single files need the "
            "matching diffusers configs from the hub cache once; alternatively use a diffusers folder."
        ) from error
    encoders = [pipeline.text_encoder] + ([pipeline.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipeline.tokenizer] + ([pipeline.tokenizer_2] if family == "sdxl" else [])
    return ModelBundle(
        model_id=model_id or path.stem,
        family=family,
        unet=pipeline.unet,
        vae=pipeline.vae,
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler_config=dict(pipeline.scheduler.config),
        device=torch.device("cpu"),
        dtype=dtype,
        default_size=1024 if family == "sdxl" else (768 if family == "sd2" else 512),
        source=str(path),
    )


__all__ = [
    "ModelLoadError",
    "ModelNotFound",
    "ModelSpec",
    "choose_device",
    "choose_dtype",
    "detect_checkpoint_family",
    "download_from_hub",
    "load_diffusers_folder",
    "load_model",
    "load_single_file",
]
