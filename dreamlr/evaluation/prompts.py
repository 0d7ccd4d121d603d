"""Prompt sets for generation: a DreamBench list or a text file, filled in with the rare token and class."""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from dreamlr.evaluation.dreambench import PROMPT_LISTS, is_live, prompt_templates
from dreamlr.errors import UserError

DREAMBENCH = "dreambench"
TOKEN_FIELD = "{token}"
CLASS_FIELD = "{class}"


class Prompt(NamedTuple):
    """A prompt as given to the model, and the same prompt without the rare token (for CLIP-T)."""

    text: str
    clean: str


def remove_token(prompt: str, token: str) -> str:
    """The prompt with every whole-word occurrence of `token` removed and spaces tidied."""
    if not token:
        return " ".join(prompt.split())
    return " ".join(re.sub(rf"(?<!\w){re.escape(token)}(?!\w)", " ", prompt).split())


def load_prompts(source: str, token: str, class_name: str | None = None,
                 lists: dict[str, tuple[str, ...]] | None = None) -> list[Prompt]:
    """Prompts from `dreambench:object`, `dreambench:live`, `dreambench` (list chosen by class) or a file.

    `lists` replaces DreamBench's two lists (a dataset's own, e.g. the world's). A file holds one prompt per line (UTF-8; blank lines and lines starting with `#` are skipped);
    `{token}` and `{class}` in a prompt are replaced by `token` and `class_name`.
    """
    templates, where = _templates(source, class_name, lists)
    prompts, seen = [], {}
    for number, template in templates:
        if CLASS_FIELD in template and not class_name:
            raise UserError(f"{where}: prompt {template!r} uses {CLASS_FIELD}; give the class noun with --class-name")
        text = " ".join(template.replace(TOKEN_FIELD, token).replace(CLASS_FIELD, class_name or "").split())
        if text in seen:
            raise UserError(f"{where}: line {number} repeats the prompt of line {seen[text]}; remove one of them")
        seen[text] = number
        prompts.append(Prompt(text, remove_token(text, token)))
    return prompts


def _templates(source: str, class_name: str | None,
               lists: dict[str, tuple[str, ...]] | None) -> tuple[list[tuple[int, str]], str]:
    """(line number, template) pairs and a name for the source, for error messages."""
    if source == DREAMBENCH or source.startswith(DREAMBENCH + ":"):
        kind = source.partition(":")[2]
        if not kind:
            if not class_name:
                raise UserError("--prompts dreambench picks the list from the class; give --class-name "
                                "or choose dreambench:object or dreambench:live")
            kind = "live" if is_live(class_name) else "object"
        if kind not in PROMPT_LISTS:
            raise UserError(f"--prompts {source}: unknown DreamBench list; use "
                            + " or ".join(f"{DREAMBENCH}:{k}" for k in PROMPT_LISTS))
        chosen = lists[kind] if lists else prompt_templates(kind)
        return list(enumerate(chosen, start=1)), f"{DREAMBENCH}:{kind}"
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"prompt file '{source}' does not exist; give a text file with one prompt per line, "
                        f"or {DREAMBENCH}:object / {DREAMBENCH}:live")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"prompt file '{source}' cannot be read as UTF-8 text ({e})") from None
    templates = [(n, line.strip()) for n, line in enumerate(lines, start=1)
                 if line.strip() and not line.lstrip().startswith("#")]
    if not templates:
        raise UserError(f"prompt file '{source}' holds no prompts (one per line; '#' starts a comment line)")
    return templates, f"prompt file '{source}'"
