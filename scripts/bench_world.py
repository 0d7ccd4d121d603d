"""The six adapter variants on the world's DreamBooth subjects: `dreamlr compare` sweeps, then one table of
paired differences against LoRA (95 % bootstrap intervals over subjects, prompts and training seeds),
trainable parameters, seconds per step and adapter memory.

Protocol: SingLoRA's DreamBooth setup (Bensaïd et al. 2025, `configs/sd15-singlora.yaml`: UNet query and key
projections, rank 8 for every variant, constant schedule, 500 steps, prior preservation) scaled to the world
(64 px, and learning rate 1e-3 where the paper uses 1e-4: see PROTOCOL), plus `attn` (q, k, v, out) as a
second setting. Per setting, three sweeps: every variant at rank 8 (reference LoRA), LoRA r16 vs D2-LoRA r8,
and SingLoRA r16 vs LoRA r8 (the papers' matched-parameter pairs), each with --seeds (default 0,1,2). Every
sweep is a `dreamlr compare` folder under --out, so running the script again reuses every finished run and
score (resumable), and each has its own report.html.

    python scripts/bench_world.py --out runs/bench-world                      # the world model (issue 13)
    python scripts/bench_world.py --out /tmp/bw --model tiny --toy            # seconds: tiny model, demo subject

`--model tiny --toy` runs the same pipeline on the random built-in model and the demo subject (the tests do);
its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from dreamlr.cli import main as dreamlr
from dreamlr.fileio import write_text
from dreamlr.report.data import load
from dreamlr.report.paired import row_stats
from dreamlr.report.tables import format_bytes, show_estimate, step_seconds

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ["lora", "loraplus", "dora", "singlora", "dual_lora", "d2lora"]
SETTINGS = {"attn-qk": "attn-qk", "attn": "attn"}  # SingLoRA's DreamBooth targets, then every projection
# sweep name -> (variants, per-variant --set keys); the first variant is the reference
PAIRS = {
    "lora16-d2lora8": (["lora", "d2lora"], ["lora:adapter.rank=16", "lora:adapter.alpha=16"]),
    "singlora16-lora8": (["lora", "singlora"], ["singlora:adapter.rank=16", "singlora:adapter.alpha=16"]),
}
METRICS = (("clip_i", "CLIP-I"), ("clip_t", "CLIP-T"), ("dino", "DINO"))  # the SingLoRA table's order
# SingLoRA's DreamBooth recipe at the world's 64 px, with the world's learning rate: at the paper's 1e-4 the
# adapters barely leave their initialization in 500 steps (a probe on `mug`: DoRA's and LoRA's loss, DINO,
# CLIP-I and CLIP-T agree to 1e-3), so every variant would score alike; 1e-3 is the quickstart's rate.
PROTOCOL = {
    "resolution": 64, "learning_rate": 1.0e-3, "lr_scheduler": "constant", "max_train_steps": 500,
    "train_batch_size": 1, "with_prior_preservation": True, "num_class_images": 100, "prior_loss_weight": 1.0,
    "mixed_precision": "no", "checkpointing_steps": 100, "checkpoints_total_limit": 1, "validation_steps": 100,
    "num_validation_images": 2, "validation_inference_steps": 25, "seed": 0,
    "adapter": {"variant": "lora", "rank": 8, "alpha": 8, "targets": "attn-qk"},
}
TOY = {"resolution": 32, "max_train_steps": 3, "learning_rate": 1.0e-2, "num_class_images": 1,
       "checkpointing_steps": 1, "num_validation_images": 0}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder of the sweeps and the table (bench_world.md)")
    parser.add_argument("--model", default="world", help="the base model: world (default) or tiny")
    parser.add_argument("--subjects", help="DreamBooth-layout subjects folder (default: the world's, or with "
                                           "--toy the demo subject)")
    parser.add_argument("--dreambench-subjects", metavar="NAMES",
                        help="only these subjects of the DreamBooth-layout folder (comma-separated)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="variants of the rank-8 sweep")
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"matched pairs to run: {', '.join(PAIRS)} or ''")
    parser.add_argument("--settings", default=",".join(SETTINGS), help="target settings: attn-qk, attn")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, help="training steps (default 500)")
    parser.add_argument("--learning-rate", type=float, help="learning rate (default 1e-3)")
    parser.add_argument("--max-prompts", type=int, help="first N prompts per subject (default all 25)")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--toy", action="store_true", help="seconds: tiny sizes (for tests)")
    parser.add_argument("--table-only", action="store_true",
                        help="train nothing: the table of the chosen sweeps already in --out (others are named on "
                             "stderr and left out)")
    return parser.parse_args(argv)


def config_file(args: argparse.Namespace, out: Path) -> Path:
    """The shared DreamBooth config of every sweep (the protocol, at toy size with --toy)."""
    config = {**PROTOCOL, **(TOY if args.toy else {}), "pretrained_model_name_or_path": args.model,
              "output_dir": str(out / "unused"), "instance_data_dir": "unused", "instance_prompt": "unused"}
    if args.steps:
        config["max_train_steps"] = args.steps
    if args.learning_rate:
        config["learning_rate"] = args.learning_rate
    path = out / "protocol.yaml"
    write_text(path, yaml.safe_dump(config, sort_keys=False))
    return path


def subject_args(args: argparse.Namespace) -> list[str]:
    if not args.subjects and (args.toy or args.model == "tiny"):
        return ["--subjects", str(ROOT / "assets" / "demo_subject"), "--class-name", "mug"]
    if args.subjects:
        folder = args.subjects
    else:
        from dreamlr.world.assets import world_dir

        folder = str(world_dir() / "subjects")
    chosen = ["--dreambench-subjects", args.dreambench_subjects] if args.dreambench_subjects else []
    return ["--dreambench", folder, *chosen]


def sweeps(args: argparse.Namespace) -> list[tuple[str, str, list[str], list[str]]]:
    """(setting, sweep name, variants, per-variant --set keys) of every sweep to run."""
    out = []
    for setting in [s for s in args.settings.split(",") if s]:
        if setting not in SETTINGS:
            raise SystemExit(f"bench_world: unknown setting {setting!r}; choose from {', '.join(SETTINGS)}")
        out.append((setting, "rank8", [v for v in args.variants.split(",") if v], []))
        for pair in [p for p in args.pairs.split(",") if p]:
            if pair not in PAIRS:
                raise SystemExit(f"bench_world: unknown pair {pair!r}; choose from {', '.join(PAIRS)}")
            out.append((setting, pair, *PAIRS[pair]))
    return out


def run_sweep(args: argparse.Namespace, config: Path, folder: Path, setting: str, variants: list[str],
              own: list[str]) -> int:
    """One `dreamlr compare` sweep (reusing whatever a previous run finished); its exit code."""
    encoders = "tiny" if args.toy or args.model == "tiny" else args.model
    command = ["compare", "--config", str(config), "--variants", ",".join(variants), *subject_args(args),
               "--output-dir", str(folder), "--seeds", args.seeds, "--reference", "lora",
               "--num-images", str(args.num_images), "--steps", str(2 if args.toy else args.sampling_steps),
               "--clip", encoders, "--dino", encoders, "--set", f"adapter.targets={SETTINGS[setting]}"]
    if args.max_prompts or args.toy:
        command += ["--max-prompts", str(args.max_prompts or 2)]
    for item in own:
        command += ["--set", item]
    print(f"== {folder.name}: {' '.join(variants)} ({setting})", file=sys.stderr, flush=True)
    return dreamlr(command)


def table(folders: list[tuple[str, str, Path]]) -> str:
    """One markdown table over the sweeps: per variant row, its mean scores, its paired differences against its
    sweep's LoRA (and in DINO against the base model: did it learn), trainable parameters, median s/step and
    adapter memory; the first sweep of each setting also shows its base model (no adapter)."""
    header = ["setting", "sweep", "variant", "rank", "trainable params", "CLIP-I / CLIP-T / DINO (mean)",
              *(f"Δ {name} vs the sweep's LoRA" for _, name in METRICS), "Δ DINO vs base model", "s/step (median)",
              "adapter memory"]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    shown: set[str] = set()
    for setting, name, folder in folders:
        data = load([folder])
        stats = row_stats(data)
        base = data.base(data.variants[0].group) if data.variants and setting not in shown else None
        shown.add(setting)
        for row in ([base] if base else []) + data.variants:
            means = " / ".join(f"{stats[row.label].mean[key].mean:.3f}" if stats[row.label].mean[key] else "–"
                               for key, _ in METRICS)
            if row is base:
                lines.append("| " + " | ".join([setting, name, "*base model*", "–", "0", means,
                                                *["–"] * len(METRICS), "–", "–", "–"]) + " |")
                continue
            steps = step_seconds(row)
            memory = row.record.get("adapter_memory_bytes")
            diffs = [show_estimate(stats[row.label].vs_reference[key], signed=True)
                     if stats[row.label].vs_reference[key] else "reference" for key, _ in METRICS]
            params = row.record.get("trainable_parameters")
            lines.append("| " + " | ".join([
                setting, name, row.label, str(row.record.get("rank", "–")),
                f"{params:,}" if params else "–", means, *diffs,
                show_estimate(stats[row.label].vs_base["dino"], signed=True),
                f"{steps['median']:.3g}" if steps else "–", format_bytes(memory) if memory else "–"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).expanduser().resolve()
    if args.table_only:
        return write_table(out, [(setting, name, out / setting / name) for setting, name, *_ in sweeps(args)])
    out.mkdir(parents=True, exist_ok=True)
    config = config_file(args, out)
    done, failed = [], 0
    for setting, name, variants, own in sweeps(args):
        folder = out / setting / name
        code = run_sweep(args, config, folder, setting, variants, own)
        if code == 2:  # the model, encoders or subjects cannot load: every other sweep would fail alike
            return 2
        failed += code != 0
        done.append((setting, name, folder))
    return write_table(out, done) or (1 if failed else 0)


def write_table(out: Path, folders: list[tuple[str, str, Path]]) -> int:
    """Print the table of the sweeps that exist and write it to `out`/bench_world.md; 2 when there is none."""
    present = [entry for entry in folders if (entry[2] / "sweep.json").is_file()]
    for setting, name, _ in (entry for entry in folders if entry not in present):
        print(f"bench_world: no sweep {setting}/{name} in {out}; left out of the table", file=sys.stderr)
    if not present:
        print(f"bench_world: no finished sweep in {out}; run without --table-only first", file=sys.stderr)
        return 2
    text = ("Paired differences against the LoRA row of the same sweep (r8, or r16 in lora16-d2lora8): mean "
            "[95% bootstrap interval over subjects, prompts and training seeds]; an interval that excludes 0 is a "
            "difference beyond noise.\n\n"
            + table(present))
    write_text(out / "bench_world.md", text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
