"""AdapterConfig: every choice of an adapter variant, validated on construction."""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any

from dreamlr.config_files import BOOL_WORDS
from dreamlr.errors import UserError

PRESETS: dict[str, tuple[str, ...]] = {
    "attn-qk": ("to_q", "to_k"),
    "attn": ("to_q", "to_k", "to_v", "to_out.0"),
    "attn+proj": ("to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out"),
    "all-linear": (),  # every nn.Linear but output heads, chosen by type in attach.py
    "clip-attn": ("q_proj", "k_proj", "v_proj", "out_proj"),
}


class AdapterConfigError(UserError, ValueError):
    """An AdapterConfig that cannot be built, or that does not fit the model it is attached to."""


@dataclass(frozen=True)
class AdapterConfig:
    """One adapter variant with its rank, scale, targets and the open choices of its paper.

    `alpha` defaults to `rank` (scale 1). `targets` is a preset name or a list of module-name
    suffixes / regexes. The fields below `lora_dropout` are variants' own options (each variant class
    names its `options` and checks them); options of other variants are kept, checked, but unused.
    """

    variant: str = "lora"
    rank: int = 8
    alpha: float | None = None
    targets: str | tuple[str, ...] = "attn"
    lora_dropout: float = 0.0
    # LoRA+: learning rate of B = lr_ratio * learning rate of A.
    lr_ratio: float = 16.0
    # SingLoRA: u(t) = min(t / ramp_steps, 1); None = 1% of `total_steps`, at least 1.
    ramp_steps: int | None = None
    # Dual LoRA: u(t) = min(t / warmup_steps, 1); None = 1% of `total_steps`, at least 1.
    warmup_steps: int | None = None
    ste: str = "clip"
    magnitude_rank: int | None = None
    direction_rank: int | None = None
    init_std: float = 0.01
    # D2-LoRA.
    tau: float = 0.5
    projection: str = "row"
    residual_after_projection: bool = True
    # Length of the run, used to resolve ramp_steps / warmup_steps left at None.
    total_steps: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.alpha is None:
            object.__setattr__(self, "alpha", float(self.rank) if _is_int(self.rank) else None)
        self._validate()

    def _validate(self) -> None:
        from dreamlr.adapters.registry import LAYER_CLASSES, VARIANTS  # lazy: the variant modules import this one

        fail = AdapterConfigError
        if self.variant not in VARIANTS:
            raise fail(f"unknown adapter variant {self.variant!r}; known variants: {', '.join(VARIANTS)}")
        if not _is_int(self.rank) or self.rank <= 0:
            raise fail(f"adapter rank must be a positive integer, got {self.rank!r}")
        if not isinstance(self.alpha, (int, float)) or not math.isfinite(self.alpha) or self.alpha <= 0:
            raise fail(f"adapter alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.targets, str):
            if self.targets not in PRESETS:
                raise fail(
                    f"unknown target preset {self.targets!r}; presets: {', '.join(PRESETS)} "
                    "(or give a list of module-name suffixes or regexes)"
                )
        elif not self.targets or not all(isinstance(t, str) and t for t in self.targets):
            raise fail(f"adapter targets must be a preset name or a non-empty list of names, got {self.targets!r}")
        if not 0.0 <= check_number(self, "lora_dropout") < 1.0:
            raise fail(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        check_steps(self, "total_steps")
        for layer_class in LAYER_CLASSES.values():  # every variant's options: a config keeps those of others too
            layer_class.check_options(self)

    @property
    def scale(self) -> float:
        """s = alpha / rank (Dual LoRA uses alpha / sqrt(r1 * r2) instead)."""
        return float(self.alpha) / self.rank

    @property
    def sub_ranks(self) -> tuple[int, int]:
        """Dual LoRA's (magnitude rank r1, direction rank r2)."""
        if self.magnitude_rank is not None and self.direction_rank is not None:
            return self.magnitude_rank, self.direction_rank
        return self.rank // 2, self.rank // 2

    def schedule_steps(self, explicit: int | None) -> int:
        """A ramp / warm-up length: the explicit value, else 1% of total_steps, at least 1."""
        if explicit is not None:
            return explicit
        return max(1, round(0.01 * self.total_steps)) if self.total_steps else 1

    def replace(self, **changes: Any) -> AdapterConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (targets as a list)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(data["targets"], tuple):
            data["targets"] = list(data["targets"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        """Build from a dict such as a YAML section; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise AdapterConfigError(f"unknown adapter option(s) {', '.join(unknown)}{hint}; "
                                     f"known: {', '.join(sorted(known))}")
        word = data.get("residual_after_projection")
        if isinstance(word, str) and word.lower() in BOOL_WORDS:  # YAML 1.1's yes/no/on/off
            data = {**data, "residual_after_projection": BOOL_WORDS[word.lower()]}
        return cls(**data)


# -- checks of one option, for the variant classes' `check_options` --------------------------------
def check_number(config: AdapterConfig, key: str) -> float:
    """The option's value, which must be a finite number."""
    value = getattr(config, key)
    if not _is_number(value) or not math.isfinite(value):
        raise AdapterConfigError(f"{key} must be a number, got {value!r}")
    return value


def check_positive(config: AdapterConfig, key: str) -> None:
    if check_number(config, key) <= 0:
        raise AdapterConfigError(f"{key} must be positive, got {getattr(config, key)!r}")


def check_non_negative(config: AdapterConfig, key: str) -> None:
    if check_number(config, key) < 0:
        raise AdapterConfigError(f"{key} must be 0 or more, got {getattr(config, key)!r}")


def check_choice(config: AdapterConfig, key: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, key)
    if not isinstance(value, str):
        raise AdapterConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    if value not in choices:
        raise AdapterConfigError(f"unknown {key} {value!r}; choose one of {', '.join(choices)}")


def check_flag(config: AdapterConfig, key: str) -> None:
    if not isinstance(getattr(config, key), bool):
        raise AdapterConfigError(f"{key} must be true or false, got {getattr(config, key)!r}")


def check_steps(config: AdapterConfig, key: str) -> None:
    """A step count: a positive integer, or None (resolved from `total_steps`)."""
    value = getattr(config, key)
    if value is not None and (not _is_int(value) or value < 1):
        raise AdapterConfigError(f"{key} must be a positive integer or null, got {value!r}")


def check_rank(config: AdapterConfig, key: str) -> None:
    """An optional rank: a positive integer, or None."""
    value = getattr(config, key)
    if value is not None and (not _is_int(value) or value < 1):
        raise AdapterConfigError(f"{key} must be a positive integer, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
