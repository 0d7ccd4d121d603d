"""Does an EMA of the adapter help? Per variant, the quickstart recipe on the world (configs/quickstart.yaml)
trained with `ema_decay` for several seeds; each run writes both the last step's adapter and its moving
average, so the two are compared paired (same run, same initial noise for every generation): world-DINO and
world-CLIP-I of `<instance prompt>` generations against the subject's references.

    python scripts/bench_ema.py --out runs/bench-ema                 # 6 variants x 3 seeds, ema_decay 0.99

Prints (and writes to OUT/bench_ema.md) per variant: raw and EMA means over seeds, and EMA - raw with its
mean and std over seeds; a difference whose |mean| is below 2 std is called noise. Runs are reused when
finished (OUT/VARIANT/seed-S).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

from dreamlr.adapters import VARIANTS
from dreamlr.cli import main as dreamlr
from dreamlr.diffusion import load_pipeline
from dreamlr.fileio import write_text
from dreamlr.training import ADAPTER_FILE, EMA_FILE
from dreamlr.world.personalization import generate, similarity, subject_scorers

ROOT = Path(__file__).resolve().parents[1]
METRICS = (("dino", "world-DINO"), ("clip_i", "world-CLIP-I"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--ema-decay", type=float, default=0.99)
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--sampling-steps", type=int, default=25)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    config = yaml.safe_load(Path(args.config).read_text())
    model, prompt = config["pretrained_model_name_or_path"], config["instance_prompt"]
    encoders, refs = subject_scorers(config["instance_data_dir"])
    seeds = [int(s) for s in args.seeds.split(",")]
    lines = [f"EMA (decay {args.ema_decay}) vs the last step's adapter, {config['max_train_steps']} steps, "
             f"seeds {args.seeds}, {args.num_images} images of `{prompt}` per run; mean ± std over seeds.\n",
             "| variant | " + " | ".join(f"{n} raw | {n} EMA | Δ EMA − raw" for _, n in METRICS) + " |",
             "|---|" + "---:|" * (3 * len(METRICS))]
    for variant in [v for v in args.variants.split(",") if v]:
        scores: dict[str, list[float]] = {f"{m}_{kind}": [] for m, _ in METRICS for kind in ("raw", "ema")}
        for seed in seeds:
            run = out / variant / f"seed-{seed}"
            if not (run / EMA_FILE).is_file():
                code = dreamlr(["train", "--config", args.config, "--overwrite", "--variant", variant,
                                "--set", f"seed={seed}", "--set", f"ema_decay={args.ema_decay}",
                                "--set", "num_validation_images=0", "--set", f"output_dir={run}"])
                if code:
                    return code
            for kind, file in (("raw", ADAPTER_FILE), ("ema", EMA_FILE)):
                pipe = load_pipeline(model, adapter=run / file, merge=True)
                pipe.set_progress_bar_config(disable=True)
                images = generate(pipe, prompt, seed, args.num_images, args.sampling_steps)
                for name, enc in encoders.items():
                    scores[f"{name}_{kind}"].append(similarity(enc, images, refs[name]))
        cells = []
        for name, _ in METRICS:
            raw, ema = np.array(scores[f"{name}_raw"]), np.array(scores[f"{name}_ema"])
            diff = ema - raw
            spread = diff.std(ddof=1) if len(diff) > 1 else float("nan")
            verdict = "" if not np.isfinite(spread) or abs(diff.mean()) < 2 * spread else " **"
            cells += [f"{raw.mean():.3f} ± {raw.std(ddof=1):.3f}", f"{ema.mean():.3f} ± {ema.std(ddof=1):.3f}",
                      f"{diff.mean():+.3f} ± {spread:.3f}{verdict}"]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    lines.append("\n** |mean| above 2 std over seeds; the rest is within noise.")
    write_text(out / "bench_ema.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
