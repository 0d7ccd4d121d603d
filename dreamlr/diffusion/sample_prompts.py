"""Sample-prompt files, as kohya's sd-scripts reads them: one prompt a line, with optional per-line options
`--w WIDTH --h HEIGHT --d SEED --s STEPS --l SCALE --n NEGATIVE` (long forms `--seed --steps --scale
--negative` too); `#` starts a comment line. Training renders them at every validation step into
`samples/step-N/prompt-KK.png` and keeps a contact sheet (`samples/index.html`: steps x prompts)."""

from __future__ import annotations

import html
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dreamlr.errors import UserError
from dreamlr.fileio import write_text

PROMPTS_FILE = "prompts.json"  # in the run's samples/ folder
SHEET_FILE = "index.html"
_OPTIONS = {"w": "width", "h": "height", "d": "seed", "seed": "seed", "s": "steps", "steps": "steps",
            "l": "scale", "scale": "scale", "n": "negative", "negative": "negative"}


@dataclass(frozen=True)
class SamplePrompt:
    """One line of a sample-prompt file, its options filled from the run's defaults."""

    text: str
    width: int
    height: int
    seed: int
    steps: int
    scale: float
    negative: str = ""

    def file_name(self, index: int) -> str:
        return f"prompt-{index:02d}.png"


def read_sample_prompts(path: str | os.PathLike, resolution: int, seed: int, steps: int,
                        scale: float = 7.5) -> list[SamplePrompt]:
    """The prompts of a sample-prompt file; a bad line is a UserError naming the file and line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"sample_prompts '{path}' does not exist; give a text file with one prompt per line")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"sample_prompts '{path}' cannot be read as UTF-8 text ({e})") from None
    prompts = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            prompts.append(_parse(line, f"sample_prompts '{path}' line {number}",
                                  dict(width=resolution, height=resolution, seed=seed, steps=steps, scale=scale)))
    if not prompts:
        raise UserError(f"sample_prompts '{path}' holds no prompts (one per line; '#' starts a comment line)")
    return prompts


def _parse(line: str, where: str, values: dict) -> SamplePrompt:
    text, *options = f" {line}".split(" --")
    if not text.strip():
        raise UserError(f"{where}: no prompt before the options")
    values = {**values, "negative": ""}
    for option in options:
        name, _, value = option.strip().partition(" ")
        key = _OPTIONS.get(name)
        if key is None:
            raise UserError(f"{where}: unknown option --{name}; use --w --h --d (seed) --s (steps) --l (scale) --n")
        value = value.strip()
        try:
            values[key] = value if key == "negative" else (float(value) if key == "scale" else int(value))
        except ValueError:
            raise UserError(f"{where}: --{name} needs a number, got {value!r}") from None
    for key in ("width", "height"):
        if values[key] < 8 or values[key] % 8:
            raise UserError(f"{where}: {key} must be a positive multiple of 8, got {values[key]}")
    if values["steps"] < 1:
        raise UserError(f"{where}: steps must be at least 1, got {values['steps']}")
    if values["scale"] < 0:
        raise UserError(f"{where}: scale must be 0 or more, got {values['scale']}")
    return SamplePrompt(" ".join(text.split()), **values)


def write_sheet(samples: Path, prompts: list[SamplePrompt]) -> None:
    """samples/prompts.json and the contact sheet samples/index.html over every step folder so far."""
    write_text(samples / PROMPTS_FILE, json.dumps([asdict(p) for p in prompts], indent=1) + "\n")
    steps = sorted(int(p.name[5:]) for p in samples.glob("step-*") if p.name[5:].isdigit())
    head = "".join(f"<th>{html.escape(p.text)}</th>" for p in prompts)
    rows = []
    for step in steps:
        cells = "".join(f'<td><img src="step-{step}/{p.file_name(k)}" alt="{html.escape(p.text)}, step {step}">'
                        "</td>" if (samples / f"step-{step}" / p.file_name(k)).is_file() else "<td></td>"
                        for k, p in enumerate(prompts))
        rows.append(f"<tr><th>step {step}</th>{cells}</tr>")
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1"><title>samples</title>'
        "<style>:root{color-scheme:light dark}body{font-family:system-ui,sans-serif;margin:1rem}"
        "table{border-collapse:collapse}th,td{padding:4px;vertical-align:top;font-size:.85rem}"
        "img{width:128px;image-rendering:pixelated}div{overflow-x:auto}</style></head><body>"
        "<h1>Sample prompts across training</h1>"
        f"<div><table><tr><th>step</th>{head}</tr>{''.join(rows)}</table></div></body></html>\n")
    write_text(samples / SHEET_FILE, page)
