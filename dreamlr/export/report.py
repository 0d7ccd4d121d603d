"""What an export did: per-layer ranks and relative errors, and the lines `dreamlr export` prints."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class LayerResult:
    """One exported layer: its rank in the file and relative error ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F (None: exact)."""

    name: str
    rank: int
    error: float | None = None


@dataclass
class ExportReport:
    """The result of `export_adapter`."""

    adapter: Path
    format: str
    output: Path
    variants: tuple[str, ...]
    layers: list[LayerResult] = field(default_factory=list)
    truncation: str = ""  # how the SVD ranks were chosen
    merged_into: str = ""  # merged: which model, as what folder, in which dtype
    head: list[str] = field(default_factory=list)  # a classifier's trained head parameters, written in full

    @property
    def svd_layers(self) -> list[LayerResult]:
        return [layer for layer in self.layers if layer.error is not None]

    @property
    def exact(self) -> bool:
        return not self.svd_layers

    @property
    def max_error(self) -> float:
        """Largest per-layer relative error (0 when exact)."""
        return max((layer.error for layer in self.svd_layers), default=0.0)

    @property
    def mean_error(self) -> float:
        """Mean per-layer relative error over the SVD-exported layers (0 when exact)."""
        errors = [layer.error for layer in self.svd_layers]
        return sum(errors) / len(errors) if errors else 0.0

    def lines(self) -> list[str]:
        """A short human-readable account: what went where, and how exact it is."""
        what = f"{self.adapter} ({', '.join(self.variants)}, {len(self.layers)} layers)"
        head = [f"  with the trained head in full: {', '.join(self.head)}"] if self.head else []
        if self.merged_into:
            return [f"merged {what} into {self.merged_into} -> {self.output}", *head]
        out = [f"exported {what} -> {self.output} ({self.format})", *head]
        svd = self.svd_layers
        if len(svd) < len(self.layers):
            out.append(f"  exact: {len(self.layers) - len(svd)} layers (the same update as the adapter)")
        if svd:
            ranks = sorted(layer.rank for layer in svd)
            span = str(ranks[0]) if ranks[0] == ranks[-1] else f"{ranks[0]}-{ranks[-1]}"
            worst = max(svd, key=lambda layer: layer.error)
            out.append(f"  truncated SVD of W' - W0 on {len(svd)} layers at rank {span} ({self.truncation})")
            out.append(f"  relative error |dW - dW_r|_F / |dW|_F per layer: largest {worst.error:.4f} "
                       f"({worst.name}), mean {self.mean_error:.4f}")
        return out
