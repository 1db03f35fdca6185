"""Model registry and loading: tiny models from configs, diffusers folders, single files, hub errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from backend.models import ModelNotFound, load_model, resolve
from backend.models.loading import ModelLoadError, detect_checkpoint_family
from backend.models.tiny import build_tiny, clip_tokenizer, save_diffusers_folder


def test_tokenizer_is_real_clip_bpe():
    tokenizer = clip_tokenizer()
    # The ids Stable Diffusion's own tokenizer gives these words; the limit is 77 with start and end tokens.
    assert tokenizer("a big red circle").input_ids == [49406, 320, 1205, 736, 7117, 49407]
    assert tokenizer.model_max_length == 77
    assert len(tokenizer) == 49408


def test_tiny_sd1_has_sd_architecture(tiny):
    assert tiny.family == "sd1"
    assert tiny.vae_scale_factor == 8
    assert len(tiny.unet.up_blocks) == 3 and not hasattr(tiny.unet.up_blocks[0], "attentions")
    names = list(tiny.unet.attn_processors)
    assert "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor" in names
    noise = torch.randn(1, 4, 8, 8)
    hidden = torch.randn(1, 77, tiny.unet.config.cross_attention_dim)
    assert tiny.unet(noise, 10, encoder_hidden_states=hidden).sample.shape == (1, 4, 8, 8)


def test_tiny_models_are_reproducible_from_their_seed():
    first, second = build_tiny("sd1", seed=3), build_tiny("sd1", seed=3)
    other = build_tiny("sd1", seed=4)
    weight = "conv_in.weight"
    assert torch.equal(first.unet.state_dict()[weight], second.unet.state_dict()[weight])
    assert not torch.equal(first.unet.state_dict()[weight], other.unet.state_dict()[weight])


def test_tiny_xl_conditions_on_pooled_text_and_size(tiny_xl):
    from backend.engine.conditioning import encode_prompts

    cond = encode_prompts(tiny_xl, ["a cat", "a dog"])
    assert cond.hidden.shape == (2, 77, 64)  # two encoders concatenated, as SDXL does
    assert cond.pooled.shape == (2, 32) and cond.time_ids.shape == (2, 6)
    out = tiny_xl.unet(torch.randn(2, 4, 8, 8), 10, **cond.unet_kwargs()).sample
    assert out.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_saved_diffusers_folder_loads_to_the_same_model(tmp_path, family):
    built = build_tiny(family, seed=1)
    folder = save_diffusers_folder(built, tmp_path / f"my-{family}")
    assert not list(folder.rglob("*.bin")), "weights must be safetensors"
    loaded = load_model(str(folder), device="cpu")
    assert loaded.family == family and loaded.default_size == 64
    for name, tensor in built.unet.state_dict().items():
        assert torch.equal(tensor, loaded.unet.state_dict()[name]), name
    assert loaded.tokenizers[0]("a red square").input_ids == built.tokenizers[0]("a red square").input_ids


def test_models_folder_entries_resolve_by_name(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_MODELS_DIR", str(tmp_path))
    save_diffusers_folder(build_tiny("sd1"), tmp_path / "shapes")
    spec = resolve("shapes")
    assert spec.source == "folder" and spec.location == str((tmp_path / "shapes").resolve())


def test_the_toy_world_model_resolves_to_its_shipped_folder_or_says_how_to_get_it(tmp_path, monkeypatch):
    from backend.models import registry

    monkeypatch.setattr(registry, "resource_path", lambda *parts: tmp_path.joinpath(*parts))
    with pytest.raises(ModelNotFound, match="train-toyworld.*'tiny'"):
        resolve("toyworld")
    assert "toyworld" not in [spec.id for spec in registry.list_models()]
    save_diffusers_folder(build_tiny("sd1"), tmp_path / "models" / "toyworld")
    spec = resolve("toyworld")
    assert (spec.source, spec.family, spec.default_size) == ("folder", "sd1", 128)
    assert spec.location == str(tmp_path / "models" / "toyworld") and registry.list_models()[0].id == "toyworld"


def test_unknown_models_say_where_they_were_looked_for(tmp_path, monkeypatch):
    monkeypatch.setenv("ATELIER_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelNotFound, match=f"no model 'nothing-here'.*{tmp_path}"):
        resolve("nothing-here")


def test_pickle_checkpoints_are_refused(tmp_path):
    checkpoint = tmp_path / "model.ckpt"
    checkpoint.write_bytes(b"not loaded")
    with pytest.raises(ModelNotFound, match="pickle.*safetensors"):
        resolve(str(checkpoint))


def test_a_folder_without_a_model_is_refused(tmp_path):
    (tmp_path / "junk").mkdir()
    with pytest.raises(ModelNotFound, match="not a diffusers model"):
        resolve(str(tmp_path / "junk"))


def test_an_incomplete_folder_says_what_is_missing(tmp_path):
    folder = save_diffusers_folder(build_tiny("sd1"), tmp_path / "m")
    for file in (folder / "vae").iterdir():
        file.unlink()
    (folder / "vae").rmdir()
    with pytest.raises(ModelLoadError, match="lacks vae"):
        load_model(str(folder), device="cpu")


@pytest.mark.parametrize(
    ("prefix", "family"),
    [
        ("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", "sd1"),
        ("cond_stage_model.model.token_embedding.weight", "sd2"),
        ("conditioner.embedders.1.model.token_embedding.weight", "sdxl"),
    ],
)
def test_single_file_family_is_read_from_tensor_names(tmp_path, prefix, family):
    path = tmp_path / "checkpoint.safetensors"
    save_file({prefix: torch.zeros(2, 2), "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(1)}, str(path))
    assert resolve(str(path)).source == "single_file"
    assert detect_checkpoint_family(path) == family


def test_a_safetensors_file_that_is_not_a_checkpoint_is_explained(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2)}, str(path))
    with pytest.raises(ModelLoadError, match="does not look like a Stable Diffusion checkpoint"):
        load_model(str(path), device="cpu")


def test_hub_model_missing_offline_gives_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound, match="stabilityai/sdxl-turbo.*HF_HUB_OFFLINE"):
        load_model("sdxl-turbo", device="cpu")


def test_cpu_defaults_to_fp32(tiny):
    assert tiny.dtype == torch.float32 and tiny.device.type == "cpu"
    assert next(tiny.unet.parameters()).dtype == torch.float32
    assert np.isfinite(tiny.nbytes())


def test_download_progress_reaches_the_job(monkeypatch, tmp_path):
    from backend.models import loading

    reported = []

    def fake_snapshot_download(repo_id, allow_patterns, local_files_only, tqdm_class):
        assert "unet/*model.safetensors" not in allow_patterns  # one variant only, by pattern
        bar = tqdm_class(total=300, disable=True)
        for _ in range(3):
            bar.update(100)
        bar.close()
        (tmp_path / "unet").mkdir(exist_ok=True)
        (tmp_path / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"")
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    folder = loading.download_from_hub("owner/model", torch.float16, lambda *a: reported.append(a))
    assert folder == tmp_path
    assert reported == [
        ("downloading model", 100, 300),
        ("downloading model", 200, 300),
        ("downloading model", 300, 300),
    ]


def test_single_file_offline_without_configs_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    path = tmp_path / "model.safetensors"
    save_file({"cond_stage_model.transformer.text_model.x": torch.zeros(1)}, str(path))
    with pytest.raises(ModelLoadError, match="model.safetensors \\(sd1\\).*diffusers configs"):
        load_model(str(path), device="cpu")


def test_the_full_size_random_architectures_have_the_published_sizes_and_stay_out_of_the_model_list():
    """`sd15-random` / `sdxl-random` time edits at full size without weights: their parts must be the real ones
    (parameter counts of SD 1.5's and SDXL's UNet, CLIP ViT-L and OpenCLIP bigG, the VAE). Built on the meta
    device here: shapes only, no memory."""
    from backend.methods.cora import cora_layers
    from backend.models import registry
    from backend.models.fullsize import build_full_size

    def count(module):
        return sum(p.numel() for p in module.parameters())

    sd = build_full_size("sd1", device="meta")
    xl = build_full_size("sdxl", device="meta")
    assert (count(sd.unet), [count(m) for m in sd.text_encoders]) == (859_520_964, [123_060_480])
    assert (count(xl.unet), [count(m) for m in xl.text_encoders]) == (2_567_463_684, [123_060_480, 694_659_840])
    assert count(sd.vae) == count(xl.vae) == 83_653_863 and xl.vae.config.force_upcast
    assert len(cora_layers(xl.unet, (64, 64), "sdxl")) == 26  # the paper's transformer blocks 44-69
    assert resolve("sdxl-random").family == "sdxl" and resolve("sd15-random").default_size == 512
    assert not {"sd15-random", "sdxl-random"} & {spec.id for spec in registry.list_models()}
