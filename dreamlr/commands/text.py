"""`dreamlr text train|eval`: adapters on transformers text models (sequence classification, causal LM)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dreamlr.errors import UserError

HELP = "fine-tune a transformers text model with an adapter (classification or causal LM), or evaluate a run"

# flag -> config key, for flags both actions share
DATA_FLAGS = {
    "eval": "eval_file",
    "text_column": "text_column",
    "text_pair_column": "text_pair_column",
    "label_column": "label_column",
    "max_eval_samples": "max_eval_samples",
}
TRAIN_FLAGS = {
    **DATA_FLAGS,
    "model": "model",
    "task": "task",
    "train": "train_file",
    "labels": "labels",
    "variant": "adapter.variant",
    "rank": "adapter.rank",
    "alpha": "adapter.alpha",
    "targets": "adapter.targets",
    "epochs": "epochs",
    "max_steps": "max_train_steps",
    "learning_rate": "learning_rate",
    "batch_size": "train_batch_size",
    "max_length": "max_length",
    "max_train_samples": "max_train_samples",
    "seed": "seed",
    "output_dir": "output_dir",
    "resume": "resume_from_checkpoint",
}
EVAL_FLAGS = {**DATA_FLAGS, "model": "model", "task": "task", "batch_size": "eval_batch_size"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from dreamlr.adapters.registry import variant_help  # the --variant help lists the registry's variants

    actions = parser.add_subparsers(dest="text_action", required=True, metavar="ACTION")
    train = actions.add_parser("train", help="train an adapter (and a classification head) on a text task",
                               description="Train an adapter on a text task. Flags and --set override --config.")
    train.add_argument("--config", help="YAML file of config keys; flags and --set override it")
    train.add_argument("--list-keys", action="store_true", help="list every config key with its type and default")
    train.add_argument("--model", help="hub id, local transformers folder, or `minilm` (default)")
    train.add_argument("--task", choices=("classification", "causal-lm"), help="default: classification")
    train.add_argument("--train", metavar="FILE", help=".tsv/.csv/.jsonl file, or a datasets NAME[:CONFIG]:SPLIT")
    _data_arguments(train)
    train.add_argument("--labels", type=_comma_list, metavar="A,B,...",
                       help="label set in id order (default: the training file's labels, sorted)")
    train.add_argument("--variant", help=variant_help())
    train.add_argument("--rank", type=int, help="adapter rank")
    train.add_argument("--alpha", type=float, help="adapter alpha (default: the rank)")
    train.add_argument("--targets", type=_targets, metavar="PRESET|NAME,...",
                       help="preset (all-linear, default) or comma-separated module suffixes / regexes")
    train.add_argument("--epochs", type=int, help="passes over the training rows (default 3)")
    train.add_argument("--max-steps", type=int, help="optimizer steps, overriding --epochs")
    train.add_argument("--learning-rate", type=float, help="adapter and head learning rate (default 5e-4)")
    train.add_argument("--batch-size", type=int, help="default 32")
    train.add_argument("--max-length", type=int, help="tokens per example (default 128)")
    train.add_argument("--max-train-samples", type=int, help="use the first N training rows")
    train.add_argument("--seed", type=int, help="default 0; two CPU runs with one seed are identical")
    train.add_argument("--output-dir", help="run folder")
    train.add_argument("--resume", metavar="latest|DIR", help="continue from the latest (or a given) checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="delete what --output-dir holds (only inside it) and train afresh")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any config key, e.g. --set lr_scheduler=cosine --set adapter.tau=0.3 (repeatable)")
    train.set_defaults(text_run=_train)

    evaluate = actions.add_parser("eval", help="evaluate a trained run (or a base causal LM) and write eval.json",
                                  description="Evaluate a `dreamlr text train` folder on its eval file or another "
                                              "one; without --run, evaluate a base causal LM (--model, --task "
                                              "causal-lm).")
    evaluate.add_argument("--run", dest="run_dir", metavar="DIR", help="run folder written by `dreamlr text train`")
    evaluate.add_argument("--model", help="base model (default: the run's); a hub id, folder or `minilm`")
    evaluate.add_argument("--task", choices=("classification", "causal-lm"), help="without --run: the task")
    _data_arguments(evaluate)
    evaluate.add_argument("--batch-size", type=int, help="evaluation batch size")
    evaluate.add_argument("--output", metavar="FILE.json", help="where to write the metrics (default RUN/eval.json)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    evaluate.set_defaults(text_run=_eval)


def _data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--eval", metavar="FILE", help="evaluation file (same formats as --train)")
    parser.add_argument("--text-column", help="default: sentence (classification), instruction (causal-lm)")
    parser.add_argument("--text-pair-column", help="second sentence of a pair (classification); input (causal-lm)")
    parser.add_argument("--label-column", help="default: label (classification), response (causal-lm)")
    parser.add_argument("--max-eval-samples", type=int, help="use the first N evaluation rows")


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _targets(text: str) -> str | list[str]:
    from dreamlr.adapters import PRESETS

    return text if text in PRESETS else _comma_list(text)


def _overrides(args: argparse.Namespace, flags: dict[str, str]) -> dict:
    return {key: getattr(args, flag) for flag, key in flags.items() if getattr(args, flag, None) is not None}


def _train(args: argparse.Namespace) -> int:
    from dreamlr.commands._checks import check_resume
    from dreamlr.config_files import list_keys, parse_set
    from dreamlr.text.config import TextTrainConfig

    if args.list_keys:
        from dreamlr.adapters import AdapterConfig

        print(list_keys(TextTrainConfig, {"adapter": AdapterConfig}))
        return 0
    from dreamlr.text.evaluate import EVAL_FILE
    from dreamlr.text.train import train

    overrides = _overrides(args, TRAIN_FLAGS)
    overrides.update(parse_set(args.set))
    config = TextTrainConfig.from_sources(args.config, overrides)
    check_resume(config.output_dir, config.resume_from_checkpoint)
    run_dir = train(config, overwrite=args.overwrite)
    print(f"adapter written to {run_dir / 'adapter.safetensors'}")
    if config.eval_file:
        print((run_dir / EVAL_FILE).read_text().strip())
    return 0


def _eval(args: argparse.Namespace) -> int:
    from dreamlr.text.evaluate import evaluate_run

    if args.output:
        from dreamlr.commands._checks import check_output_file

        check_output_file(args.output, "--output", "metrics.json")
        if Path(args.output).expanduser().exists() and not args.overwrite:
            raise UserError(f"--output '{args.output}' already exists; give a new file, or --overwrite to replace it")
    path, metrics = evaluate_run(args.run_dir, _overrides(args, EVAL_FLAGS), args.output)
    print(json.dumps(metrics))
    print(f"written to {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    return args.text_run(args)
