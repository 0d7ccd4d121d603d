"""Forward+backward time and peak memory of every adapter variant on SD 1.5-shaped attention blocks.

Each shape is a self-attention block (to_q, to_k, to_v, to_out.0 and SDPA) at an SD 1.5 UNet
resolution; the adapters wrap the four projections (`attn` preset). Times are medians over
`--iters` steps, printed as ratios to the frozen base block and to PEFT's LoRA and DoRA run in the
same process on the same weights. Peak memory counts every tensor alive during one step (weights
and input included): CUDA's allocator peak on a GPU, the profiler's memory timeline on the CPU.

    python scripts/bench_adapters.py                       # CPU, fp32
    python scripts/bench_adapters.py --threads 1 --clock cpu   # CPU time: steadier on a shared machine
    python scripts/bench_adapters.py --device cuda --dtype bf16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from dreamlr.adapters import VARIANTS, AdapterConfig, attach

SHAPES = {"320x4096": (320, 4096), "640x1024": (640, 1024), "1280x256": (1280, 256)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
BASELINES = ("base", "peft-lora", "peft-dora")


class AttentionBlock(nn.Module):
    """An SD 1.5 self-attention: projections named as diffusers names them, 8 heads, SDPA."""

    def __init__(self, width: int, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_k = nn.Linear(width, width, bias=False)
        self.to_v = nn.Linear(width, width, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(width, width), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        split = lambda t: t.view(batch, tokens, self.heads, -1).transpose(1, 2)  # noqa: E731
        attended = F.scaled_dot_product_attention(split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x)))
        return self.to_out[0](attended.transpose(1, 2).reshape(batch, tokens, width))


def build(method: str, width: int, rank: int, device: str, dtype: torch.dtype) -> nn.Module:
    """The frozen block with `method` attached: `base`, `peft-lora`, `peft-dora` or a dreamlr variant."""
    torch.manual_seed(0)
    block = AttentionBlock(width).to(device, dtype).requires_grad_(False)
    if method.startswith("peft-"):
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, use_dora=method == "peft-dora")
        return get_peft_model(block, config)
    if method != "base":
        attach(block, AdapterConfig(variant=method, rank=rank, alpha=rank, targets=TARGETS, ramp_steps=1,
                                    warmup_steps=1))
        for module in block.modules():
            if hasattr(module, "step"):
                module.step.fill_(1)  # past the ramps, as in training
    return block


def make_input(width: int, tokens: int, batch: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(1)
    # the block sits inside a network: the gradient flows on to its input
    return torch.randn(batch, tokens, width, generator=generator).to(device, dtype).requires_grad_()


def step(block: nn.Module, x: torch.Tensor) -> None:
    block(x).float().square().mean().backward()
    x.grad = None
    for param in block.parameters():
        param.grad = None


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(blocks: dict[str, nn.Module], x: torch.Tensor, iters: int, warmup: int, device: str,
               clock=time.perf_counter) -> dict[str, float]:
    """Median seconds of one forward+backward per method, the methods interleaved round by round
    so that a busy machine slows them all alike. `clock`: wall time, or the process's CPU time."""
    for _ in range(warmup):
        for block in blocks.values():
            step(block, x)
    times: dict[str, list[float]] = {method: [] for method in blocks}
    for _ in range(iters):
        for method, block in blocks.items():
            sync(device)
            start = clock()
            step(block, x)
            sync(device)
            times[method].append(clock() - start)
    return {method: statistics.median(values) for method, values in times.items()}


def peak_memory(block: nn.Module, x: torch.Tensor, device: str) -> float:
    """Peak bytes of tensors alive during one forward+backward (weights and input included).

    CUDA: the allocator's peak. CPU: the peak of the profiler's memory timeline (every tensor
    allocation and free, so it is exact and repeatable, unlike the process's resident size).
    """
    step(block, x)  # warm: lazily created state is not part of a step
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(block, x)
        torch.cuda.synchronize()
        return float(torch.cuda.max_memory_allocated())
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(block, x)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline("cpu")
    return float(max(sum(categories) for categories in sizes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                        help="wall time, or the process's CPU time (CPU only; with --threads 1 it is the "
                             "step's own compute, whatever else the machine runs)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here")
    if args.device == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures the CPU's work; on a GPU use wall time")
    clock = time.process_time if args.clock == "cpu" else time.perf_counter

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list(BASELINES) + [v for v in args.variants.split(",") if v]
    dtype = DTYPES[args.dtype]
    rows = []
    for shape in args.shapes.split(","):
        width, tokens = SHAPES[shape]
        x = make_input(width, tokens, args.batch, args.device, dtype)
        blocks = {method: build(method, width, args.rank, args.device, dtype) for method in methods}
        seconds = time_steps(blocks, x, args.iters, args.warmup, args.device, clock)
        memory = {m: float("nan") if args.no_memory else peak_memory(b, x, args.device) for m, b in blocks.items()}
        del blocks
        for method in methods:
            print(f"  {shape} {method:10s} {seconds[method] * 1e3:9.1f} ms  {memory[method] / 2**20:8.1f} MiB",
                  file=sys.stderr, flush=True)
        for method in methods:
            rows.append({
                "shape": shape, "method": method, "ms": seconds[method] * 1e3, "peak_mib": memory[method] / 2**20,
                "x_base": seconds[method] / seconds["base"],
                "x_peft_lora": seconds[method] / seconds["peft-lora"],
                "x_peft_dora": seconds[method] / seconds["peft-dora"],
                "mem_x_peft_dora": memory[method] / memory["peft-dora"] if memory["peft-dora"] else float("nan"),
            })
    print(f"\nattention blocks, batch {args.batch}, rank {args.rank}, {args.device} {args.dtype}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.iters} steps "
          f"({'CPU' if args.clock == 'cpu' else 'wall'} time)\n")
    print("| shape (width x tokens) | method | fwd+bwd ms | x base | x PEFT LoRA | x PEFT DoRA | peak MiB | mem x PEFT DoRA |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['shape']} | {row['method']} | {row['ms']:.1f} | {row['x_base']:.3f} | {row['x_peft_lora']:.3f} "
              f"| {row['x_peft_dora']:.3f} | {row['peak_mib']:.1f} | {row['mem_x_peft_dora']:.2f} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
