"""The report's tables as cells (text + whether it is the best of its column), rendered as markdown or HTML.

Best per column: the highest mean of a metric, the lowest final loss, time, memory and adapter size,
among the variant rows (ties at the shown precision are all marked); the base-model and real-images
rows are there for scale and never compete.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dreamlr.report.data import ReportData, Row

METRICS = (("dino", "DINO"), ("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"))  # DreamBench's order
EMPTY = "–"
BEST_TD = '<td class="best">'
SCALE_TR = '<tr class="scale">'


@dataclass(frozen=True)
class Column:
    """A table column: its title, how to read a row's value, how to show it, and which way is better."""

    title: str
    value: Callable[[Row], Any]
    show: Callable[[Any, Row], str]
    better: str | None = None  # "high", "low" or None (a setting, not an outcome)
    rank_key: Callable[[Any], float] = float


@dataclass(frozen=True)
class Cell:
    text: str
    best: bool = False


@dataclass(frozen=True)
class Table:
    """Header titles and rows of cells; `scale[i]` says whether row i is a scale row."""

    header: list[str]
    rows: list[list[Cell]]
    scale: list[bool]


def _metric(key: str) -> Callable[[Row], Any]:
    def value(row: Row) -> Any:
        summary = (row.record.get("metrics") or {}).get(key)
        return summary if summary and summary.get("mean") is not None else None
    return value


def _show_metric(summary: dict[str, Any], _: Row) -> str:
    return f"{summary['mean']:.3f} ± {summary['std']:.3f}"


def _show_parameters(count: int, row: Row) -> str:
    target = row.record.get("target_parameters")
    if target and count != target:
        return f"{count:,} ({(count - target) / target:+.1%})"
    return f"{count:,}"


def format_bytes(size: float) -> str:
    """A file size in B, KiB, MiB or GiB."""
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.2f} GiB"


def _field(key: str) -> Callable[[Row], Any]:
    return lambda row: row.record.get(key)


def metric_column(key: str, name: str) -> Column:
    return Column(f"{name} ↑", _metric(key), _show_metric, "high", lambda s: round(s["mean"], 3))


COLUMNS: tuple[Column, ...] = (
    Column("rank", _field("rank"), lambda v, _: str(v)),
    Column("trainable params", _field("trainable_parameters"), _show_parameters),
    *(metric_column(key, name) for key, name in METRICS),
    Column("final loss ↓", _field("final_loss"), lambda v, _: f"{v:.4f}", "low", lambda v: round(v, 4)),
    Column("train s ↓", _field("train_seconds"), lambda v, _: f"{v:.1f}", "low", lambda v: round(v, 1)),
    Column("peak MiB ↓", _field("peak_memory_mb"), lambda v, _: f"{v:,.0f}", "low", lambda v: round(v)),
    Column("adapter file ↓", _field("adapter_bytes"), lambda v, _: format_bytes(v), "low", lambda v: float(f"{v:.3g}")),
)


def main_table(data: ReportData) -> Table:
    """Variants, then the base-model and real-images rows: settings, scores (mean ± std) and costs."""
    rows = data.rows
    cells = [[Cell(row.title)] for row in rows]
    for column in COLUMNS:
        values = [column.value(row) for row in rows]
        best = _best(column, values, [row.kind == "variant" for row in rows])
        for i, (row, value) in enumerate(zip(rows, values)):
            cells[i].append(Cell(EMPTY if value is None else column.show(value, row), i in best))
    return Table(["run", *(c.title for c in COLUMNS)], cells, [row.kind != "variant" for row in rows])


def subject_tables(data: ReportData) -> list[tuple[str, Table]]:
    """Per metric, rows x subjects (each subject's mean ± std), when the report has more than one subject."""
    subjects = list(data.subjects)
    if len(subjects) < 2:
        return []
    tables = []
    for key, name in METRICS:
        column = metric_column(key, name)
        cells = [[Cell(row.title)] for row in data.rows]
        for subject in subjects:
            values = [((row.subject(subject) or {}).get("metrics") or {}).get(key) for row in data.rows]
            values = [v if v and v.get("mean") is not None else None for v in values]
            best = _best(column, values, [row.kind == "variant" for row in data.rows])
            for i, value in enumerate(values):
                cells[i].append(Cell(EMPTY if value is None else _show_metric(value, data.rows[i]), i in best))
        tables.append((f"{name} per subject", Table(["run", *subjects], cells,
                                                     [row.kind != "variant" for row in data.rows])))
    return tables


def _best(column: Column, values: list[Any], competing: list[bool]) -> set[int]:
    """Indices of the best competing values (none when fewer than two compete or the column has no direction)."""
    ranked = {i: column.rank_key(v) for i, v in enumerate(values) if v is not None and competing[i]}
    if column.better is None or len(ranked) < 2:
        return set()
    top = max(ranked.values()) if column.better == "high" else min(ranked.values())
    return {i for i, v in ranked.items() if v == top}


def to_markdown(table: Table) -> str:
    """A GitHub markdown table: best cells in bold, scale rows in italics."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(table.header), "|---|" + "---:|" * (len(table.header) - 1)]
    for cells, scale in zip(table.rows, table.scale):
        texts = [f"**{c.text}**" if c.best else c.text for c in cells]
        if scale:
            texts[0] = f"*{texts[0]}*"
        out.append(line(texts))
    return "\n".join(out) + "\n"


def to_html(table: Table) -> str:
    """An HTML table: best cells with class `best`, scale rows with class `scale`."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = []
    for cells, scale in zip(table.rows, table.scale):
        tds = "".join((BEST_TD if c.best else "<td>") + f"{html.escape(c.text)}</td>" for c in cells)
        body.append((SCALE_TR if scale else "<tr>") + f"{tds}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
