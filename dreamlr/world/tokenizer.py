"""The world's CLIP BPE tokenizer: every byte is a token (any text encodes), plus merges that make each
world word one token. Small enough to ship as vocab.json + merges.txt (~30 KB)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tokenizers import pre_tokenizers
from transformers import CLIPTokenizer

from dreamlr.world.vocab import all_words

MAX_LENGTH = 77  # Stable Diffusion's prompt length


def world_tokenizer() -> CLIPTokenizer:
    """The tokenizer, built in memory (identical on every call)."""
    vocab, merges = vocabulary()
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)


def vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(token -> id, merges in priority order). Each world word gets the merges that finish it after the
    merges before it have applied (a merge added later never changes an earlier word: BPE applies it
    last), so every world word encodes as one token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    merges: list[tuple[str, str]] = []
    for word in all_words():
        symbols = _bpe(list(word[:-1]) + [word[-1] + "</w>"], merges)
        while len(symbols) > 1:
            merges.append((symbols[0], symbols[1]))
            tokens.append(symbols[0] + symbols[1])
            symbols = _bpe(symbols, merges)
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def _bpe(symbols: list[str], merges: list[tuple[str, str]]) -> list[str]:
    """Apply byte-pair merges, highest priority (earliest) first, as a BPE tokenizer does."""
    rank = {pair: i for i, pair in enumerate(merges)}
    while len(symbols) > 1:
        pairs = [(rank.get((a, b), len(rank)), k) for k, (a, b) in enumerate(zip(symbols, symbols[1:]))]
        best, _ = min(pairs)
        if best == len(rank):
            break
        pair, merged, k = merges[best], [], 0
        while k < len(symbols):
            if k + 1 < len(symbols) and (symbols[k], symbols[k + 1]) == pair:
                merged.append(symbols[k] + symbols[k + 1])
                k += 2
            else:
                merged.append(symbols[k])
                k += 1
        symbols = merged
    return symbols


def save_tokenizer(folder: str | os.PathLike) -> Path:
    """Write the tokenizer's files into `folder` (vocab.json + merges.txt, CLIP's own format, and what
    `save_pretrained` writes); returns it."""
    folder = Path(folder)
    world_tokenizer().save_pretrained(folder)
    vocab, merges = vocabulary()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return folder
