"""Comparison reports: a metric table (subject-weighted means ± 95 % bootstrap intervals, bold only beyond noise,
base-model and real-images rows), paired differences, honest costs, loss curves, a Pareto plot, image grids and
every generated image; as `report.md` and a self-contained `report.html`."""

from dreamlr.report.build import build_report

__all__ = ["build_report"]
