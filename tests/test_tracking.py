"""report_to (issue 17 item 6): TensorBoard gets the run's settings, per-step scalars and the validation
samples; a missing package or an unknown tracker is one line before any work."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from dreamlr import tracking
from dreamlr.diffusion import train as train_module
from dreamlr.errors import UserError

from test_train import run_config


def test_tensorboard_gets_scalars_and_samples(tmp_path):
    run_dir = train_module.train(run_config(tmp_path, report_to="tensorboard", max_train_steps=4, validation_steps=2))
    events = sorted((run_dir / "logs").rglob("events.out.tfevents.*"))
    assert events
    scalars, images = {}, []
    for path in events:
        acc = EventAccumulator(str(path.parent), size_guidance={"images": 0, "scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.step for e in acc.Scalars(tag)]
        images += [(tag, e.step) for tag in acc.Tags()["images"] for e in acc.Images(tag)]
    assert {"loss", "lr", "grad_norm", "step_seconds"} <= set(scalars)
    assert scalars["loss"] == [1, 2, 3, 4]
    assert {step for _, step in images} == {2, 4}
    assert (run_dir / "metrics.jsonl").read_text().count("grad_norm") == 4  # metrics.jsonl stays, with the norm


def test_report_to_is_checked_before_any_work(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown report_to 'mlflow'; choose one of none, tensorboard, wandb"):
        run_config(tmp_path, report_to="mlflow")
    monkeypatch.setitem(tracking._AVAILABLE, "wandb", lambda: False)
    with pytest.raises(UserError, match=r"report_to wandb needs the wandb package: pip install 'dreamlr\[wandb\]'"):
        run_config(tmp_path, report_to="wandb")
    assert not (tmp_path / "run").exists()


def test_settings_become_flat_hyperparameters():
    flat = tracking._flat({"adapter": {"rank": 4, "targets": ["q", "k"]}, "snr_gamma": None, "seed": 0})
    assert flat == {"adapter.rank": 4, "adapter.targets": "['q', 'k']", "snr_gamma": "null", "seed": 0}
