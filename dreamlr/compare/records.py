"""What a comparison records about a run: training cost and outcome read from its run folder, and scores
pooled over subjects from `dreamlr score` JSON reports.

Result files (`results/<label>.json` in a sweep folder) hold one record each:
`{"kind": "variant" | "base_model" | "real_images", "label", "status": "done" | "partial" | "failed" |
"pending", "error", "metrics": {clip_i|clip_t|dino: {mean, std, n}}, "subjects": [...]}`; variant
records add `variant`, `rank`, `alpha`, `targets`, `trainable_parameters`, `target_parameters`,
`train_seconds`, `step_seconds` (per subject: {median, p25, p75, n} over the run's optimizer steps),
`adapter_memory_bytes` (the adapter's own training state: parameters, gradients and AdamW's two moments,
computed from the adapter file), `peak_memory_mb` (GPU allocator peak, or the process's resident-set peak on
a CPU; kept for reference, it is not the adapter's cost), `adapter_bytes`, `learning_rate` and `final_loss`;
on a GPU each subject also has `step_memory_mb`, the allocator peak of its training steps minus the frozen
model's weights (`frozen_model_mb`).
Paths are relative to the file's sweep folder.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open

from dreamlr.evaluation.metrics import summarize
from dreamlr.evaluation.tables import METRIC_NAMES
from dreamlr.training import ADAPTER_FILE

METRICS = tuple(METRIC_NAMES)  # clip_i, clip_t, dino
METRICS_FILE = "metrics.jsonl"
FINAL_LOSS_SHARE = 0.1  # final loss: mean over the last 10% of steps (at least one)


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The lines of a run's metrics.jsonl (empty when it has none)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curve(run_dir: str | os.PathLike) -> list[tuple[int, float]]:
    """(step, loss) pairs of a run, in step order."""
    return [(int(m["step"]), float(m["loss"])) for m in read_metrics(run_dir) if "loss" in m]


def adapter_parameters(path: str | os.PathLike) -> int:
    """Number of values stored in an adapter file (its trainable parameters), read from the header only."""
    with safe_open(str(path), framework="pt") as handle:
        names = handle.keys()
        return sum(math.prod(handle.get_slice(name).get_shape()) for name in names)


def adapter_memory_bytes(path: str | os.PathLike) -> int:
    """The adapter's own training state in bytes: each stored tensor as a parameter, its gradient and AdamW's
    two moments (four copies at the stored precision), read from the file header only."""
    with safe_open(str(path), framework="pt") as handle:
        return sum(4 * math.prod(handle.get_slice(name).get_shape())
                   * _DTYPE_BYTES.get(handle.get_slice(name).get_dtype(), 4) for name in handle.keys())


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}


def quartiles(values: list[float]) -> dict[str, Any] | None:
    """{median, p25, p75, n} of some values (None when there are none)."""
    if not values:
        return None
    ordered = sorted(values)

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return {"median": at(0.5), "p25": at(0.25), "p75": at(0.75), "n": len(ordered)}


def training_record(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Cost and outcome of a finished run: trainable parameters, adapter size, summed step time, peak memory,
    final loss and its adapter settings."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir)
    losses = [m["loss"] for m in metrics if "loss" in m]
    tail = losses[-max(1, round(FINAL_LOSS_SHARE * len(losses))):] if losses else []
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    adapter = (config or {}).get("adapter", {})
    adapter_file = run_dir / ADAPTER_FILE
    return {
        "variant": adapter.get("variant"),
        "rank": adapter.get("rank"),
        "alpha": adapter.get("alpha") if adapter.get("alpha") is not None else adapter.get("rank"),
        "targets": adapter.get("targets"),
        "steps": metrics[-1]["step"] if metrics else 0,
        "trainable_parameters": adapter_parameters(adapter_file) if adapter_file.is_file() else None,
        "adapter_bytes": adapter_file.stat().st_size if adapter_file.is_file() else None,
        "train_seconds": round(sum(m.get("step_seconds", 0.0) for m in metrics), 3) if metrics else None,
        "step_seconds": quartiles([m["step_seconds"] for m in metrics if "step_seconds" in m]),
        "adapter_memory_bytes": adapter_memory_bytes(adapter_file) if adapter_file.is_file() else None,
        "learning_rate": (config or {}).get("learning_rate"),
        "peak_memory_mb": max((m["peak_memory_mb"] for m in metrics if "peak_memory_mb" in m), default=None),
        "final_loss": sum(tail) / len(tail) if tail else None,
    }


def pooled_metrics(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """CLIP-I, CLIP-T and DINO over every generated image of several score reports (mean ± std, n)."""
    return {m: summarize([image[m] for report in reports for image in report["per_image"]]) for m in METRICS}


def pooled_real(reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The real-images row over several subjects: each reference image against its subject's others."""
    return {m: summarize([ref[m] for report in reports for ref in report["references"] if m in ref])
            for m in METRICS}


def mean_of(values: list[float | None]) -> float | None:
    """Mean of the values that are present (None when none is)."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def status_of(subject_records: list[dict[str, Any]]) -> str:
    """done (every subject), failed (none), partial (some), or pending (nothing run yet)."""
    statuses = {record.get("status") for record in subject_records}
    if not subject_records or statuses == {"pending"}:
        return "pending"
    if statuses == {"done"}:
        return "done"
    return "failed" if "done" not in statuses else "partial"


def summarize_record(record: dict[str, Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The record with its status, error and the values pooled over its finished subjects."""
    done = [e for e in record["subjects"] if e.get("status") == "done"]
    summary = {**record, "status": status_of(record["subjects"]),
               "error": _errors(record["subjects"]),
               "metrics": pooled_metrics(reports) if reports else None}
    if record["kind"] == "variant" and done:
        summary.update({key: done[0].get(key) for key in ("rank", "alpha", "targets", "trainable_parameters",
                                                           "adapter_memory_bytes", "learning_rate")})
        summary.update(train_seconds=mean_of([e["train_seconds"] for e in done]),
                       peak_memory_mb=max((e["peak_memory_mb"] for e in done if e["peak_memory_mb"] is not None),
                                          default=None),
                       adapter_bytes=mean_of([e["adapter_bytes"] for e in done]),
                       final_loss=mean_of([e["final_loss"] for e in done]))
    return summary


def _errors(subject_records: list[dict[str, Any]]) -> str | None:
    """The subjects' errors, each message once with the subjects it hit: `dog, cat: message`."""
    by_message: dict[str, list[str]] = {}
    for entry in subject_records:
        if entry.get("error"):
            by_message.setdefault(entry["error"], []).append(entry["name"])
    return "; ".join(f"{', '.join(names)}: {message}" for message, names in by_message.items()) or None
