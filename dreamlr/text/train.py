"""The text trainer: an adapter (and the task head) on a transformers model, with checkpoints, resume,
metrics.jsonl, a model card and eval.json, laid out as the DreamBooth trainer lays out its runs."""

from __future__ import annotations

import dataclasses
import math
import time
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
from dreamlr.devices import default_device
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
    check_finite,
    check_run_folder,
    check_weights_finite,
    peak_memory_mb,
    progress,
    start_run_folder,
    step_generator,
)

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
    task = make_task(config)  # reads and checks the data before any model loads
    run_dir = Path(config.output_dir).expanduser().resolve()
    total = total_steps(config, task.num_train)
    if isinstance(task, ClassificationTask):  # config.yaml records the label order the head was trained with
        config = dataclasses.replace(config, labels=task.labels)
    check_run_folder(run_dir, config.to_dict(), TextTrainConfig().to_dict(), overwrite=overwrite,
                     may_change=RESUME_MAY_CHANGE, inputs=(config.train_file, config.eval_file, config.model))
    checkpoints = CheckpointManager(run_dir, config.checkpoints_total_limit)
    resume_from = checkpoints.resolve(config.resume_from_checkpoint)
    if resume_from is not None:
        CheckpointManager.checkpoint_step(resume_from, total)
    torch.manual_seed(config.seed)  # a new head's and the adapter's initialization
    model = task.load_model()
    head = task.head_names(model)
    attach_adapter(model, config.adapter_config(total), head)
    model.to(default_device())
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

    start_run_folder(run_dir, overwrite)
    write_yaml(run_dir / "config.yaml", config.to_dict())
    metrics = MetricsLog(run_dir / "metrics.jsonl", start)
    metadata = {"base_model": config.model, "dreamlr_version": __version__, **task.metadata()}
    per_epoch = steps_per_epoch(task.num_train, config.batch_size)
    bar = progress(total, start, "train")

    def after_step(done: int, loss: float, seconds: float) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        metrics.write(step=done, epoch=math.ceil(done / per_epoch), loss=loss, lr=scheduler.get_last_lr()[0],
                      step_seconds=round(seconds, 4), peak_memory_mb=round(peak_memory_mb(default_device()), 1))
        if done % config.checkpointing_steps == 0 and done < total:
            folder = checkpoints.save(done, model, optimizer, scheduler, metadata)
            if head:
                save_head(model, head, folder / HEAD_FILE)

    fit(model, task, optimizer, scheduler, range(start, total), seed=config.seed, batch_size=config.batch_size,
        max_grad_norm=config.max_grad_norm, checkpoints=checkpoints, after_step=after_step,
        group_by_length=config.group_by_length)
    bar.close()
    check_weights_finite(model, optimizer, total, checkpoints)
    save_adapter(model, run_dir / ADAPTER_FILE, metadata={**metadata, "step": total})
    if head:
        save_head(model, head, run_dir / HEAD_FILE)
    write_text(run_dir / "README.md", model_card(config, count_parameters(model) + _numel(model, head), total))
    if task.eval_examples is not None:
        write_eval(run_dir / EVAL_FILE, task, model, {"task": config.task, "model": config.model,
                                                      "eval_file": config.eval_file, "step": total})
    return run_dir


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return math.ceil(num_examples / batch_size)


def total_steps(config: TextTrainConfig, num_examples: int) -> int:
    """`max_train_steps` when set, else epochs × batches per epoch."""
    return config.max_train_steps or config.epochs * steps_per_epoch(num_examples, config.batch_size)


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


def fit(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer, scheduler, steps: range, *, seed: int,
        batch_size: int, max_grad_norm: float, checkpoints: CheckpointManager,
        after_step: Callable[[int, float, float], None], group_by_length: bool = False) -> None:
    """Run the optimizer steps in `steps`; `after_step(done, loss, seconds)` follows each one.

    All randomness of a step (batch, dropout) is a function of (seed, step) only.
    """
    lengths = task.lengths if group_by_length else None
    device = next(model.parameters()).device
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    model.train()
    for step in steps:
        started = time.perf_counter()
        generator = step_generator(seed, step)
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))  # dropout
        batch = task.batch(batch_indices(seed, step, task.num_train, batch_size, lengths))
        loss = task.loss(model, {key: value.to(device) for key, value in batch.items()})
        check_finite(loss.detach(), step + 1, checkpoints)
        loss.backward()
        if max_grad_norm:
            torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        set_step(model, step + 1)
        after_step(step + 1, loss.item(), time.perf_counter() - started)


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
- steps: {steps} (batch {config.batch_size}, max length {config.max_length}), learning rate {config.learning_rate}, seed {config.seed}{labels}
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
