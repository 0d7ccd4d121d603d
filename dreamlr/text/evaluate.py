"""Evaluating text models: a trained run (adapter + head) or a base causal LM, written as eval.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from dreamlr.adapters import load_adapter
from dreamlr.devices import default_device
from dreamlr.errors import UserError
from dreamlr.fileio import write_text
from dreamlr.text.causal_lm import CausalLMTask
from dreamlr.text.classification import ClassificationTask
from dreamlr.text.config import TextTrainConfig
from dreamlr.text.head import HEAD_FILE, load_head
from dreamlr.training import ADAPTER_FILE

EVAL_FILE = "eval.json"
TASK_CLASSES = {"classification": ClassificationTask, "causal-lm": CausalLMTask}
Task = ClassificationTask | CausalLMTask


def make_task(config: TextTrainConfig, *, with_train: bool = True) -> Task:
    """The task object of `config.task`, its data read and checked."""
    return TASK_CLASSES[config.task](config, with_train=with_train)


def write_eval(path: Path, task: Task, model: nn.Module, details: dict[str, Any]) -> dict[str, Any]:
    """Score the task's eval examples and write `details` + metrics as JSON; returns the metrics."""
    was_training = model.training
    model.eval()
    metrics = task.evaluate(model, task.eval_examples)
    model.train(was_training)
    write_text(path, json.dumps({**details, **metrics}, indent=2) + "\n")
    return metrics


def load_run(run_dir: str | Path, overrides: dict[str, Any] | None = None, *,
             with_eval: bool = False) -> tuple[nn.Module, Task]:
    """The model a `dreamlr text train` folder describes (base model, adapter, head) and its task (its
    tokenizer, and with `with_eval` its eval examples); `overrides` change config keys (e.g. `eval_file`,
    or `model` when the base model has moved)."""
    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise UserError(f"run folder '{run_dir}' has no config.yaml (is it a `dreamlr text train` output folder?)")
    overrides = dict(overrides or {})
    if not with_eval:
        overrides["eval_file"] = None
    config = TextTrainConfig.from_sources(str(run / "config.yaml"), overrides)
    task = make_task(config, with_train=False)
    model = task.load_model()
    load_adapter(model, run / ADAPTER_FILE)
    head = task.head_names(model)
    if head:
        load_head(model, head, run / HEAD_FILE)
    return model.to(default_device()), task


def evaluate_run(run_dir: str | None, overrides: dict[str, Any], output: str | None = None) -> tuple[Path, dict]:
    """Evaluate a run folder's model, or with no run the base causal LM that `overrides` names;
    writes eval.json (into the run folder unless `output` is given). Returns its path and the metrics."""
    if run_dir:
        model, task = load_run(run_dir, overrides, with_eval=True)
    else:
        config = TextTrainConfig.from_sources(None, overrides)
        if config.task == "classification":
            raise UserError("a classifier needs its trained head: give --run DIR (a `dreamlr text train` folder)")
        task = make_task(config, with_train=False)
        model = task.load_model().to(default_device())
    config = task.config
    if task.eval_examples is None:
        raise UserError("nothing to evaluate: give --eval FILE")
    details: dict[str, Any] = {"task": config.task, "model": config.model, "eval_file": config.eval_file,
                               "run": str(run_dir) if run_dir else None}
    path = Path(output) if output else Path(run_dir or ".") / EVAL_FILE
    return path, write_eval(path, task, model, details)
