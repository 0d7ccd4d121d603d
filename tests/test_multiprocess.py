"""Training on two processes: `torchrun --nproc-per-node 2` with ACCELERATE_USE_CPU=true (accelerate's
MULTI_CPU, gloo) runs `dreamlr train` and `dreamlr text train` on tiny models. (`accelerate launch --cpu
--num_processes 2` starts one process; `accelerate launch --multi_gpu` on a machine without GPUs starts two
that each train alone, which dreamlr refuses.) Micro-batch g = process × accumulation + micro draws from
(seed, step, g), so 2 processes × batch 1 train exactly what 1 process × batch 1 with accumulation 2 trains:
the same examples, noise and timesteps, and the same averaged gradient (DDP averages over processes,
accumulation over micro-batches); only the order of the float sums differs. Adam divides each update by
√v, so a gradient near zero turns that rounding into an update difference of order lr·1e-3: at lr 1e-3 the
adapters agree to 1e-5 (at 1e-2, to 3e-5), and the losses of every step to 1e-6."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dreamlr.diffusion import train as diffusion_train
from dreamlr.text.train import train as text_train
from tests.test_text_models import sentiment_rows, tiny_model, write_tsv
from tests.test_train import run_config

DREAMBOOTH = dict(max_train_steps=4, checkpointing_steps=2, num_validation_images=1, validation_steps=4,
                  with_prior_preservation=True, class_prompt="a photo of mug", num_class_images=2,
                  adapter={"variant": "dora", "rank": 2, "targets": "attn"}, learning_rate=1e-3)
KILLED = '''import sys
from dreamlr.diffusion import train as module
from dreamlr.cli import main
real, calls = module.micro_step, [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] > 2:  # inside step 3, after the step-2 checkpoint
        raise KeyboardInterrupt
    return real(*args, **kwargs)
module.micro_step = dying
sys.exit(main(sys.argv[1:]))
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(args: list[str], cwd: Path, script: Path | None = None) -> subprocess.CompletedProcess:
    """`dreamlr` (or `script`) with `args` on two CPU processes."""
    target = [str(script)] if script else ["-m", "dreamlr.cli"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), *target, *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "DREAMLR_CACHE": str(cwd / "cache")}
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def dreambooth_args(config_path: Path, run: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config_path), "--output-dir", str(run), *extra]


def assert_same_adapter(a: Path, b: Path) -> None:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys() and first
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-5, msg=key)


def metric_steps(run: Path) -> list[int]:
    return [int(step) for step in metric(run, "step")]


@pytest.fixture(scope="module")
def dreambooth(tmp_path_factory) -> dict[str, Path]:
    """One config; an uninterrupted 2-process run, and one killed in step 3 and resumed, both on 2 processes;
    the class images in a shared folder, generated once."""
    root = tmp_path_factory.mktemp("multiprocess")
    config = run_config(root, class_data_dir=str(root / "class"), **DREAMBOOTH).to_dict()
    config_path = root / "config.yaml"
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "output_dir"}))
    whole = launch(dreambooth_args(config_path, root / "two"), root)
    assert whole.returncode == 0, whole.stderr[-4000:]
    script = root / "killed.py"
    script.write_text(KILLED)
    killed = launch(dreambooth_args(config_path, root / "split"), root, script)
    assert killed.returncode != 0, killed.stderr[-2000:]
    resumed = launch(dreambooth_args(config_path, root / "split", "--resume", "latest"), root)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return {"root": root, "two": root / "two", "split": root / "split", "config": config_path}


def metric(run: Path, key: str) -> list[float]:
    return [json.loads(line)[key] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_what_one_process_with_accumulation_trains(dreambooth, tmp_path):
    one = diffusion_train.train(run_config(tmp_path, class_data_dir=str(dreambooth["root"] / "class"),
                                           gradient_accumulation_steps=2, **DREAMBOOTH))
    assert_same_adapter(dreambooth["two"] / "adapter.safetensors", one / "adapter.safetensors")
    assert metric(dreambooth["two"], "loss") == pytest.approx(metric(one, "loss"), abs=1e-6)


def test_only_the_main_process_writes_the_run_folder(dreambooth):
    run = dreambooth["two"]
    assert metric_steps(run) == [1, 2, 3, 4]  # one line per step, not one per process
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-2"]
    assert sorted(p.name for p in (run / "samples" / "step-4").iterdir()) == ["0.png"]
    assert sorted(p.name for p in (dreambooth["root"] / "class").iterdir()) == ["class-0000.png", "class-0001.png"]
    assert not [p for p in run.rglob("*") if p.name.startswith(".")]  # no temp file left by a second writer


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_adapter(dreambooth):
    assert_same_adapter(dreambooth["two"] / "adapter.safetensors", dreambooth["split"] / "adapter.safetensors")
    assert metric_steps(dreambooth["split"]) == [1, 2, 3, 4]


def test_text_training_on_two_processes_equals_accumulation_on_one(tmp_path, tmp_path_factory):
    model = tiny_model("bert", tmp_path_factory)
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(24))
    options = {"model": model, "train_file": str(train_file), "train_batch_size": 4, "max_train_steps": 3,
               "max_length": 16, "learning_rate": 1e-3, "adapter": {"variant": "lora", "rank": 2}}
    config = tmp_path / "text.yaml"
    config.write_text(json.dumps(options))
    two = launch(["text", "train", "--config", str(config), "--output-dir", str(tmp_path / "two")], tmp_path)
    assert two.returncode == 0, two.stderr[-4000:]
    from dreamlr.text.config import TextTrainConfig

    one = text_train(TextTrainConfig.from_sources(None, {**options, "gradient_accumulation_steps": 2,
                                                         "output_dir": str(tmp_path / "one")}))
    for name in ("adapter.safetensors", "head.safetensors"):
        assert_same_adapter(tmp_path / "two" / name, one / name)
    assert metric_steps(tmp_path / "two") == [1, 2, 3]


def test_processes_that_accelerate_does_not_join_are_refused(monkeypatch):
    """`accelerate launch --multi_gpu` without GPUs: WORLD_SIZE=2, yet each process is a run of its own."""
    from accelerate import Accelerator

    from dreamlr.errors import UserError
    from dreamlr.training.loop import check_launch

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="launched as 2 processes"):
        check_launch(Accelerator(cpu=True))
