"""The `optimizer` key (issue 16 item 4): Adafactor and Prodigy train and resume exactly in both trainers'
loop; a missing optional package or an unknown name is one line before any work."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dreamlr import optimizers
from dreamlr.adapters import AdapterConfig, attach, parameter_groups
from dreamlr.cli import main
from dreamlr.diffusion import train as train_module
from dreamlr.errors import UserError
from dreamlr.optimizers import build_optimizer

from test_train import DEMO, run_config, train_interrupted

AVAILABLE = [n for n in optimizers.OPTIMIZERS
             if n == "adamw" or importlib.util.find_spec(optimizers._PACKAGES[n][0]) is not None]


@pytest.mark.parametrize("name", AVAILABLE)
def test_each_optimizer_keeps_group_rates_and_decay_and_lowers_a_loss(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    attach(model, AdapterConfig(variant="dora", rank=2, targets=["0", "1"]))
    groups = parameter_groups(model, 1e-2 if name != "prodigy" else 1.0)
    optimizer = build_optimizer(groups, name=name, weight_decay=0.1)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [g.get("weight_decay", 0.1) for g in groups]
    x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(1)), torch.randn(64, 2)
    first = None
    for _ in range(30):
        optimizer.zero_grad()
        loss = (model(x) - y).square().mean()
        first = first if first is not None else loss.item()
        loss.backward()
        optimizer.step()
    assert loss.item() < first


@pytest.mark.parametrize("name", [n for n in AVAILABLE if n in ("adafactor", "prodigy")])
def test_a_dreambooth_run_resumes_exactly_with_the_optimizer(tmp_path, monkeypatch, name):
    settings = dict(optimizer=name, max_train_steps=4, checkpointing_steps=2, num_validation_images=0,
                    learning_rate=1.0 if name == "prodigy" else 1e-2)
    whole = load_file(train_module.train(run_config(tmp_path / "whole", **settings)) / "adapter.safetensors")
    train_interrupted(run_config(tmp_path / "split", **settings), 3, monkeypatch)
    split = train_module.train(run_config(tmp_path / "split", resume_from_checkpoint="latest", **settings))
    resumed = load_file(split / "adapter.safetensors")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_unknown_or_missing_optimizers_are_one_line(tmp_path, monkeypatch, capsys):
    with pytest.raises(UserError, match="unknown optimizer 'sgd'; choose one of adamw, adamw8bit, adafactor, prodigy"):
        run_config(tmp_path, optimizer="sgd")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    code = main(["train", "--instance-dir", str(DEMO), "--instance-prompt", "a sks mug", "--model", "tiny",
                 "--output-dir", str(tmp_path / "run"), "--set", "optimizer=adamw8bit"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "optimizer adamw8bit needs the bitsandbytes package: pip install 'dreamlr[bnb]'" in err
    code = main(["text", "train", "--train", str(tmp_path / "x.tsv"), "--set", "optimizer=adamw8bit",
                 "--output-dir", str(tmp_path / "text")])
    assert code == 2 and "needs the bitsandbytes package" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "text").exists()
