"""Presets on a tiny diffusers UNet and CLIP text encoder, and the errors users see."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from dreamlr.adapters import (
    AdapterConfig,
    AdapterConfigError,
    AdapterFileError,
    adapter_layers,
    attach,
    detach,
    load_adapter,
    save_adapter,
)
from dreamlr.errors import UserError


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )


def tiny_clip() -> CLIPTextModel:
    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=16,
    ))


def names_ending(model: nn.Module, *suffixes: str) -> set[str]:
    return {n for n, _ in model.named_modules() if n.endswith(tuple("." + s for s in suffixes))}


def unet_call(unet: UNet2DConditionModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 8, 8, generator=generator)
    context = torch.randn(1, 5, 16, generator=generator)
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=context).sample


@pytest.mark.parametrize("preset,suffixes", [
    ("attn-qk", ("to_q", "to_k")),
    ("attn", ("to_q", "to_k", "to_v", "to_out.0")),
    ("attn+proj", ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out")),
])
def test_unet_presets_wrap_expected_modules(preset, suffixes):
    unet = tiny_unet()
    reference = unet_call(unet)
    expected = names_ending(unet, *suffixes)
    assert expected
    names = attach(unet, AdapterConfig(variant="dora", rank=2, targets=preset))
    assert set(names) == expected
    layers = dict(adapter_layers(unet))
    if "proj_in" in suffixes:
        proj = [layers[n] for n in names if n.endswith("proj_in")]
        assert proj and all(layer.is_conv and layer.base_layer.kernel_size == (1, 1) for layer in proj)
    torch.testing.assert_close(unet_call(unet), reference, rtol=0, atol=1e-5)


def test_unet_all_linear_takes_every_linear():
    unet = tiny_unet()
    names = attach(unet, AdapterConfig(rank=2, targets="all-linear"))
    detach(unet)
    assert set(names) == {n for n, m in unet.named_modules() if isinstance(m, nn.Linear)}


def test_clip_presets():
    clip = tiny_clip()
    names = attach(clip, AdapterConfig(variant="singlora", rank=2, targets="clip-attn"))
    assert set(names) == names_ending(clip, "q_proj", "k_proj", "v_proj", "out_proj")
    assert len(names) == 2 * 4
    detach(clip)
    linear = {n for n, m in clip.named_modules() if isinstance(m, nn.Linear)}
    names = attach(clip, AdapterConfig(rank=2, targets="all-linear"))
    assert set(names) == linear
    assert any(n.endswith("mlp.fc1") for n in names)


def test_regex_targets():
    unet = tiny_unet()
    names = attach(unet, AdapterConfig(rank=2, targets=[r".*attn1\.to_(q|v)"]))
    assert names and all(n.split(".")[-2] == "attn1" and n[-4:] in ("to_q", "to_v") for n in names)


def test_detach_restores_the_base_model():
    unet = tiny_unet()
    reference = unet_call(unet)
    attach(unet, AdapterConfig(rank=2, targets="attn"))
    detach(unet)
    assert not list(adapter_layers(unet))
    assert torch.equal(unet_call(unet), reference)


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("options,match", [
    ({"variant": "lokr"}, "known variants: lora, loraplus, dora, singlora, dual_lora, d2lora"),
    ({"rank": 0}, "positive integer"),
    ({"rank": -3}, "positive integer"),
    ({"variant": "dual_lora", "rank": 3}, "odd"),
    ({"targets": "attention"}, "unknown target preset 'attention'; presets: attn-qk"),
    ({"ste": "tanh"}, "unknown ste"),
    ({"alpha": 0}, "alpha"),
])
def test_config_validation(options, match):
    with pytest.raises(AdapterConfigError, match=match):
        AdapterConfig(**options)


def test_errors_are_user_errors():
    assert issubclass(AdapterConfigError, UserError) and issubclass(AdapterFileError, UserError)


def test_rank_larger_than_layer_allows():
    model = nn.Sequential(nn.Linear(6, 40))
    with pytest.raises(AdapterConfigError, match=r"rank 8 is larger than module '0' allows \(weight 40x6: at most 6\)"):
        attach(model, AdapterConfig(rank=8, targets=["0"]))
    assert not list(adapter_layers(model))
    assert model[0].weight.requires_grad  # nothing changed


def test_target_matching_nothing_lists_existing_modules():
    unet = tiny_unet()
    with pytest.raises(AdapterConfigError, match=r"target 'to_qq' matches no module .*some that exist: .*to_q"):
        attach(unet, AdapterConfig(rank=2, targets=["to_q", "to_qq"]))
    with pytest.raises(AdapterConfigError, match="preset 'clip-attn' matches no module"):
        attach(unet, AdapterConfig(rank=2, targets="clip-attn"))


def test_attaching_twice_is_an_error():
    unet = tiny_unet()
    attach(unet, AdapterConfig(rank=2, targets="attn-qk"))
    with pytest.raises(AdapterConfigError, match="already has a lora adapter"):
        attach(unet, AdapterConfig(variant="dora", rank=2, targets="attn"))


def test_unsupported_modules():
    with pytest.raises(AdapterConfigError, match="grouped Conv2d"):
        attach(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), AdapterConfig(rank=1, targets=["0"]))
    with pytest.raises(AdapterConfigError, match="is a ModuleList; adapters wrap nn.Linear, nn.Conv2d"):
        attach(tiny_unet(), AdapterConfig(rank=2, targets=["to_out"]))


def test_load_into_mismatched_model_names_first_mismatch(tmp_path):
    unet = tiny_unet()
    attach(unet, AdapterConfig(rank=2, targets="attn-qk"))
    path = save_adapter(unet, tmp_path / "a.safetensors", metadata={"base_model": "tiny"})

    wider = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(24, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    )
    with pytest.raises(AdapterFileError, match=r"down_blocks\.0\..*to_q\.lora_A has shape \(2, 16\) in the file but \(2, 24\)"):
        load_adapter(wider, path)
    assert not list(adapter_layers(wider))  # left as it was

    other_variant = tiny_unet()
    attach(other_variant, AdapterConfig(variant="dora", rank=2, targets="attn-qk"))
    with pytest.raises(AdapterFileError, match="is lora in the file but dora in the model"):
        load_adapter(other_variant, path)

    with pytest.raises(AdapterFileError, match="trained on base model 'tiny', not 'sd15'"):
        load_adapter(tiny_unet(), path, base_model="sd15")

    with pytest.raises(AdapterFileError, match="does not exist"):
        load_adapter(tiny_unet(), tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterFileError, match="not a readable .safetensors"):
        load_adapter(tiny_unet(), garbage)


def test_save_without_adapter_and_atomic_write(tmp_path):
    with pytest.raises(AdapterFileError, match="no adapter attached"):
        save_adapter(nn.Linear(2, 2), tmp_path / "x.safetensors")
    unet = tiny_unet()
    attach(unet, AdapterConfig(rank=2, targets="attn-qk"))
    save_adapter(unet, tmp_path / "a.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]  # no temp file left behind
