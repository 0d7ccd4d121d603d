"""Evaluation on the DreamBench protocol: prompt sets, CLIP-I / CLIP-T / DINO metrics, encoders, scoring.

`encoders` and `score` import open_clip and timm, so their names load on first use.
"""

from dreamlr.evaluation.dreambench import LIVE_PROMPTS, OBJECT_PROMPTS, SUBJECT_CLASSES, is_live, prompt_templates
from dreamlr.evaluation.manifest import MANIFEST_NAME, ManifestEntry, read_manifest, write_manifest
from dreamlr.evaluation.metrics import (
    cosine_matrix,
    image_similarity,
    leave_one_out_similarity,
    summarize,
    text_similarity,
)
from dreamlr.evaluation.prompts import Prompt, load_prompts, remove_token

_LAZY = {
    "ClipEncoder": "encoders", "DinoEncoder": "encoders", "load_clip": "encoders", "load_dino": "encoders",
    "score_folder": "score",
}

__all__ = [
    "LIVE_PROMPTS", "MANIFEST_NAME", "OBJECT_PROMPTS", "SUBJECT_CLASSES", "ManifestEntry", "Prompt", "cosine_matrix",
    "image_similarity", "is_live", "leave_one_out_similarity", "load_prompts", "prompt_templates", "read_manifest",
    "remove_token", "summarize", "text_similarity", "write_manifest", *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"dreamlr.evaluation.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'dreamlr.evaluation' has no attribute {name!r}")
