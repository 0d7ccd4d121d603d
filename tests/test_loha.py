"""The `loha` variant (LyCORIS' LoHa): its math against a float64 reference, PEFT's LoHa, kohya files that
ComfyUI's formula and LyCORIS itself read, LyCORIS files imported back, and a `dreamlr compare` run.

The generic checks (identity at attach, merge / unmerge, save / load, gradients, parameter counts, dtype
casts, transformers' Conv1D) run for every registered variant, loha included, in test_adapters.py and
test_adapter_numerics.py."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from dreamlr.adapters import (
    AdapterConfig,
    adapter_layers,
    attach,
    load_adapter,
    merge,
    parameter_groups,
    read_adapter_header,
    save_adapter,
    trainable_parameters,
)
from dreamlr.cli import main
from dreamlr.diffusion import load_pipeline
from dreamlr.diffusion.models import adapter_modules
from dreamlr.export import export_adapter, import_adapter
from tests.test_adapter_numerics import GEOMETRIES
from tests.test_export import outputs

TENSORS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")


def make(geometry: str) -> tuple[nn.Sequential, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(GEOMETRIES[geometry]())
    shape = (3, 5, 12) if geometry == "linear" else (2, 6, 9, 9)
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(1))


def train_like(model: nn.Module, seed: int = 2) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))


def reference_delta(layer, dtype=torch.float64) -> torch.Tensor:
    """ΔW = (α/r)·(W1a·W1b) ⊙ (W2a·W2b), written out independently, from the layer's tensors."""
    w1a, w1b, w2a, w2b = (getattr(layer, name).to(dtype) for name in TENSORS)
    return layer.config.alpha / layer.config.rank * (w1a @ w1b) * (w2a @ w2b)


def test_lycoris_init_and_shapes():
    model = nn.Sequential(nn.Conv2d(64, 96, 3))
    attach(model, AdapterConfig(variant="loha", rank=8, targets=["0"]))
    layer = model[0]
    assert [tuple(getattr(layer, n).shape) for n in TENSORS] == [(96, 8), (8, 576), (96, 8), (8, 576)]
    assert torch.equal(layer.hada_w2_a, torch.zeros(96, 8))  # ΔW = 0 at attach
    stds = [float(getattr(layer, name).detach().std()) for name in ("hada_w1_a", "hada_w1_b", "hada_w2_b")]
    assert stds == pytest.approx([0.1, 1.0, 1.0], rel=0.1)


@pytest.mark.parametrize("fused", [True, False], ids=["W0+dW in one matmul", "two paths"])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_outputs_and_gradients_match_a_float64_reference(geometry, fused, monkeypatch):
    model, x = make(geometry)
    attach(model, AdapterConfig(variant="loha", rank=4, alpha=8, targets=["0"]))
    train_like(model)
    layer = model[0]
    assert layer._can_fuse(x)  # fp32, no dropout, frozen base: one matmul unless told otherwise
    monkeypatch.setattr(layer, "_can_fuse", lambda _: fused)
    x.requires_grad_()
    out = model(x)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    (out * upstream).sum().backward()

    factors = {n: getattr(layer, n).detach().double().requires_grad_() for n in TENSORS}
    x64 = x.detach().double().requires_grad_()
    delta = 2.0 * (factors["hada_w1_a"] @ factors["hada_w1_b"]) * (factors["hada_w2_a"] @ factors["hada_w2_b"])
    expected = layer.apply_dense(x64, layer.w0.double() + delta, layer.bias.double())
    (expected * upstream.double()).sum().backward()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    for name in TENSORS:
        torch.testing.assert_close(getattr(layer, name).grad.double(), factors[name].grad, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer.merged_weight().double(), layer.w0.double() + reference_delta(layer),
                                   rtol=1e-6, atol=1e-6)
        live = model(x)
        merge(model)
        torch.testing.assert_close(model(x), live, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_trains_under_bf16_autocast_with_fp32_tensors(geometry):
    model, x = make(geometry)
    attach(model, AdapterConfig(variant="loha", rank=4, alpha=8, targets=["0"]))
    train_like(model)
    model(x).pow(2).mean().backward()
    exact = {name: p.grad.clone() for name, p in trainable_parameters(model).items()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().pow(2).mean()
    loss.backward()
    for name, param in trainable_parameters(model).items():
        assert param.dtype == param.grad.dtype == torch.float32, name
        relative = (param.grad - exact[name]).norm() / exact[name].norm()
        assert relative < 0.05, (name, float(relative))


def test_weight_decay_and_learning_rate_groups_as_other_variants():
    model, _ = make("linear")
    attach(model, AdapterConfig(variant="loha", rank=2, targets=["0"]))
    (group,) = parameter_groups(model, lr=1e-3, weight_decay=0.3)
    assert group["lr"] == 1e-3 and group["weight_decay"] == 0.3
    assert group["params"] == [getattr(model[0], name) for name in TENSORS]


# -- PEFT's LoHa -----------------------------------------------------------------------------------
class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(12, 20)
        self.down = nn.Linear(20, 12)
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.down(torch.nn.functional.gelu(self.up(x))), self.conv(image)


def test_matches_peft_loha_given_the_same_tensors():
    from peft import LoHaConfig, get_peft_model

    targets = ["up", "down", "conv"]
    torch.manual_seed(0)
    reference = get_peft_model(Toy(), LoHaConfig(r=4, alpha=8, target_modules=targets))
    torch.manual_seed(0)
    ours = Toy()
    attach(ours, AdapterConfig(variant="loha", rank=4, alpha=8, targets=targets))
    layers = dict(adapter_layers(ours))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name in targets:
            theirs = reference.base_model.model.get_submodule(name)
            for tensor_name in TENSORS:
                mine = getattr(layers[name], tensor_name)
                values = torch.randn(mine.shape, generator=generator)
                getattr(theirs, tensor_name)["default"].copy_(values)
                mine.copy_(values)
    generator = torch.Generator().manual_seed(1)
    x, image = torch.randn(4, 12, generator=generator), torch.randn(2, 3, 9, 9, generator=generator)
    ref_out, our_out = reference(x, image), ours(x, image)
    for ref, mine in zip(ref_out, our_out):
        torch.testing.assert_close(mine, ref, rtol=1e-5, atol=1e-5)
    sum(o.pow(2).sum() for o in ref_out).backward()
    sum(o.pow(2).sum() for o in our_out).backward()
    for name in targets:
        theirs = reference.base_model.model.get_submodule(name)
        for tensor_name in TENSORS:
            torch.testing.assert_close(getattr(layers[name], tensor_name).grad,
                                       getattr(theirs, tensor_name)["default"].grad, rtol=1e-4, atol=1e-4)
    merged = reference.merge_and_unload()
    for name in targets:
        peft_weight = merged.get_submodule(name).weight.detach()
        torch.testing.assert_close(layers[name].merged_weight().detach().reshape(peft_weight.shape), peft_weight,
                                   rtol=1e-5, atol=1e-5)


# -- kohya files (LyCORIS' LoHa keys) --------------------------------------------------------------
@pytest.fixture(scope="module")
def loha_adapter(tmp_path_factory):
    """A train-like rank-4, α = 8 loha adapter on tiny (UNet attention, 1×1 proj convs and 3×3 resnet convs; CLIP
    attention), saved; with its per-layer W' and its merged outputs."""
    path = tmp_path_factory.mktemp("loha") / "loha.safetensors"
    pipe = load_pipeline("tiny")
    attach(pipe.unet, AdapterConfig(variant="loha", rank=4, alpha=8,
                                    targets=["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "conv1"]))
    attach(pipe.text_encoder, AdapterConfig(variant="loha", rank=4, alpha=8, targets="clip-attn"))
    model = adapter_modules(pipe)
    train_like(model)
    save_adapter(model, path, metadata={"base_model": "tiny"})
    with torch.no_grad():
        weights = {name: layer.merged_weight() for name, layer in adapter_layers(model)}
    merge(model)
    return path, weights, outputs(pipe)


def comfy_apply(pipe, tensors: dict[str, torch.Tensor]) -> set[str]:
    """Apply a kohya LoHa file to a fresh pipeline as ComfyUI does, independently of dreamlr's reader: modules by
    `lora_unet_<diffusers path, . as _>` / `lora_te_text_model_<path>` (comfy/lora.py, model_lora_keys_unet and
    model_lora_keys_clip), and W += (alpha / w1b.shape[0])·((w1a @ w1b) * (w2a @ w2b)).reshape(W.shape)
    (comfy/weight_adapter/loha.py, LoHaAdapter.calculate_weight). Returns the modules changed."""
    modules = {f"lora_unet_{n}".replace(".", "_"): ("unet." + n, m) for n, m in pipe.unet.named_modules()}
    modules.update({f"lora_te_text_model_{n}".replace(".", "_"): ("text_encoder." + n, m)
                    for n, m in pipe.text_encoder.named_modules()})
    changed = set()
    for key in {k.rsplit(".", 1)[0] for k in tensors}:
        name, module = modules[key]
        w1a, w1b, w2a, w2b = (tensors[f"{key}.{n}"].double() for n in TENSORS)
        scale = float(tensors[f"{key}.alpha"]) / w1b.shape[0]
        with torch.no_grad():
            weight = module.weight
            weight.copy_(weight.double() + scale * ((w1a @ w1b) * (w2a @ w2b)).reshape(weight.shape))
        changed.add(name)
    return changed


def test_kohya_export_writes_lycoris_loha_keys_that_comfyuis_formula_reproduces(loha_adapter, tmp_path):
    path, weights, reference = loha_adapter
    report = export_adapter(path, "kohya", tmp_path / "k.safetensors")
    assert report.exact and {layer.rank for layer in report.layers} == {4}
    tensors = load_file(report.output)
    key = "lora_unet_down_blocks_0_resnets_0_conv1"  # a 3×3 conv: w1b and w2b are (r, in·9), as LyCORIS stores them
    assert {k for k in tensors if k.startswith(key + ".")} == {f"{key}.{n}" for n in (*TENSORS, "alpha")}
    assert tensors[f"{key}.hada_w1_b"].shape == (4, 32 * 9) and float(tensors[f"{key}.alpha"]) == 8.0
    assert {k.rsplit(".", 1)[1] for k in tensors} == {*TENSORS, "alpha"}
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.hada_w1_a" in tensors
    pipe = load_pipeline("tiny")
    assert comfy_apply(pipe, tensors) == set(weights)
    parts = dict(adapter_modules(pipe).named_modules())
    for name, weight in weights.items():
        torch.testing.assert_close(parts[name].weight.detach().reshape(weight.shape), weight, rtol=0, atol=1e-6)
    assert max((a - b).abs().max().item() for a, b in zip(outputs(pipe), reference)) <= 1e-4


@pytest.fixture
def lycoris_kohya(monkeypatch):
    """lycoris.kohya, with its network class's target lists (class state, which a preset overwrites) restored after
    the test, and meanwhile set to tiny's attention and resnet blocks (its `full` default names a layer twice)."""
    module = pytest.importorskip("lycoris.kohya")
    network = module.LycorisNetworkKohya
    monkeypatch.setattr(network, "ENABLE_CONV", True)
    monkeypatch.setattr(network, "UNET_TARGET_REPLACE_MODULE", ["Transformer2DModel", "ResnetBlock2D"])
    monkeypatch.setattr(network, "UNET_TARGET_REPLACE_NAME", [])
    monkeypatch.setattr(network, "TEXT_ENCODER_TARGET_REPLACE_MODULE", network.TEXT_ENCODER_TARGET_REPLACE_MODULE)
    monkeypatch.setattr(network, "TEXT_ENCODER_TARGET_REPLACE_NAME", network.TEXT_ENCODER_TARGET_REPLACE_NAME)
    return module


def test_lycoris_loads_the_kohya_export(lycoris_kohya, loha_adapter, tmp_path):
    """LyCORIS' own loader (lycoris.kohya.create_network_from_weights) applies the exported file as dreamlr does."""
    path, _, reference = loha_adapter
    report = export_adapter(path, "kohya", tmp_path / "k.safetensors")
    pipe = load_pipeline("tiny")
    text_encoder = nn.ModuleDict({"text_model": pipe.text_encoder})  # transformers 5 drops CLIP's text_model level
    network, _ = lycoris_kohya.create_network_from_weights(1.0, str(report.output), None, text_encoder, pipe.unet)
    assert len(network.unet_loras) + len(network.text_encoder_loras) == len(report.layers)
    network.apply_to(text_encoder, pipe.unet, apply_text_encoder=True, apply_unet=True)
    assert max((a - b).abs().max().item() for a, b in zip(outputs(pipe), reference)) <= 1e-4


def test_kohya_round_trip_is_bit_identical(loha_adapter, tmp_path):
    path, _, _ = loha_adapter
    report = export_adapter(path, "kohya", tmp_path / "k.safetensors")
    imported = import_adapter(report.output, tmp_path / "back.safetensors")
    (config, names), = read_adapter_header(imported)["groups"]
    assert (config.variant, config.rank, config.alpha, len(names)) == ("loha", 4, 8.0, len(report.layers))
    original, back = load_file(path), load_file(imported)
    assert original.keys() == back.keys() and all(torch.equal(original[k], back[k]) for k in original)


@pytest.mark.parametrize("fmt", ["diffusers", "peft"])
def test_diffusers_and_peft_exports_are_truncated_svds(fmt, loha_adapter, tmp_path):
    path, _, _ = loha_adapter
    report = export_adapter(path, fmt, tmp_path / ("d.safetensors" if fmt == "diffusers" else "peft"))
    assert not report.exact and report.max_error <= 0.1 + 1e-6  # the default energy 0.99
    assert all(layer.rank >= 8 for layer in report.layers)  # a LoRA with loha's parameter count: rank 2r


def test_merged_export(loha_adapter, tmp_path):
    path, _, reference = loha_adapter
    export_adapter(path, "merged", tmp_path / "merged")
    merged = load_pipeline(str(tmp_path / "merged"))
    assert not list(adapter_layers(adapter_modules(merged)))
    assert max((a - b).abs().max().item() for a, b in zip(outputs(merged), reference)) <= 1e-5


def test_import_of_a_lycoris_file_with_tucker_convs(lycoris_kohya, tmp_path):
    """A LoHa file written by LyCORIS itself (kohya network, Tucker cores on the 3×3 convs) imports as a loha
    adapter whose UNet output is LyCORIS' own."""
    preset = tmp_path / "preset.toml"
    preset.write_text('enable_conv = true\nunet_target_module = ["Transformer2DModel", "ResnetBlock2D"]\n'
                      "unet_target_name = []\ntext_encoder_target_module = []\ntext_encoder_target_name = []\n")
    pipe = load_pipeline("tiny")
    torch.manual_seed(0)
    network = lycoris_kohya.create_network(1.0, 4, 2, None, [], pipe.unet, algo="loha", use_tucker=True,
                                           preset=str(preset))
    network.apply_to([], pipe.unet, apply_text_encoder=False, apply_unet=True)
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for param in network.parameters():
            param.add_(0.2 * torch.randn(param.shape, generator=generator))
    network.save_weights(str(tmp_path / "lycoris.safetensors"), torch.float32, {})
    assert any(k.endswith(".hada_t1") for k in load_file(tmp_path / "lycoris.safetensors"))
    reference = outputs(pipe)

    adapter = import_adapter(tmp_path / "lycoris.safetensors", tmp_path / "a.safetensors", model="tiny")
    (config, names), = read_adapter_header(adapter)["groups"]
    assert (config.variant, config.rank, config.alpha) == ("loha", 4, 2.0) and len(names) == len(network.unet_loras)
    ours = load_pipeline("tiny")
    load_adapter(nn.ModuleDict({"unet": ours.unet}), adapter)
    assert (reference[1] - outputs(ours)[1]).abs().max() <= 1e-4


def test_tucker_core_is_folded_exactly(tmp_path):
    """hada_t (r, r, 3, 3) with w_a (r, out), w_b (r, in): W = einsum('ijkl,jr,ip->prkl') as LyCORIS and ComfyUI
    rebuild it; the imported plain form gives the same ΔW."""
    generator = torch.Generator().manual_seed(0)
    name = "lora_unet_down_blocks_0_resnets_0_conv1"  # 32 -> 32, 3×3
    parts = {f"hada_w{i}_{ab}": torch.randn(2, 32, generator=generator) for i in (1, 2) for ab in "ab"}
    parts.update({f"hada_t{i}": torch.randn(2, 2, 3, 3, generator=generator) for i in (1, 2)})
    save_file({f"{name}.{k}": v for k, v in parts.items()} | {f"{name}.alpha": torch.tensor(1.0)},
              tmp_path / "t.safetensors")
    adapter = import_adapter(tmp_path / "t.safetensors", tmp_path / "a.safetensors", model="tiny")
    pipe = load_pipeline("tiny")
    load_adapter(nn.ModuleDict({"unet": pipe.unet}), adapter)
    layer = pipe.unet.get_submodule("down_blocks.0.resnets.0.conv1")
    rebuild = [torch.einsum("ijkl,jr,ip->prkl", parts[f"hada_t{i}"], parts[f"hada_w{i}_b"], parts[f"hada_w{i}_a"])
               for i in (1, 2)]
    expected = 0.5 * (rebuild[0] * rebuild[1]).reshape(32, -1)
    torch.testing.assert_close(layer.merged_weight().detach() - layer.w0, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tensors,message", [
    ({"hada_w1_a": (32, 2), "hada_w1_b": (2, 32), "hada_w2_a": (32, 2)}, "a LoHa layer has"),
    ({"hada_w1_a": (32, 2), "hada_w1_b": (2, 32), "hada_w2_a": (32, 3), "hada_w2_b": (3, 32)}, "do not fit each other"),
    ({"hada_w1_a": (48, 2), "hada_w1_b": (2, 48), "hada_w2_a": (48, 2), "hada_w2_b": (2, 48)}, "needs (32, 2)"),
    ({"hada_w1_a": (32, 2), "hada_w1_b": (2, 32), "hada_w2_a": (32, 2), "hada_w2_b": (2, 32),
      "dora_scale": (32, 1)}, "dora_scale"),
])
def test_bad_loha_files_are_one_line(tensors, message, tmp_path, capsys):
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{name}.{k}": torch.zeros(shape) for k, shape in tensors.items()}, tmp_path / "bad.safetensors")
    code = main(["import", "--lora", str(tmp_path / "bad.safetensors"), "--output", str(tmp_path / "a.safetensors"),
                 "--model", "tiny"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and message in err, err
    assert not (tmp_path / "a.safetensors").exists()


def test_compare_runs_loha_on_tiny(tmp_path, capsys):
    from test_compare import compare_args, prompt_file

    out = tmp_path / "out"
    assert main(compare_args(out, prompt_file(tmp_path), "lora,loha", "--match", "params")) == 0
    record = json.loads((out / "results" / "loha.json").read_text())
    assert record["status"] == "done" and record["variant"] == "loha"
    assert record["rank"] == 2 and record["matched_to"] == "lora"  # 2r(in + out) at r = 2: lora's count at rank 4
    assert record["trainable_parameters"] == json.loads((out / "results" / "lora.json").read_text())[
        "trainable_parameters"]
    assert "| loha |" in (out / "report.md").read_text()
