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
from dreamlr.diffusion.sample_prompts import PROMPTS_FILE, SamplePrompt
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
    group: str = ""  # the sweep it belongs to (rows are ranked only against rows of the same group)
    own_settings: dict[str, Any] = field(default_factory=dict)  # its `--set VARIANT:key=value` keys
    references_of: Row | None = None  # the real-images row: the base-model row whose score files list them
    _scores: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

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

    @property
    def variant_name(self) -> str:
        """The label without a sweep prefix."""
        return self.record.get("label", self.label)

    def subject(self, name: str) -> dict[str, Any] | None:
        """This row's entry for a subject, when it finished (the first training seed's, with several)."""
        return next(iter(self.entries(name)), None)

    def entries(self, name: str | None = None) -> list[dict[str, Any]]:
        """This row's finished entries (one per subject, or per subject and training seed), of one subject or
        all."""
        return [e for e in self.record.get("subjects", []) if e.get("status") == "done"
                and (name is None or e["name"] == name)]

    def score_report(self, entry: dict[str, Any]) -> dict[str, Any] | None:
        """An entry's score JSON (read once), when it has one."""
        relative = entry.get("scores")
        if not relative:
            return None
        if relative not in self._scores:
            path = self.path(relative)
            self._scores[relative] = _read_json(path) if path.is_file() else {}
        return self._scores[relative] or None

    def observations(self, metric: str, subject: str | None = None) -> dict[tuple, float]:
        """Per-image scores keyed by (subject, prompt, training seed, image seed), for `dreamlr.report.stats`;
        the real-images row gives each reference image's leave-one-out score (keyed by its file)."""
        out: dict[tuple, float] = {}
        if self.references_of is not None:
            for entry in self.references_of.entries(subject):
                for ref in (self.references_of.score_report(entry) or {}).get("references", []):
                    if ref.get(metric) is not None:
                        out[(entry["name"], ref["file"], None, 0)] = float(ref[metric])
            return out
        for entry in self.entries(subject):
            for image in (self.score_report(entry) or {}).get("per_image", []):
                if image.get(metric) is not None:
                    out[(entry["name"], image["prompt"], entry.get("seed"), image["seed"])] = float(image[metric])
        return out

    def step_times(self) -> list[float]:
        """Every optimizer step's seconds over this row's finished runs (their metrics.jsonl)."""
        return [m["step_seconds"] for e in self.entries() if e.get("run_dir")
                for m in records.read_metrics(self.path(e["run_dir"])) if "step_seconds" in m]

    def all_images(self, subject: str) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
        """Every image this row generated for a subject (every training seed): prompt -> [(file, its scores)],
        the scores from the score JSON (with `train_seed` added)."""
        out: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
        for entry in self.entries(subject):
            if not entry.get("images") or not self.path(entry["images"]).is_dir():
                continue
            folder = self.path(entry["images"])
            scored = {image["file"]: image for image in (self.score_report(entry) or {}).get("per_image", [])}
            for e in read_manifest(folder):
                info = {**scored.get(e.file, {"seed": e.seed}), "train_seed": entry.get("seed")}
                out.setdefault(e.prompt, []).append((folder / e.file, info))
        return out

    def sample_steps(self, subject: str) -> list[tuple[int, list[Path]]]:
        """Validation samples of a subject's run across training: (step, images), in step order."""
        entry = self.subject(subject)
        if entry is None or not entry.get("run_dir"):
            return []
        folder = self.path(entry["run_dir"]) / "samples"
        if not folder.is_dir():
            return []
        steps = []
        for step_dir in folder.glob("step-*"):
            if step_dir.name[5:].isdigit():  # validation images are 0.png, 1.png, …; sample prompts prompt-KK.png
                images = sorted((p for p in step_dir.glob("*.png") if p.stem.isdigit()), key=lambda p: int(p.stem))
                if images:
                    steps.append((int(step_dir.name[5:]), images))
        return sorted(steps)

    def sample_prompt_steps(self, subject: str) -> list[tuple[str, list[tuple[int, Path]]]]:
        """The run's sample-prompt images across training (`sample_prompts`): (prompt, [(step, image)])."""
        entry = self.subject(subject)
        if entry is None or not entry.get("run_dir"):
            return []
        folder = self.path(entry["run_dir"]) / "samples"
        try:
            prompts = json.loads((folder / PROMPTS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        steps = sorted(int(p.name[5:]) for p in folder.glob("step-*") if p.name[5:].isdigit())
        out = []
        for k, prompt in enumerate(prompts):
            name = SamplePrompt(**prompt).file_name(k)
            found = [(step, folder / f"step-{step}" / name) for step in steps
                     if (folder / f"step-{step}" / name).is_file()]
            if found:
                out.append((prompt["text"], found))
        return out

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
    references: dict[str, str] = field(default_factory=dict)  # group -> label of its reference variant row
    cache: dict[Any, Any] = field(default_factory=dict, repr=False)  # statistics computed once per report

    @property
    def rows(self) -> list[Row]:
        return self.variants + self.scale

    @property
    def groups(self) -> list[str]:
        """The sweeps (groups of rows ranked together), in order."""
        return list(dict.fromkeys(row.group for row in self.rows))

    def group_rows(self, group: str) -> list[Row]:
        return [row for row in self.rows if row.group == group]

    def reference(self, group: str) -> Row | None:
        """The variant row a group's differences are taken against."""
        return next((row for row in self.variants if row.group == group and row.label == self.references.get(group)),
                    None)

    def base(self, group: str) -> Row | None:
        return next((row for row in self.scale if row.group == group and row.kind == "base_model"), None)


RUNS_GROUP = "run folders"


def load(sources: list[str | os.PathLike], reference: str | None = None) -> ReportData:
    """Read sweeps and run folders; labels get the source's folder name as a prefix when there are several.
    Each sweep is a group ranked on its own (plain run folders form one group), against `reference` (a variant
    of every sweep; default: the sweep's own reference, else its first variant; for run folders the first)."""
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
    _choose_references(data, reference)
    return data


def _choose_references(data: ReportData, reference: str | None) -> None:
    setups = {setup["source"]: setup for setup in data.setups}
    for group in data.groups:
        rows = [row for row in data.variants if row.group == group]
        if not rows:
            continue
        wanted = reference or setups.get(group, {}).get("reference")
        if wanted is None:
            data.references[group] = rows[0].label
            continue
        match = next((row for row in rows if wanted in (row.variant_name, row.label)), None)
        if match is None:
            names = ", ".join(row.variant_name for row in rows)
            where = "the run folders" if group == RUNS_GROUP else f"'{group}'"
            raise UserError(f"--reference {wanted!r} is not a row of {where} ({names})")
        data.references[group] = match.label


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
    own = sweep.get("variant_overrides") or {}
    rows = []
    for label in order:
        record = found[label]
        rows.append(Row(f"{folder.name}/{label}" if prefix else label, record, folder, group=str(folder),
                        own_settings=own.get(label, {}) if record["kind"] == "variant" else {}))
    base = next((row for row in rows if row.kind == "base_model"), None)
    for row in rows:
        if row.kind == "real_images":
            row.references_of = base
        (data.scale if row.kind in SCALE_TITLES else data.variants).append(row)
    data.scale.sort(key=lambda row: (data.groups.index(row.group) if row.group in data.groups else 0,
                                     list(SCALE_TITLES).index(row.kind)))
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
    data.variants.append(Row(label, record, folder, plain_run=True, group=RUNS_GROUP))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"'{path}' cannot be read as JSON ({exc}); run `dreamlr compare` again to rewrite it") from None
