"""Tiny sd1 / sdxl models built from configs in code: real architectures, random (seeded) weights.

They exercise every code path of a real model — UNet2DConditionModel with cross-attention in the decoder,
AutoencoderKL with 8x downsampling, CLIP text encoder(s) with the real CLIP BPE tokenizer — in milliseconds on a
CPU. Their pictures mean nothing; behaviour is tested on the toy-world model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from backend.models.bundle import ModelBundle
from backend.paths import resource_path

TINY_IMAGE_SIZE = 64
_HIDDEN = 32


def clip_tokenizer(pad_token: str = "<|endoftext|>") -> CLIPTokenizer:
    """The real CLIP BPE tokenizer (49,408 tokens, 77-token limit) from the files shipped in resources/."""
    return CLIPTokenizer.from_pretrained(str(resource_path("tokenizers", "clip")), pad_token=pad_token)


def _text_encoder_config(projection_dim: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=_HIDDEN,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=projection_dim or _HIDDEN,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )


def _vae() -> AutoencoderKL:
    # Four levels -> 8x downsampling, as in SD: latents of a 64x64 image are 8x8.
    return AutoencoderKL(
        block_out_channels=(8, 16, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=TINY_IMAGE_SIZE,
    )


def _unet(cross_attention_dim: int, xl: bool) -> UNet2DConditionModel:
    extra = {}
    if xl:
        # SDXL conditions on pooled text embeddings + six size/crop numbers ("text_time").
        extra = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + _HIDDEN,
            transformer_layers_per_block=(1, 1, 1),
        )
    # Like SD: no attention at the lowest resolution of the decoder's first block, cross-attention above it.
    return UNet2DConditionModel(
        sample_size=TINY_IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=32,
        **extra,
    )


@torch.no_grad()
def _unit_variance_scaling(vae: AutoencoderKL) -> float:
    """1 / std of the latents of a few smooth colour fields: SD chose its 0.18215 the same way, so that
    diffusion sees unit-variance latents (with a random VAE's own 0.18215 they would be ~20x too small)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(4, 3, 4, 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=TINY_IMAGE_SIZE, mode="bicubic").clamp(-1, 1)
    return round(1.0 / vae.encode(images).latent_dist.mean.std().item(), 5)


def sd_scheduler_config() -> dict:
    """SD 1.x's noise schedule (scaled-linear betas, 1000 steps), as a DDIM config."""
    return dict(
        DDIMScheduler(
            num_train_timesteps=1000,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="epsilon",
        ).config
    )


def build_tiny(family: str = "sd1", seed: int = 0) -> ModelBundle:
    """A tiny model of `family` ("sd1" or "sdxl") with weights drawn from `seed`."""
    if family not in ("sd1", "sdxl"):
        raise ValueError(f"tiny models exist for sd1 and sdxl, not {family!r}")
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        vae = _vae()
        if family == "sd1":
            text_encoders = [CLIPTextModel(_text_encoder_config())]
            tokenizers = [clip_tokenizer()]
            unet = _unet(_HIDDEN, xl=False)
        else:
            text_encoders = [CLIPTextModel(_text_encoder_config()), CLIPTextModelWithProjection(_text_encoder_config())]
            tokenizers = [clip_tokenizer(), clip_tokenizer(pad_token="!")]
            unet = _unet(2 * _HIDDEN, xl=True)
    finally:
        torch.random.set_rng_state(generator_state)
    for module in (unet, vae, *text_encoders):
        module.eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=_unit_variance_scaling(vae))
    return ModelBundle(
        model_id="tiny" if family == "sd1" else "tiny-xl",
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=sd_scheduler_config(),
        device=torch.device("cpu"),
        dtype=torch.float32,
        default_size=TINY_IMAGE_SIZE,
        source=f"built-in tiny {family} (random weights, seed {seed})",
    )


def save_diffusers_folder(bundle: ModelBundle, folder: str | Path) -> Path:
    """Write `bundle` in diffusers layout (safetensors), so it loads like any downloaded model."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Shards of <= 15 MB: every file fits the device tool's 16 MiB return limit and stays git-friendly.
    shard = "15MB"
    bundle.unet.save_pretrained(folder / "unet", safe_serialization=True, max_shard_size=shard)
    bundle.vae.save_pretrained(folder / "vae", safe_serialization=True, max_shard_size=shard)
    suffixes = ["", "_2"][: len(bundle.text_encoders)]
    for suffix, encoder, tokenizer in zip(suffixes, bundle.text_encoders, bundle.tokenizers):
        encoder.save_pretrained(folder / f"text_encoder{suffix}", safe_serialization=True, max_shard_size=shard)
        tokenizer.save_pretrained(folder / f"tokenizer{suffix}")
    DDIMScheduler.from_config(bundle.scheduler_config).save_pretrained(folder / "scheduler")
    pipeline = "StableDiffusionXLPipeline" if bundle.family == "sdxl" else "StableDiffusionPipeline"
    index = {"_class_name": pipeline, "_diffusers_version": "0.42.1"}
    for suffix, encoder in zip(suffixes, bundle.text_encoders):
        index[f"text_encoder{suffix}"] = ["transformers", type(encoder).__name__]
        index[f"tokenizer{suffix}"] = ["transformers", "CLIPTokenizer"]
    index.update(unet=["diffusers", "UNet2DConditionModel"], vae=["diffusers", "AutoencoderKL"])
    index["scheduler"] = ["diffusers", "DDIMScheduler"]
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder
