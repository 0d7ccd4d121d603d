"""The report's statistics, from the rows' per-image scores: each row's mean with its 95 % interval, and its
paired difference against the base model and against its sweep's reference variant (`dreamlr.report.stats`
does the arithmetic). Computed once per report and subject, and kept in `ReportData.cache`."""

from __future__ import annotations

from dataclasses import dataclass

from dreamlr.report.data import ReportData, Row
from dreamlr.report.stats import Estimate, difference, estimate

METRIC_KEYS = ("dino", "clip_i", "clip_t")


@dataclass(frozen=True)
class RowStats:
    """One row's statistics per metric (None where it has no scores or nothing pairs)."""

    mean: dict[str, Estimate | None]
    vs_base: dict[str, Estimate | None]
    vs_reference: dict[str, Estimate | None]


def row_stats(data: ReportData, subject: str | None = None) -> dict[str, RowStats]:
    """Row label -> its statistics, over every subject or within one."""
    key = ("row_stats", subject)
    if key not in data.cache:
        data.cache[key] = {row.label: _stats(data, row, subject) for row in data.rows}
    return data.cache[key]


def _stats(data: ReportData, row: Row, subject: str | None) -> RowStats:
    base, reference = data.base(row.group), data.reference(row.group)
    mean, vs_base, vs_reference = {}, {}, {}
    for metric in METRIC_KEYS:
        own = row.observations(metric, subject)
        mean[metric] = estimate(own)
        paired = row.kind == "variant"
        vs_base[metric] = difference(own, base.observations(metric, subject)) if paired and base else None
        vs_reference[metric] = (difference(own, reference.observations(metric, subject))
                                if paired and reference and reference is not row else None)
    return RowStats(mean, vs_base, vs_reference)


def significant(data: ReportData, row: Row, metric: str, subject: str | None = None) -> bool:
    """Bold-worthy: a variant whose interval against its reference lies above 0, or the reference itself when
    every other variant of its sweep lies below it beyond noise."""
    if row.kind != "variant":
        return False
    stats = row_stats(data, subject)
    reference = data.reference(row.group)
    if reference is not row:
        diff = stats[row.label].vs_reference[metric]
        return diff is not None and diff.excludes_zero and diff.mean > 0
    others = [stats[other.label].vs_reference[metric] for other in data.variants
              if other.group == row.group and other is not row]
    return bool(others) and all(d is not None and d.excludes_zero and d.mean < 0 for d in others)
