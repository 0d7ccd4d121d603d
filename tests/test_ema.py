"""The adapter EMA (issue 17 item 5): diffusers' EMAModel as the independent reference, exact resume, and the
EMA file a run writes."""

from __future__ import annotations

import pytest
import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file
from torch import nn

from dreamlr.adapters import AdapterConfig, attach
from dreamlr.adapters.ema import AdapterEMA
from dreamlr.diffusion import train as train_module

from test_train import run_config, train_interrupted


def _adapted(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 4))
    attach(model, AdapterConfig(variant="dora", rank=2, targets=["0", "1"]))
    return model


def test_ema_matches_diffusers_ema_model_step_by_step():
    model = _adapted()
    params = [p for p in model.parameters() if p.requires_grad]
    ours, theirs = AdapterEMA(model, 0.95), EMAModel(params, decay=0.95)
    optimizer = torch.optim.SGD(params, lr=0.1)
    for step in range(30):
        optimizer.zero_grad()
        model(torch.randn(4, 8, generator=torch.Generator().manual_seed(step))).square().sum().backward()
        optimizer.step()
        ours.update()
        theirs.step(params)
        for mine, reference in zip(ours.shadow.values(), theirs.shadow_params):
            torch.testing.assert_close(mine, reference, rtol=0, atol=1e-6)
    assert ours.current_decay() == pytest.approx(min(0.95, 31 / 40))  # the warm-up is still ramping at t = 30


def test_applied_swaps_the_averages_in_and_back():
    model = _adapted()
    ema = AdapterEMA(model, 0.9)
    live = {n: p.detach().clone() for n, p in ema.params.items()}
    for shadow in ema.shadow.values():
        shadow.add_(1.0)
    with ema.applied():
        assert all(torch.equal(p, live[n] + 1) for n, p in ema.params.items())
    assert all(torch.equal(p, live[n]) for n, p in ema.params.items())
    state = ema.state_dict()
    other = AdapterEMA(_adapted(1), 0.9)
    other.load_state_dict(state)
    assert other.updates == 0 and all(torch.equal(other.shadow[n], ema.shadow[n]) for n in ema.shadow)
    with pytest.raises(ValueError, match="does not match"):
        AdapterEMA(nn.ModuleDict({"x": _adapted()}), 0.9).load_state_dict(state)


def test_a_run_with_ema_writes_both_adapters_and_resumes_exactly(tmp_path, monkeypatch):
    settings = dict(max_train_steps=6, checkpointing_steps=2, ema_decay=0.8, num_validation_images=0)
    whole_dir = train_module.train(run_config(tmp_path / "whole", **settings))
    raw, ema = load_file(whole_dir / "adapter.safetensors"), load_file(whole_dir / "adapter_ema.safetensors")
    assert raw.keys() == ema.keys() and any(not torch.equal(raw[k], ema[k]) for k in raw)
    assert "adapter_ema.safetensors" in (whole_dir / "README.md").read_text()

    train_interrupted(run_config(tmp_path / "split", **settings), 4, monkeypatch)  # dies in step 5
    split_dir = train_module.train(run_config(tmp_path / "split", resume_from_checkpoint="latest", **settings))
    for name in ("adapter.safetensors", "adapter_ema.safetensors"):
        whole, resumed = load_file(whole_dir / name), load_file(split_dir / name)
        assert all(torch.equal(whole[k], resumed[k]) for k in whole), name
