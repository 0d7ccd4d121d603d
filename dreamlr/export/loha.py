"""LyCORIS LoHa layers in kohya files: `<name>.hada_w1_a`, `.hada_w1_b`, `.hada_w2_a`, `.hada_w2_b`, `.alpha`.

The update is (alpha / r)·(w1a·w1b) ⊙ (w2a·w2b), r = w1b's rows, as LyCORIS, ComfyUI and A1111 apply it;
w1a, w2a are (out, r) and w1b, w2b (r, in·kh·kw), the tensors of dreamlr's `loha` variant as they are.
LyCORIS' Tucker form of a conv (`hada_t1`/`hada_t2` cores, w1a/w2a then (r, out), w1b/w2b (r, in)) is read
by folding each core into its w_b, which gives the plain form of the same update.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dreamlr.adapters.base import AdapterLayer
from dreamlr.adapters.loha import LoHaLayer
from dreamlr.errors import UserError

TENSORS = LoHaLayer.tensor_names  # hada_w1_a, hada_w1_b, hada_w2_a, hada_w2_b
TUCKER = ("hada_t1", "hada_t2")


@dataclass
class HadaFactors:
    """One LoHa layer: its four tensors by name (2-D fp32 on the CPU) and alpha; always exact."""

    tensors: dict[str, torch.Tensor]
    alpha: float
    error: None = None  # as LoRAFactors.error: never a truncated SVD

    @property
    def rank(self) -> int:
        return self.tensors["hada_w1_b"].shape[0]


def from_layer(layer: AdapterLayer) -> HadaFactors | None:
    """A `loha` layer's tensors as they are; None for a layer of another variant."""
    if not isinstance(layer, LoHaLayer):
        return None
    return HadaFactors({name: getattr(layer, name).detach().to("cpu", torch.float32).contiguous() for name in TENSORS},
                       float(layer.config.alpha))


def is_loha(parts: dict[str, torch.Tensor]) -> bool:
    """Whether one module's tensors (by role, `dreamlr.export.layouts.group`) hold LoHa tensors."""
    return any(role in parts for role in (*TENSORS, *TUCKER))


def from_file(name: str, parts: dict[str, torch.Tensor], source: Path) -> HadaFactors:
    """One module's LoHa tensors from a file (alpha = rank where `.alpha` is missing, as LyCORIS reads it)."""
    roles = set(parts) - {"alpha"}
    tucker = roles & set(TUCKER)
    if roles - tucker != set(TENSORS) or tucker not in (set(), set(TUCKER)):
        raise UserError(f"'{source}': module {name!r} has {', '.join(sorted(parts))}; a LoHa layer has "
                        f"{', '.join(TENSORS)} (and hada_t1, hada_t2 in the Tucker form)")
    w = {role: parts[role].float() for role in TENSORS}
    if tucker:  # W_i = w_i_aᵀ·(t_i ×₂ w_i_b): each core folded into its w_i_b, (r, in·kh·kw)
        for i in (1, 2):
            core, a, b = parts[f"hada_t{i}"].float(), w[f"hada_w{i}_a"], w[f"hada_w{i}_b"]
            if core.dim() != 4 or core.shape[:2] != (a.shape[0], b.shape[0]):
                raise UserError(f"'{source}': module {name!r} has a hada_t{i} of shape {tuple(core.shape)} that does "
                                f"not fit its hada_w{i}_a {tuple(a.shape)} and hada_w{i}_b {tuple(b.shape)}")
            w[f"hada_w{i}_a"], w[f"hada_w{i}_b"] = a.t(), torch.einsum("ijkl,jm->imkl", core, b)
    w1a, w1b, w2a, w2b = (w[role].reshape(w[role].shape[0], -1) for role in TENSORS)
    if w1a.shape != w2a.shape or w1b.shape != w2b.shape or w1a.shape[1] != w1b.shape[0]:
        shapes = ", ".join(f"{role} {tuple(parts[role].shape)}" for role in TENSORS)
        raise UserError(f"'{source}': module {name!r} has LoHa tensors whose shapes do not fit each other: {shapes}")
    alpha = float(parts["alpha"].reshape(-1)[0]) if "alpha" in parts else float(w1b.shape[0])
    return HadaFactors({role: t.contiguous() for role, t in zip(TENSORS, (w1a, w1b, w2a, w2b))}, alpha)
