"""Comparison reports: a metric table (mean ± std, best marked, base-model and real-images rows), loss
curves, metric vs trainable parameters, image grids; as `report.md` and a self-contained `report.html`."""

from dreamlr.report.build import build_report

__all__ = ["build_report"]
