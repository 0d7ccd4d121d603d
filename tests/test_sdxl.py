"""SDXL end to end on the built-in random `tiny-sdxl`: loading by what the folder is, the text conditioning
SDXL was trained with (checked against diffusers' own `encode_prompt`), size/crop `time_ids`, training both
text encoders with their own adapter and learning rate, generation, and exports that diffusers loads exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from PIL import Image
from safetensors import safe_open

from dreamlr.adapters import AdapterConfig, attach, read_adapter_header, save_adapter, trainable_parameters
from dreamlr.cli import main
from dreamlr.diffusion import load_components, load_pipeline
from dreamlr.diffusion.data import DreamBoothDataset
from dreamlr.diffusion.models import TINY_SDXL, adapter_modules
from dreamlr.diffusion.train import PromptEncoder
from dreamlr.export import export_adapter, import_adapter
from tests.test_train import run_config

PROMPTS = ["a photo of sks dog", "a red cube on the beach"]


def test_a_saved_sdxl_folder_loads_as_sdxl_with_both_text_encoders(tmp_path):
    pipe = load_pipeline(TINY_SDXL)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    pipe.save_pretrained(tmp_path / "xl")
    parts = load_components(str(tmp_path / "xl"))
    assert parts.is_sdxl and set(parts.text_encoders()) == {"text_encoder", "text_encoder_2"}
    assert torch.equal(parts.text_encoder_2.text_projection.weight, pipe.text_encoder_2.text_projection.weight)
    assert not load_components("tiny").is_sdxl


def test_prompt_encoder_gives_what_the_sdxl_pipeline_conditions_on():
    """Hidden states of both encoders' penultimate layers, concatenated, and the second one's pooled projection:
    the same tensors diffusers' StableDiffusionXLPipeline.encode_prompt computes, cached or not."""
    parts = load_components(TINY_SDXL)
    pipe = load_pipeline(TINY_SDXL)
    expected, _, pooled, _ = pipe.encode_prompt(PROMPTS, device="cpu", num_images_per_prompt=1,
                                                do_classifier_free_guidance=False)
    for trainable in (True, False):
        hidden, got_pooled = PromptEncoder(parts, parts.text_encoders(), trainable=trainable)(PROMPTS)
        torch.testing.assert_close(hidden, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(got_pooled, pooled, rtol=0, atol=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_time_ids_hold_the_file_size_the_crop_and_the_target(tmp_path, flip):
    """A 100×60 image at resolution 32: resized to 53×32, centre crop at left 10 (a flip mirrors it to 53-10-32)."""
    Image.new("RGB", (100, 60), "red").save(tmp_path / "a.png")
    dataset = DreamBoothDataset(tmp_path, "p", 32, center_crop=True, random_flip=flip, seed=0)
    seen = set()
    for epoch in range(12):
        dataset.set_epoch(epoch)
        seen.add(tuple(dataset[0]["time_ids"].tolist()))
    assert seen == ({(60, 100, 0, 10, 32, 32), (60, 100, 0, 11, 32, 32)} if flip else {(60, 100, 0, 10, 32, 32)})


def test_sdxl_dreambooth_trains_unet_and_both_text_encoders_with_their_own_rates(tmp_path):
    config = run_config(tmp_path, pretrained_model_name_or_path=TINY_SDXL, train_text_encoder=True,
                        text_encoder_lr=1e-3, text_encoder_2_lr=2e-4, text_encoder_2_adapter={"rank": 1},
                        with_prior_preservation=True, class_prompt="a photo of mug", num_class_images=2,
                        class_data_dir=str(tmp_path / "class"), max_train_steps=4)
    assert config.text_encoder_learning_rate("text_encoder") == 1e-3
    assert config.text_encoder_learning_rate("text_encoder_2") == 2e-4
    from dreamlr.diffusion.train import train

    run = train(config)
    header = read_adapter_header(run / "adapter.safetensors")
    ranks = {name.split(".")[0]: cfg.rank for cfg, names in header["groups"] for name in names}
    assert ranks == {"unet": 2, "text_encoder": 2, "text_encoder_2": 1}
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(0 < loss < 10 for loss in losses)
    assert len(list((tmp_path / "class").glob("*.png"))) == 2
    assert (run / "samples" / "step-4" / "0.png").is_file()
    pipe = load_pipeline(TINY_SDXL, adapter=run / "adapter.safetensors", merge=True)
    assert isinstance(pipe, StableDiffusionXLPipeline)


def test_sdxl_bf16_with_checkpointing_keeps_fp32_adapters_on_every_part(tmp_path):
    from safetensors.torch import load_file

    from dreamlr.diffusion.train import train

    run = train(run_config(tmp_path, pretrained_model_name_or_path=TINY_SDXL, train_text_encoder=True,
                           mixed_precision="bf16", gradient_checkpointing=True, max_train_steps=2,
                           num_validation_images=0))
    tensors = load_file(run / "adapter.safetensors")
    assert {key.split(".")[0] for key in tensors} == {"unet", "text_encoder", "text_encoder_2"}
    assert all(t.dtype == torch.float32 for t in tensors.values())
    # SDXL reads the first encoder's penultimate layer: its last layer gets no gradient (as in diffusers' script)
    untrained = {k for k, t in tensors.items() if k.endswith("lora_B") and not t.abs().sum()}
    assert untrained and all(k.startswith("text_encoder.encoder.layers.1.") for k in untrained)


def test_sdxl_generate_from_the_cli_writes_a_manifest(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {token} {class}\n")
    code = main(["generate", "--model", TINY_SDXL, "--prompts", str(prompts), "--class-name", "mug",
                 "--num-images", "2", "--steps", "2", "--output-dir", str(tmp_path / "gen")])
    assert code == 0
    assert len(list((tmp_path / "gen").glob("*.png"))) == 2
    assert (tmp_path / "gen" / "manifest.jsonl").is_file()


def _outputs(pipe) -> list[torch.Tensor]:
    """Both text encoders' conditioning and one UNet prediction, on fixed inputs."""
    hidden, _, pooled, _ = pipe.encode_prompt(PROMPTS[:1], device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        noise = pipe.unet(latents, torch.tensor([500]), hidden, added_cond_kwargs={
            "text_embeds": pooled, "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}).sample
    return [hidden, pooled, noise]


@pytest.fixture(scope="module")
def sdxl_adapter(tmp_path_factory) -> tuple[Path, list[torch.Tensor]]:
    """A LoRA on the UNet and both text encoders (random non-zero factors) and the merged model's outputs."""
    folder = tmp_path_factory.mktemp("sdxl")
    model = adapter_modules(load_pipeline(TINY_SDXL))
    torch.manual_seed(0)
    attach(model["unet"], AdapterConfig(variant="lora", rank=4, alpha=8, targets="attn"))
    attach(model["text_encoder"], AdapterConfig(variant="lora", rank=4, targets="clip-attn"))
    attach(model["text_encoder_2"], AdapterConfig(variant="lora", rank=2, targets="clip-attn"))
    with torch.no_grad():
        for tensor in trainable_parameters(model).values():
            tensor.add_(0.1 * torch.randn_like(tensor))
    path = folder / "adapter.safetensors"
    save_adapter(model, path, metadata={"base_model": TINY_SDXL})
    merged = load_pipeline(TINY_SDXL, adapter=path, merge=True)
    return path, _outputs(merged)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_sdxl_exports_load_in_diffusers_as_dreamlr_merges_them(fmt, sdxl_adapter, tmp_path):
    adapter, expected = sdxl_adapter
    out = tmp_path / f"{fmt}.safetensors"
    export_adapter(adapter, fmt, out)
    pipe = load_pipeline(TINY_SDXL)
    base = _outputs(pipe)
    pipe.load_lora_weights(str(out))
    for got, want, before in zip(_outputs(pipe), expected, base):
        assert (want - before).abs().max() > 1e-2  # the adapter changes every output
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_sdxl_exports_import_back_exactly_and_kohya_names_are_sd_scripts(fmt, sdxl_adapter, tmp_path):
    """sd-scripts names SDXL UNet layers as the original model (input_blocks…) and its encoders lora_te1_/_te2_."""
    adapter, expected = sdxl_adapter
    out = tmp_path / f"{fmt}.safetensors"
    export_adapter(adapter, fmt, out)
    if fmt == "kohya":
        with safe_open(str(out), "pt") as handle:
            prefixes = {key.split("_block")[0].split("_text_model")[0] for key in handle.keys()}
        assert prefixes == {"lora_unet_input", "lora_unet_middle", "lora_unet_output", "lora_te1", "lora_te2"}
    back = import_adapter(out, tmp_path / "back.safetensors", model=TINY_SDXL)
    for got, want in zip(_outputs(load_pipeline(TINY_SDXL, adapter=back, merge=True)), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
