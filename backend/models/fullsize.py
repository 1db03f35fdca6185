"""Full-size SD 1.5 and SDXL architectures with random (seeded) weights, for timing and memory figures only.

How long a UNet call takes and how much memory it needs depend on the architecture and the picture size, not on
the weight values, so `python -m backend bench --model sdxl-random --size 512` measures what an edit with real
SDXL(-Turbo) weights costs on this machine, without the weights. The configurations are the published ones
(`stable-diffusion-v1-5` and `stabilityai/sdxl-turbo`: UNet, VAE, CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 text
encoders). Their pictures are noise.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from backend.models.bundle import ModelBundle
from backend.models.tiny import clip_tokenizer, sd_scheduler_config

FULL_SIZE_IMAGE = 512


def _clip(hidden: int, layers: int, heads: int, activation: str) -> CLIPTextConfig:
    """A CLIP text transformer of the published shape (MLP 4x wide, 77 positions, the CLIP BPE vocabulary)."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=activation,
        projection_dim=hidden,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
    )


CLIP_L = dict(hidden=768, layers=12, heads=12, activation="quick_gelu")  # SD 1.5; SDXL's first encoder
CLIP_BIG_G = dict(hidden=1280, layers=32, heads=20, activation="gelu")  # SDXL's second encoder (OpenCLIP bigG)


def _vae(scaling_factor: float, force_upcast: bool) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=FULL_SIZE_IMAGE,
        scaling_factor=scaling_factor,
        force_upcast=force_upcast,
    )


def _unet(family: str) -> UNet2DConditionModel:
    if family == "sd1":
        return UNet2DConditionModel(
            sample_size=64,
            block_out_channels=(320, 640, 1280, 1280),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=768,
            attention_head_dim=8,
        )
    return UNet2DConditionModel(
        sample_size=64,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )


def build_full_size(family: str, seed: int = 0, device: torch.device | str = "cpu") -> ModelBundle:
    """SD 1.5 ("sd1") or SDXL ("sdxl") at full size, weights drawn from `seed` (PyTorch's default inits), built
    on `device` directly (a GPU initialises 3.5 billion weights in moments; a CPU needs most of a minute)."""
    if family not in ("sd1", "sdxl"):
        raise ValueError(f"full-size random models exist for sd1 and sdxl, not {family!r}")
    device = torch.device(device)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed_all(seed)
        with device:
            unet = _unet(family)
            if family == "sd1":
                vae = _vae(0.18215, force_upcast=False)
                text_encoders = [CLIPTextModel(_clip(**CLIP_L))]
            else:
                vae = _vae(0.13025, force_upcast=True)
                text_encoders = [CLIPTextModel(_clip(**CLIP_L)), CLIPTextModelWithProjection(_clip(**CLIP_BIG_G))]
        tokenizers = [clip_tokenizer()] if family == "sd1" else [clip_tokenizer(), clip_tokenizer(pad_token="!")]
    finally:
        torch.random.set_rng_state(generator_state)
    for module in (unet, vae, *text_encoders):
        module.eval().requires_grad_(False)
    return ModelBundle(
        model_id="sd15-random" if family == "sd1" else "sdxl-random",
        family=family,
        unet=unet,
        vae=vae,
        text_encoders=text_encoders,
        tokenizers=tokenizers,
        scheduler_config=sd_scheduler_config(),
        device=device,
        dtype=torch.float32,
        default_size=FULL_SIZE_IMAGE,
        source=f"built-in full-size {family} architecture (random weights, seed {seed}): for timing only",
    )
