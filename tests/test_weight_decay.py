"""AdamW weight decay reaches the adapter tensors in both trainers (DoRA's magnitude excepted)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from test_text_train import causal_config, classification_config
from test_text_models import tiny_model
from test_train import run_config
from torch import nn

from dreamlr.adapters import AdapterConfig, attach
from dreamlr.diffusion import train as diffusion_train
from dreamlr.text.train import train as text_train
from dreamlr.optimizers import build_optimizer
from dreamlr.training import adapter_groups


def test_optimizer_groups_carry_the_configured_decay_except_doras_magnitude():
    unet, text = nn.Sequential(nn.Linear(4, 4)), nn.Sequential(nn.Linear(4, 4))
    attach(unet, AdapterConfig(variant="dora", rank=2, targets=["0"]))
    attach(text, AdapterConfig(variant="loraplus", rank=2, targets=["0"]))
    optimizer = build_optimizer(adapter_groups({"unet": (unet, 1e-3), "text": (text, 1e-4)}), weight_decay=0.3)
    decay = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    layer, plus = unet[0], text[0]
    assert decay[id(layer.magnitude)] == 0.0
    assert all(decay[id(p)] == 0.3 for p in (layer.lora_A, layer.lora_B, plus.lora_A, plus.lora_B))
    lr = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    assert lr[id(plus.lora_B)] == pytest.approx(16 * lr[id(plus.lora_A)]) == pytest.approx(1.6e-3)


def one_step_adapters(train, config) -> dict[str, torch.Tensor]:
    return load_file(train(config) / "adapter.safetensors")


def assert_decay_reached_the_adapter(plain: dict, decayed: dict) -> None:
    """After one AdamW step from the same start, only decayed tensors that were non-zero can differ."""
    assert plain.keys() == decayed.keys()
    changed = {k for k in plain if not torch.equal(plain[k], decayed[k])}
    a_keys = {k for k in plain if k.endswith("lora_A")}
    assert a_keys and changed == a_keys  # B starts at 0 and DoRA's magnitude is not decayed


def test_image_trainer_applies_adam_weight_decay_to_the_adapter(tmp_path):
    settings = dict(max_train_steps=1, adapter={"variant": "dora", "rank": 2, "targets": "attn"})
    plain = one_step_adapters(diffusion_train.train, run_config(tmp_path / "a", adam_weight_decay=0.0, **settings))
    decayed = one_step_adapters(diffusion_train.train, run_config(tmp_path / "b", adam_weight_decay=0.5, **settings))
    assert_decay_reached_the_adapter(plain, decayed)
    # decoupled decay: A₁(0) − A₁(wd) = lr·wd·A₀ — a shrink of the initial A by lr·wd = 0.5 %
    key = next(k for k in plain if k.endswith("lora_A"))
    shrink = (plain[key] - decayed[key]).norm() / plain[key].norm()
    assert 0.003 < shrink < 0.008


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_text_trainer_applies_weight_decay_to_the_adapter(task, tmp_path, tmp_path_factory):
    make, kind = (classification_config, "bert") if task == "classification" else (causal_config, "gpt2")
    model = tiny_model(kind, tmp_path_factory)
    plain = one_step_adapters(text_train, make(tmp_path / "a", model, weight_decay=0.0, max_train_steps=1))
    decayed = one_step_adapters(text_train, make(tmp_path / "b", model, weight_decay=0.5, max_train_steps=1))
    assert_decay_reached_the_adapter(plain, decayed)
