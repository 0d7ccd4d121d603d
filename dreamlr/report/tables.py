"""The report's tables as cells (text + whether it stands out), rendered as markdown or HTML.

Scores are means over subjects (each subject's own mean first) ± the half-width of their 95 % bootstrap
interval (`dreamlr.report.stats`). A score is bold only when its paired difference against its sweep's
reference variant lies beyond noise (the interval excludes 0) in the better direction; the reference is bold
when every other variant lies below it beyond noise. Costs: s/step is the median optimizer step (IQR in
brackets), bold only when its IQR lies wholly below every other row's; adapter memory and file size are
computed, not measured, so the smallest is bold. Rows are ranked only against rows of the same sweep; the
base-model and real-images rows are there for scale and never compete.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dreamlr.report.data import ReportData, Row
from dreamlr.report.paired import row_stats, significant
from dreamlr.report.stats import Estimate

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
    better: str | None = None  # "low" for a cost, None for a setting or an outcome with no noise measure
    optional: bool = False  # left out of a table where no row has a value


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


def show_estimate(value: Estimate | None, signed: bool = False) -> str:
    """`0.812 ± 0.010` (± the interval's half-width), or `+0.012 [-0.003, +0.027]` for a difference."""
    if value is None:
        return EMPTY
    form = "+.3f" if signed else ".3f"
    if not value.has_interval:
        return f"{value.mean:{form}}"
    if signed:
        return f"{value.mean:{form}} [{value.low:{form}}, {value.high:{form}}]"
    return f"{value.mean:{form}} ± {value.half_width:.3f}"


def _show_quartiles(summary: dict[str, Any], _: Row) -> str:
    return f"{summary['median']:.3g} ({summary['p25']:.3g}–{summary['p75']:.3g})"


def step_seconds(row: Row) -> dict[str, Any] | None:
    """Median and IQR of every optimizer step of the row's runs."""
    from dreamlr.compare.records import quartiles

    return quartiles(row.step_times())


def gpu_step_memory(row: Row) -> dict[str, Any] | None:
    """Median and range (as `p25`/`p75`: few runs, so their whole spread) over the row's runs of its GPU step
    peak above the frozen model (None on a CPU)."""
    from dreamlr.compare.records import quartiles

    values = [e["step_memory_mb"] for e in row.entries() if e.get("step_memory_mb") is not None]
    return {**quartiles(values), "p25": min(values), "p75": max(values)} if values else None


def _show_mib(summary: dict[str, Any], _: Row) -> str:
    if summary["p25"] == summary["p75"]:
        return f"{summary['median']:,.0f}"
    return f"{summary['median']:,.0f} ({summary['p25']:,.0f}–{summary['p75']:,.0f})"


def _targets(row: Row) -> str | None:
    targets = row.record.get("targets")
    if targets is None:
        return None
    return ", ".join(map(str, targets)) if isinstance(targets, (list, tuple)) else str(targets)


SETTING_COLUMNS: tuple[Column, ...] = (
    Column("rank", _field("rank"), lambda v, _: str(v)),
    Column("trainable params", _field("trainable_parameters"), _show_parameters),
)
COST_COLUMNS: tuple[Column, ...] = (
    Column("final loss", _field("final_loss"), lambda v, _: f"{v:.4f}"),
    Column("s/step ↓ (IQR)", step_seconds, _show_quartiles, "low"),
    Column("adapter memory ↓", _field("adapter_memory_bytes"), lambda v, _: format_bytes(v), "low"),
    Column("GPU step MiB ↓ (range)", gpu_step_memory, _show_mib, "low", optional=True),
    Column("adapter file ↓", _field("adapter_bytes"), lambda v, _: format_bytes(v), "low"),
    Column("alpha", _field("alpha"), lambda v, _: f"{v:g}"),
    Column("lr", _field("learning_rate"), lambda v, _: f"{v:g}"),
    Column("targets", lambda row: _targets(row), lambda v, _: v),
)
COLUMNS = (*SETTING_COLUMNS, *COST_COLUMNS)
OWN_SETTINGS_MARK = " †"


def ordered_rows(data: ReportData) -> list[Row]:
    """Rows sweep by sweep: its variants, then its base-model and real-images rows."""
    return [row for group in data.groups for row in data.group_rows(group)]


def row_title(row: Row) -> str:
    """The row's name, marked when it was trained with its own `--set VARIANT:key=value` keys."""
    return row.title + (OWN_SETTINGS_MARK if row.own_settings else "")


def main_table(data: ReportData) -> Table:
    """Variants, then the base-model and real-images rows, sweep by sweep: settings, scores (mean ± 95 % CI
    half-width), costs and adapter settings."""
    rows = ordered_rows(data)
    stats = row_stats(data)
    cells = [[Cell(row_title(row))] for row in rows]
    values = {column.title: [column.value(row) for row in rows] for column in COLUMNS}
    costs = [c for c in COST_COLUMNS if not c.optional or any(v is not None for v in values[c.title])]
    for column in SETTING_COLUMNS:
        _fill(cells, column, rows, values[column.title], set())
    for key, _name in METRICS:
        for i, row in enumerate(rows):
            cells[i].append(Cell(show_estimate(stats[row.label].mean[key]), significant(data, row, key)))
    for column in costs:
        best = set()
        for group in data.groups:
            members = [i for i, row in enumerate(rows) if row.group == group]
            best |= _cheapest(column, {i: values[column.title][i] for i in members if rows[i].kind == "variant"})
        _fill(cells, column, rows, values[column.title], best)
    header = ["run", *(c.title for c in SETTING_COLUMNS), *(f"{name} ↑" for _, name in METRICS),
              *(c.title for c in costs)]
    return Table(header, cells, [row.kind != "variant" for row in rows])


def _fill(cells: list[list[Cell]], column: Column, rows: list[Row], values: list[Any], best: set[int]) -> None:
    for i, (row, value) in enumerate(zip(rows, values)):
        cells[i].append(Cell(EMPTY if value is None else column.show(value, row), i in best))


def _cheapest(column: Column, values: dict[int, Any]) -> set[int]:
    """The cheapest row of a cost column, when its lead is beyond noise: for a spread (median + IQR) its IQR
    lies below every other row's; for a computed size it is smaller than every other."""
    present = {i: v for i, v in values.items() if v is not None}
    if column.better != "low" or len(present) < 2:
        return set()
    if isinstance(next(iter(present.values())), dict):
        best = min(present, key=lambda i: present[i]["median"])
        clear = all(present[best]["p75"] < v["p25"] for i, v in present.items() if i != best)
        return {best} if clear else set()
    top = min(present.values())
    winners = {i for i, v in present.items() if v == top}
    return winners if len(winners) < len(present) else set()


def difference_table(data: ReportData) -> Table:
    """Per variant and metric, the paired difference against its sweep's reference and against the base model,
    with 95 % intervals; bold where the interval excludes 0."""
    rows = [row for row in ordered_rows(data) if row.kind == "variant"]
    stats = row_stats(data)
    cells = []
    for row in rows:
        line = [Cell(row_title(row))]
        for against in ("vs_reference", "vs_base"):
            for key, _ in METRICS:
                value = getattr(stats[row.label], against)[key]
                line.append(Cell(show_estimate(value, signed=True), bool(value and value.excludes_zero)))
        cells.append(line)
    reference = ", ".join(dict.fromkeys(data.references[g].split("/")[-1] for g in data.groups
                                        if g in data.references)) or "reference"
    header = ["run", *(f"Δ {name} vs {reference}" for _, name in METRICS),
              *(f"Δ {name} vs base model" for _, name in METRICS)]
    return Table(header, cells, [False] * len(rows))


def subject_tables(data: ReportData) -> list[tuple[str, Table]]:
    """Per metric, rows x subjects (each subject's mean ± 95 % CI half-width over its prompts and seeds), when
    the report has more than one subject."""
    subjects = list(data.subjects)
    if len(subjects) < 2:
        return []
    rows = ordered_rows(data)
    tables = []
    for key, name in METRICS:
        cells = [[Cell(row_title(row))] for row in rows]
        for subject in subjects:
            stats = row_stats(data, subject)
            for i, row in enumerate(rows):
                cells[i].append(Cell(show_estimate(stats[row.label].mean[key]), significant(data, row, key, subject)))
        scale = [row.kind != "variant" for row in rows]
        tables.append((f"{name} per subject", Table(["run", *subjects], cells, scale)))
    return tables


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
