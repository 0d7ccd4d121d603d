"""The step loop of both trainers, under accelerate: micro-batches with gradient accumulation (gradients
all-reduced once per optimizer step), clipping, optimizer and schedule steps, `set_step`, the EMA, the
non-finite stop, metrics, checkpoints and progress. A trainer gives the loss of one micro-batch.

Micro-batch `g = process_index × accumulation + micro` of a step draws everything from
`step_generator(seed, step, g)`: P processes × A accumulation see the same micro-batches as one process
with P·A accumulation, and one process with accumulation 1 draws as it always has.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from dreamlr.adapters import set_step
from dreamlr.adapters.ema import AdapterEMA
from dreamlr.errors import UserError
from dreamlr.training.checkpoints import CheckpointManager, check_finite
from dreamlr.training.metrics import MetricsLog, peak_memory_mb, progress
from dreamlr.training.schedule import step_generator

def start_accelerator(mixed_precision: str, **options) -> Accelerator:
    """A fresh Accelerator for one run (one process may train several: `dreamlr compare`), checked by
    `check_launch`."""
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, **options)
    check_launch(accelerator)
    return accelerator


def check_launch(accelerator: Accelerator) -> None:
    """A UserError when the launcher started several processes (WORLD_SIZE) that accelerate does not join
    into one run: each would train alone and all would write the same run folder. `accelerate launch
    --multi_gpu` does that on a machine without GPUs."""
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and accelerator.num_processes == 1:
        raise UserError(f"launched as {launched} processes (WORLD_SIZE), but accelerate runs each alone "
                        f"({accelerator.distributed_type}); on CPUs launch with `ACCELERATE_USE_CPU=true torchrun "
                        "--nproc-per-node N -m dreamlr.cli …`, on GPUs check that they are visible")


def end_run(accelerator: Accelerator) -> None:
    """Finish the trackers and, with several processes, leave the process group together: a process that
    exits with it still open can abort in gloo's threads ("terminate called without an active exception")
    while the main one is still writing."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # accelerate before 1.1 leaves it open


# the loss of one micro-batch: (step, global micro-batch index, its generator) -> scalar loss
MicroLoss = Callable[[int, int, torch.Generator], torch.Tensor]


@dataclass
class TrainingLoop:
    """What the loop steps: `adapted` holds the adapters (what checkpoints save, `set_step` reaches), `wrapped`
    the models `accelerator.prepare` returned (their gradients sync across processes)."""

    accelerator: Accelerator
    adapted: nn.Module
    wrapped: list[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    checkpoints: CheckpointManager
    metrics: MetricsLog | None  # None on processes other than the main one (and where nothing is logged)
    seed: int
    accumulation: int
    max_grad_norm: float
    checkpointing_steps: int
    metadata: dict[str, Any]
    mixed_precision: str = "no"
    ema: AdapterEMA | None = None
    save_extra: Callable[[Any], None] | None = None  # writes more into a checkpoint folder (a classifier's head)
    step_metrics: Callable[[int], dict[str, Any]] = field(default=lambda done: {})
    desc: str = "train"

    def run(self, start: int, total: int, micro_loss: MicroLoss,
            after_step: Callable[[int], None] | None = None) -> None:
        """Optimizer steps `start` … `total` - 1; `after_step(done)` follows each one on the main process
        (validation samples), after its metrics and checkpoint."""
        accelerator = self.accelerator
        trainable = [p for group in self.optimizer.param_groups for p in group["params"]]
        bar = progress(total, start, self.desc) if accelerator.is_main_process else None
        for step in range(start, total):
            started = time.perf_counter()
            losses = [self._micro_step(step, micro, micro_loss) for micro in range(self.accumulation)]
            grad_norm = None
            if self.max_grad_norm:
                grad_norm = float(accelerator.clip_grad_norm_(trainable, self.max_grad_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update()
            done = step + 1
            set_step(self.adapted, done)
            loss = self._mean_over_processes(sum(losses) / len(losses))
            if bar is None:
                continue
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}")
            self._record(done, total, loss, grad_norm, time.perf_counter() - started)
            if after_step is not None:
                after_step(done)
        if bar is not None:
            bar.close()

    def _micro_step(self, step: int, micro: int, micro_loss: MicroLoss) -> float:
        """Forward and backward of one micro-batch; gradients sync across processes only on the last one."""
        index = self.accelerator.process_index * self.accumulation + micro
        generator = step_generator(self.seed, step, index)
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))  # dropout
        with contextlib.ExitStack() as stack:
            if micro < self.accumulation - 1:
                for model in self.wrapped:
                    stack.enter_context(self.accelerator.no_sync(model))
            loss = micro_loss(step, index, generator)
            check_finite(loss.detach(), step + 1, self.checkpoints, self.mixed_precision)
            self.accelerator.backward(loss / self.accumulation)
        return loss.item()

    def _mean_over_processes(self, loss: float) -> float:
        if self.accelerator.num_processes == 1:
            return loss
        value = torch.tensor(loss, device=self.accelerator.device)
        return float(self.accelerator.reduce(value, reduction="mean"))

    def _record(self, done: int, total: int, loss: float, grad_norm: float | None, seconds: float) -> None:
        """metrics.jsonl and the trackers; a checkpoint every `checkpointing_steps` (not at the last step)."""
        values = {"loss": loss, "lr": self.scheduler.get_last_lr()[0], "step_seconds": round(seconds, 4)}
        if grad_norm is not None:
            values["grad_norm"] = round(grad_norm, 6)
        if self.metrics is not None:
            self.metrics.write(step=done, **self.step_metrics(done), **values,
                               peak_memory_mb=round(peak_memory_mb(self.accelerator.device), 1))
        self.accelerator.log(values, step=done)
        if done % self.checkpointing_steps == 0 and done < total:
            folder = self.checkpoints.save(done, self.adapted, self.optimizer, self.scheduler, self.metadata,
                                           self.ema)
            if self.save_extra is not None:
                self.save_extra(folder)
