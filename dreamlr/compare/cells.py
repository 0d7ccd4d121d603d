"""One cell of a comparison: train a run (or reuse / resume the one already in its folder), then generate
its prompt set and score it (or reuse the scores of the same images)."""

from __future__ import annotations

import dataclasses
import gc
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from dreamlr.compare.subjects import Subject
from dreamlr.diffusion import train as trainer
from dreamlr.diffusion.config import DreamBoothConfig
from dreamlr.diffusion.generate import Settings, generate_folder
from dreamlr.evaluation.prompts import Prompt
from dreamlr.evaluation.score import score_folder
from dreamlr.fileio import write_text
from dreamlr.images import sha256_file
from dreamlr.training import ADAPTER_FILE

IMAGES_DIR = "images"
SCORES_FILE = "scores.json"
EVALUATION_FILE = "evaluation.json"  # what the scores in a cell were made from; written last
# keys that name where a run is or how it was started, not what it trains
_LOCATION_KEYS = ("output_dir", "resume_from_checkpoint")


def train_or_reuse(config: DreamBoothConfig) -> str:
    """Make sure `config.output_dir` holds a finished run of `config`: `reused` when it already does,
    `resumed` when an unfinished run of the same config continues from its latest checkpoint, `trained`
    when it starts afresh (a run of another config in the folder is removed first)."""
    run_dir = Path(config.output_dir)
    written = run_dir / "config.yaml"
    same = written.is_file() and _what_it_trains(yaml.safe_load(written.read_text())) == _what_it_trains(config.to_dict())
    if same and (run_dir / ADAPTER_FILE).is_file():
        return "reused"
    if run_dir.exists() and not same:
        shutil.rmtree(run_dir)
    resumed = same and (run_dir / "checkpoints").is_dir() and any((run_dir / "checkpoints").iterdir())
    _reset_peak_memory()
    trainer.train(dataclasses.replace(config, resume_from_checkpoint="latest" if same else None))
    return "resumed" if resumed else "trained"


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
             encoders: dict[str, str], adapter: Path | None = None, extra: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """Generate `prompts` with the model (+ adapter) into `cell/images`, score them against the subject's
    images into `cell/scores.json`, and return the score report; reuses both when `cell` holds scores of
    the same model, adapter file, prompts, settings, references and encoders."""
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
    marker.unlink(missing_ok=True)
    if (cell / IMAGES_DIR).exists():
        shutil.rmtree(cell / IMAGES_DIR)
    generate_folder(model, prompts, cell / IMAGES_DIR, settings, adapters=[adapter] if adapter else [],
                    extra=extra)
    report = score_folder(cell / IMAGES_DIR, subject.images, scores, clip=encoders["clip"], dino=encoders["dino"])
    write_text(marker, json.dumps(wanted, indent=2) + "\n")
    return report
