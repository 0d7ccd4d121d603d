"""The report's figures as PNG files (matplotlib, no display needed): loss curves, metric vs trainable
parameters, the image grid (prompts x rows, same seeds) and a strip of the subject's real images.

Variant i is drawn in colour `C{i}` in every figure."""

from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator
from PIL import Image

from dreamlr.fileio import atomic_path
from dreamlr.images import read_image
from dreamlr.report.data import Row
from dreamlr.report.tables import METRICS

DPI = 100
THUMBNAIL = 256  # longest side of an image in a grid, in pixels, before matplotlib scales it
CELL_INCHES = 1.45
LABEL_INCHES = 2.6
STRIP_IMAGES = 6


def _save(figure: Figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=DPI, format="png", facecolor="white")
    return path


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (shorter at the start)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def loss_figure(variants: list[Row], path: Path) -> Path | None:
    """Training loss per variant (averaged over subjects): raw per step, faint, and a moving average."""
    curves = [(i, row, row.loss_curve()) for i, row in enumerate(variants)]
    curves = [(i, row, curve) for i, row, curve in curves if curve]
    if not curves:
        return None
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.add_subplot()
    for i, row, curve in curves:
        steps, losses = zip(*curve)
        window = max(1, len(losses) // 10)
        if window > 1:
            axes.plot(steps, losses, color=f"C{i % 10}", alpha=0.2, linewidth=0.8)
        axes.plot(steps, smooth(list(losses), window), color=f"C{i % 10}", linewidth=2, label=row.label,
                  marker="o" if len(steps) < 20 else None)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss" + (" (moving average)" if len(curves[0][2]) >= 20 else ""))
    axes.set_title("Training loss: every variant sees the same images, noise and timesteps at each step")
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def parameters_figure(variants: list[Row], scale: list[Row], path: Path) -> Path | None:
    """Each metric (mean ± std) against trainable parameters, with the base-model and real-images levels."""
    points = [(i, row) for i, row in enumerate(variants)
              if row.record.get("trainable_parameters") and row.record.get("metrics")]
    if not points:
        return None
    figure = Figure(figsize=(13, 4.3), layout="constrained")
    counts = [row.record["trainable_parameters"] for _, row in points]
    for axes, (key, name) in zip(figure.subplots(1, len(METRICS)), METRICS):
        for i, row in points:
            summary = row.record["metrics"][key]
            if summary["mean"] is None:
                continue
            x = row.record["trainable_parameters"]
            axes.errorbar(x, summary["mean"], yerr=summary["std"], fmt="o", color=f"C{i % 10}", capsize=3,
                          markersize=7)
            axes.annotate(row.label, (x, summary["mean"]), textcoords="offset points", xytext=(6, 5), fontsize=8)
        _scale_lines(axes, scale, key)
        axes.margins(x=0.2)
        if max(counts) > 10 * min(counts):
            axes.set_xscale("log")
        else:
            axes.xaxis.set_major_locator(MaxNLocator(4))
        axes.xaxis.set_major_formatter(EngFormatter(sep=""))
        axes.set_xlabel("trainable parameters")
        axes.set_title(f"{name} (higher is better)")
        axes.grid(alpha=0.3)
    return _save(figure, path)


def _scale_lines(axes: Axes, scale: list[Row], key: str) -> None:
    for row, style in zip(scale, ("--", ":", "-.", (0, (1, 4)))):
        summary = (row.record.get("metrics") or {}).get(key)
        if summary and summary.get("mean") is not None:
            axes.axhline(summary["mean"], color="0.35", linestyle=style, linewidth=1.2, label=row.title)
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8, loc="best")


def _thumbnail(path: Path) -> Image.Image:
    image = read_image(path, "generated")
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image


def _blank(axes: Axes, text: str = "") -> None:
    axes.set_xticks([])
    axes.set_yticks([])
    for spine in axes.spines.values():
        spine.set_visible(False)
    if text:
        axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, color="0.45", transform=axes.transAxes)


def grid_figure(prompts: list[str], columns: list[tuple[str, dict[str, Path]]], path: Path) -> Path | None:
    """Prompts down, rows of the table across: each cell the prompt's first image (same seed in every column)."""
    if not prompts or not columns:
        return None
    width, height = LABEL_INCHES + CELL_INCHES * len(columns), 0.45 + CELL_INCHES * len(prompts)
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(left=LABEL_INCHES / width, right=0.995, top=1 - 0.4 / height, bottom=0.05 / height,
                           wspace=0.04, hspace=0.04)
    axes = figure.subplots(len(prompts), len(columns), squeeze=False)
    for r, prompt in enumerate(prompts):
        for c, (title, images) in enumerate(columns):
            cell = axes[r][c]
            _blank(cell, "" if prompt in images else "no image")
            if prompt in images:
                cell.imshow(_thumbnail(images[prompt]))
            if r == 0:
                cell.set_title(textwrap.fill(title, 18), fontsize=10)
        axes[r][0].set_ylabel(textwrap.fill(prompt, 30), rotation=0, ha="right", va="center", fontsize=9,
                              labelpad=8)
    return _save(figure, path)


def subject_figure(images: list[Path], path: Path) -> Path | None:
    """A strip of the subject's real images (the first few)."""
    images = images[:STRIP_IMAGES]
    if not images:
        return None
    figure = Figure(figsize=(CELL_INCHES * len(images), CELL_INCHES))
    figure.subplots_adjust(left=0, right=1, top=1, bottom=0, wspace=0.04)
    for axes, image in zip(figure.subplots(1, len(images), squeeze=False)[0], images):
        _blank(axes)
        axes.imshow(_thumbnail(image))
    return _save(figure, path)
