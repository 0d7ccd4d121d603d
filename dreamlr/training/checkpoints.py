"""Checkpoints and resume: checkpoints/step-N folders written atomically, the last K kept, and the stop when the
loss or a trainable tensor turns non-finite."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dreamlr.adapters import load_adapter, save_adapter
from dreamlr.adapters.ema import AdapterEMA
from dreamlr.errors import UserError
from dreamlr.fileio import atomic_dir, inside, remove, write_safetensors

ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "training_state.pt"
EMA_FILE = "adapter_ema.safetensors"  # the adapter's moving average (with ema_decay), in runs and checkpoints


class TrainingDiverged(UserError):
    """The loss or a trainable tensor stopped being finite; every checkpoint already written is kept."""


def check_finite(loss: torch.Tensor, step: int, checkpoints: CheckpointManager, mixed_precision: str = "no") -> None:
    """Stop the run with a clear message when the loss is NaN or infinite.

    The loss of `step` comes from the weights after step - 1, so checkpoint step-(step - 1) holds weights
    that diverge: the message names the last checkpoint before it whose tensors are finite as the good one.
    """
    if not torch.isfinite(loss).all():
        bad = checkpoints.root / f"step-{step - 1}"
        good = checkpoints.last_good(before=step - 1)
        kept = f"the last good checkpoint is {good}" if good else "no good checkpoint was written"
        if bad.is_dir():
            kept += f" ({bad} holds the weights that gave this loss)"
        raise TrainingDiverged(f"loss became {loss.item()} at step {step}; {kept}. {_diverged_hint(mixed_precision)}")


def _diverged_hint(mixed_precision: str) -> str:
    hint = "Lower learning_rate" + (" or use mixed_precision: no" if mixed_precision != "no" else "")
    return hint + " and train again with --overwrite (a resume replays the same steps)"


def non_finite_tensor(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> str | None:
    """The name of the first trainable tensor (or optimizer-state tensor) holding NaN or inf; None if all are finite."""
    for name, param in model.named_parameters():
        if param.requires_grad and not torch.isfinite(param.detach()).all():
            return name
    names = {id(p): n for n, p in model.named_parameters()}
    for param, state in (optimizer.state.items() if optimizer is not None else ()):
        for key, value in state.items():
            if torch.is_tensor(value) and value.is_floating_point() and not torch.isfinite(value).all():
                return f"optimizer {key} of {names.get(id(param), 'a parameter')}"
    return None


def check_weights_finite(model: nn.Module, optimizer: torch.optim.Optimizer | None, step: int,
                         checkpoints: CheckpointManager, mixed_precision: str = "no") -> None:
    """Stop the run (TrainingDiverged) when a trainable or optimizer tensor is NaN or inf: nothing is saved then."""
    bad = non_finite_tensor(model, optimizer)
    if bad is not None:
        good = checkpoints.last_good(before=step)
        kept = f"the last good checkpoint is {good}" if good else "no good checkpoint was written"
        raise TrainingDiverged(f"{bad} became non-finite at step {step} and was not saved; {kept}. "
                               f"{_diverged_hint(mixed_precision)}")


class CheckpointManager:
    """checkpoints/step-N/ folders (adapter, optimizer, scheduler, step), written atomically; keeps the last K.

    A checkpoint is written only when every adapter and optimizer tensor is finite."""

    def __init__(self, run_dir: Path, total_limit: int | None = None, mixed_precision: str = "no") -> None:
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.total_limit = total_limit
        self.mixed_precision = mixed_precision

    def steps(self) -> list[int]:
        if not self.root.is_dir():
            return []
        found = (re.fullmatch(r"step-(\d+)", p.name) for p in self.root.iterdir() if p.is_dir())
        return sorted(int(m.group(1)) for m in found if m)

    def latest(self) -> Path | None:
        steps = self.steps()
        return self.root / f"step-{steps[-1]}" if steps else None

    def last_good(self, before: int) -> Path | None:
        """The newest checkpoint with a step below `before` whose adapter tensors are all finite."""
        for step in reversed([s for s in self.steps() if s < before]):
            path = self.root / f"step-{step}"
            try:
                tensors = load_file(path / ADAPTER_FILE)
            except (OSError, SafetensorError):
                continue
            if all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
                return path
        return None

    def save(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             metadata: dict[str, Any], ema: AdapterEMA | None = None) -> Path:
        check_weights_finite(model, optimizer, step, self, self.mixed_precision)
        target = self.root / f"step-{step}"
        inside(self.root, self.run_dir)
        with atomic_dir(target) as tmp:
            save_adapter(model, tmp / ADAPTER_FILE, metadata=metadata)
            if ema is not None:
                write_safetensors(tmp / EMA_FILE, ema.state_dict())
            torch.save({"step": step, "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict()},
                       tmp / STATE_FILE)
        if self.total_limit:
            for old in self.steps()[: -self.total_limit]:
                remove(self.root / f"step-{old}", self.run_dir)
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
    def checkpoint_step(path: Path, total_steps: int) -> int:
        """The step a checkpoint folder holds; a UserError when it is past `total_steps` (the run's length)."""
        step = int(read_training_state(path)["step"])
        if step > total_steps:
            raise UserError(f"checkpoint '{path}' is at step {step}, past this run's {total_steps} steps; raise "
                            "max_train_steps, or start afresh with --overwrite")
        return step

    @staticmethod
    def load(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
             ema: AdapterEMA | None = None) -> int:
        """Restore adapter, optimizer, scheduler (and the EMA) from a checkpoint folder; returns its step."""
        load_adapter(model, path / ADAPTER_FILE)
        if ema is not None:
            try:
                ema.load_state_dict(load_file(path / EMA_FILE))
            except (OSError, SafetensorError, ValueError) as exc:
                raise UserError(f"checkpoint '{path}': its EMA ({EMA_FILE}) is missing or does not fit this run "
                                f"({exc}); start afresh with --overwrite") from None
        state = read_training_state(path)
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:  # other parameter groups: another dreamlr version's layout, or another model
            raise UserError(f"checkpoint '{path}': its optimizer state does not fit this run ({exc}); it was "
                            "written by another dreamlr version or for other adapters: start afresh with "
                            "--overwrite") from None
        scheduler.load_state_dict(state["lr_scheduler"])
        return int(state["step"])


def read_training_state(path: Path) -> dict[str, Any]:
    """The training state of checkpoint folder `path`; a truncated or foreign file is a UserError."""
    try:
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, not a torch file at all
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint '{path}': {STATE_FILE} cannot be read ({reason}); it is damaged or not written "
                        "by dreamlr: resume from another checkpoint or start afresh with --overwrite") from None
    missing = [key for key in ("step", "optimizer", "lr_scheduler") if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserError(f"checkpoint '{path}': {STATE_FILE} is not a dreamlr training state (no {', '.join(missing)}); "
                        "resume from another checkpoint or start afresh with --overwrite")
    return state
