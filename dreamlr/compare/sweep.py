"""A comparison sweep: every variant on every subject with the same data, seed, steps, prompts, seeds per
image and scorer, plus the base model's row and the real-images row, then the report.

Sweep folder layout:
    sweep.json                       what was compared (variants, subjects, prompts, settings)
    runs/<variant>/<subject>/        the DreamBooth run folder, and eval/ (images/, scores.json); with --seeds,
                                     runs/<variant>/seed-<seed>/<subject>/ for each training seed
    base/<subject>/                  the base model's images/ and scores.json
    results/<label>.json             one record per variant, `base_model` and `real_images` (see records)
    report.md, report.html, figures/ the report (dreamlr.report)
Running the same sweep again reuses every finished run and score, and resumes an unfinished run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamlr.adapters import LAYER_CLASSES, VARIANTS
from dreamlr.compare import records
from dreamlr.compare.cells import IMAGES_DIR, SCORES_FILE, evaluate, gpu_step_memory, train_or_reuse
from dreamlr.compare.matching import ParameterCounter, match_rank
from dreamlr.compare.subjects import Subject
from dreamlr.config_files import parse_set
from dreamlr.diffusion.config import DreamBoothConfig
from dreamlr.diffusion.generate import Settings
from dreamlr.errors import UserError
from dreamlr.evaluation.dreambench import CLIP_DEFAULT, DINO_DEFAULT, IMAGES_PER_PROMPT
from dreamlr.evaluation.prompts import Prompt, load_prompts
from dreamlr.fileio import inside, is_temp_name, remove_stale_temps, write_text
from dreamlr.report import build_report

SWEEP_FILE = "sweep.json"
RESULTS_DIR = "results"
RUNS_DIR = "runs"
BASE_DIR = "base"
EVAL_DIR = "eval"
BASE_LABEL = "base_model"
REAL_LABEL = "real_images"
MATCH_MODES = ("params",)
SET_PER_RUN = ("instance_data_dir", "instance_prompt", "output_dir")  # compare sets these for each run

Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class SweepSpec:
    """What to compare: variants x subjects under one config (`overrides` are `--set` keys for every run,
    `variant_overrides` those for one variant's runs), and how to generate and score."""

    config_file: str | None
    variants: list[str]
    subjects: list[Subject]
    output_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    variant_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    prompts: str = "dreambench"
    max_prompts: int | None = None
    token: str = "sks"
    num_images: int = IMAGES_PER_PROMPT
    steps: int = 50
    guidance: float = 7.5
    clip: str = CLIP_DEFAULT
    dino: str = DINO_DEFAULT
    match: str | None = None
    reference: str | None = None  # the variant the report's differences are taken against (default: the first)
    seeds: list[int] | None = None  # training seeds, one run per variant, subject and seed (default: the config's)

    def check(self) -> None:
        """Raise a UserError for a spec no sweep could run."""
        if not self.variants:
            raise UserError("--variants lists no variant")
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise UserError(f"unknown variant {unknown[0]!r} in --variants; known variants: {', '.join(VARIANTS)}")
        repeated = sorted({v for v in self.variants if self.variants.count(v) > 1})
        if repeated:
            raise UserError(f"--variants names {repeated[0]!r} twice")
        if not self.subjects:
            raise UserError("no subjects: give --subjects DIR1,DIR2 or --dreambench DIR")
        if self.reference is not None and self.reference not in self.variants:
            raise UserError(f"--reference {self.reference!r} is not one of --variants ({', '.join(self.variants)})")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) < len(self.seeds)
                                       or min(self.seeds) < 0):
            raise UserError(f"--seeds must list distinct whole numbers >= 0, not {self.seeds}")
        if self.match is not None and self.match not in MATCH_MODES:
            raise UserError(f"--match {self.match!r} is unknown; choose {', '.join(MATCH_MODES)}")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise UserError(f"--max-prompts must be at least 1, not {self.max_prompts}")
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise UserError(f"--output-dir '{self.output_dir}' is a file; give a folder")
        held = [p for p in self.output_dir.iterdir() if not is_temp_name(p.name)] if self.output_dir.is_dir() else []
        if held and not (self.output_dir / SWEEP_FILE).is_file():
            raise UserError(f"--output-dir '{self.output_dir}' already holds files and is not a `dreamlr compare` "
                            f"folder (no {SWEEP_FILE}); give a new or empty folder")
        for key in SET_PER_RUN:
            if key in self.overrides:
                raise UserError(f"--set {key}: compare sets it for each run (from the subject and --output-dir)")
        for variant, keys in self.variant_overrides.items():
            self._check_variant_overrides(variant, keys)

    def _check_variant_overrides(self, variant: str, keys: dict[str, Any]) -> None:
        if variant not in self.variants:
            raise UserError(f"--set {variant}:…: {variant!r} is not one of --variants ({', '.join(self.variants)})")
        known = {f.name for f in dataclasses.fields(DreamBoothConfig)}
        for key in keys:
            if key.split(".")[0] not in known:
                raise UserError(f"--set {variant}:{key}: unknown config key; `dreamlr train --list-keys` lists them")
            if key in (*SET_PER_RUN, "adapter.variant"):
                raise UserError(f"--set {variant}:{key}: compare sets it for each run")
            if key == "adapter.rank" and self.match and variant != self.variants[0]:
                raise UserError(f"--set {variant}:adapter.rank: --match {self.match} chooses the rank of every "
                                "variant but the first")


def run_sweep(spec: SweepSpec, log: Log = _stderr) -> list[dict[str, Any]]:
    """Run (or finish) the sweep, write its results and report; returns the variant records."""
    spec.check()
    spec = dataclasses.replace(spec, output_dir=spec.output_dir.expanduser().resolve())  # no `..`, no link
    out = spec.output_dir
    for folder in (out, out / RESULTS_DIR, out / BASE_DIR, out / RUNS_DIR):
        inside(folder, out)  # no folder of the sweep may lead out of it
    for folder in (out, out / RESULTS_DIR):
        remove_stale_temps(folder)
    first = spec.subjects[0]
    shared = {s.name: resolve_config(spec, None, s) for s in spec.subjects}  # errors here are the user's
    prompts = {s.name: subject_prompts(spec, s) for s in spec.subjects}
    generation_settings(spec, shared[first.name])  # bad sampling flags fail before any work
    plan = plan_ranks(spec, log) if spec.match else {}
    _write_json(out / SWEEP_FILE, sweep_summary(spec, shared[first.name], prompts, plan))

    base = {"kind": "base_model", "label": BASE_LABEL, "subjects": []}
    base_reports = []
    for subject in spec.subjects:  # a failure here (model, encoders) would fail every row: it stops the sweep
        config = shared[subject.name]
        report = evaluate(out / BASE_DIR / subject.name, config.pretrained_model_name_or_path, prompts[subject.name],
                          generation_settings(spec, config), subject, encoders(spec),
                          extra=_generation_extra(spec, subject), root=out)
        base_reports.append(report)
        base["subjects"].append({"name": subject.name, **_eval_entry(out, out / BASE_DIR / subject.name, report)})
        log(f"[base model] {subject.name}: {_scores_line(report['overall'])}")
    _write_record(out, records.summarize_record(base, base_reports))

    results = [run_variant(spec, variant, shared, prompts, plan.get(variant), log) for variant in spec.variants]
    _write_record(out, real_images_record(spec.subjects, base_reports))
    build_report([out], out)
    return results


def run_variant(spec: SweepSpec, variant: str, shared: dict[str, DreamBoothConfig], prompts: dict[str, list[Prompt]],
                planned: tuple[int, int, int] | Exception | None, log: Log) -> dict[str, Any]:
    """Train, generate and score one variant on every subject; a failing subject is recorded and skipped."""
    out = spec.output_dir
    record: dict[str, Any] = {"kind": "variant", "label": variant, "variant": variant, "subjects": []}
    if isinstance(planned, tuple):
        record.update(rank=planned[0], planned_parameters=planned[1], target_parameters=planned[2],
                      matched_to=spec.variants[0])
    own: dict[tuple[str, int | None], dict[str, Any]] = {}
    for subject, seed in [(subject, seed) for subject in spec.subjects for seed in (spec.seeds or [None])]:
        run_dir = run_folder(spec, variant, subject, seed)
        entry: dict[str, Any] = {"name": subject.name, "run_dir": _relative(run_dir, out)}
        if seed is not None:
            entry["seed"] = seed
        name = subject.name if seed is None else f"{subject.name} (seed {seed})"
        try:
            if isinstance(planned, Exception):
                raise planned
            config = resolve_config(spec, variant, subject, planned[0] if planned else None, seed)
            how = train_or_reuse(config, root=out)
            report = evaluate(run_dir / EVAL_DIR, config.pretrained_model_name_or_path, prompts[subject.name],
                              generation_settings(spec, shared[subject.name]), subject, encoders(spec),
                              adapter=run_dir / "adapter.safetensors", extra=_generation_extra(spec, subject),
                              root=out)
            own[subject.name, seed] = report
            entry.update(records.training_record(run_dir), **gpu_step_memory(config, run_dir), how=how,
                         **_eval_entry(out, run_dir / EVAL_DIR, report))
            log(f"[{variant}] {name}: {how}; {_scores_line(report['overall'])}")
        except Exception as exc:  # noqa: BLE001 - one failing variant must not stop the sweep
            entry.update(_failure(exc))
            log(f"[{variant}] {name}: failed: {entry['error']}")
        record["subjects"].append(entry)
        _write_record(out, records.summarize_record(record, list(own.values())))
    return records.summarize_record(record, list(own.values()))


def run_folder(spec: SweepSpec, variant: str | None, subject: Subject, seed: int | None = None) -> Path:
    """Where a run of the sweep lives: runs/<variant>/<subject>, or runs/<variant>/seed-<seed>/<subject>."""
    folder = spec.output_dir / RUNS_DIR / (variant or "_")
    return (folder if seed is None else folder / f"seed-{seed}") / subject.name


def resolve_config(spec: SweepSpec, variant: str | None, subject: Subject, rank: int | None = None,
                   seed: int | None = None) -> DreamBoothConfig:
    """The config of one run: config file < --set < --set VARIANT:… < the subject, the run folder, the variant,
    its rank and its training seed (--seeds). With prior preservation, the class prompt follows the subject's
    class unless --set gives one."""
    chosen = {**spec.overrides, **spec.variant_overrides.get(variant, {})} if variant else spec.overrides
    overrides = {**chosen, "instance_data_dir": str(subject.images),
                 "instance_prompt": subject.instance_prompt(spec.token),
                 "output_dir": str(run_folder(spec, variant, subject, seed))}
    if seed is not None:
        overrides["seed"] = seed
    if variant is not None:
        overrides["adapter.variant"] = variant
    if rank is not None:
        overrides["adapter.rank"] = rank
    config = DreamBoothConfig.from_sources(spec.config_file, overrides, validate=False)
    if config.with_prior_preservation and "class_prompt" not in chosen:
        config = dataclasses.replace(config, class_prompt=f"a photo of {subject.class_name}")
    config.validate()
    return config


def split_overrides(items: list[str]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """--set items: `key=value` applies to every run, `VARIANT:key=value` to that variant's runs only."""
    common, per_variant = [], {}
    for item in items:
        variant, colon, _ = item.partition("=")[0].partition(":")
        if colon:
            per_variant.setdefault(variant.strip(), []).append(item.partition(":")[2])
        else:
            common.append(item)
    unknown = sorted(set(per_variant) - set(VARIANTS))
    if unknown:
        raise UserError(f"--set {unknown[0]}:…: unknown variant {unknown[0]!r}; known variants: {', '.join(VARIANTS)}")
    return parse_set(common), {variant: parse_set(keys) for variant, keys in per_variant.items()}


def subject_prompts(spec: SweepSpec, subject: Subject) -> list[Prompt]:
    """The prompt set of a subject (DreamBench list by class -- the dataset's own lists where its
    prompts_and_classes.txt has them -- or a file), cut to --max-prompts."""
    return load_prompts(spec.prompts, spec.token, subject.class_name, subject.prompt_lists)[:spec.max_prompts]


def generation_settings(spec: SweepSpec, config: DreamBoothConfig) -> Settings:
    """Sampling settings shared by every row: the run's resolution and seed (the shared config's, also with
    --seeds, so every row's images start from the same noise), the sweep's steps and guidance; sampled on the
    zero-terminal-SNR schedule when the runs were trained on it."""
    settings = Settings(num_images=spec.num_images, steps=spec.steps, guidance=spec.guidance,
                        resolution=config.resolution, seed=config.seed, zero_snr=config.rescale_betas_zero_snr)
    settings.check()
    return settings


def encoders(spec: SweepSpec) -> dict[str, str]:
    return {"clip": spec.clip, "dino": spec.dino}


def plan_ranks(spec: SweepSpec, log: Log) -> dict[str, tuple[int, int, int] | Exception]:
    """For --match params: per variant (rank, its trainable parameters, the first variant's), or the error
    that kept it from being matched. The first variant's own config sets the target."""
    subject, first = spec.subjects[0], spec.variants[0]
    reference = resolve_config(spec, first, subject)
    counter = ParameterCounter(reference.pretrained_model_name_or_path)
    target = counter.count(reference)
    plan: dict[str, tuple[int, int, int] | Exception] = {first: (reference.adapter.get("rank", 8), target, target)}
    for variant in spec.variants[1:]:
        try:
            adapter = resolve_config(spec, variant, subject, rank=2).unet_adapter_config()  # any valid rank
            step = LAYER_CLASSES[variant].rank_step(adapter)
            def count_at(rank: int, variant: str = variant) -> int:
                return counter.count(resolve_config(spec, variant, subject, rank))

            rank, count = match_rank(count_at, target, step)
            plan[variant] = (rank, count, target)
            log(f"[{variant}] rank {rank}: {count:,} trainable parameters ({first}: {target:,})")
        except Exception as exc:  # noqa: BLE001 - recorded as the variant's failure
            plan[variant] = exc
    return plan


def sweep_summary(spec: SweepSpec, config: DreamBoothConfig, prompts: dict[str, list[Prompt]],
                  plan: dict[str, Any]) -> dict[str, Any]:
    """sweep.json: the comparison's setup, for the report and for people."""
    settings = generation_settings(spec, config)
    return {
        "variants": spec.variants,
        "reference": spec.reference or spec.variants[0],
        "seeds": spec.seeds,
        "ranks": {v: p[0] for v, p in plan.items() if isinstance(p, tuple)},
        "target_parameters": next((p[2] for p in plan.values() if isinstance(p, tuple)), None),
        "match": spec.match,
        "config_file": spec.config_file,
        "overrides": spec.overrides,
        "variant_overrides": spec.variant_overrides,
        "subjects": [{"name": s.name, "images": str(s.images), "class_name": s.class_name,
                      "instance_prompt": s.instance_prompt(spec.token),
                      "prompts": [p.text for p in prompts[s.name]]} for s in spec.subjects],
        "training": {key: getattr(config, key) for key in (
            "pretrained_model_name_or_path", "resolution", "max_train_steps", "train_batch_size",
            "gradient_accumulation_steps", "learning_rate", "lr_scheduler", "with_prior_preservation",
            "train_text_encoder", "mixed_precision", "seed")} | {"adapter": config.adapter},
        "generation": {**dataclasses.asdict(settings), "prompts": spec.prompts, "token": spec.token},
        "encoders": encoders(spec),
    }


def real_images_record(subjects: list[Subject], reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The real-images row from each subject's score report: its references against each other (leave-one-out)."""
    entries = [{"name": s.name, "status": "done", "error": None, "metrics": records.pooled_real([r])}
               for s, r in zip(subjects, reports)]
    return {"kind": "real_images", "label": REAL_LABEL, "subjects": entries, "status": "done", "error": None,
            "metrics": records.pooled_real(reports)}


def _eval_entry(out: Path, cell: Path, report: dict[str, Any]) -> dict[str, Any]:
    return {"status": "done", "error": None, "images": _relative(cell / IMAGES_DIR, out),
            "scores": _relative(cell / SCORES_FILE, out), "metrics": report["overall"]}


def _failure(exc: Exception) -> dict[str, Any]:
    """A failed subject's status, one-line error and, for an unexpected error, its traceback."""
    if isinstance(exc, UserError):
        return {"status": "failed", "error": str(exc)}
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"status": "failed", "error": f"{type(exc).__name__}: {message}".rstrip(": "),
            "traceback": "".join(traceback.format_exception(exc))}


def _generation_extra(spec: SweepSpec, subject: Subject) -> dict[str, Any]:
    extra = {"prompts": spec.prompts, "token": spec.token, "class_name": subject.class_name}
    return {**extra, "prompt_lists": subject.prompt_lists} if subject.prompt_lists else extra


def _scores_line(overall: dict[str, Any]) -> str:
    return ", ".join(f"{name} {overall[m]['mean']:.3f}" for m, name in (("dino", "DINO"), ("clip_i", "CLIP-I"),
                                                                         ("clip_t", "CLIP-T")))


def _relative(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path, root)).as_posix()


def _write_record(out: Path, record: dict[str, Any]) -> None:
    _write_json(out / RESULTS_DIR / f"{record['label']}.json", record)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
