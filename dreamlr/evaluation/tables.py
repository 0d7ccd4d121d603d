"""A score report (the JSON of `dreamlr score`) as a markdown table and as CSV."""

from __future__ import annotations

import csv
import io
from typing import Any

METRIC_NAMES = {"clip_i": "CLIP-I", "clip_t": "CLIP-T", "dino": "DINO"}


def _count(summaries: dict[str, Any]) -> int:
    return max(summaries[m]["n"] for m in METRIC_NAMES)


def _cell(summary: dict[str, Any]) -> str:
    if summary["mean"] is None:
        return "–"
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def _markdown_header(first: str) -> list[str]:
    return [f"| {first} | " + " | ".join(METRIC_NAMES.values()) + " | n |",
            "|---|" + "---:|" * (len(METRIC_NAMES) + 1)]


def _markdown_row(label: str, summaries: dict[str, Any]) -> str:
    cells = " | ".join(_cell(summaries[m]) for m in METRIC_NAMES)
    label = label.replace("|", "\\|")
    return f"| {label} | {cells} | {_count(summaries)} |"


def markdown_table(report: dict[str, Any]) -> str:
    """Overall and real-images rows, the encoders, then one row per prompt (mean ± std over images)."""
    encoders = report["encoders"]
    lines = [f"# Scores: `{report['generated']}` against `{report['reference']}`", "", *_markdown_header(""),
             _markdown_row("generated", report["overall"]),
             _markdown_row("real images (leave-one-out)", report["real_images"]),
             "", f"Encoders: CLIP `{encoders['clip']}`, DINO `{encoders['dino']}`.",
             "", "## Per prompt", "", *_markdown_header("prompt")]
    lines += [_markdown_row(row["prompt"], row) for row in report["per_prompt"]]
    return "\n".join(lines) + "\n"


def csv_table(report: dict[str, Any]) -> str:
    """One CSV row each for overall, real images and every prompt: mean and std per metric, and n."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["row", "prompt", *(f"{m}_{s}" for m in METRIC_NAMES for s in ("mean", "std")), "n"])
    rows = [("generated", "", report["overall"]), ("real_images", "", report["real_images"])]
    rows += [("prompt", row["prompt"], row) for row in report["per_prompt"]]
    for kind, prompt, summaries in rows:
        values = [summaries[m][s] for m in METRIC_NAMES for s in ("mean", "std")]
        writer.writerow([kind, prompt, *("" if v is None else f"{v:.6f}" for v in values), _count(summaries)])
    return buffer.getvalue()
