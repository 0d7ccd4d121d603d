"""Adapters for other tools: diffusers / PEFT / kohya LoRA files and merged models, and importing LoRAs back."""

from dreamlr.export.convert import FORMATS, export_adapter, import_adapter
from dreamlr.export.report import ExportReport, LayerResult

__all__ = ["FORMATS", "ExportReport", "LayerResult", "export_adapter", "import_adapter"]
