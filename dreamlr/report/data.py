"""What a report shows, read from comparison sweeps (`dreamlr compare` folders) and plain run folders
(`dreamlr train` folders, scored when they hold a compare cell's `eval/scores.json`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dreamlr.compare import records
from dreamlr.errors import UserError
from dreamlr.evaluation.manifest import read_manifest

SCALE_TITLES = {"base_model": "base model (no adapter)", "real_images": "real images (leave-one-out)"}


@dataclass
class Row:
    """One row of the report: a variant's (or a plain run's) record, or the base-model / real-images row."""

    label: str
    record: dict[str, Any]
    root: Path  # the folder the record's paths are relative to
    plain_run: bool = False  # a run folder given directly, not a sweep's row

    @property
    def kind(self) -> str:
        return self.record["kind"]

    @property
    def title(self) -> str:
        """The row's name in tables: scale rows spelled out, unfinished variants flagged."""
        if self.kind in SCALE_TITLES:
            source = self.label[:-len(self.kind)].rstrip("/")  # a sweep's name, when the report has several
            return f"{source}: {SCALE_TITLES[self.kind]}" if source else SCALE_TITLES[self.kind]
        status = self.record.get("status")
        return self.label if status == "done" else f"{self.label} ({status})"

    def subject(self, name: str) -> dict[str, Any] | None:
        """This row's entry for a subject, when it finished."""
        return next((e for e in self.record["subjects"] if e["name"] == name and e.get("status") == "done"), None)

    def path(self, relative: str) -> Path:
        return self.root / relative

    def images(self, subject: str) -> dict[str, Path]:
        """The first image of each prompt this row generated for a subject: prompt -> file."""
        entry = self.subject(subject)
        if entry is None or not entry.get("images") or not self.path(entry["images"]).is_dir():
            return {}
        folder = self.path(entry["images"])
        return {e.prompt: folder / e.file for e in read_manifest(folder) if e.image_index == 0}

    def loss_curve(self) -> list[tuple[int, float]]:
        """(step, loss) averaged over the finished subjects' runs, at the steps they all logged."""
        curves = [dict(records.loss_curve(self.path(e["run_dir"]))) for e in self.record["subjects"]
                  if e.get("status") == "done" and e.get("run_dir")]
        curves = [c for c in curves if c]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        return [(s, sum(c[s] for c in curves) / len(curves)) for s in steps]


@dataclass
class ReportData:
    """Rows of every source, in order, plus what the sources say about their setup."""

    variants: list[Row] = field(default_factory=list)
    scale: list[Row] = field(default_factory=list)
    setups: list[dict[str, Any]] = field(default_factory=list)
    subjects: dict[str, Path] = field(default_factory=dict)  # name -> folder of real images

    @property
    def rows(self) -> list[Row]:
        return self.variants + self.scale


def load(sources: list[str | os.PathLike]) -> ReportData:
    """Read sweeps and run folders; labels get the source's folder name as a prefix when there are several."""
    if not sources:
        raise UserError("give at least one sweep or run folder")
    data = ReportData()
    prefix = len(sources) > 1
    for source in sources:
        folder = Path(source).expanduser()
        if (folder / "results").is_dir():
            _load_sweep(folder, data, prefix)
        elif (folder / "config.yaml").is_file():
            _load_run(folder, data)
        else:
            raise UserError(f"'{source}' is neither a `dreamlr compare` folder (with results/) nor a run folder "
                            "(with config.yaml)")
    _relabel_runs(data.variants)
    labels = [row.label for row in data.rows]
    repeated = next((label for label in labels if labels.count(label) > 1), None)
    if repeated:
        raise UserError(f"two rows are both called '{repeated}'; give run folders with different names")
    return data


def _relabel_runs(rows: list[Row]) -> None:
    """Run folders with the same name (runs/lora/dog, runs/dora/dog) are labelled with their parent too."""
    labels = [row.label for row in rows]
    for row in rows:
        if row.plain_run and labels.count(row.label) > 1:
            row.label = row.record["label"] = f"{row.root.parent.name}/{row.root.name}"


def _load_sweep(folder: Path, data: ReportData, prefix: bool) -> None:
    sweep = _read_json(folder / "sweep.json") if (folder / "sweep.json").is_file() else {}
    found = {}
    for path in sorted((folder / "results").glob("*.json")):
        record = _read_json(path)
        found[record["label"]] = record
    order = [v for v in sweep.get("variants", []) if v in found] + sorted(set(found) - set(sweep.get("variants", [])))
    for label in order:
        record = found[label]
        row = Row(f"{folder.name}/{label}" if prefix else label, record, folder)
        (data.scale if record["kind"] in SCALE_TITLES else data.variants).append(row)
    data.scale.sort(key=lambda row: list(SCALE_TITLES).index(row.kind))
    if sweep:
        data.setups.append({"source": str(folder), **sweep})
        for subject in sweep.get("subjects", []):
            data.subjects.setdefault(subject["name"], Path(subject["images"]))


def _load_run(folder: Path, data: ReportData) -> None:
    """A row for a plain run folder: its training record, and its scores when it has `eval/scores.json`."""
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    images = Path(config.get("instance_data_dir") or folder.name)
    subject, label = images.name, folder.name
    data.subjects.setdefault(subject, images)
    finished = (folder / "adapter.safetensors").is_file()
    entry: dict[str, Any] = {"name": subject, "run_dir": ".", "status": "done" if finished else "pending",
                             "error": None}
    reports = []
    scores = folder / "eval" / "scores.json"
    if finished:
        entry.update(records.training_record(folder))
        if scores.is_file():
            reports.append(_read_json(scores))
            entry.update(images="eval/images", scores="eval/scores.json", metrics=reports[0]["overall"])
    record = records.summarize_record({"kind": "variant", "label": label, "variant": config.get("adapter", {}).get(
        "variant"), "subjects": [entry]}, reports)
    data.variants.append(Row(label, record, folder, plain_run=True))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"'{path}' cannot be read as JSON ({exc}); run `dreamlr compare` again to rewrite it") from None
