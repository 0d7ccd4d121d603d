"""The DreamBench metrics as pure functions of embeddings (rows are items), computed in float64.

CLIP-I and DINO: for each generated image, the mean cosine similarity to every real image (so the
mean over images is the mean over all generated x real pairs). CLIP-T: cosine similarity between
each image and its prompt's text embedding. Real-images row: each real image against the others.
"""

from __future__ import annotations

import torch


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of `a` (n, d) with every row of `b` (m, d): shape (n, m)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (n, d) embedding matrices of equal width, "
                         f"got {tuple(a.shape)} and {tuple(b.shape)}")
    a = torch.nn.functional.normalize(a.to(torch.float64), dim=1)
    b = torch.nn.functional.normalize(b.to(torch.float64), dim=1)
    return a @ b.T


def image_similarity(generated: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Per generated image, its mean cosine similarity to the real images (CLIP-I or DINO): shape (n,)."""
    if len(real) == 0:
        raise ValueError("need at least one real image embedding")
    return cosine_matrix(generated, real).mean(dim=1)


def text_similarity(texts: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """CLIP-T: cosine similarity of row i of `texts` with row i of `images`: shape (n,)."""
    if texts.shape != images.shape:
        raise ValueError(f"need one text embedding per image, got {tuple(texts.shape)} and {tuple(images.shape)}")
    texts = torch.nn.functional.normalize(texts.to(torch.float64), dim=1)
    images = torch.nn.functional.normalize(images.to(torch.float64), dim=1)
    return (texts * images).sum(dim=1)


def leave_one_out_similarity(real: torch.Tensor) -> torch.Tensor:
    """Per real image, its mean cosine similarity to the other real images: shape (m,); empty when m < 2."""
    m = len(real)
    if m < 2:
        return torch.zeros(0, dtype=torch.float64)
    sims = cosine_matrix(real, real)
    return (sims.sum(dim=1) - sims.diagonal()) / (m - 1)


def summarize(values: torch.Tensor | list[float]) -> dict[str, float | int | None]:
    """`{mean, std, n}` of a set of scores (population std); mean and std are None when n = 0."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = int(values.numel())
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(values.mean()), "std": float(values.std(correction=0)), "n": n}
