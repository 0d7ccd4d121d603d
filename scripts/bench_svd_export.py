"""CPU time of an SVD export of one SD 1.5-sized layer (1280×1280 attention, 1280×5120 feed-forward): the
full SVD the exporter used to run vs `dreamlr.export.svd.truncated_svd` (randomized subspace iteration at
the target rank; the spectrum from the Gram matrix where the rank is a large share), in the same process.

For each variant the delta W' − W0 comes from a dreamlr adapter layer on a linear layer of that shape with
train-like random updates. Printed per case: CPU seconds (time.process_time: all threads of this
process, so the numbers do not depend on how busy the machine is), the ratio full / truncated, the
rank, and the exact relative error ‖ΔW − ΔW_r‖_F / ‖ΔW‖_F of both (the full SVD's is the optimum).

    python scripts/bench_svd_export.py [--shapes 1280x1280,1280x5120] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch

from dreamlr.adapters import AdapterConfig, adapter_layers, attach, trainable_parameters
from dreamlr.export.factors import DEFAULT_ENERGY, matched_rank
from dreamlr.export.svd import energy_rank, relative_error, truncated_svd


def delta_of(variant: str, out: int, fan_in: int, rank: int) -> tuple[torch.Tensor, int]:
    """(W' − W0, the parameter-matched rank) of a train-like adapter of `variant` on an out×in linear layer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(fan_in, out))
    attach(model, AdapterConfig(variant=variant, rank=rank, alpha=rank, targets=["0"], warmup_steps=1))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(0.02 * torch.randn(param.shape, generator=generator))
    (_, layer), = adapter_layers(model)
    layer.step.fill_(10)
    with torch.no_grad():
        return (layer.merged_weight() - layer.w0.float()).contiguous(), matched_rank(layer)


def cpu_seconds(fn, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1280x1280,1280x5120", help="out x in of the layers, comma-separated")
    parser.add_argument("--rank", type=int, default=8, help="the adapters' rank")
    parser.add_argument("--repeats", type=int, default=3, help="best of N")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"rank-{args.rank} adapters, {args.threads} thread(s), CPU seconds (process_time, best of {args.repeats})")
    print("| layer | variant | rank rule | full SVD s | truncated_svd s | ratio | rank | error, full SVD | error |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    cases = [(shape, variant) for shape in args.shapes.split(",") for variant in ("dora", "dual_lora", "d2lora")]
    for shape, variant in cases:
        out, fan_in = (int(n) for n in shape.split("x"))
        delta, matched = delta_of(variant, out, fan_in, args.rank)
        full_s, (u, s, vh) = cpu_seconds(lambda: torch.linalg.svd(delta, full_matrices=False), args.repeats)
        for label, options, rank in (
                (f"--rank {matched}", {"rank": matched}, matched),
                (f"default (energy {DEFAULT_ENERGY})", {"energy": DEFAULT_ENERGY, "min_rank": matched},
                 max(energy_rank(s, DEFAULT_ENERGY), matched))):
            new_s, (up, down) = cpu_seconds(lambda: truncated_svd(delta, **options), args.repeats)
            optimal = relative_error(delta, (u[:, :rank] * s[:rank]) @ vh[:rank])
            print(f"| {shape} | {variant} | {label} | {full_s:.3f} | {new_s:.3f} | {full_s / max(new_s, 1e-9):.1f}× | "
                  f"{down.shape[0]} | {optimal:.4f} | {relative_error(delta, up @ down):.4f} |")


if __name__ == "__main__":
    main()
