"""Tiny CLIP, DINO and LPIPS weights saved as their real counterparts are (folders the metrics load from)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ViTConfig, ViTImageProcessor, ViTModel

from backend.eval.metrics import Lpips
from backend.models.tiny import clip_tokenizer

SIDE = 32
PATCH = 8
TINY_VGG = (8, 8, "M", 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8)


def _tiny(hidden: int = 32) -> dict:
    return dict(hidden_size=hidden, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def save_tiny_clip(folder: Path) -> Path:
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **_tiny(),
        ),
        vision_config=dict(image_size=SIDE, patch_size=PATCH, **_tiny()),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return folder


def save_tiny_dino(folder: Path) -> Path:
    torch.manual_seed(1)
    ViTModel(ViTConfig(image_size=SIDE, patch_size=PATCH, **_tiny()), add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": SIDE, "width": SIDE}).save_pretrained(folder)
    return folder


def tiny_lpips() -> Lpips:
    torch.manual_seed(0)
    net = Lpips(TINY_VGG)
    for name, parameter in net.named_parameters():
        if name.startswith("lin"):  # the learned heads are non-negative weights
            parameter.data = parameter.data.abs()
    return net


def save_tiny_lpips(folder: Path) -> Path:
    """As torchvision's vgg16 state dict (backbone) and the lpips package's vgg.pth (heads), in one folder."""
    folder.mkdir(parents=True, exist_ok=True)
    state = tiny_lpips().state_dict()
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, folder / "vgg16.pth")
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, folder / "vgg.pth")
    return folder
