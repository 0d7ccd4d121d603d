"""`dreamlr text train|eval` from the command line: user mistakes exit 2 with one line, and the real-model check
(all-MiniLM-L6-v2 + LoRA on 1,000 SST-2 phrases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_text_models import sentiment_rows, tiny_model, write_jsonl, write_tsv

from dreamlr.cli import main

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "empty.tsv").write_text("")
    (tmp_path / "run_without_config").mkdir()
    return {
        "train": write_tsv(tmp_path / "train.tsv", sentiment_rows(8)),
        "empty": tmp_path / "empty.tsv",
        "odd_label": write_tsv(tmp_path / "odd.tsv", sentiment_rows(4) + [{"sentence": "the plot", "label": "meh"}]),
        "qa": write_jsonl(tmp_path / "qa.jsonl", [{"instruction": "hi", "answer": "x"}]),
        "bare": tmp_path / "run_without_config",
    }


@pytest.mark.parametrize("extra,message", [
    (["--text-column", "review"], "train.tsv' line 2: no column 'review' (columns: sentence, label)"),
    (["--train", "{empty}"], "empty.tsv' holds no rows"),
    (["--eval", "{odd_label}"], "odd.tsv' line 6: label 'meh' is not in the label set (neg, pos)"),
    (["--train", "{odd_label}", "--labels", "neg,pos"], "label 'meh' is not in the label set (neg, pos)"),
    (["--model", "nobody/no-such-model"], "model 'nobody/no-such-model' not found locally, and the hub is offline"),
    (["--model", "./missing/model"], "model './missing/model': no such folder"),
    (["--train", "/nonexistent/train.tsv"], "data file '/nonexistent/train.tsv' does not exist"),
    (["--variant", "lokr"], "unknown adapter variant 'lokr'"),
    (["--targets", "to_q"], "target 'to_q' matches no module of BertForSequenceClassification"),
    (["--rank", "100000"], "rank 100000 is larger than module"),
    (["--task", "causal-lm", "--train", "{qa}"], "qa.jsonl' line 1: no column 'response' (columns: instruction, answer)"),
    (["--set", "learning_rat=1e-4"], "unknown config key 'learning_rat' (did you mean 'learning_rate'?)"),
    (["--resume", "/nonexistent/ckpt"], "checkpoint '/nonexistent/ckpt' not found"),
])
def test_bad_train_input_exits_2_with_one_line(extra, message, tmp_path, tmp_path_factory, capsys):
    paths = files(tmp_path)
    args = ["text", "train", "--model", tiny_model("bert", tmp_path_factory), "--train", str(paths["train"]),
            "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--rank", "2"]
    capsys.readouterr()  # building the tiny model may print a progress bar
    code = main(args + [part.format(**paths) for part in extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("dreamlr text: error: ") and message in err, err
    assert not (tmp_path / "run" / "adapter.safetensors").exists()


@pytest.mark.parametrize("extra,message", [
    (["--model", "minilm", "--eval", "{train}"], "a classifier needs its trained head: give --run DIR"),
    (["--run", "{bare}", "--eval", "{train}"], "has no config.yaml"),
    (["--task", "causal-lm", "--model", "minilm"], "nothing to evaluate: give --eval FILE"),
    (["--run", "{bare}", "--eval", "{train}", "--output", "{train}"], "already exists; give a new file, or --overwrite"),
    (["--run", "{bare}", "--eval", "{train}", "--output", "{bare}"], "is a folder; give a file path"),
])
def test_bad_eval_input_exits_2_with_one_line(extra, message, tmp_path, capsys):
    paths = files(tmp_path)
    code = main(["text", "eval"] + [part.format(**paths) for part in extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and message in err, err


@pytest.mark.skipif(not SST2.is_dir(), reason="shared SST-2 split not present")
def test_minilm_lora_learns_sst2(tmp_path):
    """all-MiniLM-L6-v2 + LoRA r8 (all linear layers) on 1,000 SST-2 phrases: >= 75% on 200 dev phrases
    (about 45 s on two busy CPU cores, so not marked slow)."""
    code = main(["text", "train", "--model", "minilm", "--train", str(SST2 / "train_5k.tsv"),
                 "--eval", str(SST2 / "dev_1k.tsv"), "--max-train-samples", "1000", "--max-eval-samples", "200",
                 "--variant", "lora", "--rank", "8", "--epochs", "2", "--learning-rate", "1e-3",
                 "--batch-size", "32", "--max-length", "64", "--set", "group_by_length=true",
                 "--output-dir", str(tmp_path / "run")])
    assert code == 0
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["num_examples"] == 200 and report["accuracy"] >= 0.75, report
