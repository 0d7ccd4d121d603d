"""Caption handling during training, as kohya's sd-scripts users know it: a prefix for per-image captions,
shuffled comma-separated tags with the first `keep_tokens` kept in place, and caption dropout (an empty
caption, so classifier-free guidance keeps working). Every random choice comes from the step's generator,
so a resumed run draws the same captions; with every option off nothing is drawn."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class CaptionPolicy:
    """What training does to an instance caption before encoding it."""

    dropout_rate: float = 0.0
    shuffle: bool = False
    keep_tokens: int = 0

    @property
    def active(self) -> bool:
        return self.dropout_rate > 0 or self.shuffle

    def apply(self, caption: str, generator: torch.Generator) -> str:
        """The caption for one training view: dropped (empty) with `dropout_rate`, else its tags shuffled."""
        if self.dropout_rate > 0 and float(torch.rand((), generator=generator)) < self.dropout_rate:
            return ""
        if not self.shuffle:
            return caption
        tags = [t.strip() for t in caption.split(",") if t.strip()]
        kept, rest = tags[:self.keep_tokens], tags[self.keep_tokens:]
        order = torch.randperm(len(rest), generator=generator).tolist()
        return ", ".join(kept + [rest[k] for k in order])


def with_prefix(caption: str | None, prefix: str | None) -> str | None:
    """A per-image caption with `prefix` in front (e.g. the rare token); None stays None."""
    if caption is None or not prefix:
        return caption
    return f"{prefix.strip()} {caption}"
