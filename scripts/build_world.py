"""Build the world from scratch: training images, the world model (VAE, then UNet + text encoder, saved as a
StableDiffusionPipeline folder), world-CLIP (open_clip folder), world-DINO (timm folder), the subjects
(DreamBooth dataset folder) and the world classifier (used only by the quality checks).

    python scripts/build_world.py --out DIR            # full size (CPU: see the README's World section)
    python scripts/build_world.py --out DIR --toy      # seconds: every stage at toy size, for tests

Stages (each with a progress bar) run in order (data, subjects, dino, vae, unet, classifier, clip) and are
resumable: a finished stage is skipped, a training stage interrupted mid-way continues from its last
checkpoint. Everything is written under --out:
DIR/work/ (data, checkpoints, logs) and DIR/world/ (the parts, as assets/world/ holds them; point
DREAMLR_WORLD_DIR at it to use them as the built-in `world`). DIR/world/BUILD.json records sizes, steps,
losses and CPU/wall seconds per stage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# OpenMP threads that spin while they wait turn a shared CPU's idle moments into 5x the CPU time
# (measured: a VAE step at batch 16 on 2 threads beside other jobs took 7.4 CPU s spinning, 1.5 s passive);
# must be set before torch starts its thread pool
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dreamlr.fileio import write_safetensors  # noqa: E402
from dreamlr.world.classifier import save_classifier, train_classifier  # noqa: E402
from dreamlr.world.data import build_data, load_data, save_data  # noqa: E402
from dreamlr.world.subjects import write_subjects  # noqa: E402
from dreamlr.world.tokenizer import save_tokenizer  # noqa: E402
from dreamlr.world.train_clip import save_clip, train_clip  # noqa: E402
from dreamlr.world.train_dino import save_dino, train_dino  # noqa: E402
from dreamlr.world.train_unet import train_unet  # noqa: E402
from dreamlr.world.train_vae import encode_all, train_vae  # noqa: E402

# per size: rendered instances x views, and steps/batch per training stage
PLANS = {
    "full": dict(instances=5000, views=4, vae=(1000, 32), unet=(3000, 64), clip=(600, 128), dino=(300, 96),
                 classifier=(600, 64), classifier_width=32),
    "toy": dict(instances=24, views=4, vae=(2, 4), unet=(2, 4), clip=(2, 8), dino=(2, 8), classifier=(2, 8),
                classifier_width=4),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (nothing is written outside it)")
    parser.add_argument("--toy", action="store_true", help="toy sizes and a few steps: a seconds-long smoke run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--half", action="store_true", help="save the parts' weights as float16 (half the size)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--instances", type=int, help="rendered instances (x views each images; default: the plan's)")
    for name in ("vae", "unet", "clip", "dino", "classifier"):
        parser.add_argument(f"--{name}-steps", type=int, metavar="N",
                            help=f"{name} training steps (default: the plan's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = "toy" if args.toy else "full"
    plan = dict(PLANS[size])
    if args.instances:
        plan["instances"] = args.instances
    for name in ("vae", "unet", "clip", "dino", "classifier"):
        if getattr(args, f"{name}_steps"):
            plan[name] = (getattr(args, f"{name}_steps"), plan[name][1])
    out = Path(args.out).expanduser().resolve()
    work, world = out / "work", out / "world"
    work.mkdir(parents=True, exist_ok=True)
    world.mkdir(parents=True, exist_ok=True)
    progress = not args.quiet
    dtype = torch.float16 if args.half else torch.float32
    record_path = world / "BUILD.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record.update(size=size, seed=args.seed, plan=plan, torch_threads=torch.get_num_threads())

    def stage(name: str, done: Path, run) -> None:
        if done.exists():
            print(f"[{name}] done already ({done})", flush=True)
            return
        print(f"[{name}] ...", flush=True)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        info = run() or {}
        record.setdefault("stages", {})[name] = {**info, "cpu_s": round(time.process_time() - cpu0, 1),
                                                 "wall_s": round(time.perf_counter() - wall0, 1)}
        record_path.write_text(json.dumps(record, indent=1) + "\n")

    def data_stage():
        data = build_data(args.seed, plan["instances"], plan["views"], progress)
        save_data(data, work / "data")
        return {"images": len(data.images)}

    stage("data", work / "data" / "scenes.json", data_stage)
    data = load_data(work / "data")

    stage("subjects", world / "subjects" / "prompts_and_classes.txt",
          lambda: {"subjects": len(list(p for p in write_subjects(world / "subjects", args.seed).iterdir()
                                        if p.is_dir()))})

    def dino_stage():
        steps, batch = plan["dino"]
        model, log = train_dino(data, work / "dino", size, steps, batch, seed=args.seed, progress=progress)
        save_dino(model, size, world / "dino", dtype)
        return {"last": log[-1], "first": log[0]}

    stage("dino", world / "dino" / "config.json", dino_stage)

    def vae_stage():
        steps, batch = plan["vae"]
        vae, log = train_vae(data, work / "vae", size, steps, batch, seed=args.seed, progress=progress)
        vae.save_pretrained(work / "vae" / "final", safe_serialization=True)
        means, stds = encode_all(vae, data)
        write_safetensors(work / "latents.safetensors", {"means": means.contiguous(), "stds": stds.contiguous()})
        return {"last": log[-1], "scaling_factor": vae.config.scaling_factor}

    stage("vae", work / "latents.safetensors", vae_stage)

    def unet_stage():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(work / "vae" / "final").eval()
        latents = load_file(str(work / "latents.safetensors"))
        steps, batch = plan["unet"]
        pipe, log = train_unet(data, vae, (latents["means"], latents["stds"]), work / "unet", size, steps, batch,
                               seed=args.seed, progress=progress)
        pipe.to(dtype).save_pretrained(world / "model", safe_serialization=True)
        save_tokenizer(world / "model" / "tokenizer")  # vocab.json + merges.txt too, as SD's tokenizer ships
        return {"last": log[-1], "first": log[0]}

    stage("unet", world / "model" / "model_index.json", unet_stage)

    def classifier_stage():
        steps, batch = plan["classifier"]
        # its own images: every (class, context) pair, held-out ones included, so that it judges them fairly
        seen = build_data(args.seed + 1, plan["instances"], 2, progress, heldout=True)
        model, log = train_classifier(seen, work / "classifier", steps, batch, seed=args.seed,
                                      width=plan["classifier_width"], progress=progress)
        save_classifier(model, world / "classifier", plan["classifier_width"])
        return {"last": log[-1], "first": log[0]}

    stage("classifier", world / "classifier" / "classifier.json", classifier_stage)

    def clip_stage():
        steps, batch = plan["clip"]
        model, log = train_clip(data, work / "clip", size, steps, batch, seed=args.seed, progress=progress)
        save_clip(model, size, world / "clip", dtype)
        return {"last": log[-1], "first": log[0]}

    stage("clip", world / "clip" / "open_clip_config.json", clip_stage)

    print(f"world built in {world} (set DREAMLR_WORLD_DIR={world} to use it as `world`)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
