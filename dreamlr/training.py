"""What the image and text trainers share: optimizer and schedule, checkpoints and resume, metrics, progress."""

from __future__ import annotations

import json
import re
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from tqdm.auto import tqdm

from dreamlr.adapters import load_adapter, parameter_groups, save_adapter
from dreamlr.adapters.ema import AdapterEMA
from dreamlr.errors import UserError
from dreamlr.fileio import (atomic_dir, atomic_path, empty_folder, inside, is_temp_name, remove, remove_stale_temps,
                            write_safetensors)

LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
ADAPTER_FILE = "adapter.safetensors"
STATE_FILE = "training_state.pt"
EMA_FILE = "adapter_ema.safetensors"  # the adapter's moving average (with ema_decay), in runs and checkpoints


class TrainingDiverged(UserError):
    """The loss or a trainable tensor stopped being finite; every checkpoint already written is kept."""


def adapter_groups(parts: dict[str, tuple[nn.Module, float]], weight_decay: float | None = None) -> list[dict]:
    """Optimizer groups for several adapted models, each at its own learning rate (LoRA+ ratios included);
    `weight_decay` None leaves it to `build_optimizer`."""
    groups = []
    for model, lr in parts.values():
        groups.extend(parameter_groups(model, lr, weight_decay))
    return groups


def build_lr_scheduler(optimizer: torch.optim.Optimizer, name: str, warmup_steps: int, total_steps: int):
    """One of LR_SCHEDULERS, stepped once per optimizer step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(name, optimizer=optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


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


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on a GPU, resident-set high-water mark otherwise."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def progress(total: int, initial: int, desc: str) -> tqdm | ProgressLog:
    """A progress bar on stderr when it is a terminal; otherwise (a log file, a batch job) a `ProgressLog` that
    prints a line every 10% of the steps or every 30 s, whichever comes first (never closer than 10 s)."""
    if sys.stderr.isatty():
        return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)
    return ProgressLog(total, initial, desc)


class ProgressLog:
    """Progress as plain lines on stderr: `train: step 40/400 (10%), loss 0.1234, 0.52 s/step, ETA 3m07s`,
    every `every_fraction` of the steps or `every_seconds`, whichever comes first, and at the last step, but
    never within `min_seconds` of the previous line (a run of a few seconds prints nothing). Takes the calls a tqdm bar takes: a line falls due at `update` and is printed at the `set_postfix` that
    follows (so it shows that step's loss), or at the next `update` / `close`."""

    clock = staticmethod(time.monotonic)

    def __init__(self, total: int, initial: int, desc: str, every_fraction: float = 0.1,
                 every_seconds: float = 30.0, min_seconds: float = 10.0) -> None:
        self.total, self.done, self.desc = total, initial, desc
        self.start_step, self.start = initial, self.clock()
        self.every_steps = max(1, round(total * every_fraction))
        self.every_seconds, self.min_seconds = every_seconds, min_seconds
        self.last_step, self.last_time = initial, self.start
        self.postfix: dict[str, Any] = {}
        self.due = False

    def update(self, n: int = 1) -> None:
        self._flush()
        self.done += n
        now = self.clock()
        waited = now - self.last_time
        self.due = waited >= self.min_seconds and (self.done - self.last_step >= self.every_steps
                                                   or waited >= self.every_seconds or self.done >= self.total)

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values
        self._flush()

    def close(self) -> None:
        self._flush()

    def _flush(self) -> None:
        if not self.due:
            return
        self.due = False
        now = self.clock()
        self.last_step, self.last_time = self.done, now
        steps = self.done - self.start_step
        per_step = (now - self.start) / steps if steps else 0.0
        eta = round(per_step * (self.total - self.done))
        parts = [f"{self.desc}: step {self.done}/{self.total} ({100 * self.done // max(self.total, 1)}%)"]
        parts += [f"{key} {value}" for key, value in self.postfix.items()]
        parts += [f"{per_step:.2f} s/step", f"ETA {eta // 60}m{eta % 60:02d}s"]
        print(", ".join(parts), file=sys.stderr, flush=True)


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


RUN_CONFIG = "config.yaml"
LOCATION_KEYS = ("output_dir", "resume_from_checkpoint")  # where a run is and how it was started


def check_run_folder(run_dir: Path, config: dict[str, Any], defaults: dict[str, Any], *, overwrite: bool,
                     may_change: tuple[str, ...], inputs: tuple[str | None, ...] = ()) -> None:
    """Refuse (UserError) to train into `run_dir` unless it is new or empty, `overwrite` is given, or the run
    resumes (`config["resume_from_checkpoint"]`) the run `run_dir` holds with the same training keys (all
    but LOCATION_KEYS and `may_change`; a key the recorded config lacks counts as its default).
    `overwrite` is refused when one of the run's `inputs` (data, model) lies in the folder it would empty."""
    resume = config.get("resume_from_checkpoint")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output_dir '{run_dir}' is a file; give a folder for the run")
    if resume and overwrite:
        raise UserError("--overwrite starts the run afresh and --resume continues it; give only one")
    held = [e for e in run_dir.iterdir() if not is_temp_name(e.name)] if run_dir.is_dir() else []
    for source in (s for s in inputs if s and held and overwrite):
        path = Path(source).expanduser().resolve()
        if path.exists() and (path == run_dir.resolve() or run_dir.resolve() in path.parents):
            raise UserError(f"--overwrite would delete '{source}', which this run reads, inside output_dir "
                            f"'{run_dir}'; give another output folder")
    if held and not overwrite:
        if not (run_dir / RUN_CONFIG).is_file():
            raise UserError(f"output_dir '{run_dir}' already holds files and is not a dreamlr run folder; give a new "
                            "or empty folder, or --overwrite to delete what it holds")
        if not resume:
            raise UserError(f"output_dir '{run_dir}' already holds a run; continue it with --resume latest, or "
                            "start afresh with --overwrite (deletes what the folder holds)")
    recorded = [run_dir / RUN_CONFIG] if held and not overwrite else []
    if resume and resume != "latest":  # a checkpoint folder of another run: its config counts too
        other = Path(resume).resolve().parent.parent / RUN_CONFIG
        if other.is_file() and other.parent.resolve() != run_dir.resolve():
            recorded.append(other)
    for path in recorded:
        _check_same_training(path, config, defaults, may_change)


def _check_same_training(path: Path, config: dict[str, Any], defaults: dict[str, Any],
                         may_change: tuple[str, ...]) -> None:
    try:
        old = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        old = None
    if not isinstance(old, dict):
        raise UserError(f"'{path}' is not a readable run config; resume cannot check what the run trained")
    plain = json.loads(json.dumps({**defaults, **old}, default=str)), json.loads(json.dumps(config, default=str))
    skip = (*LOCATION_KEYS, *may_change)
    changed = sorted(k for k in plain[1] if k not in skip and plain[0].get(k) != plain[1][k])
    if changed:
        shown = ", ".join(f"{k} ({plain[0].get(k)!r} -> {plain[1].get(k)!r})" for k in changed[:4])
        raise UserError(f"--resume: the run in '{path.parent}' was trained with other settings ({RUN_CONFIG} "
                        f"-> now): {shown}{' …' if len(changed) > 4 else ''}; resume with the recorded ones, or "
                        "start afresh with --overwrite")


def start_run_folder(run_dir: Path, overwrite: bool) -> None:
    """Just before a run's first write: with `overwrite`, delete what `run_dir` holds (never the folder itself,
    never through a link); then remove the temp files an interrupted run of it left."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        empty_folder(run_dir)
    for folder in (run_dir, run_dir / "checkpoints", *_subfolders(run_dir / "samples")):
        inside(folder, run_dir)
        remove_stale_temps(folder)


def _subfolders(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink()] if folder.is_dir() else []


def step_generator(seed: int, step: int, micro_step: int = 0) -> torch.Generator:
    """The random stream of one micro-batch, a function of (seed, step) only: resuming replays it exactly."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro_step) % (2**63 - 1))
