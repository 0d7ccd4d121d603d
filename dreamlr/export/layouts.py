"""Key layouts of LoRA files that other tools write, read into one form: each module's tensors by role.

The layouts diffusers, sd-scripts, ComfyUI and A1111 load, for one module `<m>`:

| writer | down / up (+ extras) |
|---|---|
| PEFT, diffusers ≥ 0.21 | `<m>.lora_A.weight` / `<m>.lora_B.weight` (+ `.lora_magnitude_vector[.weight]`) |
| diffusers' `convert_state_dict_to_diffusers` (UNet) | `<m>.lora.down.weight` / `<m>.lora.up.weight` |
| the same (text encoder) | `<m>.lora_linear_layer.down.weight` / `.up.weight` |
| diffusers attention processors (`save_attn_procs`) | `<attn>.processor.to_q_lora.down.weight` / `.up.weight` |
| kohya, LyCORIS LoCon | `<m>.lora_down.weight` / `<m>.lora_up.weight` (+ `.lora_mid.weight`, Tucker) |
| LyCORIS LoHa (kohya files only) | `<m>.hada_w1_a` … `.hada_w2_b` (+ `.hada_t1`, `.hada_t2`: Tucker) |

Any of them may carry `<m>.alpha` (scale alpha/rank); attention-processor files may lack the `unet.`
prefix. Dotted names are returned as `unet.<path>` / `text_encoder.<path>` (attention-processor
names resolved to the layer they adapt); kohya names (`lora_unet_…`, `lora_te…`) as they are.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch

from dreamlr.errors import UserError
from dreamlr.export.factors import LoRAFactors
from dreamlr.export.loha import TENSORS as LOHA_TENSORS
from dreamlr.export.loha import TUCKER as LOHA_TUCKER
from dreamlr.export.naming import COMPONENTS, TEXT_ENCODERS

# tensor-name endings and the role of the tensor; longest first so `.lora.down.weight` wins over `.down.weight`
_ROLES = (
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_magnitude_vector.weight", "magnitude"), (".lora_magnitude_vector", "magnitude"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    ("_lora.down.weight", "down"), ("_lora.up.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".alpha", "alpha"),
)
# LyCORIS LoHa tensors, their names as roles (`group(..., loha=True)`)
_LOHA_ROLES = tuple((f".{name}", name) for name in (*LOHA_TENSORS, *LOHA_TUCKER))
# LyCORIS / other network types dreamlr cannot import, by a tensor name each has (LoHa: outside kohya files)
_REFUSED = {"hada_w1_a": "a LyCORIS LoHa", "hada_w1_b": "a LyCORIS LoHa", "hada_w2_a": "a LyCORIS LoHa",
            "hada_w2_b": "a LyCORIS LoHa", "hada_t1": "a LyCORIS LoHa", "hada_t2": "a LyCORIS LoHa",
            "lokr_w1": "a LyCORIS LoKr", "lokr_w2": "a LyCORIS LoKr", "lokr_w1_a": "a LyCORIS LoKr",
            "lokr_w1_b": "a LyCORIS LoKr", "lokr_w2_a": "a LyCORIS LoKr", "lokr_w2_b": "a LyCORIS LoKr",
            "lokr_t2": "a LyCORIS LoKr", "a1.weight": "a GLoRA", "b1.weight": "a GLoRA", "diff": "a full-weight diff",
            "diff_b": "a full-weight diff", "w_norm": "a norm-weight diff", "b_norm": "a norm-weight diff",
            "dora_scale": "a kohya/LyCORIS DoRA (dora_scale)", "oft_blocks": "an OFT", "oft_diag": "an OFT"}
# diffusers' old text-encoder processor names (DIFFUSERS_OLD) for CLIP's attention projections
_CLIP_PROCESSOR = {"to_q": "q_proj", "to_k": "k_proj", "to_v": "v_proj", "to_out": "out_proj"}
_KOHYA = re.compile(r"lora_(unet|te\d?)_")


def has_lora_keys(keys: list[str]) -> bool:
    """Whether some key ends like a LoRA factor of one of the layouts above, or like a tensor of a LyCORIS network
    `group` refuses by name (a file of other tensors is no LoRA)."""
    return any(((split := _split(key)) is not None and split[1] != "alpha")
               or any(key.endswith("." + suffix) for suffix in _REFUSED) for key in keys)


def group(tensors: dict[str, torch.Tensor], source: Path, loha: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """{module name: {"down", "up", and where present "mid", "alpha", "magnitude": tensor}}; with `loha` (kohya
    files) LyCORIS LoHa tensors too, by their own names (`hada_w1_a`, …). A tensor of a network type dreamlr
    cannot import, or of no known layout, is one clear error naming it."""
    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        split = _split(key, _ROLES + _LOHA_ROLES if loha else _ROLES)
        if split is None:
            for suffix, what in _REFUSED.items():
                if key.endswith("." + suffix):
                    raise UserError(f"'{source}': {key.removesuffix('.' + suffix)} is {what} layer, which dreamlr "
                                    "cannot import; it imports LoRA and LoCon layers (lora_down/lora_up[/lora_mid], "
                                    "lora_A/lora_B, lora.down/lora.up) and, from kohya files, LyCORIS LoHa layers")
            raise UserError(f"'{source}': key {key!r} is not a LoRA tensor this importer knows (it reads "
                            "<module>.lora_A/lora_B.weight, .lora_down/lora_up/lora_mid.weight, .lora.down/up.weight, "
                            ".lora_linear_layer.down/up.weight, _lora.down/up.weight, .alpha)")
        module, role = split
        parts = modules.setdefault(_module_name(module), {})
        if role in parts:
            raise UserError(f"'{source}': module {module!r} has two {role} tensors (key {key!r})")
        parts[role] = tensor
    return modules


def factors(modules: dict[str, dict[str, torch.Tensor]], source: Path,
            alpha_of: Callable[[str, int], float]) -> dict[str, LoRAFactors]:
    """LoRA factors per module from `group`'s tensors; alpha from an `.alpha` tensor, else `alpha_of(name,
    rank)`. A LoCon Tucker core (`lora_mid`, r×r×kh×kw after a 1×1 down) is folded into the down kernel."""
    result = {}
    for name, parts in modules.items():
        if "down" not in parts or "up" not in parts:
            present = ", ".join(sorted(parts)) or "nothing"
            raise UserError(f"'{source}': module {name!r} has {present} but not both a down and an up factor")
        down, up = parts["down"].float(), parts["up"].float()
        if "mid" in parts:
            down = _fold_tucker(name, parts["mid"].float(), down, source)
        rank = down.shape[0]
        if up.reshape(up.shape[0], -1).shape[1] != rank:
            raise UserError(f"'{source}': module {name!r} has a down factor of rank {rank} but an up factor of shape "
                            f"{tuple(up.shape)}")
        alpha = float(parts["alpha"].reshape(-1)[0]) if "alpha" in parts else alpha_of(name, rank)
        result[name] = LoRAFactors.from_weights(down, up, alpha, parts.get("magnitude"))
    return result


def _split(key: str, roles: tuple[tuple[str, str], ...] = _ROLES) -> tuple[str, str] | None:
    """(module as the key spells it, role) or None when the key ends like none of `roles`."""
    for suffix, role in roles:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], role
    return None


def _module_name(module: str) -> str:
    """A dotted module name as `unet.<path>` / `text_encoder.<path>`, attention-processor names resolved; a kohya
    name unchanged."""
    if _KOHYA.match(module):
        return module
    component, _, path = module.partition(".")
    if component not in COMPONENTS:  # save_attn_procs files: the UNet's processors, no prefix
        component, path = ("text_encoder" if module.startswith("text_model.") else "unet"), module
    path = re.sub(r"(^|\.)processor\.", r"\1", path)
    head, _, last = path.rpartition(".")
    if component in TEXT_ENCODERS and last in _CLIP_PROCESSOR and head.endswith("self_attn"):
        path = f"{head}.{_CLIP_PROCESSOR[last]}"
    elif component == "unet" and last == "to_out":  # the processor's to_out is the attention's to_out.0
        path = f"{path}.0"
    return f"{component}.{path}"


def _fold_tucker(name: str, mid: torch.Tensor, down: torch.Tensor, source: Path) -> torch.Tensor:
    """The down kernel (r, in, kh, kw) equal to a 1×1 down conv (r, in, 1, 1), then the core conv (r, r, kh, kw)."""
    if mid.dim() != 4 or down.dim() != 4 or down.shape[2:] != (1, 1) or mid.shape[1] != down.shape[0]:
        raise UserError(f"'{source}': module {name!r} has a lora_mid of shape {tuple(mid.shape)} that does not fit "
                        f"its lora_down of shape {tuple(down.shape)}")
    return torch.einsum("abhw,bi->aihw", mid, down[:, :, 0, 0])
