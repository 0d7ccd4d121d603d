"""Metric math on hand-made embeddings, and the DreamBench constants against the published file."""

import re
from pathlib import Path

import pytest
import torch

from dreamlr.evaluation import (
    LIVE_PROMPTS,
    OBJECT_PROMPTS,
    SUBJECT_CLASSES,
    cosine_matrix,
    image_similarity,
    is_live,
    leave_one_out_similarity,
    summarize,
    text_similarity,
)

DREAMBENCH_FILE = Path(__file__).resolve().parents[2] / "shared/data/dreambench/prompts_and_classes.txt"


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_identical_embeddings_score_one():
    x = randn(5, 16)
    assert torch.allclose(image_similarity(x[:1].repeat(3, 1), x[:1]), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(text_similarity(x, 3.0 * x), torch.ones(5, dtype=torch.float64))  # scale does not matter
    assert torch.allclose(cosine_matrix(x, x).diagonal(), torch.ones(5, dtype=torch.float64))


def test_orthogonal_embeddings_score_zero():
    basis = torch.eye(6)
    assert torch.equal(image_similarity(basis[:3], basis[3:]), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(text_similarity(basis[:3], basis[3:]), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(leave_one_out_similarity(basis), torch.zeros(6, dtype=torch.float64))


def test_opposite_embeddings_score_minus_one():
    x = randn(1, 8)
    assert image_similarity(x, -x).item() == pytest.approx(-1.0)


def test_image_similarity_is_the_mean_over_all_pairs_and_permutation_invariant():
    gen, real = randn(4, 8, seed=1).double(), randn(3, 8, seed=2).double()
    per_image = image_similarity(gen, real)
    manual = torch.tensor([[(g @ r / (g.norm() * r.norm())).item() for r in real] for g in gen], dtype=torch.float64)
    assert torch.allclose(per_image, manual.mean(dim=1))
    assert per_image.mean().item() == pytest.approx(manual.mean().item())
    assert torch.allclose(image_similarity(gen, real[[2, 0, 1]]), per_image)  # real order is irrelevant
    order = torch.tensor([3, 1, 0, 2])
    assert torch.allclose(image_similarity(gen[order], real), per_image[order])  # follows the generated order


def test_leave_one_out_by_hand():
    real = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    h = 2 ** -0.5
    expected = torch.tensor([(h + 0) / 2, (h + h) / 2, (0 + h) / 2], dtype=torch.float64)
    assert torch.allclose(leave_one_out_similarity(real), expected)
    order = torch.tensor([2, 0, 1])
    assert torch.allclose(leave_one_out_similarity(real[order]), expected[order])
    assert leave_one_out_similarity(real[:1]).numel() == 0


def test_summarize():
    assert summarize([1.0, 2.0, 3.0, 4.0]) == {"mean": 2.5, "std": pytest.approx(1.118033988749895), "n": 4}
    assert summarize(torch.tensor([0.5])) == {"mean": 0.5, "std": 0.0, "n": 1}
    assert summarize([]) == {"mean": None, "std": None, "n": 0}


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="equal width"):
        cosine_matrix(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="one text embedding per image"):
        text_similarity(torch.zeros(2, 3), torch.zeros(3, 3))


def test_dreambench_lists():
    assert len(OBJECT_PROMPTS) == len(LIVE_PROMPTS) == 25
    assert len(set(OBJECT_PROMPTS)) == len(set(LIVE_PROMPTS)) == 25
    assert len(SUBJECT_CLASSES) == 30
    assert all("{token} {class}" in p for p in OBJECT_PROMPTS + LIVE_PROMPTS)
    assert is_live("dog") and is_live("Cat") and not is_live("stuffed animal") and not is_live("toy")
    assert {s for s, c in SUBJECT_CLASSES.items() if is_live(c)} == {
        "cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}


@pytest.mark.skipif(not DREAMBENCH_FILE.is_file(), reason="shared DreamBench data not present")
def test_dreambench_lists_match_the_published_file():
    text = DREAMBENCH_FILE.read_text()
    object_part, live_part = text.split("Live Subject Prompts")
    parse = lambda part: [p.replace("{0}", "{token}").replace("{1}", "{class}")  # noqa: E731
                          for p in re.findall(r"'(.*?)'\.format\(unique_token, class_token\)", part)]
    assert tuple(parse(object_part)) == OBJECT_PROMPTS
    assert tuple(parse(live_part)) == LIVE_PROMPTS
    table = dict(re.findall(r"^(\w+),([\w ]+)$", text.split("Prompts")[0], flags=re.M))
    table.pop("subject_name")
    assert table == SUBJECT_CLASSES
