"""Text data files (TSV / CSV / JSONL / JSON), label sets, instruction and multiple-choice records, and the
text run config: what they read, and the one-line errors for what they cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dreamlr.errors import UserError
from dreamlr.config_files import parse_set
from dreamlr.text.config import TextTrainConfig
from dreamlr.text.data import (
    choice_examples,
    classification_examples,
    instruction_examples,
    is_multiple_choice,
    label_set,
    read_rows,
)

SST2 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "sst2"


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_tsv_csv_jsonl_and_json_give_the_same_rows(tmp_path):
    files = [
        write(tmp_path / "a.tsv", "sentence\tlabel\nit's \"fine\"\t1\n\nbad, really\t0\n"),
        write(tmp_path / "a.csv", 'sentence,label\n"it\'s ""fine""",1\n"bad, really",0\n'),
        write(tmp_path / "a.jsonl", '{"sentence": "it\'s \\"fine\\"", "label": 1}\n\n{"sentence": "bad, really", "label": 0}\n'),
        write(tmp_path / "a.json", json.dumps([{"sentence": "it's \"fine\"", "label": 1},
                                               {"sentence": "bad, really", "label": 0}])),
    ]
    for source in files:
        examples = classification_examples(read_rows(source), source, "sentence", None, "label")
        assert [(e.text, e.label) for e in examples] == [("it's \"fine\"", "1"), ("bad, really", "0")], source
    assert [row.line for row in read_rows(files[0])] == [2, 4]
    assert len(read_rows(files[2], limit=1)) == 1


def test_label_sets_sort_integers_numerically_and_keep_a_given_order(tmp_path):
    source = write(tmp_path / "l.tsv", "sentence\tlabel\na\t10\nb\t2\nc\t2\nd\t-1\n")
    examples = classification_examples(read_rows(source), source, "sentence", None, "label")
    assert label_set(examples, None, source) == ["-1", "2", "10"]
    assert label_set(examples, ["10", "2", "-1", "7"], source) == ["10", "2", "-1", "7"]
    words = classification_examples(read_rows(write(tmp_path / "w.tsv", "s\tl\na\tpos\nb\tneg\n")), "w", "s", None, "l")
    assert label_set(words, None, "w") == ["neg", "pos"]
    with pytest.raises(UserError, match="has only the label 'pos'; a classifier needs at least two"):
        label_set(words[:1], None, "w")


def test_sentence_pairs_and_a_missing_pair_column(tmp_path):
    source = write(tmp_path / "nli.tsv", "premise\thypothesis\tlabel\na cat\tan animal\tentailment\n")
    [example] = classification_examples(read_rows(source), source, "premise", "hypothesis", "label")
    assert (example.text, example.pair, example.label) == ("a cat", "an animal", "entailment")
    with pytest.raises(UserError, match=r"line 2: no column 'hyp' \(columns: premise, hypothesis, label\)"):
        classification_examples(read_rows(source), source, "premise", "hyp", "label")


def test_instruction_and_multiple_choice_records(tmp_path):
    source = write(tmp_path / "i.jsonl", '{"instruction": "add", "input": "1 1", "response": "2"}\n'
                                         '{"instruction": "say hi", "response": "hi"}\n')
    rows = read_rows(source)
    assert not is_multiple_choice(rows)
    examples = instruction_examples(rows, source, "instruction", "input", "response")
    assert [(e.instruction, e.input, e.response) for e in examples] == [("add", "1 1", "2"), ("say hi", "", "hi")]

    mc = write(tmp_path / "mc.jsonl", '{"question": "2+2", "choices": ["3", "4"], "answer": 1}\n'
                                      '{"question": "sky", "choices": ["blue", "red"], "answer": "blue"}\n')
    rows = read_rows(mc)
    assert is_multiple_choice(rows)
    assert [(e.choices, e.answer) for e in choice_examples(rows, mc)] == [(("3", "4"), 1), (("blue", "red"), 0)]


@pytest.mark.parametrize("name,text,message", [
    ("empty.tsv", "", "holds no rows"),
    ("header.tsv", "sentence\tlabel\n", "holds no rows"),
    ("blank.jsonl", "\n\n", "holds no rows"),
    ("ragged.tsv", "sentence\tlabel\na\t1\nb\t0\textra\n", "line 3: 3 fields, but the header has 2"),
    ("bad.jsonl", '{"sentence": "a"}\n{oops\n', "line 2 is not valid JSON"),
    ("list.jsonl", '["a", 1]\n', "line 1 is not a JSON object"),
    ("data.txt", "a\n", "unknown file type '.txt'"),
])
def test_unreadable_files_are_one_line_errors(tmp_path, name, text, message):
    with pytest.raises(UserError, match=message) as caught:
        read_rows(write(tmp_path / name, text))
    assert "\n" not in str(caught.value)


def test_missing_files_folders_and_offline_dataset_names(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_rows(str(tmp_path / "nope.tsv"))
    with pytest.raises(UserError, match="is a folder"):
        read_rows(str(tmp_path))
    with pytest.raises(UserError, match="the hub is offline for a datasets name"):
        read_rows("nyu-mll/glue:sst2:train")


@pytest.mark.parametrize("record,message", [
    ({"question": "q", "choices": ["a"], "answer": 0}, "'choices' must be a list of at least two non-empty strings"),
    ({"question": "q", "choices": ["a", "b"], "answer": 2}, "answer 2 is neither an index"),
    ({"question": "q", "choices": ["a", "b"], "answer": "c"}, "answer 'c' is neither an index"),
    ({"question": "q", "choices": ["a", "b"]}, "no column 'answer'"),
])
def test_bad_multiple_choice_records(tmp_path, record, message):
    source = write(tmp_path / "mc.jsonl", json.dumps(record) + "\n")
    with pytest.raises(UserError, match=message):
        choice_examples(read_rows(source), source)


def test_empty_labels_and_non_text_values(tmp_path):
    source = write(tmp_path / "e.jsonl", '{"sentence": "a", "label": ""}\n')
    with pytest.raises(UserError, match="line 1: empty label"):
        classification_examples(read_rows(source), source, "sentence", None, "label")
    source = write(tmp_path / "n.jsonl", '{"sentence": ["a"], "label": 1}\n')
    with pytest.raises(UserError, match="column 'sentence' holds \\['a'\\], not text"):
        classification_examples(read_rows(source), source, "sentence", None, "label")


def test_config_resolves_task_columns_and_reads_set_values(tmp_path):
    assert TextTrainConfig.from_sources(None, {}).text_column == "sentence"
    causal = TextTrainConfig.from_sources(None, {"task": "causal-lm"})
    assert (causal.text_column, causal.text_pair_column, causal.label_column) == ("instruction", "input", "response")
    overrides = parse_set(["adapter.variant=dora", "labels=[0, 1]", "max_train_steps=null", "learning_rate=1e-3"])
    config = TextTrainConfig.from_sources(write(tmp_path / "c.yaml", "epochs: 2\nadapter: {rank: 4}\n"), overrides)
    assert config.adapter == {"variant": "dora", "rank": 4, "targets": "all-linear"}
    assert config.labels == ["0", "1"] and config.epochs == 2 and config.learning_rate == 1e-3


@pytest.mark.parametrize("overrides,message", [
    ({"task": "ner"}, "unknown task 'ner'"),
    ({"epochs": "two"}, "config key 'epochs' must be int"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"labels": ["a"]}, "labels must be at least two distinct names"),
    ({"prompt_template": "{question}"}, "prompt_template may hold only the placeholder"),
    ({"adapter.variant": "lokr"}, "unknown adapter variant 'lokr'"),
    ({"adapter.rank": 3, "adapter.variant": "dual_lora"}, "rank 3 is odd"),
    ({"lr_scheduler": "step"}, "unknown lr_scheduler"),
    ({"learning_rat": 1}, r"unknown config key 'learning_rat' \(did you mean 'learning_rate'\?\)"),
])
def test_bad_config_values(overrides, message):
    with pytest.raises(UserError, match=message):
        TextTrainConfig.from_sources(None, overrides)


@pytest.mark.skipif(not SST2.is_dir(), reason="shared SST-2 split not present")
def test_the_shared_sst2_split_reads_as_a_binary_task():
    source = str(SST2 / "dev_1k.tsv")
    examples = classification_examples(read_rows(source), source, "sentence", None, "label")
    assert len(examples) == 1000 and label_set(examples, None, source) == ["0", "1"]
