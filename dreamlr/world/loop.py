"""The resumable step loop every world builder runs: a step function, a progress bar, a checkpoint every so
many steps (modules and optimizer, written to a temp name then renamed), and a log line per interval.
Randomness is drawn per step from (seed, step), so a resumed run takes the same steps as an unbroken one."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

CHECKPOINT = "checkpoint.pt"


def step_rng(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step."""
    return np.random.default_rng([seed, step]), torch.Generator().manual_seed(seed * 1_000_003 + step)


def run_loop(name: str, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
             step_fn: Callable[[int, np.random.Generator, torch.Generator], dict[str, float]], steps: int,
             folder: str | os.PathLike, seed: int, checkpoint_every: int = 250, log_every: int = 50,
             progress: bool = True, lr_at: Callable[[int], float] | None = None) -> list[dict]:
    """Run steps [start, steps) of `step_fn(step, np_rng, torch_rng) -> metrics` (it does backward; this
    loop zeroes grads and steps the optimizer), resuming from `folder`'s checkpoint if there is one.
    Returns the log (one dict per `log_every` steps: step, means of the metrics, CPU and wall seconds)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start, log = 0, []
    ckpt = folder / CHECKPOINT
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        for key, module in modules.items():
            module.load_state_dict(state["modules"][key])
        optimizer.load_state_dict(state["optimizer"])
        start, log = state["step"], json.loads(state["log"])
    window: dict[str, list[float]] = {}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    bar = tqdm(range(start, steps), desc=name, initial=start, total=steps, disable=not progress)
    for step in bar:
        if lr_at is not None:
            for group in optimizer.param_groups:
                group["lr"] = float(lr_at(step))  # a numpy float would not load with weights_only
        optimizer.zero_grad(set_to_none=True)
        metrics = step_fn(step, *step_rng(seed, step))
        optimizer.step()
        for key, value in metrics.items():
            window.setdefault(key, []).append(value)
        if (step + 1) % log_every == 0 or step + 1 == steps:
            entry = {"step": step + 1, **{k: float(np.mean(v)) for k, v in window.items()},
                     "cpu_s": time.process_time() - cpu0, "wall_s": time.perf_counter() - wall0}
            log.append(entry)
            bar.set_postfix({k: f"{v:.4g}" for k, v in entry.items() if k not in ("step", "cpu_s", "wall_s")})
            window = {}
        if (step + 1) % checkpoint_every == 0 or step + 1 == steps:
            state = {"modules": {k: m.state_dict() for k, m in modules.items()}, "optimizer": optimizer.state_dict(),
                     "step": step + 1, "log": json.dumps(log)}
            torch.save(state, folder / (CHECKPOINT + ".tmp"))
            os.replace(folder / (CHECKPOINT + ".tmp"), ckpt)
    (folder / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    return log


def warmup_cosine(lr: float, steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up to `lr`, then cosine decay to lr/10."""
    def at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t)))
    return at
