"""What the image and text trainers share: optimizer and schedule, checkpoints and resume, metrics, progress."""

from __future__ import annotations

import json
import re
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from dreamlr.adapters import load_adapter, parameter_groups, save_adapter
from dreamlr.errors import UserError
from dreamlr.fileio import atomic_dir, atomic_path

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "training_state.pt"


class TrainingDiverged(UserError):
    """The loss stopped being finite; the last good checkpoint is kept."""


def build_optimizer(groups: list[dict], *, beta1: float = 0.9, beta2: float = 0.999, weight_decay: float = 1e-2,
                    epsilon: float = 1e-8) -> torch.optim.Optimizer:
    """AdamW over parameter groups that each carry their own learning rate."""
    for group in groups:
        group.setdefault("weight_decay", weight_decay)
    return torch.optim.AdamW(groups, betas=(beta1, beta2), eps=epsilon)


def adapter_groups(parts: dict[str, tuple[nn.Module, float]]) -> list[dict]:
    """Optimizer groups for several adapted models, each at its own learning rate (LoRA+ ratios included)."""
    groups = []
    for model, lr in parts.values():
        groups.extend(parameter_groups(model, lr))
    return groups


def build_lr_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int):
    """One of LR_SCHEDULERS, stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


def check_finite(loss: torch.Tensor, step: int, checkpoints: CheckpointManager) -> None:
    """Stop the run with a clear message when the loss is NaN or infinite."""
    if not torch.isfinite(loss).all():
        last = checkpoints.latest()
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss became {loss.item()} at step {step}; {kept}. Lower learning_rate or use mixed_precision: no"
        )


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, resident-set high-water mark otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def progress(total: int, initial: int, desc: str) -> tqdm:
    """A progress bar on stderr, silent when stderr is not a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, disable=not sys.stderr.isatty(), dynamic_ncols=True)


class MetricsLog:
    """metrics.jsonl: one JSON object per line, flushed as written; a resumed run drops lines past its step."""

    def __init__(self, path: Path, resume_step: int = 0) -> None:
        self.path = path
        kept = []
        if resume_step and path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= resume_step]
        with atomic_path(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in kept))
        self.start = time.perf_counter()

    def write(self, **record: Any) -> None:
        record.setdefault("seconds", round(time.perf_counter() - self.start, 3))
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


class CheckpointManager:
    """checkpoints/step-N/ folders (adapter, optimizer, scheduler, step), written atomically; keeps the last K."""

    def __init__(self, run_dir: Path, total_limit: int | None = None) -> None:
        self.root = run_dir / "checkpoints"
        self.total_limit = total_limit

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (re.fullmatch(r"step-(\d+)", p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.root / f"step-{steps[-1]}" if steps else None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             metadata: dict[str, Any]) -> Path:
        target = self.root / f"step-{step}"
        with atomic_dir(target) as tmp:
            save_adapter(model, tmp / ADAPTER_FILE, metadata=metadata)
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()},
                       tmp / STATE_FILE)
        if self.total_limit:
            for old in self.steps()[: -self.total_limit]:
                shutil.rmtree(self.root / f"step-{old}")
        return target

    def resolve(self, resume: str | None) -> Path | None:
        """The checkpoint folder `resume` names: None, `latest` (None when there is none yet) or a path."""
        if not resume:
            return None
        if resume == "latest":
            return self.latest()
        path = Path(resume)
        if not (path / STATE_FILE).is_file():
            raise UserError(f"checkpoint '{resume}' not found (expected a folder with {STATE_FILE}); use `latest`")
        return path

    @staticmethod
    def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any) -> int:
        """Restore adapter, optimizer and scheduler from a checkpoint folder; returns its step."""
        load_adapter(model, path / ADAPTER_FILE)
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["lr_scheduler"])
        return int(state["step"])


def step_generator(seed: int, step: int, micro_step: int = 0) -> torch.Generator:
    """The random stream of one micro-batch, a function of (seed, step) only: resuming replays it exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro_step) % (2**63 - 1))
