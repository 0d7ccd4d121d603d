"""Truncated SVD of a dense weight delta: low-rank factors at a rank or an energy, and their error."""

from __future__ import annotations

import torch


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """Smallest rank whose singular values keep `energy` of Σσ² (the squared Frobenius norm); at least 1."""
    squared = singular_values.double().pow(2)
    total = squared.sum()
    if total == 0:
        return 1
    kept = torch.cumsum(squared, dim=0) / total
    # a tiny tolerance so that energy=1.0 is reached despite rounding in the cumulative sum
    return min(int(torch.searchsorted(kept, torch.tensor(energy - 1e-12, dtype=kept.dtype)).item()) + 1,
               len(singular_values))


def truncated_svd(delta: torch.Tensor, rank: int | None = None,
                  energy: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, r), down (r, in)) with up·down the best rank-r approximation of `delta` (Eckart–Young).

    r is `rank` (capped at min(out, in)) or the smallest rank keeping `energy` of ‖delta‖²_F.
    The singular values are split evenly, √σ into each factor. fp32 results.
    """
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    u, s, vh = torch.linalg.svd(delta.float(), full_matrices=False)
    r = min(rank, len(s)) if rank is not None else energy_rank(s, energy)
    root = s[:r].sqrt()
    return (u[:, :r] * root).contiguous(), (root[:, None] * vh[:r]).contiguous()


def relative_error(delta: torch.Tensor, approx: torch.Tensor) -> float:
    """‖delta − approx‖_F / ‖delta‖_F in fp64 (0 for a zero delta, which every rank represents exactly)."""
    delta = delta.double()
    norm = delta.norm()
    return float((delta - approx.double()).norm() / norm) if norm > 0 else 0.0
