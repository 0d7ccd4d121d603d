"""Training memory of SD 1.5- and SDXL-shaped UNets (random weights, real shapes) per adapter method and option.

UNet-only DreamBooth: latents and the frozen text encoders' outputs are cached, so the VAE and text
encoders are not counted. `peft` is diffusers' `train_dreambooth_lora_sdxl.py` setup: PEFT LoRA on
to_q, to_k, to_v, to_out.0 through `unet.add_adapter`, its weights in the base's dtype (fp32 under fp16).

Without CUDA the numbers are analytical, from a UNet built on the meta device (shapes, no data): frozen
and adapter weights, gradients and optimizer state from the tensors' sizes; activations measured by one
forward and loss under `saved_tensors_hooks`, each saved storage counted once (views and tensors that
several ops save share one), parameters not at all. That forward does what a CUDA step does: autocast's
casts (matmuls and convs in fp16/bf16, norms and the loss in fp32) and SDPA through a flash kernel, which
saves q, k, v, output and log-sum-exp (the meta device's own SDPA would save the L×L attention matrix).
With gradient checkpointing diffusers checkpoints every ResNet and transformer block: forward keeps their
inputs, backward recomputes one block at a time, so activations = saved in forward + the largest block's
own saved tensors. Not counted: activation gradients in flight, the CUDA context, allocator slack.

With CUDA each row is measured: `--steps` training steps (autocast, the optimizer on the adapter tensors),
the allocator's peak, that peak less the frozen model's bytes, and the median seconds per step.

    python scripts/bench_memory.py       # both models, every method, fp32 and bf16, checkpointing off and on
    python scripts/bench_memory.py --models sdxl --variants lora,peft --dtype bf16 --checkpointing on
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import statistics
import time
from unittest import mock

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from torch.autograd.graph import saved_tensors_hooks
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from dreamlr.adapters import VARIANTS, AdapterConfig, attach, parameter_groups, set_step, trainable_parameters
from dreamlr.adapters import dual_lora
from dreamlr.optimizers import OPTIMIZERS, build_optimizer, check_optimizer

_XL = dict(addition_embed_type="text_time", use_linear_projection=True)
MODELS = {  # name -> (UNet2DConditionModel config, resolution in px); `tiny` is SDXL's layout at toy sizes
    "sd15": (dict(block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
                  sample_size=64, layers_per_block=2), 512),
    "sdxl": (dict(block_out_channels=(320, 640, 1280), cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                  transformer_layers_per_block=(1, 2, 10), addition_time_embed_dim=256,
                  projection_class_embeddings_input_dim=2816, sample_size=128, layers_per_block=2, **_XL), 1024),
    "tiny": (dict(block_out_channels=(32, 64), cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2),
                  addition_time_embed_dim=8, projection_class_embeddings_input_dim=80, sample_size=8,
                  layers_per_block=1, **_XL), 64),
}
METHODS = (*VARIANTS, "peft")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
PEFT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LR = 1e-4
GIB, MIB = 2**30, 2**20


def build_unet(model: str, method: str, rank: int, dtype: torch.dtype, device: str):
    """The frozen UNet in `dtype` on `device` with `method` attached, and the method's trainable tensors."""
    with torch.device(device):
        unet = UNet2DConditionModel(**MODELS[model][0])
    unet.to(dtype).requires_grad_(False).train()
    if method != "peft":
        attach(unet, AdapterConfig(variant=method, rank=rank, targets="attn"))
        return unet, list(trainable_parameters(unet).values())
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=PEFT_TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    if dtype == torch.float16:  # the script's cast_training_params
        for param in params:
            param.data = param.data.float()
    return unet, params


def unet_inputs(model: str, resolution: int, batch: int, dtype: torch.dtype, device: str) -> dict:
    """Random noisy latents, timesteps and text-encoder outputs (SDXL: also the pooled embedding and time ids)."""
    config, side = MODELS[model][0], resolution // 8
    like = {"device": device, "dtype": dtype}
    inputs = {"sample": torch.randn(batch, 4, side, side, **like),
              "timestep": torch.randint(0, 1000, (batch,), device=device),
              "encoder_hidden_states": torch.randn(batch, 77, config["cross_attention_dim"], **like)}
    if config.get("addition_embed_type") == "text_time":
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        time_ids = torch.tensor([resolution, resolution, 0, 0, resolution, resolution], **like)
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, **like),
                                       "time_ids": time_ids.repeat(batch, 1)}
    return inputs


def optimizer_state_bytes(params: list[torch.Tensor], name: str) -> int:
    """Optimizer state of `params`. adamw: two moments in the tensor's dtype. adamw8bit (bitsandbytes): two
    uint8 moments plus an fp32 absmax per 256-element block each, two fp32 moments below 4096 elements.
    adafactor (transformers, no first moment, as dreamlr builds it): a matrix's row and column second
    moments, a vector's full one. prodigy (prodigyopt 1.1): s, p0, exp_avg, exp_avg_sq (p0 is a scalar for
    a tensor that is all zero at the first step, such as LoRA's B: an upper bound)."""
    total = 0
    for p in params:
        n, size = p.numel(), p.element_size()
        if name == "adamw":
            total += 2 * n * size
        elif name == "adamw8bit":
            total += 8 * n if n < 4096 else 2 * n + 8 * math.ceil(n / 256)
        elif name == "adafactor":
            total += size * (math.prod(p.shape[:-1]) + math.prod(p.shape[:-2]) * p.shape[-1] if p.dim() >= 2 else n)
        else:
            total += 4 * n * size
    return total


_LOW = {F.linear, F.conv2d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm,
        torch.baddbmm, torch.addmm, F.scaled_dot_product_attention}
_FP32 = {F.group_norm, F.layer_norm, F.softmax, torch.Tensor.softmax, F.mse_loss}


class CudaStep(TorchFunctionMode):
    """What a CUDA training step saves, on any device: autocast's casts to `dtype` (matmuls, convs) and to fp32
    (norms, softmax, loss), trainable weights cast once as autocast caches them; SDPA through the flash kernel."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype, self.cache = dtype, {}

    def cast(self, value, dtype: torch.dtype):
        if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.dtype == dtype:
            return value
        if isinstance(value, torch.nn.Parameter) and value.requires_grad and torch.is_grad_enabled():  # as autocast
            return self.cache.setdefault((id(value), dtype), value.to(dtype))
        return value.to(dtype)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.dtype != torch.float32 and (func in _LOW or func in _FP32):
            to = self.dtype if func in _LOW else torch.float32
            args, kwargs = tree_map(lambda value: self.cast(value, to), (args, kwargs))
        if func is F.scaled_dot_product_attention:
            return flash_attention(*args, **kwargs)
        return func(*args, **kwargs)


def flash_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """SDPA through the CPU flash kernel: it saves what CUDA's flash and memory-efficient kernels save."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal, attn_mask=attn_mask, scale=scale)[0]


def saved_activation_bytes(unet, inputs: dict, dtype: torch.dtype, checkpointing: bool) -> tuple[int, int]:
    """(bytes saved for backward by one forward and loss, bytes the largest checkpointed block saves when
    backward recomputes it; 0 without checkpointing). A storage counts once, a parameter or buffer never."""
    held = {t.untyped_storage()._cdata for t in [*unet.parameters(), *unet.buffers()]}
    kept: dict[int, torch.UntypedStorage] = {}
    blocks: list[int] = []

    def record(store: dict, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in held:
            store[storage._cdata] = storage  # held here, so no other storage takes its id
        return tensor

    def hooks(store: dict):
        return saved_tensors_hooks(lambda tensor: record(store, tensor), lambda tensor: tensor)

    def checkpoint(module, *args):  # forward keeps the inputs; backward recomputes the block's own saved tensors
        for arg in args:
            if isinstance(arg, torch.Tensor):
                record(kept, arg)
        own: dict[int, torch.UntypedStorage] = {}
        with hooks(own):
            out = module(*args)
        blocks.append(sum(storage.nbytes() for key, storage in own.items() if key not in kept))
        return out

    if checkpointing:
        unet.enable_gradient_checkpointing(checkpoint)
    # the meta device knows no autocast (the adapters ask): none runs here, the emulated casts stand in for it,
    # so the adapters are told what a CUDA step would tell them
    emulated = dtype != torch.float32
    with (mock.patch.object(dual_lora, "_no_autocast", lambda tensor: contextlib.nullcontext()),
          mock.patch.object(torch, "autocast", lambda *args, **kwargs: contextlib.nullcontext()),
          mock.patch.object(torch, "is_autocast_enabled", lambda *args: emulated), hooks(kept), CudaStep(dtype)):
        pred = unet(**inputs).sample
        F.mse_loss(pred.float(), torch.zeros_like(pred, dtype=torch.float32))
    if checkpointing:
        unet.disable_gradient_checkpointing()
    return sum(storage.nbytes() for storage in kept.values()), max(blocks, default=0)


def analyse(model: str, method: str, rank: int, dtype: str, checkpointing: list[bool], resolution: int,
            batch: int, optimizers: list[str]) -> list[dict]:
    """One row per checkpointing setting: bytes of weights, gradients, optimizer state and activations."""
    unet, params = build_unet(model, method, rank, DTYPES[dtype], "meta")
    adapter = sum(p.nbytes for p in params)
    frozen = sum(t.nbytes for t in [*unet.parameters(), *unet.buffers()]) - adapter
    states = {name: optimizer_state_bytes(params, name) for name in optimizers}
    inputs = unet_inputs(model, resolution, batch, DTYPES[dtype], "meta")
    rows = []
    for ckpt in checkpointing:
        saved, block = saved_activation_bytes(unet, inputs, DTYPES[dtype], ckpt)
        rows.append({"model": model, "method": method, "dtype": dtype, "checkpointing": ckpt,
                     "resolution": resolution, "batch": batch, "trainable": sum(p.numel() for p in params),
                     "frozen_bytes": frozen, "adapter_bytes": adapter, "grad_bytes": adapter,
                     "optimizer_bytes": states, "saved_bytes": saved, "block_bytes": block,
                     "activation_bytes": saved + block,
                     "total_bytes": frozen + 2 * adapter + states[optimizers[0]] + saved + block})
    return rows


def measure(model: str, method: str, rank: int, dtype: str, ckpt: bool, resolution: int, batch: int,
            optimizer: str, steps: int) -> dict:
    """Peak CUDA memory and median s/step of `steps` training steps (after one warm-up step)."""
    torch_dtype = DTYPES[dtype]
    row = {"model": model, "method": method, "dtype": dtype, "checkpointing": ckpt, "resolution": resolution,
           "batch": batch, "optimizer": optimizer}
    try:
        unet, params = build_unet(model, method, rank, torch_dtype, "cuda")
        frozen = sum(t.nbytes for t in [*unet.parameters(), *unet.buffers()]) - sum(p.nbytes for p in params)
        if ckpt:
            unet.enable_gradient_checkpointing()
        groups = [{"params": params, "lr": LR}] if method == "peft" else parameter_groups(unet, LR)
        opt = build_optimizer(groups, name=optimizer)
        inputs = unet_inputs(model, resolution, batch, torch_dtype, "cuda")
        target = torch.randn_like(inputs["sample"], dtype=torch.float32)
        torch.cuda.reset_peak_memory_stats()
        times = []
        for step in range(steps + 1):
            torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.autocast("cuda", dtype=torch_dtype, enabled=torch_dtype != torch.float32):
                pred = unet(**inputs).sample
            F.mse_loss(pred.float(), target).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if method != "peft":
                set_step(unet, step + 1)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated()
        row.update(trainable=sum(p.numel() for p in params), peak_bytes=peak, training_bytes=peak - frozen,
                   s_per_step=statistics.median(times[1:]))
    except torch.cuda.OutOfMemoryError:
        row.update(peak_bytes=None)
    unet = params = opt = pred = None  # free before the next row
    gc.collect()
    torch.cuda.empty_cache()
    return row


def _label(r: dict) -> str:
    ckpt = "on" if r["checkpointing"] else "off"
    return f"| {r['model']} {r['resolution']} px | {r['method']} | {r['dtype']} | {ckpt} "


def print_analysis(rows: list[dict], optimizers: list[str]) -> None:
    print(f"| model | method | weights | checkpointing | trainable | frozen GiB | adapter MiB | grads MiB "
          f"| {optimizers[0]} MiB | activations GiB | total GiB |\n|---|---|---|---|" + "---:|" * 7)
    for r in rows:
        print(_label(r) + f"| {r['trainable']:,} | {r['frozen_bytes'] / GIB:.2f} | {r['adapter_bytes'] / MIB:.1f} "
              f"| {r['grad_bytes'] / MIB:.1f} | {r['optimizer_bytes'][optimizers[0]] / MIB:.1f} "
              f"| {r['activation_bytes'] / GIB:.2f} | {r['total_bytes'] / GIB:.2f} |")
    print(f"\noptimizer state, MiB\n\n| model | method | weights | {' | '.join(optimizers)} |\n|---|---|---|"
          + "---:|" * len(optimizers))
    for r in rows:
        if r["checkpointing"] == rows[0]["checkpointing"]:  # one row per (model, method, weights)
            states = " | ".join(f"{r['optimizer_bytes'][name] / MIB:.1f}" for name in optimizers)
            print(f"| {r['model']} | {r['method']} | {r['dtype']} | {states} |")


def print_measured(rows: list[dict]) -> None:
    peft = {(r["model"], r["dtype"], r["checkpointing"], r["optimizer"]): r for r in rows if r["method"] == "peft"}
    print("| model | method | weights | checkpointing | optimizer | trainable | peak GiB | peak − frozen GiB "
          "| × peft | s/step | × peft |\n|---|---|---|---|---|" + "---:|" * 6)
    for r in rows:
        ref = peft.get((r["model"], r["dtype"], r["checkpointing"], r["optimizer"]), {})
        ratio = lambda key: f"{r[key] / ref[key]:.2f}" if r[key] and ref.get(key) else ""  # noqa: E731
        if r["peak_bytes"] is None:
            print(_label(r) + f"| {r['optimizer']} | | out of memory | | | | |")
            continue
        print(_label(r) + f"| {r['optimizer']} | {r['trainable']:,} | {r['peak_bytes'] / GIB:.2f} "
              f"| {r['training_bytes'] / GIB:.2f} | {ratio('training_bytes')} | {r['s_per_step']:.3f} "
              f"| {ratio('s_per_step')} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--variants", default=",".join(METHODS), help=f"comma-separated: {', '.join(METHODS)}")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--dtype", default="fp32,bf16", help="frozen weights' dtype(s): fp32, fp16, bf16")
    parser.add_argument("--checkpointing", default="off,on", help="gradient checkpointing: off, on or both")
    parser.add_argument("--optimizers", help="analysis: state of each, the first in the total (default: all four); "
                                             "CUDA: each is run (default: adamw)")
    parser.add_argument("--resolution", type=int, help="px (default: 512 for sd15, 1024 for sdxl)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="CUDA: timed training steps per row")
    parser.add_argument("--analytic", action="store_true", help="the meta-device analysis even where CUDA is")
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    analytic = args.analytic or not torch.cuda.is_available()
    args.optimizers = args.optimizers or (",".join(OPTIMIZERS) if analytic else "adamw")
    lists = {key: [v for v in getattr(args, key).split(",") if v]
             for key in ("models", "variants", "dtype", "checkpointing", "optimizers")}
    for key, known in (("models", MODELS), ("variants", METHODS), ("dtype", DTYPES),
                       ("checkpointing", ("off", "on")), ("optimizers", OPTIMIZERS)):
        unknown = sorted(set(lists[key]) - set(known))
        if unknown or not lists[key]:
            parser.error(f"--{key}: {', '.join(unknown) or 'nothing given'}; choose from {', '.join(known)}")
    checkpointing = [value == "on" for value in lists["checkpointing"]]
    for optimizer in [] if analytic else lists["optimizers"]:
        check_optimizer(optimizer)  # its package, before any run
    diffusers_logging.set_verbosity_error()  # the casts' "keep in float32" advice
    started, rows = time.perf_counter(), []
    for model in lists["models"]:
        resolution = args.resolution or MODELS[model][1]
        for dtype in lists["dtype"]:
            for method in lists["variants"]:
                if analytic:
                    rows += analyse(model, method, args.rank, dtype, checkpointing, resolution, args.batch,
                                    lists["optimizers"])
                    continue
                for ckpt in checkpointing:
                    for optimizer in lists["optimizers"]:
                        rows.append(measure(model, method, args.rank, dtype, ckpt, resolution, args.batch,
                                            optimizer, args.steps))
    where = ("analytical (meta device, CUDA-like autocast and flash attention)" if analytic
             else f"measured on {torch.cuda.get_device_name()}, median of {args.steps} steps")
    print(f"UNet-only training memory, rank {args.rank} on to_q/to_k/to_v/to_out.0, batch {args.batch}; {where}; "
          f"torch {torch.__version__}\n")
    if analytic:
        print_analysis(rows, lists["optimizers"])
    else:
        print_measured(rows)
    print(f"\n{len(rows)} rows in {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
