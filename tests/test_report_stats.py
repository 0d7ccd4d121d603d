"""The report's paired statistics on constructed data: a known difference is found, identical variants never
differ, subjects weigh equally, seeds pair, and the bootstrap interval covers the truth at about its nominal
rate in a small simulation (fixed seed)."""

from __future__ import annotations

import numpy as np
import pytest

from dreamlr.report.plots import pareto_front
from dreamlr.report.stats import difference, estimate, paired_differences


def scores(rng: np.random.Generator, subjects: int = 8, prompts: int = 6, images: int = 2, seeds: int = 1,
           shift: float = 0.0, noise: float = 0.01, spread: float = 0.0) -> tuple[dict, dict]:
    """Per-image scores of a reference and of a variant that differs by `shift` (+ a per-subject effect of sd
    `spread` and image noise): subject and prompt effects are shared, as in a real sweep."""
    reference, variant = {}, {}
    for s in range(subjects):
        subject_level, subject_shift = rng.normal(0.7, 0.05), rng.normal(0, spread) if spread else 0.0
        for p in range(prompts):
            prompt_level = rng.normal(0, 0.03)
            for t in range(seeds):
                for i in range(images):
                    key = (f"s{s}", f"p{p}", t if seeds > 1 else None, 1000 + i)
                    level = subject_level + prompt_level + rng.normal(0, 0.02)
                    reference[key] = level + rng.normal(0, noise)
                    variant[key] = level + shift + subject_shift + rng.normal(0, noise)
    return variant, reference


def test_a_known_difference_is_found_with_an_interval_around_it():
    variant, reference = scores(np.random.default_rng(0), shift=0.03)
    found = difference(variant, reference)
    assert found.excludes_zero and found.low < 0.03 < found.high and found.mean == pytest.approx(0.03, abs=0.005)
    assert found.subjects == 8 and found.n == 8 * 6 * 2
    assert difference(reference, variant).high < 0  # the other way round: below 0


def test_identical_variants_never_differ():
    _, reference = scores(np.random.default_rng(1))
    same = difference(reference, dict(reference))
    assert same.mean == 0 and same.low == 0 and same.high == 0 and not same.excludes_zero
    shifted = {key: value + 1e-9 for key, value in reference.items()}  # a constant offset has no spread
    assert difference(shifted, reference).excludes_zero  # ... so any real offset is found


def test_subjects_weigh_equally_however_many_prompts_they_have():
    values = {("a", f"p{p}", None, 0): 1.0 for p in range(10)} | {("b", "p0", None, 0): 0.0}
    assert estimate(values).mean == pytest.approx(0.5)  # not 10/11


def test_pairs_need_the_same_subject_prompt_and_image_seed_and_seeds_pair_with_a_row_without_seeds():
    a = {("s", "p", 0, 1): 0.9, ("s", "p", 1, 1): 0.8, ("s", "q", 0, 1): 0.7}
    base = {("s", "p", None, 1): 0.5, ("s", "q", None, 2): 0.5}  # q's image seed differs: no pair
    assert paired_differences(a, base) == pytest.approx({("s", "p", 0, 1): 0.4, ("s", "p", 1, 1): 0.3})
    b = {("s", "p", 0, 1): 0.6, ("s", "p", 1, 1): 0.7}
    assert paired_differences(a, b) == pytest.approx({("s", "p", 0, 1): 0.3, ("s", "p", 1, 1): 0.1})
    assert difference(a, {}) is None


def test_one_subject_one_prompt_one_seed_has_no_interval_and_is_never_beyond_noise():
    found = difference({("s", "p", None, 0): 0.9, ("s", "p", None, 1): 0.8}, {("s", "p", None, 0): 0.1,
                                                                              ("s", "p", None, 1): 0.1})
    assert found.mean == pytest.approx(0.75) and not found.has_interval and not found.excludes_zero


def test_seed_variation_widens_the_interval():
    rng = np.random.default_rng(3)
    variant, reference = scores(rng, subjects=4, seeds=3)
    shifted = {key: value + (0.02 if key[2] == 0 else -0.01) for key, value in variant.items()}  # a seed effect
    assert difference(shifted, reference).half_width > difference(variant, reference).half_width


def test_the_interval_covers_the_truth_at_about_the_nominal_rate():
    rng = np.random.default_rng(2024)
    truth, hits, trials = 0.01, 0, 150
    for _ in range(trials):
        variant, reference = scores(rng, subjects=10, prompts=5, shift=truth, spread=0.01)
        found = difference(variant, reference, draws=400)
        hits += found.low <= truth <= found.high
    assert 0.85 <= hits / trials <= 0.99  # nominal 0.95; the percentile bootstrap runs a little short


def test_estimates_are_reproducible():
    variant, reference = scores(np.random.default_rng(5))
    assert difference(variant, reference) == difference(variant, reference)


def test_the_pareto_front_keeps_points_no_other_beats_on_cost_and_score():
    assert pareto_front([(1, 0.5), (2, 0.4), (3, 0.6), (3, 0.55), (4, 0.6)]) == [(1, 0.5), (3, 0.6)]
