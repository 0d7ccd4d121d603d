"""Personalization on the world (issue 13's bar): the quickstart recipe trained with several seeds, then the
world-DINO and world-CLIP-I similarity of `<instance prompt>` generations to the subject's reference images,
base model vs personalized, and the world classifier's context accuracy on `<instance prompt> <context>`
generations of the personalized model.

    python scripts/bench_world_personalization.py --out runs/bench-personalization     # 3 seeds
    python scripts/bench_world_personalization.py --out DIR --figure assets/world/quickstart.png

Per seed s: `dreamlr train --config CONFIG --set seed=s` into OUT/seed-s (a finished run is reused), and the
base model and the personalized one generate the same images (same prompts, same initial noise, which
depends on s). Similarity is the DreamBench protocol's: the mean cosine over every (generation, reference)
pair. The bar: personalized minus base exceeds 5x the larger of the two std over seeds, for both encoders.
Prints a table and writes OUT/personalization.json (and, with --figure, a picture: base vs personalized).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from dreamlr.cli import main as dreamlr
from dreamlr.diffusion import load_pipeline
from dreamlr.fileio import write_text
from dreamlr.world.assets import world_dir
from dreamlr.world.classifier import classify, load_classifier
from dreamlr.world.personalization import generate, similarity, subject_scorers
from dreamlr.world.vocab import CONTEXTS

ROOT = Path(__file__).resolve().parents[1]
BAR = 5.0  # personalized - base must exceed BAR x std over seeds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder of the runs and personalization.json")
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num-images", type=int, default=8, help="generations of the instance prompt per seed")
    parser.add_argument("--context-images", type=int, default=2, help="generations per context prompt per seed")
    parser.add_argument("--sampling-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--figure", help="write base vs personalized samples (seed 0) as this PNG")
    args = parser.parse_args(argv)
    if args.num_images < 1 or args.context_images < 1 or args.sampling_steps < 1:
        parser.error("--num-images, --context-images and --sampling-steps must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    config = yaml.safe_load(Path(args.config).read_text())
    model, prompt = config["pretrained_model_name_or_path"], config["instance_prompt"]
    encoders, refs = subject_scorers(config["instance_data_dir"])
    classifier = load_classifier(world_dir() / "classifier")
    contexts = [c for c in CONTEXTS if c != "studio"]
    seeds = [int(s) for s in args.seeds.split(",")]
    base = load_pipeline(model)
    base.set_progress_bar_config(disable=True)
    rows: dict[str, list] = {"seed": [], "base_dino": [], "dino": [], "base_clip_i": [], "clip_i": [], "context": []}
    figure = []
    for seed in seeds:
        run = out / f"seed-{seed}"
        adapter = run / "adapter.safetensors"
        if not adapter.is_file():
            code = dreamlr(["train", "--config", args.config, "--overwrite", "--set", f"seed={seed}",
                            "--set", f"output_dir={run}"])
            if code:
                return code
        tuned = load_pipeline(model, adapter=adapter, merge=True)
        tuned.set_progress_bar_config(disable=True)
        before = generate(base, prompt, seed, args.num_images, args.sampling_steps, args.guidance)
        after = generate(tuned, prompt, seed, args.num_images, args.sampling_steps, args.guidance)
        rows["seed"].append(seed)
        for name, enc in encoders.items():
            rows[f"base_{name}"].append(similarity(enc, before, refs[name]))
            rows[name].append(similarity(enc, after, refs[name]))
        hits = []
        for context in contexts:
            images = generate(tuned, f"{prompt} {CONTEXTS[context]}", seed, args.context_images,
                              args.sampling_steps, args.guidance)
            hits += [found == context for found in classify(classifier, images)["context"]]
            if seed == seeds[0] and len(figure) < 4:
                figure.append((generate(base, f"{prompt} {CONTEXTS[context]}", seed, 1, args.sampling_steps,
                                        args.guidance)[0], images[0]))
        rows["context"].append(float(np.mean(hits)))
        if seed == seeds[0]:
            figure = list(zip(before[:2], after[:2])) + figure  # the first two (or one) instance-prompt images
        print(f"seed {seed}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in rows.items() if k != "seed"), flush=True)
    summary = {}
    for name in ("dino", "clip_i"):
        gap = float(np.mean(rows[name]) - np.mean(rows[f"base_{name}"]))
        noise = float(max(np.std(rows[name], ddof=1), np.std(rows[f"base_{name}"], ddof=1))) if len(seeds) > 1 else 0.0
        summary[name] = {"base": float(np.mean(rows[f"base_{name}"])), "personalized": float(np.mean(rows[name])),
                         "gap": gap, "std_over_seeds": noise, "gap_over_std": gap / noise if noise else None,
                         "bar_met": bool(noise and gap > BAR * noise)}
    summary["context"] = {"accuracy": float(np.mean(rows["context"])), "bar_met": bool(np.mean(rows["context"]) >= 0.7)}
    result = {"config": str(args.config), "prompt": prompt, "seeds": seeds, "per_seed": rows, "summary": summary,
              "num_images": args.num_images, "context_images": args.context_images,
              "sampling_steps": args.sampling_steps, "guidance": args.guidance}
    write_text(out / "personalization.json", json.dumps(result, indent=1) + "\n")
    print(f"{'':10} {'base':>7} {'tuned':>7} {'gap':>7} {'std':>7} {'gap/std':>8}")
    for name in ("dino", "clip_i"):
        s = summary[name]
        ratio = f"{s['gap_over_std']:.1f}" if s["gap_over_std"] is not None else "-"
        print(f"{name:10} {s['base']:7.3f} {s['personalized']:7.3f} {s['gap']:7.3f} {s['std_over_seeds']:7.3f} "
              f"{ratio:>8}")
    print(f"context found in {summary['context']['accuracy']:.0%} of context-prompt generations")
    if args.figure:
        write_figure(figure, Path(args.figure))
    return 0


def write_figure(pairs: list[tuple[Image.Image, Image.Image]], path: Path, scale: int = 2) -> None:
    """Two rows (base, personalized) of side-by-side 64 px samples, upscaled `scale`x."""
    size = 64 * scale
    canvas = Image.new("RGB", (len(pairs) * (size + 4), 2 * (size + 4)), "white")
    for col, pair in enumerate(pairs):
        for row, image in enumerate(pair):
            canvas.paste(image.resize((size, size), Image.Resampling.NEAREST), (col * (size + 4), row * (size + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


if __name__ == "__main__":
    sys.exit(main())
