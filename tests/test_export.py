"""Export to diffusers / PEFT / kohya / merged models and import back, checked against dreamlr's merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from dreamlr.adapters import (
    VARIANTS,
    AdapterConfig,
    adapter_layers,
    attach,
    detach,
    load_adapter,
    merge,
    read_adapter_header,
    save_adapter,
    set_step,
    trainable_parameters,
)
from dreamlr.cli import main
from dreamlr.diffusion import load_pipeline
from dreamlr.export import export_adapter, import_adapter
from dreamlr.export.svd import energy_rank, relative_error, truncated_svd

EXACT = {"lora", "loraplus", "singlora", "dora"}


def train_like(model: torch.nn.Module, step: int = 5, seed: int = 2) -> None:
    """Random updates of the size training makes; step 5 of 10 leaves ramps and warm-ups at u = 0.5."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    set_step(model, step)


def sd_parts(pipe) -> torch.nn.ModuleDict:
    return torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})


def make_sd_adapter(path: Path, variant: str, unet_targets: str = "attn+proj") -> dict:
    """A train-like adapter on tiny's UNet (1×1 conv proj_in/out included) and text encoder, saved to
    `path`; returns dreamlr's merged outputs and per-layer deltas W' − W0 for reference."""
    pipe = load_pipeline("tiny")
    options = dict(variant=variant, rank=4, alpha=8, ramp_steps=10, warmup_steps=10)
    attach(pipe.unet, AdapterConfig(targets=unet_targets, **options))
    attach(pipe.text_encoder, AdapterConfig(targets="clip-attn", **options))
    model = sd_parts(pipe)
    train_like(model)
    save_adapter(model, path, metadata={"base_model": "tiny"})
    with torch.no_grad():
        deltas = {name: layer.merged_weight() - layer.w0.float() for name, layer in adapter_layers(model)}
    merge(model)
    return {"outputs": outputs(pipe), "deltas": deltas}


def outputs(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-encoder and UNet outputs on fixed inputs."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (2, 8), generator=generator)
    latents = torch.randn(2, 4, 8, 8, generator=generator)
    with torch.no_grad():
        hidden = pipe.text_encoder(ids)[0]
        return hidden, pipe.unet(latents, 10, hidden).sample


def same_tensors(a: Path, b: Path) -> bool:
    """Two .safetensors files hold the same keys and bit-identical tensors."""
    ta, tb = load_file(a), load_file(b)
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def max_diff(a: tuple, b: tuple) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def fused_errors(pipe, deltas: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per layer, ‖ΔW_loaded − ΔW‖/‖ΔW‖ after diffusers fuses the loaded LoRA into the weights."""
    base = sd_parts(load_pipeline("tiny"))
    pipe.fuse_lora()
    fused = sd_parts(pipe)
    errors = {}
    for name, delta in deltas.items():
        loaded = (fused.get_submodule(name).weight - base.get_submodule(name).weight).detach()
        errors[name] = relative_error(delta, loaded.reshape(delta.shape))
    return errors


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """One saved SD adapter per variant, built on first use."""
    folder, made = tmp_path_factory.mktemp("adapters"), {}

    def get(variant: str) -> tuple[Path, dict]:
        if variant not in made:
            path = folder / f"{variant}.safetensors"
            made[variant] = (path, make_sd_adapter(path, variant))
        return made[variant]

    return get


# -- SVD ------------------------------------------------------------------------------------------
def test_truncated_svd_at_rank_and_energy():
    generator = torch.Generator().manual_seed(0)
    low = torch.randn(30, 3, generator=generator) @ torch.randn(3, 20, generator=generator)
    up, down = truncated_svd(low, rank=3)
    assert up.shape == (30, 3) and down.shape == (3, 20) and relative_error(low, up @ down) < 1e-5
    assert truncated_svd(low, rank=50)[0].shape == (30, 20)  # capped at min(out, in)
    assert truncated_svd(low, energy=1.0)[1].shape[0] == 3
    s = torch.tensor([3.0, 2.0, 1.0, 0.0])  # energies 9, 4, 1 of 14
    assert [energy_rank(s, e) for e in (0.5, 9 / 14, 0.9, 13 / 14, 0.99, 1.0)] == [1, 1, 2, 2, 3, 3]
    full = torch.randn(16, 12, generator=generator)
    up, down = truncated_svd(full, energy=0.9)
    sigma = torch.linalg.svdvals(full)
    kept = (sigma[: down.shape[0]] ** 2).sum() / (sigma**2).sum()
    assert kept >= 0.9 > (sigma[: down.shape[0] - 1] ** 2).sum() / (sigma**2).sum()
    assert relative_error(full, up @ down) == pytest.approx(float((1 - kept).sqrt()), rel=1e-4)


# -- diffusers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_diffusers_export_loads_with_load_lora_weights(variant, adapters, tmp_path):
    path, reference = adapters(variant)
    report = export_adapter(path, "diffusers", tmp_path / "out")
    assert report.output == tmp_path / "out" / "pytorch_lora_weights.safetensors"
    pipe = load_pipeline("tiny")
    pipe.load_lora_weights(str(report.output))
    loaded = {n for n, m in sd_parts(pipe).named_modules() if hasattr(m, "lora_A")}
    assert loaded == set(reference["deltas"])  # every layer, the 1×1 convs and the text encoder included
    diff = max_diff(outputs(pipe), reference["outputs"])
    errors = fused_errors(pipe, reference["deltas"])
    if variant in EXACT:
        assert report.exact and diff <= 1e-4
        assert max(errors.values()) <= 1e-5
    else:
        assert not report.exact and 0 < report.mean_error <= report.max_error < 1
        matched = 8 if variant == "d2lora" else 4  # a LoRA with the adapter's parameter count: the default's floor
        assert all(layer.rank >= matched and layer.error <= 0.1 + 1e-6 for layer in report.layers)  # energy 0.99
        for layer in report.layers:  # the reported error bounds what diffusers actually applies
            assert errors[layer.name] <= layer.error + 1e-5
            assert errors[layer.name] == pytest.approx(layer.error, abs=1e-4)


@pytest.mark.parametrize("header", ["with header", "header stripped"])
@pytest.mark.parametrize("variant,energy", [("lora", None), ("d2lora", 0.95)])
def test_diffusers_file_has_the_same_strength_with_or_without_its_header(variant, energy, header, adapters, tmp_path):
    """α/r (α = 8, r = 4 here) is folded into lora_B and smaller ranks are zero-padded: readers that ignore the
    lora_adapter_metadata header (older diffusers, ComfyUI) take scale 1 and one rank, which is then right."""
    path, reference = adapters(variant)
    report = export_adapter(path, "diffusers", tmp_path / "d.safetensors", energy=energy)
    if energy is not None:
        assert len({layer.rank for layer in report.layers}) > 1  # energy picks a rank per layer
    tensors = load_file(report.output)
    file = report.output
    if header == "header stripped":
        file = tmp_path / "stripped.safetensors"
        save_file(tensors, file)
    pipe = load_pipeline("tiny")
    pipe.load_lora_weights(str(file))
    errors = fused_errors(pipe, reference["deltas"])
    if report.exact:
        assert max(errors.values()) <= 1e-5
    else:
        assert all(errors[layer.name] <= layer.error + 1e-5 for layer in report.layers)
        assert report.max_error < 0.5
    rank = max(layer.rank for layer in report.layers)
    assert {t.shape[0] for k, t in tensors.items() if k.endswith("lora_A.weight")} == {rank}
    with safe_open(report.output, framework="pt") as handle:
        metadata = handle.metadata()
    meta = json.loads(metadata["lora_adapter_metadata"])
    assert metadata["base_model"] == "tiny"
    assert meta["unet.r"] == meta["unet.lora_alpha"] == rank and not meta["unet.rank_pattern"]


def test_rank_option_refactors_an_exact_variant(adapters, tmp_path):
    path, reference = adapters("lora")
    report = export_adapter(path, "diffusers", tmp_path / "r2.safetensors", rank=2)
    assert {layer.rank for layer in report.layers} == {2} and not report.exact
    pipe = load_pipeline("tiny")
    pipe.load_lora_weights(str(report.output))
    errors = fused_errors(pipe, reference["deltas"])
    assert all(errors[layer.name] <= layer.error + 1e-5 for layer in report.layers)


# -- kohya ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["lora", "singlora", "dora"])
def test_kohya_keys_load_through_diffusers_kohya_converter(variant, adapters, tmp_path):
    path, reference = adapters(variant)
    report = export_adapter(path, "kohya", tmp_path / "k.safetensors")
    tensors = load_file(report.output)
    assert all(k.startswith(("lora_unet_", "lora_te_text_model_encoder_layers_")) for k in tensors)
    assert "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight" in tensors  # a 1×1 conv: 4-D
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"].dim() == 4
    assert {k.rsplit(".", 1)[-1] for k in tensors if k.endswith("alpha")} == {"alpha"}
    pipe = load_pipeline("tiny")
    pipe.load_lora_weights(str(report.output))
    diff = max_diff(outputs(pipe), reference["outputs"])
    if variant == "dora":  # kohya has no DoRA: SVD, with the error reported
        assert not report.exact
        errors = fused_errors(pipe, reference["deltas"])
        assert all(errors[layer.name] <= layer.error + 1e-5 for layer in report.layers)
    else:
        assert report.exact and diff <= 1e-4


def test_kohya_file_with_per_layer_alphas_loads_at_full_strength_in_diffusers(tmp_path):
    """UNet to_q at α=8, to_k at α=2 (both rank 4): the file gets one alpha, the other layers' factors are
    rescaled, so diffusers' kohya converter (which applies one alpha per part) gives every layer its strength."""
    pipe = load_pipeline("tiny")
    attach(pipe.unet, AdapterConfig(targets=["to_q"], rank=4, alpha=8))
    attach(pipe.unet, AdapterConfig(targets=["to_k"], rank=4, alpha=2))
    model = sd_parts(pipe)
    train_like(model)
    save_adapter(model, tmp_path / "a.safetensors", metadata={"base_model": "tiny"})
    merge(model)
    reference = outputs(pipe)
    report = export_adapter(tmp_path / "a.safetensors", "kohya", tmp_path / "k.safetensors")
    fresh = load_pipeline("tiny")
    fresh.load_lora_weights(str(report.output))
    assert report.exact and max_diff(outputs(fresh), reference) <= 1e-4
    assert len({float(t) for k, t in load_file(report.output).items() if k.endswith(".alpha")}) == 1


def test_kohya_export_names_the_layers_sd_scripts_drops(adapters, tmp_path, capsys):
    path, _ = adapters("lora")  # attention and proj layers only: all inside sd-scripts' LoRA blocks
    export_adapter(path, "kohya", tmp_path / "attn.safetensors")
    assert "sd-scripts" not in capsys.readouterr().err
    pipe = load_pipeline("tiny")
    attach(pipe.unet, AdapterConfig(rank=2, targets=["conv_in", "conv_out", "time_embedding.linear_1", "to_q",
                                                     "resnets.0.conv1"]))
    save_adapter(sd_parts(pipe), tmp_path / "a.safetensors", metadata={"base_model": "tiny"})
    export_adapter(tmp_path / "a.safetensors", "kohya", tmp_path / "k.safetensors")
    err = capsys.readouterr().err
    dropped = err[err.index("):") + 2:].strip().split(", ")
    assert "warning: sd-scripts ignores 3 of" in err
    assert dropped == ["unet.conv_in", "unet.time_embedding.linear_1", "unet.conv_out"]
    assert "lora_unet_conv_in.lora_down.weight" in load_file(tmp_path / "k.safetensors")  # written all the same


# -- PEFT -----------------------------------------------------------------------------------------
def test_peft_text_encoder_folder_has_both_clip_layouts(adapters, tmp_path):
    """transformers 5 names CLIP text-encoder modules `encoder.…`, 4.x `text_model.encoder.…`: the folder holds
    the tensors under both names (PEFT loads those of the model's layout) and the flat names in the config."""
    path, _ = adapters("dora")
    report = export_adapter(path, "peft", tmp_path / "peft")
    folder = report.output / "text_encoder"
    tensors = load_file(folder / "adapter_model.safetensors")
    flat = {k for k in tensors if k.startswith("base_model.model.encoder.")}
    nested = {k for k in tensors if k.startswith("base_model.model.text_model.encoder.")}
    assert flat and len(flat) + len(nested) == len(tensors)
    assert nested == {k.replace("base_model.model.", "base_model.model.text_model.") for k in flat}
    assert all(torch.equal(tensors[k], tensors[k.replace(".model.", ".model.text_model.", 1)]) for k in flat)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["target_modules"] and all(t.startswith("encoder.layers.") for t in config["target_modules"])


def test_peft_export_of_sd_parts_loads_with_peft_model(adapters, tmp_path):
    from peft import PeftModel

    path, reference = adapters("dora")
    report = export_adapter(path, "peft", tmp_path / "peft")
    config = json.loads((report.output / "unet" / "adapter_config.json").read_text())
    assert config["use_dora"] and config["r"] == 4 and config["lora_alpha"] == 8
    with safe_open(report.output / "unet" / "adapter_model.safetensors", framework="pt") as handle:
        key = "base_model.model.down_blocks.0.attentions.0.proj_in.lora_magnitude_vector"
        assert tuple(handle.get_tensor(key).shape) == (1, 32, 1, 1)  # PEFT's conv magnitude shape
    pipe = load_pipeline("tiny")
    pipe.unet = PeftModel.from_pretrained(pipe.unet, report.output / "unet")
    pipe.text_encoder = PeftModel.from_pretrained(pipe.text_encoder, report.output / "text_encoder")
    assert max_diff(outputs(pipe), reference["outputs"]) <= 1e-4


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT classifier with a tokenizer, saved as a transformers folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghij"]) + "\n")
    BertTokenizer(str(vocab)).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=15, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=16, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(folder)
    return folder


def bert_logits(model) -> torch.Tensor:
    ids = torch.tensor([[2, 5, 6, 7, 3], [2, 9, 8, 3, 0]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=(ids > 0).long()).logits


@pytest.mark.parametrize("variant,energy", [("dora", None), ("d2lora", 0.9)])
def test_peft_export_of_a_text_model(variant, energy, tiny_bert, tmp_path):
    from peft import PeftModel
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(tiny_bert)
    attach(model, AdapterConfig(variant=variant, rank=4, alpha=8, targets="all-linear"))
    train_like(model)
    save_adapter(model, tmp_path / "a.safetensors", metadata={"base_model": str(tiny_bert)})
    merge(model)
    report = export_adapter(tmp_path / "a.safetensors", "peft", tmp_path / "peft", energy=energy)
    if energy is not None:
        assert len({layer.rank for layer in report.layers}) > 1
        assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["rank_pattern"]
    reference = bert_logits(model.eval())
    peft_model = PeftModel.from_pretrained(BertForSequenceClassification.from_pretrained(tiny_bert), tmp_path / "peft")
    diff = (bert_logits(peft_model.eval()) - reference).abs().max().item()
    assert diff <= 1e-4 if report.exact else diff > 0 and report.max_error < 0.5


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_peft_export_of_gpt2_conv1d_layers(variant, tmp_path):
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(
        tmp_path / "gpt2")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2")
    attach(model, AdapterConfig(variant=variant, rank=4, alpha=8, targets="all-linear"))  # c_attn etc.: Conv1D
    train_like(model)
    save_adapter(model, tmp_path / "a.safetensors", metadata={"base_model": str(tmp_path / "gpt2")})
    merge(model)
    ids = torch.tensor([[1, 5, 7, 3]])
    with torch.no_grad():
        reference = model.eval()(ids).logits
    report = export_adapter(tmp_path / "a.safetensors", "peft", tmp_path / "peft")
    assert report.exact and json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["fan_in_fan_out"]
    peft_model = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "gpt2"), tmp_path / "peft")
    with torch.no_grad():
        assert (peft_model.eval()(ids).logits - reference).abs().max().item() <= 1e-4


def test_text_classifier_exports_with_its_head_and_imports_back(tiny_bert, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from dreamlr.text.head import save_head
    from dreamlr.text.models import head_parameter_names

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    attach(model, AdapterConfig(variant="lora", rank=4, alpha=8, targets=["query", "value"]))
    train_like(model)
    head = head_parameter_names(model)
    with torch.no_grad():
        for name in head:
            model.get_parameter(name).add_(1.0)
    run = tmp_path / "run"
    save_adapter(model, run / "adapter.safetensors",
                 metadata={"base_model": str(tiny_bert), "task": "classification", "labels": ["neg", "pos"]})
    save_head(model, head, run / "head.safetensors")
    merge(model)
    reference = bert_logits(model.eval())

    report = export_adapter(run / "adapter.safetensors", "peft", tmp_path / "peft")
    assert report.head == head and json.loads((tmp_path / "peft" / "adapter_config.json").read_text())[
        "modules_to_save"] == ["classifier"]
    peft_model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(tiny_bert),
                                           tmp_path / "peft")
    assert (bert_logits(peft_model.eval()) - reference).abs().max().item() <= 1e-4

    export_adapter(run / "adapter.safetensors", "merged", tmp_path / "merged")
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert (bert_logits(merged.eval()) - reference).abs().max().item() <= 1e-5

    imported = import_adapter(tmp_path / "peft", tmp_path / "back" / "adapter.safetensors")
    assert same_tensors(imported, run / "adapter.safetensors")
    assert same_tensors(tmp_path / "back" / "head.safetensors", run / "head.safetensors")
    assert read_adapter_header(imported)["metadata"]["labels"] == ["LABEL_0", "LABEL_1"]


# -- merged ---------------------------------------------------------------------------------------
def test_merged_export_is_the_merged_model_in_the_base_dtype(tmp_path):
    fp16_base = tmp_path / "tiny16"
    load_pipeline("tiny", dtype=torch.float16).save_pretrained(fp16_base)
    pipe = load_pipeline(str(fp16_base), dtype=torch.float32)
    attach(pipe.unet, AdapterConfig(variant="dora", rank=4, alpha=8, targets="attn+proj"))
    train_like(pipe.unet)
    save_adapter(sd_parts(pipe), tmp_path / "a.safetensors", metadata={"base_model": str(fp16_base)})
    report = export_adapter(tmp_path / "a.safetensors", "merged", tmp_path / "merged")
    assert "float16" in report.merged_into and (tmp_path / "merged" / "model_index.json").is_file()
    exported = load_pipeline(str(tmp_path / "merged"), dtype=torch.float16).unet.state_dict()
    expected = load_pipeline(str(fp16_base), adapter=tmp_path / "a.safetensors", merge=True, dtype=torch.float16)
    detach(expected.unet, merge=True)
    for key, tensor in expected.unet.state_dict().items():
        assert exported[key].dtype == torch.float16 and torch.equal(exported[key], tensor), key


def test_merged_export_writes_the_text_encoder_in_the_text_model_layout(adapters, tmp_path):
    """transformers 4.x reads CLIPTextModel weights only as `text_model.…`; 5 reads those too."""
    from transformers import CLIPTextModel

    path, reference = adapters("lora")
    export_adapter(path, "merged", tmp_path / "merged")
    keys = load_file(tmp_path / "merged" / "text_encoder" / "model.safetensors").keys()
    assert keys and all(key.startswith("text_model.") for key in keys)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 100, (2, 8), generator=generator)  # as outputs() draws them
    with torch.no_grad():
        hidden = CLIPTextModel.from_pretrained(tmp_path / "merged" / "text_encoder")(ids)[0]
    assert (hidden - reference["outputs"][0]).abs().max().item() <= 1e-5
    assert max_diff(outputs(load_pipeline(str(tmp_path / "merged"))), reference["outputs"]) <= 1e-5


# -- import ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["diffusers", "peft", "kohya"])
def test_import_then_export_is_lossless_for_lora(fmt, adapters, tmp_path):
    path, _ = adapters("lora")
    first = export_adapter(path, fmt, tmp_path / ("first.safetensors" if fmt != "peft" else "first"))
    imported = import_adapter(first.output, tmp_path / "imported.safetensors")
    (config, names), = read_adapter_header(imported)["groups"]
    assert config.variant == "lora" and config.rank == 4 and len(names) == len(first.layers)
    if fmt == "diffusers":  # a scale-1 file (α/r folded into lora_B): alpha = rank, the same update
        assert config.alpha == 4.0
        original, back = sd_parts(load_pipeline("tiny")), sd_parts(load_pipeline("tiny"))
        load_adapter(original, path)
        load_adapter(back, imported)
        back_layers = dict(adapter_layers(back))
        for name, layer in adapter_layers(original):
            assert torch.allclose(layer.merged_weight(), back_layers[name].merged_weight(), rtol=0, atol=1e-6), name
    else:
        assert config.alpha == 8.0 and same_tensors(imported, path)
    again = export_adapter(imported, fmt, tmp_path / ("again.safetensors" if fmt != "peft" else "again"))
    files = ["unet/adapter_model.safetensors", "text_encoder/adapter_model.safetensors"] if fmt == "peft" else [""]
    assert all(same_tensors(first.output / name, again.output / name) for name in files)


def test_import_keeps_dora_magnitudes(adapters, tmp_path):
    path, reference = adapters("dora")
    exported = export_adapter(path, "diffusers", tmp_path / "d.safetensors")
    imported = import_adapter(exported.output, tmp_path / "dora.safetensors", model="tiny")
    assert {config.variant for config, _ in read_adapter_header(imported)["groups"]} == {"dora"}
    pipe = load_pipeline("tiny", adapter=imported, merge=True)
    assert max_diff(outputs(pipe), reference["outputs"]) <= 1e-4


def test_import_of_a_foreign_kohya_file_with_its_own_alphas(tmp_path):
    generator = torch.Generator().manual_seed(0)
    name = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k"  # cross-attention: in = 32
    tensors = {f"{name}.lora_down.weight": torch.randn(2, 32, generator=generator),
               f"{name}.lora_up.weight": torch.randn(64, 2, generator=generator),
               f"{name}.alpha": torch.tensor(1.0)}
    save_file(tensors, tmp_path / "foreign.safetensors")
    imported = import_adapter(tmp_path / "foreign.safetensors", tmp_path / "a.safetensors", model="tiny")
    (config, names), = read_adapter_header(imported)["groups"]
    assert names == ["unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k"] and config.alpha == 1.0
    pipe = load_pipeline("tiny")
    load_adapter(sd_parts(pipe), imported)
    layer = dict(adapter_layers(sd_parts(pipe)))[names[0]]
    expected = 0.5 * tensors[f"{name}.lora_up.weight"] @ tensors[f"{name}.lora_down.weight"]
    assert torch.allclose(layer.merged_weight() - layer.w0, expected, atol=1e-6)


# -- the command line and bad input ---------------------------------------------------------------
def test_export_command_prints_the_error_report(adapters, tmp_path, capsys):
    path, _ = adapters("dual_lora")
    code = main(["export", "--adapter", str(path), "--format", "kohya", "--output", str(tmp_path / "k.safetensors"),
                 "--energy", "0.9"])
    out = capsys.readouterr().out
    assert code == 0 and "truncated SVD" in out and "largest" in out and "mean" in out
    code = main(["import", "--lora", str(tmp_path / "k.safetensors"), "--output", str(tmp_path / "i.safetensors")])
    assert code == 0 and "imported" in capsys.readouterr().out


def other_base_adapter(path: Path) -> Path:
    """An adapter on a UNet with tiny's module names but other widths: trained on another base model."""
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(16, 32), down_block_types=("CrossAttnDownBlock2D",) * 2,
                                up_block_types=("CrossAttnUpBlock2D",) * 2, cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=8)
    attach(unet, AdapterConfig(rank=2, targets="attn"))
    save_adapter(torch.nn.ModuleDict({"unet": unet}), path, metadata={"base_model": "tiny"})
    return path


@pytest.mark.parametrize("case", ["unknown format", "other base model", "missing file", "not an adapter",
                                  "rank and energy", "merged with rank", "text model as kohya",
                                  "import garbage", "import for another model", "occupied folder"])
def test_bad_input_exits_2_with_one_line(case, adapters, tmp_path, capsys):
    path, _ = adapters("lora")
    out = tmp_path / "out"
    garbage = tmp_path / "garbage.safetensors"
    save_file({"weight": torch.zeros(2)}, garbage)
    text_adapter = tmp_path / "text.safetensors"
    args = {
        "unknown format": ["export", "--adapter", str(path), "--format", "onnx", "--output", str(out)],
        "other base model": ["export", "--adapter", str(other_base_adapter(tmp_path / "o.safetensors")),
                             "--format", "diffusers", "--output", str(out)],
        "missing file": ["export", "--adapter", str(tmp_path / "nope.safetensors"), "--format", "peft",
                         "--output", str(out)],
        "not an adapter": ["export", "--adapter", str(garbage), "--format", "peft", "--output", str(out)],
        "rank and energy": ["export", "--adapter", str(path), "--format", "peft", "--output", str(out),
                            "--rank", "2", "--energy", "0.9"],
        "merged with rank": ["export", "--adapter", str(path), "--format", "merged", "--output", str(out),
                             "--rank", "2"],
        "text model as kohya": ["export", "--adapter", str(text_adapter), "--format", "kohya",
                                "--output", str(out) + ".safetensors"],
        "import garbage": ["import", "--lora", str(garbage), "--output", str(out)],
        "import for another model": ["import", "--lora", str(tmp_path / "kohya.safetensors"), "--output", str(out),
                                     "--model", "tiny"],
        "occupied folder": ["export", "--adapter", str(path), "--format", "peft", "--output", str(tmp_path)],
    }[case]
    if case == "text model as kohya":
        toy = torch.nn.Sequential(torch.nn.Linear(4, 4))
        attach(toy, AdapterConfig(rank=2, targets=["0"]))
        save_adapter(toy, text_adapter, metadata={"base_model": "some/text-model"})
    if case == "import for another model":
        save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(2, 48, 1, 1),
                   "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(48, 2, 1, 1)},
                  tmp_path / "kohya.safetensors")
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.count("\n") == 0 and "Traceback" not in err and err.startswith("dreamlr ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, nothing half-written


@pytest.mark.parametrize("fmt,name", [("kohya", "k.safetensors"), ("diffusers", "d.safetensors"), ("peft", "peft"),
                                      ("merged", "merged")])
def test_exports_are_byte_reproducible_with_the_usual_file_mode(fmt, name, adapters, tmp_path):
    """Two exports of one adapter give identical bytes (the safetensors header in a fixed order), and every
    .safetensors file gets the mode the umask gives (not safetensors' private 0600)."""
    import os

    path, _ = adapters("lora")
    export_adapter(path, fmt, tmp_path / "a" / name)
    export_adapter(path, fmt, tmp_path / "b" / name)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.safetensors"))
    assert files
    umask = os.umask(0)
    os.umask(umask)
    for relative in files:
        first, second = tmp_path / "a" / relative, tmp_path / "b" / relative
        assert first.read_bytes() == second.read_bytes(), relative
        assert first.stat().st_mode & 0o777 == 0o666 & ~umask, relative
