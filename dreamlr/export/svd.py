"""Truncated SVD of a dense weight delta: low-rank factors at a rank or an energy, and their error."""

from __future__ import annotations

import torch

# randomized subspace iteration: extra columns beyond the target rank, and power iterations (each with a QR)
OVERSAMPLE = 10
POWER_ITERATIONS = 4
# past this share of min(out, in) a sketch costs about what a full SVD does: use the full SVD
FULL_SVD_SHARE = 0.25
# layers up to this many weights get their full spectrum in fp64 (cheap there), larger ones in fp32
GRAM_FP64_SIZE = 2**18


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


def truncated_svd(delta: torch.Tensor, rank: int | None = None, energy: float | None = None,
                  min_rank: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(up (out, r), down (r, in)) with up·down a rank-r approximation of `delta`.

    r is `rank` (capped at min(out, in)), or the smallest rank whose approximation keeps `energy` of
    ‖delta‖²_F (and at least `min_rank`). The approximation is the orthogonal projection of `delta`
    onto r leading singular directions, so the energy it keeps, and the energy rule, are exact. The
    directions come from a randomized subspace iteration at the target rank when that is a small share
    of min(out, in) (within a hair of Eckart–Young's optimum), else from the full spectrum (the
    optimum). Deterministic; the singular values are split evenly, √σ into each factor. fp32 results.
    """
    if (rank is None) == (energy is None):
        raise ValueError("give exactly one of rank and energy")
    delta = delta.float()
    full = min(delta.shape)
    if rank is not None:
        r = min(rank, full)
        u, s, vh = _leading_svd(delta, r)
    else:
        total = float(delta.double().pow(2).sum())
        width = min(max(min_rank, 1), full)
        while True:
            u, s, vh = _leading_svd(delta, width)
            r = _kept_rank(s, energy, total, exhaustive=len(s) == full, size=max(delta.shape))
            if r is not None:
                break
            # the directions still missing are each at most as strong as the last one found: aim past that count;
            # a sketch that would cost a good share of the full spectrum (which a miss would add to) is not tried
            missing = (energy * total - float(s.double().pow(2).sum())) / max(float(s[-1]) ** 2, 1e-30)
            width = max(2 * width, int(1.25 * (len(s) + missing)) + 1)
            width = full if width + OVERSAMPLE >= FULL_SVD_SHARE * full / 2 else width
        r = min(max(r, min_rank), len(s))
    root = s[:r].sqrt()
    return (u[:, :r] * root).contiguous(), (root[:, None] * vh[:r]).contiguous()


def _leading_svd(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(u, s, vh) holding at least the `rank` leading singular triplets of `delta`, strongest first: from a
    randomized subspace iteration (QR-orthonormalized power iterations), or all of them when `rank` is a
    large share of min(out, in)."""
    width = rank + OVERSAMPLE
    if width >= FULL_SVD_SHARE * min(delta.shape):
        return _gram_svd(delta)
    generator = torch.Generator(device=delta.device).manual_seed(0)  # the same file for the same adapter
    sketch = torch.randn(delta.shape[1], width, generator=generator, device=delta.device, dtype=delta.dtype)
    basis = torch.linalg.qr(delta @ sketch).Q
    for _ in range(POWER_ITERATIONS):
        basis = torch.linalg.qr(delta @ torch.linalg.qr(delta.T @ basis).Q).Q
    u, s, vh = torch.linalg.svd(basis.T @ delta, full_matrices=False)
    return basis @ u, s, vh


def _gram_svd(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every singular triplet of `delta`, from the eigenvectors of the Gram matrix of its shorter side (faster
    than an SVD: 1.5× for a square layer, 5× for a 1:4 one). Each σ is the norm of `delta` projected on its
    direction, so the energies the rank rule adds up are those of the approximation itself. fp64 where that
    is cheap (small layers, where exact low-rank deltas must come out exactly), else fp32."""
    tall = delta.shape[0] > delta.shape[1]
    wide = (delta.T if tall else delta).to(torch.float64 if delta.numel() <= GRAM_FP64_SIZE else torch.float32)
    directions = torch.linalg.eigh(wide @ wide.T).eigenvectors.flip(1)  # strongest first
    projected = directions.T @ wide  # row i: σ_i · v_iᵀ
    s = projected.norm(dim=1)
    order = torch.argsort(s, descending=True)
    directions, projected, s = directions[:, order], projected[order], s[order]
    rows = projected / torch.where(s > 0, s, 1.0)[:, None]
    u, vh = (rows.T, directions.T) if tall else (directions, rows)  # wide = u · diag(s) · vh, transposed if tall
    return u.float(), s.float(), vh.float()


def _kept_rank(singular_values: torch.Tensor, energy: float, total: float, exhaustive: bool, size: int) -> int | None:
    """Smallest rank whose leading singular values keep `energy` of `total` (= ‖delta‖²_F); None when these
    singular values do not reach it and are not all of them. In a full spectrum, singular values at fp32
    rounding level (σ₁·max(out, in)·eps, as numerical rank counts them) are noise: energy 1 gives the rank."""
    if exhaustive:
        noise = float(singular_values[0]) * size * torch.finfo(torch.float32).eps
        return energy_rank(torch.where(singular_values > noise, singular_values, 0.0), energy)
    if total == 0:
        return 1
    kept = torch.cumsum(singular_values.double().pow(2), dim=0) / total
    reached = torch.nonzero(kept >= energy - 1e-12)
    return int(reached[0]) + 1 if len(reached) else None


def relative_error(delta: torch.Tensor, approx: torch.Tensor) -> float:
    """‖delta − approx‖_F / ‖delta‖_F in fp64 (0 for a zero delta, which every rank represents exactly)."""
    delta = delta.double()
    norm = delta.norm()
    return float((delta - approx.double()).norm() / norm) if norm > 0 else 0.0
