"""The text trainer: an adapter (and the task head) on a transformers model, with checkpoints, resume,
metrics.jsonl, a model card and eval.json, laid out as the DreamBooth trainer lays out its runs."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dreamlr import __version__
from dreamlr.adapters import (
    AdapterConfig,
    count_parameters,
    parameter_groups,
    resolve_targets,
    save_adapter,
    set_step,
)
from dreamlr.adapters.attach import attach_to
from dreamlr.adapters.config import AdapterConfigError
from dreamlr.errors import UserError
from dreamlr.fileio import write_text, write_yaml
from dreamlr.text.classification import ClassificationTask
from dreamlr.text.config import TextTrainConfig
from dreamlr.text.evaluate import EVAL_FILE, Task, make_task, write_eval
from dreamlr.text.head import HEAD_FILE, load_head, save_head
from dreamlr.optimizers import build_optimizer
from dreamlr.training import (
    ADAPTER_FILE,
    CheckpointManager,
    MetricsLog,
    build_lr_scheduler,
    check_run_folder,
    check_weights_finite,
    start_run_folder,
)
from dreamlr.training.config import ALIASES
from dreamlr.training.loop import TrainingLoop, end_run, start_accelerator

# keys a resumed run may change: how long it runs, how often it checkpoints, what it is evaluated on
RESUME_MAY_CHANGE = ("max_train_steps", "epochs", "checkpointing_steps", "checkpoints_total_limit", "eval_file",
                     "max_eval_samples", "eval_batch_size", "max_new_tokens")
GROUP_SPAN = 50  # batches per length-sorted group with group_by_length (as transformers' Trainer)


def train(config: TextTrainConfig, overwrite: bool = False) -> Path:
    """Run `config`; returns the run folder (config.yaml, adapter.safetensors, head.safetensors for a
    classifier, checkpoints/, metrics.jsonl, README.md, eval.json when there is an eval file).

    The folder must be new or empty, or hold this run when resuming with the same training keys;
    `overwrite` deletes what it holds first."""
    if not config.train_file:
        raise UserError("train_file is not set: give --train FILE")
    config.check_device()
    task = make_task(config)  # reads and checks the data before any model loads
    run_dir = Path(config.output_dir).expanduser().resolve()
    accelerator = start_accelerator(config.mixed_precision)
    total = total_steps(config, task.num_train, accelerator.num_processes)
    if isinstance(task, ClassificationTask):  # config.yaml records the label order the head was trained with
        config = dataclasses.replace(config, labels=task.labels)
    check_run_folder(run_dir, config.to_dict(), TextTrainConfig().to_dict(), overwrite=overwrite,
                     may_change=RESUME_MAY_CHANGE, inputs=(config.train_file, config.eval_file, config.model),
                     aliases=ALIASES)
    checkpoints = CheckpointManager(run_dir, config.checkpoints_total_limit, config.mixed_precision)
    resume_from = checkpoints.resolve(config.resume_from_checkpoint)
    if resume_from is not None:
        CheckpointManager.checkpoint_step(resume_from, total)
    torch.manual_seed(config.seed)  # a new head's and the adapter's initialization
    model = task.load_model()
    head = task.head_names(model)
    attach_adapter(model, config.adapter_config(total), head)
    head_lr = config.head_learning_rate or config.learning_rate
    optimizer = build_optimizer(trainable_groups(model, head, config.learning_rate, head_lr), name=config.optimizer,
                                beta1=config.adam_beta1, beta2=config.adam_beta2,
                                weight_decay=config.weight_decay, epsilon=config.adam_epsilon)
    scheduler = build_lr_scheduler(optimizer, config.lr_scheduler, config.lr_warmup_steps, total)
    start = 0
    if resume_from is not None:
        start = CheckpointManager.load(resume_from, model, optimizer, scheduler)
        if head:
            load_head(model, head, resume_from / HEAD_FILE)
    set_step(model, start)
    wrapped, optimizer = accelerator.prepare(model, optimizer)

    accelerator.wait_for_everyone()  # every process has checked the run folder before the main one writes
    main = accelerator.is_main_process
    if main:
        start_run_folder(run_dir, overwrite)
        write_yaml(run_dir / "config.yaml", config.to_dict())
    metadata = {"base_model": config.model, "dreamlr_version": __version__, **task.metadata()}
    per_epoch = steps_per_epoch(task.num_train, global_batch(config, accelerator.num_processes))
    loop = TrainingLoop(accelerator, model, [wrapped], optimizer, scheduler, checkpoints,
                        MetricsLog(run_dir / "metrics.jsonl", start) if main else None, seed=config.seed,
                        accumulation=config.gradient_accumulation_steps, max_grad_norm=config.max_grad_norm,
                        checkpointing_steps=config.checkpointing_steps, metadata=metadata,
                        mixed_precision=config.mixed_precision,
                        save_extra=(lambda folder: save_head(model, head, folder / HEAD_FILE)) if head else None,
                        step_metrics=lambda done: {"epoch": math.ceil(done / per_epoch)})
    fit(loop, wrapped, task, config, start, total)
    end_run(accelerator)
    if not main:
        return run_dir
    check_weights_finite(model, optimizer, total, checkpoints, config.mixed_precision)
    model = accelerator.unwrap_model(wrapped)
    save_adapter(model, run_dir / ADAPTER_FILE, metadata={**metadata, "step": total})
    if head:
        save_head(model, head, run_dir / HEAD_FILE)
    write_text(run_dir / "README.md", model_card(config, count_parameters(model) + _numel(model, head), total))
    if task.eval_examples is not None:
        write_eval(run_dir / EVAL_FILE, task, model, {"task": config.task, "model": config.model,
                                                      "eval_file": config.eval_file, "step": total})
    return run_dir


def global_batch(config: TextTrainConfig, processes: int = 1) -> int:
    """Examples per optimizer step: train_batch_size on each process, per micro-batch."""
    return config.train_batch_size * config.gradient_accumulation_steps * processes


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def total_steps(config: TextTrainConfig, num_examples: int, processes: int = 1) -> int:
    """`max_train_steps` when set, else epochs × optimizer steps per epoch."""
    return config.max_train_steps or config.epochs * steps_per_epoch(num_examples, global_batch(config, processes))


def batch_indices(seed: int, step: int, num_examples: int, batch_size: int,
                  lengths: list[int] | None = None) -> list[int]:
    """The training examples of one optimizer step. Each epoch is one permutation drawn from (seed, epoch),
    so a resumed run sees the same batches. With `lengths`, every GROUP_SPAN batches of the permutation are
    sorted by length and the batches shuffled again: same examples per epoch, much less padding."""
    epoch, position = divmod(step, steps_per_epoch(num_examples, batch_size))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_examples, generator=generator).tolist()
    if lengths is None:
        return order[position * batch_size:(position + 1) * batch_size]
    span = batch_size * GROUP_SPAN
    batches = []
    for start in range(0, num_examples, span):
        group = sorted(order[start:start + span], key=lambda index: -lengths[index])
        batches.extend(group[i:i + batch_size] for i in range(0, len(group), batch_size))
    return batches[int(torch.randperm(len(batches), generator=generator)[position])]


def attach_adapter(model: nn.Module, adapter: AdapterConfig, head: list[str]) -> list[str]:
    """Attach `adapter` to its targets outside the head, freeze the rest, and make the head trainable."""
    head_modules = tuple({name.rpartition(".")[0] for name in head})
    names = [name for name in resolve_targets(model, adapter.targets)
             if not any(name == m or name.startswith(m + ".") for m in head_modules)]
    if not names:
        raise AdapterConfigError(f"targets {adapter.targets!r} select only the task head; the head is trained in full")
    attach_to(model, names, adapter)
    params = dict(model.named_parameters())
    for name in head:
        params[name].requires_grad_(True)
    return names


def trainable_groups(model: nn.Module, head: list[str], lr: float, head_lr: float) -> list[dict]:
    """Optimizer groups: the adapter's (LoRA+ ratios included) and the head's; none sets weight_decay but
    DoRA's magnitude (0), so `build_optimizer`'s weight_decay reaches the adapter and the head alike."""
    groups = parameter_groups(model, lr)
    params = dict(model.named_parameters())
    if head:
        groups.append({"params": [params[name] for name in head], "lr": head_lr})
    return groups


def fit(loop: TrainingLoop, model: nn.Module, task: Task, config: TextTrainConfig, start: int, total: int,
        after_step: Callable[[int], None] | None = None) -> None:
    """Run optimizer steps `start` … `total` - 1. A step's examples are `batch_indices` of the global batch; micro-batch
    g (of process × accumulation) takes its g-th slice of train_batch_size examples. Every random draw of a step
    (examples, dropout) is a function of (seed, step)."""
    lengths = task.lengths if config.group_by_length else None
    device = loop.accelerator.device
    size = config.train_batch_size
    batch = global_batch(config, loop.accelerator.num_processes)

    def micro_loss(step: int, index: int, generator: torch.Generator) -> torch.Tensor:
        indices = batch_indices(config.seed, step, task.num_train, batch, lengths)[index * size:(index + 1) * size]
        examples = task.batch(indices)
        return task.loss(model, {key: value.to(device) for key, value in examples.items()})

    model.train()
    loop.run(start, total, micro_loss, after_step)


def _numel(model: nn.Module, names: list[str]) -> int:
    params = dict(model.named_parameters())
    return sum(params[name].numel() for name in names)


def model_card(config: TextTrainConfig, trainable: int, steps: int) -> str:
    """A short README for the run folder: what was trained and how to evaluate it."""
    adapter = config.adapter_config(steps)
    head = "; the classification head is trained in full and saved as `head.safetensors`" \
        if config.task == "classification" else ""
    labels = f"\n- labels (id order): {', '.join(config.labels)}" if config.labels else ""
    return f"""# Text adapter: {config.task} on `{Path(config.train_file).name}`

- base model: `{config.model}`
- adapter: `{adapter.variant}`, rank {adapter.rank}, alpha {adapter.alpha}, targets `{adapter.targets}`{head}
- trainable parameters: {trainable:,}
- steps: {steps} (batch {config.train_batch_size} × {config.gradient_accumulation_steps} accumulation, max length {config.max_length}), learning rate {config.learning_rate}, seed {config.seed}{labels}
- trained with dreamlr {__version__}

## Use it

```bash
dreamlr text eval --run {config.output_dir} --eval {config.eval_file or 'EVAL_FILE'}
```

```python
from dreamlr.text import load_run
model, task = load_run("{config.output_dir}")  # base model + adapter (+ head); task.tokenizer encodes text
```
"""
