"""On-disk cache of image embeddings, keyed by encoder and by the image file's SHA-256.

Location: `$DREAMLR_CACHE`, else `~/.cache/dreamlr` (the root the trainer's class-image cache uses);
entries are `embeddings/<encoder key>/<sha256>.safetensors`. Safe to delete at any time.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from dreamlr.fileio import cache_root, write_safetensors


class EmbeddingCache:
    """Embeddings of one encoder (by its `cache_key`) for image files (by content hash)."""

    def __init__(self, encoder_key: str, root: str | os.PathLike | None = None):
        self.folder = Path(root or cache_root()) / "embeddings" / encoder_key

    def get(self, sha256: str) -> torch.Tensor | None:
        """The cached embedding, or None when absent or unreadable."""
        path = self.folder / f"{sha256}.safetensors"
        if not path.is_file():
            return None
        try:
            return load_file(path)["embedding"]
        except (OSError, SafetensorError, KeyError):
            return None

    def put(self, sha256: str, embedding: torch.Tensor) -> None:
        """Store one embedding (1-D); a cache that cannot be written is skipped silently."""
        try:
            write_safetensors(self.folder / f"{sha256}.safetensors", {"embedding": embedding.clone()})
        except OSError:
            pass
