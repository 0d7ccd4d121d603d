"""Every adapter variant on a real text model: all-MiniLM-L6-v2 fine-tuned on SST-2 (train_5k → dev_1k).

Each method trains the same classifier (same data order, same head initialization per seed) through
dreamlr's text trainer loop; only what is trainable differs. Rows: every dreamlr variant at rank 8, the
matched-parameter pairs of the papers (LoRA r16 = D2-LoRA r8 in parameters; SingLoRA r16 = LoRA r8 on
square matrices, which all targets here are), PEFT's LoRA and DoRA at rank 8 as references, and full
fine-tuning. Prints one markdown table: dev accuracy mean ± std over the seeds, trainable parameters,
and seconds per training step (the fastest step on one fixed batch, measured after training with the
methods taking turns) as a ratio to dreamlr LoRA r8.

    python scripts/bench_text.py                                    # the full benchmark (2 CPU cores: ~2 h)
    python scripts/bench_text.py --variants lora,d2lora --seeds 0 --epochs 1 --max-train-samples 320

On a CPU shared with other jobs, set OMP_WAIT_POLICY=PASSIVE: torch's spinning OpenMP threads otherwise
run up to 20 times slower whenever another process holds a core.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from dreamlr.adapters import AdapterConfig
from dreamlr.fileio import write_text
from dreamlr.optimizers import build_optimizer
from dreamlr.text.config import TextTrainConfig
from dreamlr.text.evaluate import make_task
from dreamlr.text.train import attach_adapter, fit, total_steps, trainable_groups
from dreamlr.training import CheckpointManager, build_lr_scheduler
from dreamlr.training.loop import TrainingLoop, start_accelerator

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"
TARGETS = ["query", "key", "value", "attention.output.dense"]  # every attention projection (384×384)
# method -> (kind, variant or DoRA flag, rank)
METHODS = {
    "lora": ("dreamlr", "lora", 8),
    "loraplus": ("dreamlr", "loraplus", 8),
    "dora": ("dreamlr", "dora", 8),
    "singlora": ("dreamlr", "singlora", 8),
    "dual_lora": ("dreamlr", "dual_lora", 8),
    "d2lora": ("dreamlr", "d2lora", 8),
    "lora-r16": ("dreamlr", "lora", 16),
    "singlora-r16": ("dreamlr", "singlora", 16),
    "peft-lora": ("peft", False, 8),
    "peft-dora": ("peft", True, 8),
    "full": ("full", None, None),
}
BASELINE = "lora"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default=",".join(METHODS), help=f"comma list of: {', '.join(METHODS)}")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train-samples", type=int, default=None)
    parser.add_argument("--max-eval-samples", type=int, default=None)
    parser.add_argument("--train", default=str(DATA / "train_5k.tsv"))
    parser.add_argument("--eval", default=str(DATA / "dev_1k.tsv"))
    parser.add_argument("--adapter-lr", type=float, default=1e-3)
    parser.add_argument("--full-lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--json", help="also write every run's numbers to this file; runs already in it are kept "
                        "and not repeated, so an interrupted benchmark resumes")
    args = parser.parse_args()
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    return args


def make_trainable(model: torch.nn.Module, method: str, head: list[str], args: argparse.Namespace,
                   steps: int) -> tuple[torch.nn.Module, list[dict]]:
    """The model to train (PEFT wraps it) and its optimizer groups; the head trains in every method."""
    kind, option, rank = METHODS[method]
    params = dict(model.named_parameters())
    if kind == "full":
        model.requires_grad_(True)
        return model, [{"params": list(params.values()), "lr": args.full_lr}]
    if kind == "dreamlr":
        adapter = AdapterConfig(variant=option, rank=rank, targets=TARGETS, total_steps=steps)
        attach_adapter(model, adapter, head)
        return model, trainable_groups(model, head, args.adapter_lr, args.adapter_lr)
    from peft import LoraConfig, get_peft_model

    head_params = [params[name] for name in head]
    wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=TARGETS,
                                               use_dora=option))
    for param in head_params:
        param.requires_grad_(True)
    head_ids = {id(p) for p in head_params}
    adapter_params = [p for p in wrapped.parameters() if p.requires_grad and id(p) not in head_ids]
    return wrapped, [{"params": adapter_params, "lr": args.adapter_lr}, {"params": head_params, "lr": args.adapter_lr}]


def setup(method: str, seed: int, args: argparse.Namespace, max_train_samples: int | None):
    """Task, trainable model, optimizer groups, optimizer and step count of one method and seed."""
    config = TextTrainConfig.from_sources(None, {
        "model": "minilm", "train_file": args.train, "eval_file": args.eval, "epochs": args.epochs,
        "train_batch_size": args.batch_size, "max_length": args.max_length, "seed": seed, "group_by_length": True,
        "max_train_samples": max_train_samples, "max_eval_samples": args.max_eval_samples})
    task = make_task(config)
    steps = total_steps(config, task.num_train)
    torch.manual_seed(seed)
    model = task.load_model()
    model, groups = make_trainable(model, method, task.head_names(model), args, steps)
    return task, model, groups, build_optimizer(groups, weight_decay=0.0), steps, config


def run_one(method: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one method with one seed (dreamlr's training loop, no run folder); returns accuracy, trainable
    parameters and training time."""
    task, model, groups, optimizer, steps, config = setup(method, seed, args, args.max_train_samples)
    scheduler = build_lr_scheduler(optimizer, "linear", round(args.warmup_ratio * steps), steps)
    step_ends = [time.perf_counter()]
    started = step_ends[0]
    with tempfile.TemporaryDirectory() as scratch:
        loop = TrainingLoop(start_accelerator("no"), model, [model], optimizer, scheduler, CheckpointManager(Path(scratch)),
                            None, seed=seed, accumulation=1, max_grad_norm=1.0, checkpointing_steps=steps + 1,
                            metadata={})
        fit(loop, model, task, config, 0, steps, after_step=lambda done: step_ends.append(time.perf_counter()))
    train_seconds = time.perf_counter() - started
    step_seconds = [b - a for a, b in zip(step_ends, step_ends[1:])]
    model.eval()
    metrics = task.evaluate(model, task.eval_examples)
    return {"method": method, "seed": seed, "accuracy": metrics["accuracy"], "f1": metrics["f1"],
            "trainable": sum(p.numel() for group in groups for p in group["params"]), "steps": steps,
            "median_step_seconds": statistics.median(step_seconds), "train_seconds": round(train_seconds, 1)}


def time_steps(methods: list[str], args: argparse.Namespace, rounds: int = 3, repeats: int = 5) -> dict[str, float]:
    """Seconds of one training step (forward, backward, optimizer) of each method on one fixed batch (the
    first `batch_size` training rows). Methods take turns, `rounds` times `repeats` steps each after a
    warm-up step, and the fastest step counts, so that other work on a shared machine counts little."""
    built = {method: setup(method, 0, args, args.batch_size) for method in methods}
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(rounds):
        for method, (task, model, _, optimizer, *_) in built.items():
            batch = task.batch(list(range(task.num_train)))
            model.train()
            for repeat in range(repeats + 1):
                started = time.perf_counter()
                task.loss(model, batch).backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if repeat:
                    best[method] = min(best[method], time.perf_counter() - started)
    return best


def table(results: list[dict], seconds: dict[str, float], args: argparse.Namespace) -> str:
    """One markdown table, methods in the order asked for, with the settings in its header."""
    by_method: dict[str, list[dict]] = {}
    for result in results:
        by_method.setdefault(result["method"], []).append(result)
    base_time = seconds.get(BASELINE)
    lines = [
        f"all-MiniLM-L6-v2 on SST-2 ({Path(args.train).name} → {Path(args.eval).name}), {args.epochs} epochs, "
        f"batch {args.batch_size} (grouped by length), max length {args.max_length}, AdamW without weight decay, "
        f"linear schedule with {args.warmup_ratio:.0%} warm-up, gradient clipping 1.0; adapters (α = r) on {', '.join(TARGETS)} at "
        f"lr {args.adapter_lr:g}, full fine-tuning at lr {args.full_lr:g}; the classifier head is trained in every "
        f"row; seeds {', '.join(map(str, args.seeds))}; {torch.get_num_threads()} CPU threads"
        + (f"; s/step: fastest training step on one fixed batch of {args.batch_size} (methods taking turns), "
           f"dreamlr LoRA r8 {base_time:.3f} s" if base_time else "") + ".",
        "",
        "| method | rank | dev accuracy (mean ± std) | trainable params | s/step vs dreamlr LoRA |",
        "|---|---|---|---|---|",
    ]
    for method in args.variants:
        runs = by_method.get(method, [])
        if not runs:
            continue
        accuracies = [100 * r["accuracy"] for r in runs]
        spread = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
        rank = METHODS[method][2] or "—"
        ratio = f"{seconds[method] / base_time:.2f}×" if base_time else f"{seconds[method]:.3f} s"
        lines.append(f"| {method.removesuffix('-r16')} | {rank} | {statistics.mean(accuracies):.2f} ± {spread:.2f} | "
                     f"{runs[0]['trainable']:,} | {ratio} |")
    return "\n".join(lines)


def resumed_runs(path: str | None, settings: dict) -> list[dict]:
    """Runs already recorded in `path` by a benchmark with the same settings (none if it does not exist)."""
    if not path or not Path(path).exists():
        return []
    recorded = json.loads(Path(path).read_text())
    if recorded.get("settings") != settings:
        raise SystemExit(f"{path} holds runs made with other settings ({recorded.get('settings')}); "
                         "pass another --json file or delete it")
    return recorded["runs"]


def main() -> None:
    args = parse_args()
    settings = {key: value for key, value in vars(args).items() if key not in ("variants", "seeds", "json")}
    results = resumed_runs(args.json, settings)
    done = {(r["method"], r["seed"]) for r in results}
    for seed in args.seeds:  # seeds outer: every method runs under similar machine load
        for method in args.variants:
            if (method, seed) in done:
                continue
            result = run_one(method, seed, args)
            results.append(result)
            print(json.dumps(result), flush=True)
            if args.json:
                write_text(args.json, json.dumps({"settings": settings, "runs": results}, indent=2) + "\n")
    seconds = time_steps(args.variants, args)
    if args.json:
        content = {"settings": settings, "runs": results, "step_seconds": seconds}
        write_text(args.json, json.dumps(content, indent=2) + "\n")
    print()
    print(table(results, seconds, args))


if __name__ == "__main__":
    main()
