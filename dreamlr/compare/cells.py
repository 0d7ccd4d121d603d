"""One cell of a comparison: train a run (or reuse / resume the one already in its folder), then generate
its prompt set and score it (or reuse the scores of the same images)."""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from dreamlr.compare import records
from dreamlr.compare.subjects import Subject
from dreamlr.diffusion import train as trainer
from dreamlr.diffusion.config import DreamBoothConfig
from dreamlr.diffusion.generate import Settings, generate_folder
from dreamlr.diffusion.models import load_components
from dreamlr.evaluation.prompts import Prompt
from dreamlr.evaluation.score import score_folder
from dreamlr.fileio import inside, remove, write_text
from dreamlr.images import sha256_file
from dreamlr.training import ADAPTER_FILE

IMAGES_DIR = "images"
SCORES_FILE = "scores.json"
EVALUATION_FILE = "evaluation.json"  # what the scores in a cell were made from; written last
# keys that name where a run is or how it was started, not what it trains
_LOCATION_KEYS = ("output_dir", "resume_from_checkpoint")


def train_or_reuse(config: DreamBoothConfig, root: Path | None = None) -> str:
    """Make sure `config.output_dir` holds a finished run of `config`: `reused` when it already does,
    `resumed` when an unfinished run of the same config continues from its latest checkpoint, `trained`
    when it starts afresh (a run of another config in the folder is removed first). The run folder must lie
    inside `root` (default: its parent folder)."""
    run_dir = Path(config.output_dir)
    root = run_dir.parent if root is None else root
    inside(run_dir, root)
    written = run_dir / "config.yaml"
    same = written.is_file() and _what_it_trains(yaml.safe_load(written.read_text())) == _what_it_trains(config.to_dict())
    if same and (run_dir / ADAPTER_FILE).is_file():
        return "reused"
    if (run_dir.exists() or run_dir.is_symlink()) and not same:
        remove(run_dir, root)
    resumed = same and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    _reset_peak_memory()
    trainer.train(dataclasses.replace(config, resume_from_checkpoint="latest" if same else None))
    return "resumed" if resumed else "trained"


@functools.lru_cache(maxsize=4)
def frozen_model_mb(model_source: str, mixed_precision: str) -> float:
    """MiB the frozen model's weights (UNet, VAE, text encoder) take at the training precision: what a GPU
    allocator holds before the adapter, its gradients, optimizer state and the step's activations."""
    parts = load_components(model_source)
    itemsize = torch.empty((), dtype=trainer.DTYPES[mixed_precision]).element_size()
    count = sum(p.numel() for model in (parts.unet, parts.vae, parts.text_encoder) for p in model.parameters())
    return count * itemsize / 2**20


def gpu_step_memory(config: DreamBoothConfig, run_dir: Path) -> dict[str, float]:
    """On a GPU, a finished run's allocator peak over its steps (metrics.jsonl) minus the frozen model's weights:
    the memory its adapter costs (state and activations). Empty on a CPU, where no allocator peak is kept."""
    if not torch.cuda.is_available():
        return {}
    peaks = [m["peak_memory_mb"] for m in records.read_metrics(run_dir) if "peak_memory_mb" in m]
    if not peaks:
        return {}
    frozen = frozen_model_mb(config.pretrained_model_name_or_path, config.mixed_precision)
    return {"frozen_model_mb": round(frozen, 1), "step_memory_mb": round(max(peaks) - frozen, 1)}


def _what_it_trains(config: dict[str, Any] | None) -> dict[str, Any]:
    """A resolved config without its location keys, as plain JSON values."""
    plain = json.loads(json.dumps(config or {}))
    return {key: value for key, value in plain.items() if key not in _LOCATION_KEYS}


def _reset_peak_memory() -> None:
    """Start a new peak-memory window, so each run of a sweep reports its own peak: the CUDA allocator's
    peak on a GPU, the process's resident-set high-water mark on Linux."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def evaluate(cell: Path, model: str, prompts: list[Prompt], settings: Settings, subject: Subject,
             encoders: dict[str, str], adapter: Path | None = None, extra: dict[str, Any] | None = None,
             root: Path | None = None) -> dict[str, Any]:
    """Generate `prompts` with the model (+ adapter) into `cell/images`, score them against the subject's
    images into `cell/scores.json`, and return the score report; reuses both when `cell` holds scores of
    the same model, adapter file, prompts, settings, references and encoders. `cell` must lie inside `root`
    (default: its parent folder)."""
    root = cell.parent if root is None else root
    inside(cell, root)
    wanted = {
        "model": model,
        "adapter_sha256": sha256_file(adapter) if adapter else None,
        "prompts": [p.text for p in prompts],
        "settings": dataclasses.asdict(settings),
        "reference": str(subject.images),
        "encoders": encoders,
    }
    marker, scores = cell / EVALUATION_FILE, cell / SCORES_FILE
    if marker.is_file() and scores.is_file() and json.loads(marker.read_text()) == wanted:
        return json.loads(scores.read_text())
    for stale in (marker, cell / IMAGES_DIR):
        if stale.exists() or stale.is_symlink():
            remove(stale, root)
    generate_folder(model, prompts, cell / IMAGES_DIR, settings, adapters=[adapter] if adapter else [],
                    extra=extra)
    report = score_folder(cell / IMAGES_DIR, subject.images, scores, clip=encoders["clip"], dino=encoders["dino"],
                          overwrite=True)
    write_text(marker, json.dumps(wanted, indent=2) + "\n")
    return report
