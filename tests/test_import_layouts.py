"""`dreamlr import` of the LoRA key layouts other tools write (diffusers old and new, kohya / sd-scripts with
diffusers or original-SD names, LyCORIS LoCon, a lone PEFT UNet folder): the imported adapter must apply
the same update as the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import save_file

from dreamlr.adapters import AdapterConfig, adapter_layers, attach, load_adapter, read_adapter_header
from dreamlr.cli import main
from dreamlr.diffusion import load_pipeline
from dreamlr.export import import_adapter
from dreamlr.export.ldm import ldm_names

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "time_emb_proj", "downsamplers.0.conv", "upsamplers.0.conv", "conv_in",
                "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def sd_parts(pipe) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})


@pytest.fixture(scope="module")
def source():
    """A train-like rank-4, alpha-8 LoRA on nearly every layer of tiny (3×3 convs included): per layer, the
    factors as files store them (down (r, in[, kh, kw]), up (out, r[, 1, 1]), scale α/r) and the update ΔW."""
    pipe = load_pipeline("tiny")
    attach(pipe.unet, AdapterConfig(variant="lora", rank=4, alpha=8, targets=UNET_TARGETS))
    attach(pipe.text_encoder, AdapterConfig(variant="lora", rank=4, alpha=8, targets=TEXT_TARGETS))
    generator = torch.Generator().manual_seed(3)
    layers = {}
    with torch.no_grad():
        for name, layer in adapter_layers(sd_parts(pipe)):
            layer.lora_A.copy_(0.3 * torch.randn(layer.lora_A.shape, generator=generator))
            layer.lora_B.copy_(0.3 * torch.randn(layer.lora_B.shape, generator=generator))
            kernel = tuple(layer.base_layer.weight.shape[1:]) if layer.is_conv else ()
            down = layer.lora_A.reshape(4, *kernel) if kernel else layer.lora_A.clone()
            up = layer.lora_B[:, :, None, None] if kernel else layer.lora_B.clone()
            layers[name] = {"down": down.clone(), "up": up.clone(), "delta": layer.merged_weight() - layer.w0}
    return layers


def file_module(name: str) -> str:
    """dreamlr's `text_encoder.<path>` as LoRA files spell CLIP modules: `text_encoder.text_model.<path>`."""
    component, path = name.split(".", 1)
    if component == "text_encoder" and not path.startswith("text_model."):
        path = "text_model." + path
    return f"{component}.{path}"


def peft_style(layers: dict, scale_into_up: bool = True) -> dict[str, torch.Tensor]:
    """`<part>.<module>.lora_A.weight` / `.lora_B.weight` with α/r folded into up (no alpha needed: scale 1)."""
    tensors = {}
    for name, t in layers.items():
        key = file_module(name)
        tensors[f"{key}.lora_A.weight"] = t["down"].contiguous()
        tensors[f"{key}.lora_B.weight"] = (t["up"] * (2.0 if scale_into_up else 1.0)).contiguous()
    return tensors


def imported_deltas(path: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Import `path` into tiny and return each imported layer's ΔW = W' − W0."""
    adapter = import_adapter(path, tmp_path / f"{path.stem}-imported.safetensors", model="tiny")
    pipe = load_pipeline("tiny")
    load_adapter(sd_parts(pipe), adapter)
    with torch.no_grad():
        return {name: layer.merged_weight() - layer.w0 for name, layer in adapter_layers(sd_parts(pipe))}


def assert_same_updates(got: dict[str, torch.Tensor], source: dict, names) -> None:
    names = set(names)
    assert set(got) == names
    for name in names:
        want = source[name]["delta"]
        assert (got[name] - want).norm() <= 1e-5 * want.norm(), name


# -- diffusers layouts -----------------------------------------------------------------------------
def test_diffusers_lora_a_b_without_header_and_with_alpha_keys(source, tmp_path):
    save_file(peft_style(source), tmp_path / "scaled.safetensors")  # no header: scale 1
    assert_same_updates(imported_deltas(tmp_path / "scaled.safetensors", tmp_path), source, source)
    tensors = peft_style(source, scale_into_up=False)
    tensors.update({f"{file_module(name)}.alpha": torch.tensor(8.0) for name in source})
    save_file(tensors, tmp_path / "alphas.safetensors")
    assert_same_updates(imported_deltas(tmp_path / "alphas.safetensors", tmp_path), source, source)


def test_diffusers_old_layout_from_convert_state_dict_to_diffusers(source, tmp_path):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_diffusers

    tensors = convert_state_dict_to_diffusers(peft_style(source))
    assert any(k.endswith("attn1.to_q.lora.down.weight") for k in tensors)
    assert any(k.endswith("self_attn.q_proj.lora_linear_layer.down.weight") for k in tensors)
    save_file(tensors, tmp_path / "old.safetensors")
    assert_same_updates(imported_deltas(tmp_path / "old.safetensors", tmp_path), source, source)


def test_attention_processor_layout_without_unet_prefix(source, tmp_path):
    """`unet.save_attn_procs` files: `<attention>.processor.to_q_lora.down.weight`, `to_out_lora` for to_out.0,
    no `unet.` prefix; text encoders in that era: `self_attn.to_q_lora` for q_proj."""
    tensors, names = {}, []
    for name, t in source.items():
        component, path = name.split(".", 1)
        attention, _, last = path.rpartition(".")
        if component == "unet" and path.endswith(ATTENTION):
            attention, processor = (path[: -len(".to_out.0")], "to_out") if path.endswith("to_out.0") else (
                attention, last)
            key = f"{attention}.processor.{processor}_lora"
        elif component == "text_encoder" and last in ("q_proj", "k_proj", "v_proj", "out_proj"):
            processor = {"q_proj": "to_q", "k_proj": "to_k", "v_proj": "to_v", "out_proj": "to_out"}[last]
            key = f"{file_module(name).rpartition('.')[0]}.{processor}_lora"
        else:
            continue
        names.append(name)
        tensors[f"{key}.down.weight"] = t["down"]
        tensors[f"{key}.up.weight"] = 2.0 * t["up"]
    unet_only = {k: v for k, v in tensors.items() if not k.startswith("text_encoder.")}
    save_file(unet_only, tmp_path / "procs.safetensors")
    assert_same_updates(imported_deltas(tmp_path / "procs.safetensors", tmp_path), source,
                        [n for n in names if n.startswith("unet.")])
    save_file({(k if k.startswith("text_encoder.") else "unet." + k): v for k, v in tensors.items()},
              tmp_path / "both.safetensors")
    assert_same_updates(imported_deltas(tmp_path / "both.safetensors", tmp_path), source, names)


# -- kohya layouts -------------------------------------------------------------------------------
def test_kohya_from_convert_state_dict_to_kohya_with_te1_names(source, tmp_path):
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    tensors = convert_state_dict_to_kohya(peft_style(source))  # alpha = rank, so α/r is in up
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_self_attn_q_proj") for k in tensors)
    save_file(tensors, tmp_path / "te1.safetensors")
    assert_same_updates(imported_deltas(tmp_path / "te1.safetensors", tmp_path), source, source)


def kohya_file(source: dict, unet_name) -> dict[str, torch.Tensor]:
    """A kohya file: `lora_unet_<unet_name(path)>` / `lora_te_text_model_…`, alpha 8."""
    tensors = {}
    for name, t in source.items():
        component, path = name.split(".", 1)
        key = ("lora_unet_" + unet_name(path) if component == "unet"
               else "lora_te_" + file_module(name).split(".", 1)[1]).replace(".", "_")
        tensors.update({f"{key}.lora_down.weight": t["down"], f"{key}.lora_up.weight": t["up"],
                        f"{key}.alpha": torch.tensor(8.0)})
    return tensors


def test_kohya_with_original_sd_unet_names(source, tmp_path):
    """sd-scripts' SD 1.x/2.x files and what A1111 and ComfyUI apply: `lora_unet_input_blocks_1_1_proj_in`, 3×3
    LoCon convs (lora_down kh×kw, lora_up 1×1) included."""
    names = ldm_names(load_pipeline("tiny").unet)
    tensors = kohya_file(source, lambda path: names[path])
    for key in ("lora_unet_input_blocks_1_1_proj_in", "lora_unet_input_blocks_1_0_in_layers_2",
                "lora_unet_input_blocks_2_0_op", "lora_unet_middle_block_1_transformer_blocks_0_attn2_to_k",
                "lora_unet_output_blocks_1_2_conv", "lora_unet_output_blocks_3_1_proj_out",
                "lora_unet_output_blocks_0_0_skip_connection", "lora_unet_time_embed_0", "lora_unet_out_2"):
        assert f"{key}.lora_down.weight" in tensors, key
    assert tensors["lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight"].shape[2:] == (3, 3)
    save_file(tensors, tmp_path / "ldm.safetensors")
    assert_same_updates(imported_deltas(tmp_path / "ldm.safetensors", tmp_path), source, source)


def test_ldm_names_agree_with_diffusers_checkpoint_converter():
    """Renaming a UNet's state dict to LDM names and back with diffusers' single-file converter gives the same
    state dict, for tiny and for SD 1.5's block layout (DownBlock2D last, UpBlock2D first, 2 layers per block)."""
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    sd15_shaped = UNet2DConditionModel(
        sample_size=8, layers_per_block=2, block_out_channels=(8, 16, 16, 16), cross_attention_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), attention_head_dim=2,
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=4)
    for unet in (load_pipeline("tiny").unet, sd15_shaped):
        names, state = ldm_names(unet), unet.state_dict()
        ldm = {"model.diffusion_model." + names[key.rpartition(".")[0]] + "." + key.rpartition(".")[2]: tensor
               for key, tensor in state.items()}
        back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
        assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    assert ldm_names(sd15_shaped)["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.1.conv"  # no attention


def test_locon_tucker_core_is_folded_into_the_down_kernel(tmp_path):
    """LyCORIS LoCon with a Tucker core: 1×1 lora_down, 3×3 lora_mid, 1×1 lora_up; the imported layer applies
    up ∘ mid ∘ down (run as three convs here) scaled by alpha/r."""
    generator = torch.Generator().manual_seed(0)
    conv = load_pipeline("tiny").unet.down_blocks[0].resnets[0].conv1  # 32 → 32, 3×3, padding 1
    down = torch.randn(3, 32, 1, 1, generator=generator)
    mid = torch.randn(3, 3, 3, 3, generator=generator)
    up = torch.randn(32, 3, 1, 1, generator=generator)
    key = "lora_unet_down_blocks_0_resnets_0_conv1"
    save_file({f"{key}.lora_down.weight": down, f"{key}.lora_mid.weight": mid, f"{key}.lora_up.weight": up,
               f"{key}.alpha": torch.tensor(1.5)}, tmp_path / "tucker.safetensors")
    adapter = import_adapter(tmp_path / "tucker.safetensors", tmp_path / "a.safetensors", model="tiny")
    pipe = load_pipeline("tiny")
    load_adapter(sd_parts(pipe), adapter)
    layer = pipe.unet.down_blocks[0].resnets[0].conv1
    x = torch.randn(2, 32, 8, 8, generator=generator)
    with torch.no_grad():
        h = torch.nn.functional.conv2d(x, down)
        h = torch.nn.functional.conv2d(h, mid, padding=conv.padding)
        expected = 0.5 * torch.nn.functional.conv2d(h, up)
        got = layer(x) - conv(x)
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


# -- PEFT -----------------------------------------------------------------------------------------
def test_single_peft_unet_or_text_encoder_folder(source, tmp_path):
    """A UNet adapter saved by PEFT itself (adapter_config.json + adapter_model.safetensors, no unet/ parent),
    and a text encoder's, in a folder named text_encoder."""
    from peft import LoraConfig, get_peft_model

    unet_layers = {name.split(".", 1)[1]: t for name, t in source.items() if name.startswith("unet.")}
    model = get_peft_model(load_pipeline("tiny").unet, LoraConfig(r=4, lora_alpha=8, target_modules=list(unet_layers)))
    with torch.no_grad():
        for path, t in unet_layers.items():
            module = model.base_model.model.get_submodule(path)
            module.lora_A["default"].weight.copy_(t["down"].reshape(module.lora_A["default"].weight.shape))
            module.lora_B["default"].weight.copy_(t["up"].reshape(module.lora_B["default"].weight.shape))
    model.save_pretrained(tmp_path / "peft-unet")
    assert (tmp_path / "peft-unet" / "adapter_config.json").is_file()
    assert_same_updates(imported_deltas(tmp_path / "peft-unet", tmp_path), source, [f"unet.{p}" for p in unet_layers])
    text_layers = {name.split(".", 1)[1]: t for name, t in source.items() if name.startswith("text_encoder.")}
    model = get_peft_model(load_pipeline("tiny").text_encoder,
                           LoraConfig(r=4, lora_alpha=8, target_modules=list(text_layers)))
    with torch.no_grad():
        for path, t in text_layers.items():
            module = model.base_model.model.get_submodule(path)
            module.lora_A["default"].weight.copy_(t["down"])
            module.lora_B["default"].weight.copy_(t["up"])
    model.save_pretrained(tmp_path / "text_encoder")
    assert_same_updates(imported_deltas(tmp_path / "text_encoder", tmp_path), source,
                        [f"text_encoder.{p}" for p in text_layers])


# -- refused, with one line (LoHa in kohya files imports as `loha`: tests/test_loha.py) ---------------
@pytest.mark.parametrize("kind,tensors", [
    ("LoHa", {"unet.down_blocks.0.attentions.0.proj_in.hada_w1_a": torch.zeros(32, 2),
              "unet.down_blocks.0.attentions.0.proj_in.hada_w1_b": torch.zeros(2, 32)}),
    ("LoKr", {"lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w1": torch.zeros(4, 4),
              "lora_unet_down_blocks_0_attentions_0_proj_in.lokr_w2": torch.zeros(8, 8)}),
])
def test_loha_and_lokr_are_refused_with_one_line(kind, tensors, tmp_path, capsys):
    save_file(tensors, tmp_path / "lycoris.safetensors")
    code = main(["import", "--lora", str(tmp_path / "lycoris.safetensors"),
                 "--output", str(tmp_path / "out.safetensors"), "--model", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and kind in err and "proj_in" in err
    assert not (tmp_path / "out.safetensors").exists()


def test_import_records_each_layers_own_alpha(source, tmp_path):
    """Layers with other alphas than the rest keep them (one adapter group per rank and alpha)."""
    names = ldm_names(load_pipeline("tiny").unet)
    tensors = kohya_file(source, lambda path: names[path])
    tensors["lora_unet_input_blocks_1_1_proj_in.alpha"] = torch.tensor(2.0)
    save_file(tensors, tmp_path / "alphas.safetensors")
    adapter = import_adapter(tmp_path / "alphas.safetensors", tmp_path / "a.safetensors", model="tiny")
    alphas = {name: config.alpha for config, group in read_adapter_header(adapter)["groups"] for name in group}
    assert alphas["unet.down_blocks.0.attentions.0.proj_in"] == 2.0
    assert {a for n, a in alphas.items() if n != "unet.down_blocks.0.attentions.0.proj_in"} == {8.0}
