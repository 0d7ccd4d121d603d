"""Paired statistics for comparisons: per-image scores keyed by (subject, prompt, training seed, image seed),
means and differences that weigh every subject equally, and bootstrap confidence intervals over subjects,
prompts and training seeds. Pure functions on plain data (dicts, numbers, numpy arrays).

Estimate: average the values of each (prompt, training seed) cell over its image seeds, then over the cells
of a subject, then over subjects (each subject weighs the same, however many prompts it has).

Confidence interval: a percentile bootstrap (`BOOTSTRAP_DRAWS` draws, seed `BOOTSTRAP_SEED`, so a report
is reproducible): each draw picks subjects with replacement, and within every picked subject its prompts
and its training seeds with replacement (independently: prompts and seeds are crossed), and recomputes
the estimate. Image seeds are not resampled; they are shared by every row, which is what makes the
comparison paired. With one subject, one prompt and one training seed there is nothing to resample and
no interval (None): such a difference is never called real.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_DRAWS = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95

Key = tuple[str, str, "int | None", int]  # (subject, prompt, training seed or None, image seed)
Observations = Mapping[Key, float]


@dataclass(frozen=True)
class Estimate:
    """A mean (or a mean difference) with its bootstrap interval; `low`/`high` are None without one."""

    mean: float
    low: float | None
    high: float | None
    subjects: int
    n: int  # values (or pairs) behind it

    @property
    def has_interval(self) -> bool:
        return self.low is not None and self.high is not None

    @property
    def excludes_zero(self) -> bool:
        """The interval lies entirely above or below 0: a difference beyond noise."""
        return self.has_interval and (self.low > 0 or self.high < 0)

    @property
    def half_width(self) -> float | None:
        return (self.high - self.low) / 2 if self.has_interval else None


def paired_differences(a: Observations, b: Observations) -> dict[Key, float]:
    """a - b for every key of `a` that `b` also scored: the same subject, prompt and image seed, and the
    same training seed when both have one (a row without training seeds, like the base model, pairs with
    every training seed of the other)."""
    out = {}
    for key, value in a.items():
        subject, prompt, train_seed, image_seed = key
        other = b.get(key)
        if other is None and train_seed is not None:
            other = b.get((subject, prompt, None, image_seed))
        if other is not None:
            out[key] = value - other
    return out


def estimate(values: Observations, draws: int = BOOTSTRAP_DRAWS, seed: int = BOOTSTRAP_SEED,
             level: float = LEVEL) -> Estimate | None:
    """The subject-weighted mean of `values` with its percentile bootstrap interval (see the module notes);
    None when there are no values."""
    cube, prompts, seeds = _cube(values)
    if cube is None:
        return None
    mean = float(_subject_means(cube).mean())
    n = len(values)
    if cube.shape[0] == 1 and prompts[0] == 1 and seeds[0] == 1:
        return Estimate(mean, None, None, 1, n)
    boot = _bootstrap(cube, prompts, seeds, draws, np.random.default_rng(seed))
    tail = (1 - level) / 2
    low, high = np.quantile(boot, [tail, 1 - tail])
    return Estimate(mean, float(low), float(high), cube.shape[0], n)


def difference(a: Observations, b: Observations, **kwargs) -> Estimate | None:
    """The paired difference a - b (see `paired_differences`) with its interval; None when nothing pairs."""
    return estimate(paired_differences(a, b), **kwargs)


def _cube(values: Observations) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Values averaged over image seeds, as an array subjects x prompts x training seeds (NaN where a subject
    has fewer prompts or seeds, or a cell is missing), plus each subject's number of prompts and seeds."""
    cells: dict[str, dict[str, dict[object, list[float]]]] = {}
    for (subject, prompt, train_seed, _), value in values.items():
        if value is None or not np.isfinite(value):
            continue
        cells.setdefault(subject, {}).setdefault(prompt, {}).setdefault(train_seed, []).append(float(value))
    if not cells:
        return None, np.zeros(0, int), np.zeros(0, int)
    seed_lists = {s: list(dict.fromkeys(t for by_seed in prompts.values() for t in by_seed))
                  for s, prompts in cells.items()}
    max_p = max(len(p) for p in cells.values())
    max_t = max(len(t) for t in seed_lists.values())
    cube = np.full((len(cells), max_p, max_t), np.nan)
    for i, (subject, prompts) in enumerate(cells.items()):
        order = seed_lists[subject]
        for j, by_seed in enumerate(prompts.values()):
            for train_seed, listed in by_seed.items():
                cube[i, j, order.index(train_seed)] = sum(listed) / len(listed)
    counts_p = np.array([len(p) for p in cells.values()])
    counts_t = np.array([len(seed_lists[s]) for s in cells])
    return cube, counts_p, counts_t


def _subject_means(cube: np.ndarray) -> np.ndarray:
    with _quiet():
        return np.nanmean(cube.reshape(cube.shape[0], -1), axis=1)


def _bootstrap(cube: np.ndarray, prompts: np.ndarray, seeds: np.ndarray, draws: int,
               rng: np.random.Generator) -> np.ndarray:
    """`draws` bootstrap replicates of the subject-weighted mean (subjects, then prompts and seeds within)."""
    n_s, max_p, max_t = cube.shape
    out = np.empty(draws)
    chunk = max(1, 4_000_000 // max(1, n_s * max_p * max_t))  # bound the memory of one vectorized batch
    for start in range(0, draws, chunk):
        b = min(chunk, draws - start)
        subject = rng.integers(0, n_s, size=(b, n_s))
        n_p, n_t = prompts[subject], seeds[subject]
        prompt = (rng.random((b, n_s, max_p)) * n_p[..., None]).astype(int)
        seed = (rng.random((b, n_s, max_t)) * n_t[..., None]).astype(int)
        picked = cube[subject[..., None, None], prompt[..., :, None], seed[..., None, :]]
        used = (np.arange(max_p) < n_p[..., None])[..., :, None] & (np.arange(max_t) < n_t[..., None])[..., None, :]
        picked = np.where(used, picked, np.nan)
        with _quiet():
            per_subject = np.nanmean(picked.reshape(b, n_s, -1), axis=2)
            out[start:start + b] = np.nanmean(per_subject, axis=1)
    return out[np.isfinite(out)]


@contextmanager
def _quiet() -> Iterator[None]:
    """No 'mean of empty slice' warnings: an all-NaN slice is a resampled subject without values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
