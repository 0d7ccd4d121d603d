"""Build a comparison report: figures under `figures/`, then `report.md` and a self-contained `report.html`."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from dreamlr.errors import UserError
from dreamlr.fileio import inside, remove, write_text
from dreamlr.images import image_files
from dreamlr.report import plots
from dreamlr.report.data import ReportData, Row, load
from dreamlr.report.document import (
    Block,
    Bullets,
    Gallery,
    Heading,
    Paragraph,
    Picture,
    TableBlock,
    to_html_page,
    to_markdown_text,
)
from dreamlr.report.paired import row_stats
from dreamlr.report.stats import BOOTSTRAP_DRAWS, BOOTSTRAP_SEED
from dreamlr.report.tables import (
    EMPTY,
    METRICS,
    Cell,
    Table,
    difference_table,
    main_table,
    ordered_rows,
    row_title,
    show_estimate,
    step_seconds,
    subject_tables,
)

FIGURES_DIR = "figures"
TITLE = "Adapter comparison"
_OWN_FIGURES = re.compile(r"(loss|parameters|grid-.+|subject-.+)\.png")

TABLE_NOTE = (
    "Scores: mean over subjects (each subject's mean over its prompts, images and training seeds first) ± the "
    "half-width of its 95% bootstrap interval (DreamBench protocol: DINO and CLIP-I against each real image, "
    "CLIP-T against the prompt without the rare token). **Bold**: better than the sweep's reference variant "
    "beyond noise (the paired difference's interval excludes 0; see Paired differences). Final loss: mean of "
    "the last 10% of steps. s/step: median optimizer-step seconds over every step of the row's runs "
    "(interquartile range), bold only when its range lies below every other row's. Adapter memory: the "
    "adapter's own training state (parameters, gradients and AdamW's two moments), computed from its size. "
    "GPU step MiB (GPU sweeps only): the allocator's peak over the training steps minus the frozen model's "
    "weights, median over the row's runs (min–max), bold only when its range lies below every other row's. "
    "† trained with its own `--set VARIANT:key=value` settings (see the setup). Rows are ranked only within "
    "their sweep; the base-model and real-images rows show the scale."
)
DIFFERENCE_NOTE = (
    "Paired differences: each variant's per-image score minus the reference's (or the base model's) for the "
    "same subject, prompt and image seed (and training seed), averaged within each subject, then over subjects "
    "(each subject weighs the same). [low, high]: 95% percentile bootstrap interval over subjects, and prompts "
    f"and training seeds within them ({BOOTSTRAP_DRAWS} draws, seed {BOOTSTRAP_SEED}). **Bold**: the interval "
    "excludes 0, a difference beyond noise."
)
MAX_GALLERY_IMAGES = 600  # generated images shown per report page (thumbnails); more would make it unwieldy


def build_report(sources: list[str | os.PathLike], output_dir: str | os.PathLike,
                 reference: str | None = None) -> Path:
    """Write `report.md`, `report.html` and `figures/*.png` for the sweeps / run folders in `sources` into
    `output_dir`, differences taken against `reference` (default: each sweep's own); returns the HTML file."""
    data = load(sources, reference)
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir '{out}' is a file; give a folder")
    figures = out / FIGURES_DIR
    if figures.exists() or figures.is_symlink():
        inside(figures, out)  # a `figures` link to elsewhere is refused, never followed
    if figures.is_dir():
        for old in figures.iterdir():
            if _OWN_FIGURES.fullmatch(old.name):
                remove(old, out)
    blocks = document(data, figures)
    write_text(out / "report.md", to_markdown_text(blocks, out))
    return write_text(out / "report.html", to_html_page(blocks, TITLE))


def document(data: ReportData, figures: Path) -> list[Block]:
    """The report's content, drawing its figures into `figures`."""
    blocks: list[Block] = [Heading(TITLE, 1), *(Paragraph(line) for line in setup_lines(data))]
    blocks += [Heading("Summary"), Bullets(summary_lines(data))]
    blocks += [Heading("Results"), TableBlock(main_table(data), TABLE_NOTE)]
    if any(row.kind == "variant" for row in data.rows):
        blocks += [Heading("Paired differences"), TableBlock(difference_table(data), DIFFERENCE_NOTE)]
    failures = [f"**{row.label}**: {row.record['error']}" for row in data.rows if row.record.get("error")]
    if failures:
        blocks += [Heading("Failures"), Bullets(failures)]
    loss = plots.loss_figure(data.variants, figures / "loss.png", shared=_one_sweep(data))
    if loss:
        blocks += [Heading("Training loss"), Picture(loss, "training loss per variant")]
    stats = row_stats(data)
    scatter = plots.parameters_figure(data.variants, data.scale, figures / "parameters.png",
                                      {row.label: stats[row.label].mean for row in data.rows},
                                      {row.label: step_seconds(row) for row in data.variants})
    if scatter:
        blocks += [Heading("Scores vs cost (Pareto)"),
                   Picture(scatter, "metrics against trainable parameters and seconds per step"),
                   Paragraph("Each point: a variant's mean with its 95% interval; the line joins the variants no other "
                             "beats on both the score and the cost (the Pareto front).")]
    tables = subject_tables(data)
    if tables:
        blocks.append(Heading("Per subject"))
        for title, table in tables:
            blocks += [Heading(title, 3), TableBlock(table)]
    budget = [MAX_GALLERY_IMAGES]
    for subject, folder in data.subjects.items():
        blocks += image_section(data, subject, folder, figures, budget)
    return blocks


def _one_sweep(data: ReportData) -> bool:
    """Every variant row comes from one sweep (so they saw the same images, noise and timesteps)."""
    return len({row.group for row in data.variants}) == 1 and not any(row.plain_run for row in data.variants)


def image_section(data: ReportData, subject: str, folder: Path, figures: Path, budget: list[int]) -> list[Block]:
    """The subject's real images, the grid of generated ones, the per-prompt scores, every generated image
    per prompt (while `budget[0]` images remain) and the validation samples across training."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", subject)
    blocks: list[Block] = [Heading(f"Images: {subject}")]
    try:
        strip = plots.subject_figure(image_files(folder, "subject"), figures / f"subject-{slug}.png")
    except UserError:  # the real images have moved since the sweep
        strip = None
    if strip:
        blocks += [Paragraph(f"Real images (`{folder}`):"), Picture(strip, f"real images of {subject}")]
    rows = [row for row in ordered_rows(data) if row.kind != "real_images"]
    columns = [(row.title if row.kind != "variant" else _column_title(row), row.images(subject)) for row in rows]
    columns = [(title, images) for title, images in columns if images]
    prompts = list(dict.fromkeys(p for _, images in columns for p in images))
    grid = plots.grid_figure(prompts, columns, figures / f"grid-{slug}.png")
    if grid:
        blocks += [Paragraph("Generated: the first image of each prompt. Every column starts each prompt from the "
                             "same noise, so differences come from the adapters."),
                   Picture(grid, f"generated images of {subject}, prompts x variants")]
    table = prompt_table(data, subject, rows, prompts)
    if table:
        blocks += [Heading(f"Per prompt: {subject}", 3), TableBlock(table, "Mean DINO / CLIP-I / CLIP-T of each "
                                                                          "prompt's images (and training seeds).")]
    blocks += _gallery(subject, rows, prompts, budget)
    blocks += _samples(subject, rows)
    return blocks


def prompt_table(data: ReportData, subject: str, rows: list[Row], prompts: list[str]) -> Table | None:
    """Prompts down, rows across: each prompt's mean DINO / CLIP-I / CLIP-T."""
    if not prompts:
        return None
    means = {}
    for row in rows:
        for key, _ in METRICS:
            values: dict[str, list[float]] = {}
            for (_, prompt, _, _), value in row.observations(key, subject).items():
                values.setdefault(prompt, []).append(value)
            means[row.label, key] = {p: sum(v) / len(v) for p, v in values.items()}
    cells = []
    for prompt in prompts:
        line = [Cell(prompt)]
        for row in rows:
            shown = [means[row.label, key].get(prompt) for key, _ in METRICS]
            line.append(Cell(EMPTY if all(v is None for v in shown) else
                             " / ".join(EMPTY if v is None else f"{v:.3f}" for v in shown)))
        cells.append(line)
    return Table(["prompt", *(row_title(row) for row in rows)], cells, [False] * len(cells))


def _gallery(subject: str, rows: list[Row], prompts: list[str], budget: list[int]) -> list[Block]:
    """Every generated image of each prompt, a line per row, its scores on hover, while the budget lasts."""
    images = {row.label: row.all_images(subject) for row in rows}
    blocks: list[Block] = []
    for prompt in prompts:
        lines = []
        for row in rows:
            shown = images[row.label].get(prompt, [])[:max(0, budget[0])]
            budget[0] -= len(shown)
            if shown:
                lines.append((row_title(row), [(path, _hover(info)) for path, info in shown]))
        if lines:
            blocks.append(Gallery(f"“{prompt}”", lines))
    left_out = sum(len(v) for by_prompt in images.values() for v in by_prompt.values()) - sum(
        len(items) for block in blocks for _, items in block.rows)
    if blocks:
        blocks.insert(0, Heading(f"Every image: {subject}", 3))
        blocks.insert(1, Paragraph("Every generated image per prompt (same image seeds in every row); hover for its "
                                   "scores, click to enlarge."))
    if left_out > 0:
        blocks.append(Paragraph(f"{left_out} more images of {subject} are not shown (the page shows at most "
                                f"{MAX_GALLERY_IMAGES}); they are in each run's `eval/images`."))
    return blocks


def _hover(info: dict[str, Any]) -> str:
    parts = [f"image seed {info.get('seed')}"]
    if info.get("train_seed") is not None:
        parts.append(f"training seed {info['train_seed']}")
    parts += [f"{name} {info[key]:.3f}" for key, name in METRICS if info.get(key) is not None]
    return " · ".join(parts)


def _samples(subject: str, rows: list[Row]) -> list[Block]:
    """Each variant's validation samples across training steps, and its sample-prompt images."""
    lines, prompt_lines = [], []
    for row in rows:
        steps = row.sample_steps(subject)
        if steps:
            lines.append((row_title(row), [(images[0], f"step {step}") for step, images in steps]))
        for prompt, found in row.sample_prompt_steps(subject):
            prompt_lines.append((f"{row_title(row)}: {prompt}", [(path, f"step {step}") for step, path in found]))
    blocks: list[Block] = []
    if lines:
        blocks += [Heading(f"Validation samples across training: {subject}", 3),
                   Gallery("first validation image at each saved step (left to right)", lines)]
    if prompt_lines:
        blocks += [Heading(f"Sample prompts across training: {subject}", 3),
                   Gallery("each sample prompt at each saved step (left to right)", prompt_lines)]
    return blocks


def _column_title(row: Row) -> str:
    rank = row.record.get("rank")
    return f"{row.label} (r={rank})" if rank is not None else row.label


def setup_lines(data: ReportData) -> list[str]:
    """One line per sweep: model, training, subjects, prompts, sampling and encoders."""
    lines = []
    for setup in data.setups:
        training, generation, encoders = setup["training"], setup["generation"], setup["encoders"]
        subjects = ", ".join(f"{s['name']} ({s['class_name']})" for s in setup["subjects"])
        prompts = max((len(s["prompts"]) for s in setup["subjects"]), default=0)
        line = (f"Model `{training['pretrained_model_name_or_path']}`, {training['max_train_steps']} steps at "
                f"learning rate {training['learning_rate']:g} ({training['lr_scheduler']}), resolution "
                f"{training['resolution']}, seed {training['seed']}. Subjects: {subjects}. "
                f"{_count(prompts, 'prompt')} (`{generation['prompts']}`) × {_count(generation['num_images'], 'image')}, "
                f"{generation['steps']} sampling steps, guidance {generation['guidance']:g}. "
                f"Encoders: CLIP `{encoders['clip']}`, DINO `{encoders['dino']}`.")
        if setup.get("seeds"):
            line += f" Training seeds: {', '.join(map(str, setup['seeds']))} (images use seed {training['seed']})."
        own = []
        if setup.get("variant_overrides"):
            own.append("Per-variant settings (on top of the shared ones): " + "; ".join(
                f"{variant} " + ", ".join(f"`{key}={value}`" for key, value in keys.items())
                for variant, keys in setup["variant_overrides"].items()) + " (rows marked †).")
        if setup.get("match") == "params" and setup["variants"]:
            target = setup.get("target_parameters")
            own.append(f"Parameter-matched: each variant's rank was chosen to bring its trainable parameters "
                       f"closest to {setup['variants'][0]}'s" + (f" ({target:,})" if target else "")
                       + "; the percentage is the difference.")
        prefix = f"`{setup['source']}`: " if len(data.setups) > 1 else ""
        lines += [prefix + text for text in (line, *own)]
    differing = setting_differences(data.setups)
    if len(data.setups) > 1:
        lines.append(("The sweeps differ in " + ", ".join(f"`{name}`" for name in differing) if differing else
                      "The sweeps share their settings") + "; each sweep's rows are ranked and compared only among "
                     "themselves, against its own reference and base model.")
    return lines


def setting_differences(setups: list[dict[str, Any]]) -> list[str]:
    """The settings (training keys, sampling, encoders, subjects, prompts, seeds) in which sweeps differ."""
    def settings(setup: dict[str, Any]) -> dict[str, Any]:
        flat = {**setup.get("training", {}), **{f"generation.{k}": v for k, v in setup.get("generation", {}).items()},
                **{f"encoders.{k}": v for k, v in setup.get("encoders", {}).items()},
                "subjects": [s["name"] for s in setup.get("subjects", [])],
                "prompts": [s.get("prompts") for s in setup.get("subjects", [])],
                "seeds": setup.get("seeds"), "overrides": setup.get("overrides"),
                "variant_overrides": setup.get("variant_overrides")}
        return {key: json.dumps(value, sort_keys=True, default=str) for key, value in flat.items()}
    flats = [settings(setup) for setup in setups]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [key for key in keys if len({flat.get(key) for flat in flats}) > 1]


def summary_lines(data: ReportData) -> list[str]:
    """At a glance, sweep by sweep: per metric, which variants differ from the reference beyond noise (or that
    none does), which beat the base model, the fastest step beyond noise, and what failed."""
    lines = []
    stats = row_stats(data)
    several = len(data.groups) > 1
    for group in data.groups:
        variants = [row for row in data.variants if row.group == group]
        reference = data.reference(group)
        prefix = f"`{group}`: " if several else ""
        if reference is None:
            continue
        others = [row for row in variants if row is not reference]
        for key, name in METRICS:
            if stats[reference.label].mean[key] is None:
                continue
            apart = [(row, stats[row.label].vs_reference[key]) for row in others]
            apart = [(row, diff) for row, diff in apart if diff is not None and diff.excludes_zero]
            if not others:
                text = f"{name}: {reference.label} {show_estimate(stats[reference.label].mean[key])}"
            elif not apart:
                text = f"{name}: no variant differs from {reference.label} beyond noise"
            else:
                text = f"{name} vs {reference.label}: " + "; ".join(
                    f"**{row.label}** {'higher' if diff.mean > 0 else 'lower'} by {show_estimate(diff, signed=True)}"
                    for row, diff in apart)
            above = [row.label for row in variants if (d := stats[row.label].vs_base[key]) is not None
                     and d.excludes_zero and d.mean > 0]
            if data.base(group) is not None:
                text += (f" (above the base model beyond noise: {', '.join(above)})" if above
                         else " (none above the base model beyond noise)")
            lines.append(prefix + text)
        timed = {row.label: step_seconds(row) for row in variants}
        timed = {label: q for label, q in timed.items() if q}
        if len(timed) > 1:
            fastest = min(timed, key=lambda label: timed[label]["median"])
            clear = all(timed[fastest]["p75"] < q["p25"] for label, q in timed.items() if label != fastest)
            lines.append(prefix + (f"Fastest step: **{fastest}** ({timed[fastest]['median']:.3g} s median)" if clear
                                   else "Step time: no variant is faster than the others beyond noise"))
    unfinished = [f"{row.label} ({row.record.get('status')})" for row in data.variants
                  if row.record.get("status") != "done"]
    if unfinished:
        lines.append("Not finished: " + ", ".join(unfinished) + (" — see Failures" if any(
            row.record.get("error") for row in data.variants) else ""))
    return lines or ["No scores yet."]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


