"""What dreamlr's training loop costs per step over a bare PyTorch loop, in the same process.

Both loops train the same LoRA on the same model with the same micro-batch function: the bare one does
zero_grad, forward, backward, clip, optimizer and schedule steps; `TrainingLoop.run` adds what dreamlr's
trainers get (per-step generator and seeding, the non-finite check, set_step, accelerate's backward and
clipping, metrics.jsonl, progress). They take turns for `--rounds` rounds; CPU seconds per step
(`time.process_time`, so other work on a shared machine counts little), median over rounds, and the ratio.

    python scripts/bench_loop.py                 # tiny SD UNet, then a small MLP (the loop's overhead at its largest)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from dreamlr.adapters import AdapterConfig, attach, parameter_groups
from dreamlr.diffusion import load_components
from dreamlr.optimizers import build_optimizer
from dreamlr.training import CheckpointManager, MetricsLog, build_lr_scheduler, step_generator
from dreamlr.training.loop import TrainingLoop


def unet_case() -> tuple[nn.Module, callable]:
    """The tiny SD UNet with LoRA on its attention, and the denoising loss of one random micro-batch."""
    unet = load_components("tiny").unet.requires_grad_(False)
    attach(unet, AdapterConfig(rank=4, targets="attn"))

    def loss(generator: torch.Generator) -> torch.Tensor:
        latents = torch.randn(2, 4, 8, 8, generator=generator)
        hidden = torch.randn(2, 77, 32, generator=generator)
        return unet(latents, torch.tensor([10, 500]), hidden).sample.pow(2).mean()
    return unet, loss


def mlp_case() -> tuple[nn.Module, callable]:
    """A 3-layer MLP with LoRA: so little compute per step that the loop's own work weighs the most."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))
    model.requires_grad_(False)
    attach(model, AdapterConfig(rank=4, targets=["0", "2"]))

    def loss(generator: torch.Generator) -> torch.Tensor:
        return model(torch.randn(16, 64, generator=generator)).pow(2).mean()
    return model, loss


def bare(model: nn.Module, loss_of, optimizer, scheduler, steps: int) -> None:
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        loss_of(step_generator(0, step)).backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()


def dreamlr_loop(model: nn.Module, loss_of, optimizer, scheduler, steps: int, folder: Path) -> None:
    loop = TrainingLoop(Accelerator(cpu=True), model, [model], optimizer, scheduler, CheckpointManager(folder),
                        MetricsLog(folder / "metrics.jsonl"), seed=0, accumulation=1, max_grad_norm=1.0,
                        checkpointing_steps=steps + 1, metadata={})
    loop.run(0, steps, lambda step, index, generator: loss_of(generator))


def cpu_seconds_per_step(run, steps: int) -> float:
    started = time.process_time()
    run(steps)
    return (time.process_time() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| model | bare loop, CPU ms/step | dreamlr loop, CPU ms/step | ratio |\n|---|---:|---:|---:|")
    for name, case in (("tiny SD UNet, LoRA r4 attn", unet_case), ("MLP 64-64-1, LoRA r4", mlp_case)):
        model, loss_of = case()
        optimizer = build_optimizer(parameter_groups(model, 1e-4), weight_decay=0.0)
        scheduler = build_lr_scheduler(optimizer, "constant", 0, 10**9)
        times = {"bare": [], "dreamlr": []}
        with tempfile.TemporaryDirectory() as scratch:
            for _ in range(args.rounds):
                times["bare"].append(cpu_seconds_per_step(
                    lambda n: bare(model, loss_of, optimizer, scheduler, n), args.steps))
                times["dreamlr"].append(cpu_seconds_per_step(
                    lambda n: dreamlr_loop(model, loss_of, optimizer, scheduler, n, Path(scratch)), args.steps))
        base, ours = statistics.median(times["bare"]), statistics.median(times["dreamlr"])
        print(f"| {name} | {1000 * base:.2f} | {1000 * ours:.2f} | {ours / base:.3f} |")


if __name__ == "__main__":
    main()
