"""Build a comparison report: figures under `figures/`, then `report.md` and a self-contained `report.html`."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from dreamlr.errors import UserError
from dreamlr.fileio import write_text
from dreamlr.images import image_files
from dreamlr.report import plots
from dreamlr.report.data import ReportData, Row, load
from dreamlr.report.document import (
    Block,
    Bullets,
    Heading,
    Paragraph,
    Picture,
    TableBlock,
    to_html_page,
    to_markdown_text,
)
from dreamlr.report.tables import METRICS, main_table, metric_column, subject_tables

FIGURES_DIR = "figures"
TITLE = "Adapter comparison"
_OWN_FIGURES = re.compile(r"(loss|parameters|grid-.+|subject-.+)\.png")

TABLE_NOTE = (
    "Mean ± std over every generated image (DreamBench protocol: DINO and CLIP-I against each real image, "
    "CLIP-T against the prompt without the rare token). **Bold**: best variant per column. Final loss: mean "
    "of the last 10% of steps. Train s: summed optimizer-step time. Peak MiB: GPU allocator peak, or the "
    "process's resident-set peak on a CPU. The base-model and real-images rows show the scale."
)


def build_report(sources: list[str | os.PathLike], output_dir: str | os.PathLike) -> Path:
    """Write `report.md`, `report.html` and `figures/*.png` for the sweeps / run folders in `sources` into
    `output_dir`; returns the HTML file."""
    data = load(sources)
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--output-dir '{out}' is a file; give a folder")
    figures = out / FIGURES_DIR
    if figures.is_dir():
        for old in figures.iterdir():
            if _OWN_FIGURES.fullmatch(old.name):
                old.unlink()
    blocks = document(data, figures)
    write_text(out / "report.md", to_markdown_text(blocks, out))
    return write_text(out / "report.html", to_html_page(blocks, TITLE))


def document(data: ReportData, figures: Path) -> list[Block]:
    """The report's content, drawing its figures into `figures`."""
    blocks: list[Block] = [Heading(TITLE, 1), *(Paragraph(line) for line in setup_lines(data))]
    blocks += [Heading("Summary"), Bullets(summary_lines(data))]
    blocks += [Heading("Results"), TableBlock(main_table(data), TABLE_NOTE)]
    failures = [f"**{row.label}**: {row.record['error']}" for row in data.rows if row.record.get("error")]
    if failures:
        blocks += [Heading("Failures"), Bullets(failures)]
    loss = plots.loss_figure(data.variants, figures / "loss.png")
    if loss:
        blocks += [Heading("Training loss"), Picture(loss, "training loss per variant")]
    scatter = plots.parameters_figure(data.variants, data.scale, figures / "parameters.png")
    if scatter:
        blocks += [Heading("Scores vs trainable parameters"), Picture(scatter, "metrics against trainable parameters")]
    tables = subject_tables(data)
    if tables:
        blocks.append(Heading("Per subject"))
        for title, table in tables:
            blocks += [Heading(title, 3), TableBlock(table)]
    for subject, folder in data.subjects.items():
        blocks += image_section(data, subject, folder, figures)
    return blocks


def image_section(data: ReportData, subject: str, folder: Path, figures: Path) -> list[Block]:
    """The subject's real images and the grid of generated ones."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", subject)
    blocks: list[Block] = [Heading(f"Images: {subject}")]
    try:
        strip = plots.subject_figure(image_files(folder, "subject"), figures / f"subject-{slug}.png")
    except UserError:  # the real images have moved since the sweep
        strip = None
    if strip:
        blocks += [Paragraph(f"Real images (`{folder}`):"), Picture(strip, f"real images of {subject}")]
    columns = [(row.title if row.kind != "variant" else _column_title(row), row.images(subject))
               for row in data.scale + data.variants]
    columns = [(title, images) for title, images in columns if images]
    prompts = list(dict.fromkeys(p for _, images in columns for p in images))
    grid = plots.grid_figure(prompts, columns, figures / f"grid-{slug}.png")
    if grid:
        blocks += [Paragraph("Generated: the first image of each prompt. Every column starts each prompt from the "
                             "same noise, so differences come from the adapters."),
                   Picture(grid, f"generated images of {subject}, prompts x variants")]
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
        if len(data.setups) > 1:
            line = f"`{setup['source']}`: " + line
        lines.append(line)
        if setup.get("variant_overrides"):
            lines.append("Per-variant settings (on top of the shared ones): " + "; ".join(
                f"{variant} " + ", ".join(f"`{key}={value}`" for key, value in keys.items())
                for variant, keys in setup["variant_overrides"].items()) + ".")
        if setup.get("match") == "params" and setup["variants"]:
            target = setup.get("target_parameters")
            lines.append(f"Parameter-matched: each variant's rank was chosen to bring its trainable parameters "
                         f"closest to {setup['variants'][0]}'s" + (f" ({target:,})" if target else "")
                         + "; the percentage is the difference.")
    return lines


def summary_lines(data: ReportData) -> list[str]:
    """At a glance: the best variant per metric with the scale rows' values, the fastest, and what failed."""
    lines = []
    for key, name in METRICS:
        column = metric_column(key, name)
        scored = [(row, column.value(row)) for row in data.variants if column.value(row)]
        if not scored:
            continue
        best = max(scored, key=lambda item: column.rank_key(item[1]))
        ties = [row.label for row, value in scored if column.rank_key(value) == column.rank_key(best[1])]
        scale = [f"{row.title} {_mean(column.value(row))}" for row in data.scale if column.value(row)]
        lines.append(f"Best {name}: **{', '.join(ties)}** {_mean(best[1])}" + (f" ({'; '.join(scale)})" if scale else ""))
    timed = [row for row in data.variants if row.record.get("train_seconds") is not None]
    if len(timed) > 1:
        fastest = min(timed, key=lambda row: row.record["train_seconds"])
        lines.append(f"Fastest training: **{fastest.label}** ({fastest.record['train_seconds']:.1f} s)")
    unfinished = [f"{row.label} ({row.record.get('status')})" for row in data.variants
                  if row.record.get("status") != "done"]
    if unfinished:
        lines.append("Not finished: " + ", ".join(unfinished) + (" — see Failures" if any(
            row.record.get("error") for row in data.variants) else ""))
    return lines or ["No scores yet."]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _mean(summary: dict[str, Any]) -> str:
    return f"{summary['mean']:.3f}"
