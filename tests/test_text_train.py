"""Short text runs on tiny random models: every variant on BERT, RoBERTa, GPT-2 and LLaMA classifiers and on
GPT-2 / LLaMA causal LMs; learning, resume, determinism, and `dreamlr text eval` on the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_text_models import KINDS, choice_rows, qa_rows, sentiment_rows, tiny_model, write_jsonl, write_tsv

from dreamlr.adapters import VARIANTS
from dreamlr.cli import main
from dreamlr.text import TextTrainConfig, evaluate_run, load_run
from dreamlr.text import train as train_module
from dreamlr.text.train import train


def classification_config(tmp_path: Path, model: str, **overrides) -> TextTrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(24))
    eval_file = write_tsv(tmp_path / "dev.tsv", sentiment_rows(10, seed=1))
    options = {"model": model, "train_file": str(train_file), "eval_file": str(eval_file),
               "output_dir": str(tmp_path / "run"), "batch_size": 8, "max_train_steps": 2, "max_length": 16,
               "learning_rate": 1e-2, "checkpointing_steps": 100,
               "adapter": {"variant": "lora", "rank": 2, "ramp_steps": 1, "warmup_steps": 1}}
    options.update(overrides)
    return TextTrainConfig.from_sources(None, options)


def causal_config(tmp_path: Path, model: str, **overrides) -> TextTrainConfig:
    tmp_path.mkdir(parents=True, exist_ok=True)
    qa = write_jsonl(tmp_path / "qa.jsonl", qa_rows())
    options = {"model": model, "task": "causal-lm", "train_file": str(qa), "eval_file": str(qa),
               "output_dir": str(tmp_path / "run"), "batch_size": 4, "max_train_steps": 2, "max_length": 32,
               "max_new_tokens": 4, "learning_rate": 1e-2, "checkpointing_steps": 100,
               "adapter": {"variant": "lora", "rank": 2, "ramp_steps": 1, "warmup_steps": 1}}
    options.update(overrides)
    return TextTrainConfig.from_sources(None, options)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_a_classifier_on_each_model(kind, variant, tmp_path, tmp_path_factory):
    adapter = {"variant": variant, "rank": 2, "ramp_steps": 1, "warmup_steps": 1}
    run_dir = train(classification_config(tmp_path, tiny_model(kind, tmp_path_factory), adapter=adapter))
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["num_examples"] == 10 and 0 <= report["accuracy"] <= 1 and "f1" in report
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2]
    adapter_tensors = load_file(run_dir / "adapter.safetensors")
    head = load_file(run_dir / "head.safetensors")
    assert adapter_tensors and all(k.startswith(("classifier.", "score.")) for k in head)
    assert not any(k.startswith(("classifier.", "score.")) for k in adapter_tensors)
    assert variant in (run_dir / "README.md").read_text()
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["labels"] == ["neg", "pos"]

    model, task = load_run(run_dir, with_eval=True)
    again = task.evaluate(model.eval(), task.eval_examples)
    assert again["accuracy"] == report["accuracy"]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_trains_a_causal_lm(kind, variant, tmp_path, tmp_path_factory):
    adapter = {"variant": variant, "rank": 2, "ramp_steps": 1, "warmup_steps": 1}
    run_dir = train(causal_config(tmp_path, tiny_model(kind, tmp_path_factory), adapter=adapter))
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["num_examples"] == len(qa_rows()) and report["exact_match"] == report["accuracy"]
    assert not (run_dir / "head.safetensors").exists()
    assert all(k.rpartition(".")[2] not in ("weight", "bias") for k in load_file(run_dir / "adapter.safetensors"))


def test_classifier_learns_the_synthetic_task(tmp_path, tmp_path_factory):
    dev = write_tsv(tmp_path / "dev20.tsv", sentiment_rows(20, seed=1))
    config = classification_config(tmp_path, tiny_model("bert", tmp_path_factory), max_train_steps=None, epochs=10,
                                   learning_rate=2e-2, eval_file=str(dev))
    report = json.loads((train(config) / "eval.json").read_text())
    assert report["accuracy"] >= 0.9


def test_causal_lm_learns_answers_and_multiple_choice(tmp_path, tmp_path_factory):
    model = tiny_model("llama", tmp_path_factory)
    settings = dict(max_train_steps=40, learning_rate=3e-2, adapter={"variant": "lora", "rank": 4},
                    lr_scheduler="constant")
    run_dir = train(causal_config(tmp_path, model, **settings))
    assert json.loads((run_dir / "eval.json").read_text())["exact_match"] == 1.0
    losses = [m["loss"] for m in read_metrics(run_dir)]
    assert losses[-1] < losses[0] / 5

    choices = write_jsonl(tmp_path / "choices.jsonl", choice_rows())
    mc_dir = train(causal_config(tmp_path, model, train_file=str(choices), eval_file=str(choices),
                                 output_dir=str(tmp_path / "mc"), **settings))
    report = json.loads((mc_dir / "eval.json").read_text())
    assert report["accuracy"] == 1.0 and report["accuracy_per_token"] == 1.0 and report["num_examples"] == 5


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_evaluation_equals_one_example_at_a_time(kind, tmp_path, tmp_path_factory):
    # prompts differ in length: batched generation left-pads them, likelihood batches right-pad
    choices = write_jsonl(tmp_path / "choices.jsonl", choice_rows())
    task = train_module.make_task(causal_config(tmp_path, tiny_model(kind, tmp_path_factory), max_new_tokens=6))
    model = task.load_model().eval()
    choices = train_module.make_task(causal_config(tmp_path, task.config.model, eval_file=str(choices))).eval_examples
    batched = task.generate(model, task.eval_examples), task.evaluate(model, choices)
    task.config.eval_batch_size = 1
    single = task.generate(model, task.eval_examples), task.evaluate(model, choices)
    assert batched == single and any(batched[0])


def test_loss_covers_response_tokens_only(tmp_path, tmp_path_factory):
    config = causal_config(tmp_path, tiny_model("gpt2", tmp_path_factory))
    task = train_module.make_task(config)
    task.load_model()
    batch = task.batch([0, 1])
    for row in range(2):
        targets = batch["labels"][row][batch["labels"][row] != -100].tolist()
        response = qa_rows()[row]["response"]
        assert targets == task.tokenizer(response)["input_ids"] + [task.tokenizer.eos_token_id]


def padded_tokens(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)


def test_length_grouped_batches_cover_each_epoch_once_with_less_padding():
    lengths = [int(x) for x in torch.randint(3, 60, (1000,), generator=torch.Generator().manual_seed(0))]
    per_epoch = train_module.steps_per_epoch(1000, 8)
    for epoch in (0, 1):
        steps = range(epoch * per_epoch, (epoch + 1) * per_epoch)
        grouped = [train_module.batch_indices(3, s, 1000, 8, lengths) for s in steps]
        plain = [train_module.batch_indices(3, s, 1000, 8) for s in steps]
        assert sorted(i for b in grouped for i in b) == list(range(1000)) == sorted(i for b in plain for i in b)
        assert padded_tokens(grouped, lengths) < 0.7 * padded_tokens(plain, lengths)
    assert grouped != [train_module.batch_indices(3, s, 1000, 8, lengths) for s in range(per_epoch)]


def test_two_runs_with_one_seed_are_identical(tmp_path, tmp_path_factory):
    model = tiny_model("roberta", tmp_path_factory)
    first = train(classification_config(tmp_path / "a", model, max_train_steps=3))
    second = train(classification_config(tmp_path / "b", model, max_train_steps=3))
    for name in ("adapter.safetensors", "head.safetensors"):
        a, b = load_file(first / name), load_file(second / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind,variant", [("bert", "dora"), ("gpt2", "singlora")])
def test_resume_after_interrupt_equals_uninterrupted(kind, variant, tmp_path, tmp_path_factory, monkeypatch):
    settings = dict(max_train_steps=6, checkpointing_steps=2, lr_scheduler="linear", lr_warmup_steps=2,
                    group_by_length=True, adapter={"variant": variant, "rank": 2, "ramp_steps": 3})
    model = tiny_model(kind, tmp_path_factory)
    whole = train(classification_config(tmp_path / "whole", model, **settings))

    real_fit = train_module.fit

    def killed_in_step_5(*args, **kwargs):
        def stop_after_4(done):  # after step 4's metrics and checkpoint
            if done == 4:
                raise KeyboardInterrupt
        real_fit(*args, after_step=stop_after_4, **kwargs)

    monkeypatch.setattr(train_module, "fit", killed_in_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(classification_config(tmp_path / "split", model, **settings))
    run_dir = tmp_path / "split" / "run"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-2", "step-4"]
    assert (run_dir / "checkpoints" / "step-4" / "head.safetensors").is_file()
    assert not (run_dir / "adapter.safetensors").exists()
    monkeypatch.setattr(train_module, "fit", real_fit)

    train(classification_config(tmp_path / "split", model, resume_from_checkpoint="latest", **settings))
    for name in ("adapter.safetensors", "head.safetensors"):
        a, b = load_file(whole / name), load_file(run_dir / name)
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "eval.json").read_text())["accuracy"] == \
        json.loads((whole / "eval.json").read_text())["accuracy"]


def test_string_and_integer_labels_and_sentence_pairs(tmp_path, tmp_path_factory):
    rows = [{"premise": r["sentence"], "hypothesis": "the movie", "label": ["10", "2", "3"][i % 3]}
            for i, r in enumerate(sentiment_rows(12))]
    data = write_jsonl(tmp_path / "nli.jsonl", rows)
    config = classification_config(tmp_path, tiny_model("bert", tmp_path_factory), train_file=str(data),
                                   eval_file=str(data), text_column="premise", text_pair_column="hypothesis")
    run_dir = train(config)
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["labels"] == ["2", "3", "10"]
    report = json.loads((run_dir / "eval.json").read_text())
    assert "f1" not in report and report["num_examples"] == 12
    task = train_module.make_task(config)
    task.load_model()
    batch = task.batch([0])
    assert (batch["token_type_ids"] == 1).any()  # the pair is encoded as the second segment


def test_cli_train_then_eval_on_another_file(tmp_path, tmp_path_factory, capsys):
    train_file = write_tsv(tmp_path / "train.tsv", sentiment_rows(16))
    other = write_tsv(tmp_path / "other.tsv", sentiment_rows(6, seed=5))
    run_dir = tmp_path / "run"
    code = main(["text", "train", "--model", tiny_model("gpt2", tmp_path_factory), "--train", str(train_file),
                 "--eval", str(train_file), "--variant", "d2lora", "--rank", "2", "--targets", "c_attn,c_proj",
                 "--max-steps", "2", "--batch-size", "8", "--output-dir", str(run_dir), "--set", "max_length=16"])
    assert code == 0 and "adapter written to" in capsys.readouterr().out
    assert all(".c_fc." not in k for k in load_file(run_dir / "adapter.safetensors"))

    code = main(["text", "eval", "--run", str(run_dir), "--eval", str(other), "--output", str(tmp_path / "o.json")])
    assert code == 0
    report = json.loads((tmp_path / "o.json").read_text())
    assert report["num_examples"] == 6 and report["eval_file"] == str(other)
    assert json.loads(capsys.readouterr().out.splitlines()[0])["accuracy"] == report["accuracy"]


def test_base_causal_lm_evaluates_without_a_run(tmp_path, tmp_path_factory):
    choices = write_jsonl(tmp_path / "choices.jsonl", choice_rows())
    path, metrics = evaluate_run(None, {"model": tiny_model("llama", tmp_path_factory), "task": "causal-lm",
                                        "eval_file": str(choices)}, str(tmp_path / "base.json"))
    assert path.is_file() and metrics["num_examples"] == 5 and "accuracy_per_token" in metrics
