"""Text-task data: rows from TSV / CSV / JSONL files (or a `datasets` split), turned into examples.

Classification rows give `TextExample`s (text, optional pair, label as written); causal-LM rows give
`InstructionExample`s (instruction, optional input, response) or, when a row has `choices`,
`ChoiceExample`s (question, choices, answer index). Every problem is a UserError naming file and line.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dreamlr.errors import UserError
from dreamlr.hub import hub_offline

SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")
CHOICE_COLUMNS = ("question", "choices", "answer")


@dataclass(frozen=True)
class Row:
    """One record of a data file and the line it starts on."""

    line: int
    values: dict[str, Any]


@dataclass(frozen=True)
class TextExample:
    """A classification example: text (and pair) with its label as the file writes it."""

    text: str
    pair: str | None
    label: str
    line: int


@dataclass(frozen=True)
class InstructionExample:
    """An instruction (with optional input) and the response to learn or to match exactly."""

    instruction: str
    input: str
    response: str
    line: int


@dataclass(frozen=True)
class ChoiceExample:
    """A multiple-choice question; `answer` indexes `choices`."""

    question: str
    choices: tuple[str, ...]
    answer: int
    line: int


def read_rows(source: str, limit: int | None = None) -> list[Row]:
    """The first `limit` rows of a .tsv/.csv/.jsonl/.json file, or of a `datasets` NAME[:CONFIG]:SPLIT."""
    path = Path(source).expanduser()
    if path.is_file():
        rows = _read_file(path, limit)
    elif path.exists():
        raise UserError(f"data file '{source}' is a folder; give a .tsv, .csv or .jsonl file")
    elif _is_dataset_spec(source):
        rows = _read_dataset(source, limit)
    else:
        raise UserError(f"data file '{source}' does not exist")
    if not rows:
        raise UserError(f"data file '{source}' holds no rows")
    return rows


def _is_dataset_spec(source: str) -> bool:
    return ":" in source and not source.lower().endswith(SUFFIXES) and not source.startswith((".", "/", "~"))


def _read_file(path: Path, limit: int | None) -> list[Row]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise UserError(f"data file '{path}': unknown file type '{suffix}'; use .tsv, .csv or .jsonl")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"data file '{path}' is not UTF-8 text") from None
    if suffix in (".tsv", ".csv"):
        rows = _delimited_rows(path, text, "\t" if suffix == ".tsv" else ",")
    else:
        rows = _json_rows(path, text)
    return rows[:limit] if limit is not None else rows


def _delimited_rows(path: Path, text: str, delimiter: str) -> list[Row]:
    """Rows of a header-first TSV (GLUE style: no quoting) or CSV (standard quoting)."""
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(text.splitlines(), delimiter=delimiter, quoting=quoting)
    header = next(reader, None)
    if not header or not any(field.strip() for field in header):
        return []
    header = [name.strip() for name in header]
    rows = []
    for fields in reader:
        if not any(field.strip() for field in fields):
            continue
        if len(fields) != len(header):
            raise UserError(f"data file '{path}' line {reader.line_num}: {len(fields)} fields, "
                            f"but the header has {len(header)}")
        rows.append(Row(reader.line_num, dict(zip(header, fields))))
    return rows


def _json_rows(path: Path, text: str) -> list[Row]:
    """Rows of JSON Lines, or of a .json file holding one list of objects."""
    stripped = text.lstrip()
    if path.suffix.lower() == ".json" and stripped.startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"data file '{path}' is not valid JSON (line {exc.lineno})") from None
        numbered = [(index + 1, record) for index, record in enumerate(records)]
        where = "record"
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except json.JSONDecodeError:
                raise UserError(f"data file '{path}' line {number} is not valid JSON") from None
        where = "line"
    rows = []
    for number, record in numbered:
        if not isinstance(record, dict):
            raise UserError(f"data file '{path}' {where} {number} is not a JSON object")
        rows.append(Row(number, record))
    return rows


def _read_dataset(spec: str, limit: int | None) -> list[Row]:
    """Rows of a hub dataset split, written NAME:SPLIT or NAME:CONFIG:SPLIT."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise UserError(f"data file '{spec}' does not exist (a datasets split is written NAME:SPLIT or NAME:CONFIG:SPLIT)")
    if hub_offline(transformers=True):
        raise UserError(f"data file '{spec}' does not exist locally, and the hub is offline for a datasets name")
    try:
        import datasets
    except ImportError:
        raise UserError(f"'{spec}' names a hub dataset; install the `datasets` package, or give a local file") from None
    name, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    try:
        dataset = datasets.load_dataset(name, config, split=split)
    except Exception as exc:  # datasets raises many types for a missing name, config or split
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"dataset '{spec}' cannot be loaded ({reason})") from None
    count = len(dataset) if limit is None else min(limit, len(dataset))
    return [Row(index + 1, dict(dataset[index])) for index in range(count)]


def _field(row: Row, column: str, source: str, *, optional: bool = False) -> str | None:
    """A row's value as text; a missing column is an error naming the columns there are."""
    if column not in row.values:
        if optional:
            return None
        present = ", ".join(map(str, row.values)) or "none"
        raise UserError(f"data file '{source}' line {row.line}: no column '{column}' (columns: {present})")
    value = row.values[column]
    if value is None or isinstance(value, (dict, list)):
        if optional and value is None:
            return None
        raise UserError(f"data file '{source}' line {row.line}: column '{column}' holds {value!r}, not text")
    return str(value).lower() if isinstance(value, bool) else str(value)


def classification_examples(rows: list[Row], source: str, text_column: str, pair_column: str | None,
                            label_column: str) -> list[TextExample]:
    """Text (and pair) with label from every row; an empty label is an error."""
    examples = []
    for row in rows:
        label = _field(row, label_column, source).strip()
        if not label:
            raise UserError(f"data file '{source}' line {row.line}: empty label in column '{label_column}'")
        pair = _field(row, pair_column, source) if pair_column else None
        examples.append(TextExample(_field(row, text_column, source), pair, label, row.line))
    return examples


def label_set(examples: list[TextExample], given: list[str] | None, source: str) -> list[str]:
    """The label names in id order: `given` (checked against the data), else the data's labels sorted
    (numerically when every label is an integer)."""
    if given is not None:
        check_labels(examples, given, source)
        return list(given)
    found = set(example.label for example in examples)
    if len(found) < 2:
        raise UserError(f"data file '{source}' has only the label '{found.pop()}'; a classifier needs at least two "
                        "(name them all with --labels)")
    if all(_is_integer(label) for label in found):
        return sorted(found, key=int)
    return sorted(found)


def check_labels(examples: list[TextExample], labels: list[str], source: str) -> None:
    """Raise on the first example whose label is not in `labels`."""
    known = set(labels)
    for example in examples:
        if example.label not in known:
            raise UserError(f"data file '{source}' line {example.line}: label '{example.label}' is not in the "
                            f"label set ({', '.join(labels)})")


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def is_multiple_choice(rows: list[Row]) -> bool:
    """Whether the rows are multiple-choice records (the first one has `choices`)."""
    return "choices" in rows[0].values


def instruction_examples(rows: list[Row], source: str, instruction_column: str, input_column: str | None,
                         response_column: str) -> list[InstructionExample]:
    """Instruction, optional input (a missing or empty input column is no input) and response of every row."""
    return [
        InstructionExample(
            _field(row, instruction_column, source),
            (_field(row, input_column, source, optional=True) or "") if input_column else "",
            _field(row, response_column, source),
            row.line,
        )
        for row in rows
    ]


def choice_examples(rows: list[Row], source: str) -> list[ChoiceExample]:
    """Multiple-choice records: `question` (text), `choices` (list of text), `answer` (index or choice text)."""
    examples = []
    for row in rows:
        question = _field(row, "question", source)
        choices = row.values.get("choices")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
            raise UserError(f"data file '{source}' line {row.line}: 'choices' must be a list of at least two "
                            "non-empty strings")
        if "answer" not in row.values:
            raise UserError(f"data file '{source}' line {row.line}: no column 'answer'")
        examples.append(ChoiceExample(question, tuple(choices), _answer_index(row, choices, source), row.line))
    return examples


def _answer_index(row: Row, choices: list[str], source: str) -> int:
    answer = row.values["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return answer
    if isinstance(answer, str) and answer in choices:
        return choices.index(answer)
    raise UserError(f"data file '{source}' line {row.line}: answer {answer!r} is neither an index into "
                    f"the {len(choices)} choices nor one of them")
