"""One loop for both trainers: what `dreamlr.training.loop` does reaches the image and the text trainer alike."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from dreamlr.diffusion import train as diffusion_train
from dreamlr.text.config import TextTrainConfig
from dreamlr.text.train import train as text_train
from dreamlr.training.loop import TrainingLoop
from tests.test_text_models import sentiment_rows, tiny_model, write_tsv
from tests.test_train import run_config


def text_config(tmp_path, model, **overrides) -> TextTrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(24))
    options = {"model": model, "train_file": str(train_file), "output_dir": str(tmp_path / "run"), "max_length": 16,
               "train_batch_size": 8, "max_train_steps": 3, "learning_rate": 1e-3,
               "adapter": {"variant": "lora", "rank": 2}, **overrides}
    return TextTrainConfig.from_sources(None, options)


def test_both_trainers_step_through_the_one_loop(tmp_path, tmp_path_factory, monkeypatch):
    """A change to TrainingLoop (here: counting its micro-steps) shows in both trainers."""
    calls = []
    real = TrainingLoop._micro_step
    monkeypatch.setattr(TrainingLoop, "_micro_step", lambda self, *args: (calls.append(self.desc), real(self, *args))[1])
    diffusion_train.train(run_config(tmp_path / "image", max_train_steps=2, gradient_accumulation_steps=2,
                                     num_validation_images=0))
    assert len(calls) == 4
    text_train(text_config(tmp_path / "text", tiny_model("bert", tmp_path_factory), max_train_steps=2,
                           gradient_accumulation_steps=3))
    assert len(calls) == 4 + 6


def test_text_accumulation_from_the_loop_equals_the_larger_batch(tmp_path, tmp_path_factory):
    """Gradient accumulation came to the text trainer with the loop: 2 × 4 examples give the step of 8 (with
    dropout off: each micro-batch draws its own masks)."""
    model = tmp_path / "no-dropout"
    shutil.copytree(tiny_model("bert", tmp_path_factory), model)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0,
                                                   "attention_probs_dropout_prob": 0.0}))
    model = str(model)
    whole = text_train(text_config(tmp_path / "whole", model))
    accumulated = text_train(text_config(tmp_path / "split", model, train_batch_size=4, gradient_accumulation_steps=2))
    for name in ("adapter.safetensors", "head.safetensors"):
        a, b = load_file(whole / name), load_file(accumulated / name)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)
    records = [json.loads(line) for line in (accumulated / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3] and all("grad_norm" in r and "epoch" in r for r in records)
    assert "batch 4 × 2 accumulation" in (accumulated / "README.md").read_text()


@pytest.mark.parametrize("precision", ["bf16"])
def test_text_trainer_runs_mixed_precision_through_accelerate(precision, tmp_path, tmp_path_factory):
    run = text_train(text_config(tmp_path, tiny_model("bert", tmp_path_factory), mixed_precision=precision,
                                 max_train_steps=2))
    tensors = load_file(run / "adapter.safetensors")
    assert tensors and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in tensors.values())
