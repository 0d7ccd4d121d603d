"""The report's figures as PNG files (matplotlib, no display needed): loss curves, metric vs trainable
parameters, the image grid (prompts x rows, same seeds) and a strip of the subject's real images.

Variant i is drawn in colour `C{i}` in every figure."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

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


def loss_figure(variants: list[Row], path: Path, shared: bool = True) -> Path | None:
    """Training loss per variant (averaged over subjects and seeds): raw per step, faint, and a moving average.
    `shared`: the rows come from one sweep, so they saw the same images, noise and timesteps."""
    curves = [(i, row, row.loss_curve()) for i, row in enumerate(variants)]
    curves = [(i, row, curve) for i, row, curve in curves if curve]
    if not curves:
        return None
    figure = Figure(figsize=(8, 4.5), layout="constrained")
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
    axes.set_title("Training loss: every variant sees the same images, noise and timesteps at each step" if shared
                   else "Training loss (rows from different sweeps or runs: not the same data at each step)",
                   fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend()
    return _save(figure, path)


def parameters_figure(variants: list[Row], scale: list[Row], path: Path, means: dict[str, dict[str, Any]],
                      steps: dict[str, dict[str, Any] | None]) -> Path | None:
    """Each metric (mean with its 95 % interval, `means[label][metric]` an Estimate) against trainable
    parameters (top) and median seconds per step (bottom, IQR as horizontal bars), with the Pareto front of
    each panel and the base-model and real-images levels."""
    costs = (("trainable parameters", lambda row: row.record.get("trainable_parameters"), None),
             ("seconds per optimizer step (median)", lambda row: (steps.get(row.label) or {}).get("median"),
              lambda row: steps.get(row.label)))
    points = [(i, row) for i, row in enumerate(variants) if any((means.get(row.label) or {}).values())]
    if not points or not any(cost(row) for _, cost, _ in costs for _, row in points):
        return None
    figure = Figure(figsize=(11, 7.5), layout="constrained")
    grid = figure.subplots(2, len(METRICS), squeeze=False)
    for r, (label, cost, spread) in enumerate(costs):
        for axes, (key, name) in zip(grid[r], METRICS):
            drawn = []
            for i, row in points:
                estimate, x = (means.get(row.label) or {}).get(key), cost(row)
                if estimate is None or not x:
                    continue
                yerr = ([[estimate.mean - estimate.low], [estimate.high - estimate.mean]] if estimate.has_interval
                        else None)
                q = spread(row) if spread else None
                xerr = [[x - q["p25"]], [q["p75"] - x]] if q else None
                axes.errorbar(x, estimate.mean, yerr=yerr, xerr=xerr, fmt="o", color=f"C{i % 10}", capsize=3,
                              markersize=6)
                axes.annotate(row.label, (x, estimate.mean), textcoords="offset points", xytext=(5, 4), fontsize=9)
                drawn.append((x, estimate.mean))
            front = pareto_front(drawn)
            if len(front) > 1:
                axes.plot(*zip(*front), color="0.5", linewidth=1, linestyle="-", zorder=0)
            _scale_lines(axes, scale, key, legend=r == 0, means=means)
            xs = [x for x, _ in drawn]
            axes.margins(x=0.25)
            if xs and min(xs) > 0 and max(xs) > 10 * min(xs):
                axes.set_xscale("log")
            else:
                axes.xaxis.set_major_locator(MaxNLocator(4))
            if r == 0:  # counts as 12k, 1.2M; seconds as plain numbers
                axes.xaxis.set_major_formatter(EngFormatter(sep=""))
            axes.set_xlabel(label, fontsize=10)
            axes.set_title(f"{name} (higher is better)", fontsize=11)
            axes.tick_params(labelsize=9)
            axes.grid(alpha=0.3)
    return _save(figure, path)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both cost (x, lower is better) and score (y, higher is better),
    in cost order."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return front


def _scale_lines(axes: Axes, scale: list[Row], key: str, legend: bool = True,
                 means: dict[str, dict[str, Any]] | None = None) -> None:
    """Horizontal lines at the scale rows' levels (their subject-weighted means when given)."""
    for row, style in zip(scale, ("--", ":", "-.", (0, (1, 4)))):
        estimate = ((means or {}).get(row.label) or {}).get(key)
        summary = (row.record.get("metrics") or {}).get(key)
        level = estimate.mean if estimate is not None else (summary or {}).get("mean")
        if level is not None:
            axes.axhline(level, color="0.35", linestyle=style, linewidth=1.2, label=row.title)
    if legend and axes.get_legend_handles_labels()[0]:
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
