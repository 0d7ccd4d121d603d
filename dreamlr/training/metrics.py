"""metrics.jsonl, progress on stderr (a bar on a terminal, lines in a log), and peak memory."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dreamlr.fileio import atomic_path


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
