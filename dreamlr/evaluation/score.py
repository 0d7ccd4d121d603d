"""Score a folder of generated images against reference images: CLIP-I, CLIP-T and DINO, written as JSON,
a markdown table and a CSV.

JSON layout: `overall` and `real_images` map `clip_i`, `clip_t`, `dino` to `{mean, std, n}` (std over
per-image scores, population); `per_prompt` lists the same per prompt; `per_image` gives each generated
image's scores and its similarity to every reference (`clip_i_pairs`, `dino_pairs`, in `references`
order); `encoders` the SPECs used; `references` each reference's file, hash and leave-one-out scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from dreamlr.devices import default_device
from dreamlr.errors import UserError
from dreamlr.evaluation.cache import EmbeddingCache
from dreamlr.evaluation.encoders import CLIP_DEFAULT, DINO_DEFAULT, ImageEncoder, load_clip, load_dino
from dreamlr.images import image_files, read_image, sha256_file
from dreamlr.evaluation.manifest import MANIFEST_NAME, ManifestEntry, read_manifest
from dreamlr.evaluation.metrics import (
    cosine_matrix,
    image_similarity,
    leave_one_out_similarity,
    summarize,
    text_similarity,
)
from dreamlr.evaluation.tables import csv_table, markdown_table
from dreamlr.fileio import remove_stale_temps, resolve_parent, write_text

BATCH_SIZE = 16
METRICS = ("clip_i", "clip_t", "dino")


def score_folder(
    generated: str | os.PathLike,
    reference: str | os.PathLike,
    output: str | os.PathLike,
    clip: str = CLIP_DEFAULT,
    dino: str = DINO_DEFAULT,
    cache_dir: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score `generated` (a `dreamlr generate` folder) against the images in `reference`.

    Writes `output` (.json) and, beside it, the same name with .md and .csv; returns the JSON report.
    Reference embeddings are cached under `cache_dir` (see `dreamlr.evaluation.cache`). Existing report
    files are replaced only with `overwrite`.
    """
    output = resolve_parent(output)
    if output.suffix.lower() != ".json":
        raise UserError(f"--output '{output}' must be a .json file (the .md and .csv tables go beside it)")
    _check_outputs(output, overwrite)
    generated, reference = Path(generated).expanduser(), Path(reference).expanduser()
    entries = read_manifest(generated)
    generated_paths = _listed_images(generated, entries)
    reference_paths = image_files(reference, "reference")
    for kind, paths in (("generated", generated_paths), ("reference", reference_paths)):
        for path in paths:  # every image must decode before any model work starts
            read_image(path, kind)
    reference_hashes = [sha256_file(p) for p in reference_paths]
    device = device or default_device()
    clip_encoder, dino_encoder = load_clip(clip, device), load_dino(dino, device)

    gen_clip = _embed_paths(clip_encoder, generated_paths, "generated")
    gen_dino = _embed_paths(dino_encoder, generated_paths, "generated")
    ref_clip = _cached_embeddings(clip_encoder, reference_paths, reference_hashes, cache_dir)
    ref_dino = _cached_embeddings(dino_encoder, reference_paths, reference_hashes, cache_dir)
    prompts = list(dict.fromkeys(e.prompt_clean for e in entries))
    text_rows = dict(zip(prompts, clip_encoder.embed_texts(prompts)))
    texts = torch.stack([text_rows[e.prompt_clean] for e in entries])

    scores = {
        "clip_i": image_similarity(gen_clip, ref_clip),
        "clip_t": text_similarity(texts, gen_clip),
        "dino": image_similarity(gen_dino, ref_dino),
    }
    pairs = {"clip_i": cosine_matrix(gen_clip, ref_clip).tolist(), "dino": cosine_matrix(gen_dino, ref_dino).tolist()}
    real = {"clip_i": leave_one_out_similarity(ref_clip), "dino": leave_one_out_similarity(ref_dino)}
    report = {
        "overall": {m: summarize(scores[m]) for m in METRICS},
        "real_images": {m: summarize(real.get(m, [])) for m in METRICS},
        "per_prompt": _per_prompt(entries, scores),
        "per_image": [
            {"file": e.file, "prompt": e.prompt, "prompt_clean": e.prompt_clean, "seed": e.seed,
             **{m: float(scores[m][i]) for m in METRICS}, **{f"{m}_pairs": pairs[m][i] for m in pairs}}
            for i, e in enumerate(entries)
        ],
        "encoders": {"clip": clip, "dino": dino},
        "generated": str(generated),
        "reference": str(reference),
        "references": [
            {"file": p.name, "sha256": h, **{m: float(real[m][i]) for m in real if len(real[m])}}
            for i, (p, h) in enumerate(zip(reference_paths, reference_hashes))
        ],
        "models": _distinct(e.model for e in entries),
        "adapters": _distinct(e.adapter for e in entries),
    }
    json_file, md_file, csv_file = report_files(output)
    write_text(json_file, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    write_text(md_file, markdown_table(report))
    write_text(csv_file, csv_table(report))
    return report


def report_files(output: Path) -> list[Path]:
    """The files `score_folder` writes for `output`: the JSON, then the .md and .csv tables beside it."""
    return [output, output.with_suffix(".md"), output.with_suffix(".csv")]


def _check_outputs(output: Path, overwrite: bool) -> None:
    """Refuse report files that exist (without `overwrite`) or are folders; clear their stale temp files."""
    for path in report_files(output):
        if path.is_dir():
            raise UserError(f"--output: '{path}' is a folder; give a .json file path whose .md and .csv are free")
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise UserError(f"--output: '{path}' already exists; choose another --output, or --overwrite to "
                            "replace the report files")
    for path in report_files(output):
        remove_stale_temps(path.parent, path.name)


def _listed_images(folder: Path, entries: list[ManifestEntry]) -> list[Path]:
    """The image paths the manifest lists; a listed file that is missing is a UserError."""
    paths = [folder / e.file for e in entries]
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise UserError(f"'{folder / MANIFEST_NAME}' lists '{missing.name}', which is not in '{folder}'; "
                        "generate the folder again")
    return paths


def _embed_paths(encoder: ImageEncoder, paths: list[Path], kind: str) -> torch.Tensor:
    """Embeddings of image files, in batches, with a progress bar on a terminal."""
    batches = [paths[i:i + BATCH_SIZE] for i in range(0, len(paths), BATCH_SIZE)]
    rows = [encoder.embed_images([read_image(p, kind) for p in batch])
            for batch in tqdm(batches, desc=f"{encoder.spec} {kind}", unit="batch", disable=None)]
    return torch.cat(rows)


def _cached_embeddings(encoder: ImageEncoder, paths: list[Path], hashes: list[str],
                       cache_dir: str | os.PathLike | None) -> torch.Tensor:
    """Reference embeddings, computed only for images the cache does not hold yet."""
    cache = EmbeddingCache(encoder.cache_key, cache_dir)
    found = {h: cache.get(h) for h in dict.fromkeys(hashes)}
    todo = {h: p for p, h in zip(paths, hashes) if found[h] is None}  # one file per distinct content
    if todo:
        for h, row in zip(todo, _embed_paths(encoder, list(todo.values()), "reference")):
            cache.put(h, row)
            found[h] = row
    return torch.stack([found[h] for h in hashes])


def _per_prompt(entries: list[ManifestEntry], scores: dict[str, torch.Tensor]) -> list[dict[str, Any]]:
    """Scores summarized per prompt, in the order prompts first appear."""
    groups: dict[str, list[int]] = {}
    for i, entry in enumerate(entries):
        groups.setdefault(entry.prompt, []).append(i)
    rows = []
    for prompt, indices in groups.items():
        index = torch.tensor(indices)
        rows.append({"prompt": prompt, "prompt_clean": entries[indices[0]].prompt_clean,
                     **{m: summarize(scores[m][index]) for m in METRICS}})
    return rows


def _distinct(values: Iterable[Any]) -> list[Any]:
    """The values in first-seen order without repeats (unhashable values too)."""
    distinct: list[Any] = []
    for value in values:
        if value not in distinct:
            distinct.append(value)
    return distinct
