"""Run folders and resume, for `train` and `text train`: a folder that is not this run's is refused (or
emptied with --overwrite), resume refuses changed training keys and checkpoints past the run's end, stale temp
files of an interrupted run are removed, and the NaN guard names a checkpoint good only when it is."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file
from test_text_models import sentiment_rows, tiny_model, write_tsv

from dreamlr.cli import main
from dreamlr.diffusion import train as train_module
from dreamlr.training import loop as loop_module
from dreamlr.training.checkpoints import _diverged_hint

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo_subject"


def train_args(run: Path, *extra: str) -> list[str]:
    return ["train", "--model", "tiny", "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
            "--output-dir", str(run), "--set", "resolution=32", "--set", "num_validation_images=0",
            "--set", "learning_rate=1e-2", *extra]


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_train_refuses_a_folder_of_other_files_and_overwrite_empties_it(tmp_path, capsys):
    run = tmp_path / "mine"
    run.mkdir()
    (run / "notes.txt").write_text("my notes")
    (run / "adapter.safetensors").write_bytes(b"my own adapter")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (run / "link").symlink_to(outside)
    before = snapshot(run)
    assert main(train_args(run, "--max-steps", "1")) == 2
    err = one_error_line(capsys)
    assert "is not a dreamlr run folder" in err and "--overwrite" in err
    assert snapshot(run) == before

    assert main(train_args(run, "--max-steps", "1", "--overwrite")) == 0
    assert not (run / "notes.txt").exists() and not (run / "link").exists()
    assert (outside / "keep.txt").read_text() == "keep"  # a link inside is removed, never followed
    assert load_file(run / "adapter.safetensors")


def test_train_refuses_an_existing_run_without_resume_and_a_checkpoint_past_the_end(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, "--max-steps", "6", "--set", "checkpointing_steps=2")) == 0
    capsys.readouterr()
    before = snapshot(run)
    assert main(train_args(run, "--max-steps", "6", "--set", "checkpointing_steps=2")) == 2
    assert "already holds a run; continue it with --resume latest" in one_error_line(capsys)
    assert snapshot(run) == before

    # the old run's step-4 checkpoint must not become a 3-step run's final adapter
    assert main(train_args(run, "--max-steps", "3", "--resume", "latest")) == 2
    assert "is at step 4, past this run's 3 steps" in one_error_line(capsys)
    assert snapshot(run) == before
    assert main(train_args(run, "--max-steps", "3", "--resume", "latest", "--overwrite")) == 2
    assert "give only one" in one_error_line(capsys)


def test_resume_refuses_changed_training_keys_and_allows_more_steps(tmp_path, capsys, monkeypatch):
    """The interrupted run (learning rate 1e-2) must not go on at another learning rate that config.yaml
    would then record."""
    run = tmp_path / "run"
    real_micro_step = train_module.micro_step
    calls = {"n": 0}

    def killed_in_step_4(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_micro_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "micro_step", killed_in_step_4)
    assert main(train_args(run, "--max-steps", "6", "--set", "checkpointing_steps=2")) == 130
    monkeypatch.setattr(train_module, "micro_step", real_micro_step)
    capsys.readouterr()
    before = snapshot(run)

    assert main(train_args(run, "--max-steps", "6", "--resume", "latest", "--set", "learning_rate=5e-4",
                           "--set", "adapter.alpha=4")) == 2
    err = one_error_line(capsys)
    assert "learning_rate (0.01 -> 0.0005)" in err and "adapter" in err and "config.yaml" in err
    assert snapshot(run) == before

    assert main(train_args(run, "--max-steps", "8", "--resume", "latest", "--set", "checkpointing_steps=3")) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))
    assert (run / "adapter.safetensors").is_file()


def test_an_interrupted_runs_stale_temp_files_are_removed_by_the_next_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(train_module, "micro_step", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(train_args(run, "--max-steps", "4", "--set", "checkpointing_steps=1")) == 130
    monkeypatch.undo()
    (run / "checkpoints").mkdir(exist_ok=True)
    stale = [run / "checkpoints" / ".step-4.k2j3h4g5.tmp", run / ".adapter.safetensors.ab_cd123.tmp",
             run / ".metrics.jsonl.zzzzzzzz.tmp"]
    stale[0].mkdir()
    (stale[0] / "adapter.safetensors").write_bytes(b"half")
    for path in stale[1:]:
        path.write_bytes(b"half")
    kept = [run / ".notes.tmp", run / "checkpoints" / ".step-4.toolong123.tmp"]  # not atomic_path's pattern
    for path in kept:
        path.write_text("not dreamlr's")
    assert main(train_args(run, "--max-steps", "2", "--resume", "latest")) == 0
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


def test_nan_guard_never_calls_diverged_weights_a_good_checkpoint(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(train_args(run, "--max-steps", "4", "--set", "checkpointing_steps=1", "--set", "learning_rate=1e30"))
    err = one_error_line(capsys)
    assert code == 2 and "at step 2" in err
    assert "no good checkpoint was written" in err and "step-1 holds the weights that gave this loss" in err
    assert "mixed_precision: no" not in err and "--overwrite" in err
    assert "mixed_precision: no" in _diverged_hint("bf16")


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, capsys, monkeypatch):
    real_set_step = train_module.set_step

    def poison_after_step_2(model, step):
        real_set_step(model, step)
        if step == 2:
            with torch.no_grad():
                next(p for n, p in model.named_parameters() if n.endswith("lora_B")).fill_(float("inf"))

    monkeypatch.setattr(loop_module, "set_step", poison_after_step_2)
    run = tmp_path / "run"
    assert main(train_args(run, "--max-steps", "4", "--set", "checkpointing_steps=1",
                           "--set", "checkpoints_total_limit=5")) == 2
    err = one_error_line(capsys)
    assert "lora_B became non-finite at step 2" in err and "last good checkpoint is" in err and "step-1" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-1"]
    tensors = load_file(run / "checkpoints" / "step-1" / "adapter.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values())
    assert not (run / "adapter.safetensors").exists()


def text_args(run: Path, model: str, train_file: Path, *extra: str) -> list[str]:
    return ["text", "train", "--model", model, "--train", str(train_file), "--output-dir", str(run),
            "--batch-size", "8", "--rank", "2", "--learning-rate", "0.01", "--set", "max_length=16", *extra]


def test_text_train_guards_its_run_folder_and_resume(tmp_path, tmp_path_factory, capsys):
    model = tiny_model("bert", tmp_path_factory)
    data = write_tsv(tmp_path / "train.tsv", sentiment_rows(16))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    capsys.readouterr()
    assert main(text_args(foreign, model, data, "--max-steps", "1")) == 2
    assert "is not a dreamlr run folder" in one_error_line(capsys)
    assert (foreign / "thesis.tex").read_text() == "years of work"

    run = tmp_path / "run"
    assert main(text_args(run, model, data, "--max-steps", "4", "--set", "checkpointing_steps=1")) == 0
    capsys.readouterr()
    before = snapshot(run)
    assert main(text_args(run, model, data, "--max-steps", "4")) == 2
    assert "already holds a run" in one_error_line(capsys)
    assert main(text_args(run, model, data, "--max-steps", "2", "--resume", "latest")) == 2
    assert "past this run's 2 steps" in one_error_line(capsys)
    assert main(text_args(run, model, data, "--max-steps", "4", "--resume", "latest", "--set",
                          "learning_rate=0.5", "--set", "checkpointing_steps=2")) == 2
    err = one_error_line(capsys)
    assert "learning_rate (0.01 -> 0.5)" in err and "checkpointing_steps" not in err
    assert snapshot(run) == before
    assert main(text_args(run, model, data, "--max-steps", "5", "--resume", "latest")) == 0
    assert main(text_args(run, model, data, "--max-steps", "1", "--overwrite")) == 0
    assert not (run / "checkpoints").exists()


def test_overwrite_never_deletes_the_runs_own_data(tmp_path, capsys):
    project = tmp_path / "project"
    shutil.copytree(DEMO, project / "photos")
    argv = train_args(project, "--max-steps", "1", "--overwrite")
    argv[argv.index("--instance-dir") + 1] = str(project / "photos")
    assert main(argv) == 2
    assert "--overwrite would delete" in one_error_line(capsys)
    assert sorted(p.name for p in (project / "photos").iterdir()) == sorted(p.name for p in DEMO.iterdir())


def test_a_checkpoint_whose_optimizer_state_does_not_fit_is_one_line(tmp_path, capsys):
    """A checkpoint from another layout of parameter groups (e.g. a DoRA run from before the magnitude had its
    own group) is refused with one line, not a traceback from torch."""
    run = tmp_path / "run"
    assert main(train_args(run, "--max-steps", "2", "--set", "checkpointing_steps=1")) == 0
    state_file = run / "checkpoints" / "step-1" / "training_state.pt"
    state = torch.load(state_file, weights_only=True)
    state["optimizer"]["param_groups"].append(dict(state["optimizer"]["param_groups"][0], params=[10_000]))
    torch.save(state, state_file)
    capsys.readouterr()
    assert main(train_args(run, "--max-steps", "2", "--resume", str(run / "checkpoints" / "step-1"))) == 2
    assert "its optimizer state does not fit this run" in one_error_line(capsys)
