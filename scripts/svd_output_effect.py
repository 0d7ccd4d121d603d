"""How much of an adapter's effect on the model's output an SVD export keeps, at the old default rank (a LoRA
with the adapter's parameter count) and at the default energy budget (0.99 of ‖ΔW‖²_F per layer).

For each adapter: the noise prediction of base + adapter (text encoder and UNet, fixed latents, timestep
and prompt) is the reference; an export replaces every layer's ΔW by its low-rank factors
(`dreamlr.export.factors.layer_factors`, as `dreamlr export` writes them). Printed: the share of the
adapter's output change lost, ‖f_export − f_adapter‖ / ‖f_adapter − f_base‖, and the per-layer errors.

    python scripts/svd_output_effect.py runs/dog-dual/adapter.safetensors [more adapters] [--model M]
"""

from __future__ import annotations

import argparse
import copy

import torch

from dreamlr.adapters import adapter_layers, detach, read_adapter_header
from dreamlr.diffusion import load_pipeline
from dreamlr.export.factors import layer_factors, matched_rank


def noise_prediction(pipe, prompt: str, seed: int = 0) -> torch.Tensor:
    tokens = pipe.tokenizer([prompt] * 2, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                            return_tensors="pt").input_ids
    size = pipe.unet.config.sample_size
    latents = torch.randn(2, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        hidden = pipe.text_encoder(tokens)[0]
        return pipe.unet(latents, torch.tensor([250, 750]), hidden).sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapters", nargs="+")
    parser.add_argument("--model", help="base model (default: the one each adapter records)")
    parser.add_argument("--prompt", default="a photo of sks mug")
    args = parser.parse_args()
    print("| adapter | variant | layers | rank rule | ranks | per-layer error, max | mean | output effect lost |")
    print("|---|---|---:|---|---|---:|---:|---:|")
    for path in args.adapters:
        header = read_adapter_header(path)
        model = args.model or header["metadata"]["base_model"]
        variant = ",".join(sorted({config.variant for config, _ in header["groups"]}))
        base_pipe = load_pipeline(model)
        base = noise_prediction(base_pipe, args.prompt)
        pipe = load_pipeline(model, adapter=path)
        reference = noise_prediction(pipe, args.prompt)
        parts = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
        layers = dict(adapter_layers(parts))
        for label, options in (("parameter-matched rank (old default)", "matched"), ("default (energy 0.99)", {})):
            exported = copy.deepcopy(base_pipe)
            target = torch.nn.ModuleDict({"unet": exported.unet, "text_encoder": exported.text_encoder})
            ranks, errors = [], []
            for name, layer in layers.items():
                kw = {"rank": matched_rank(layer)} if options == "matched" else options
                f = layer_factors(layer, dora=False, **kw)
                weight = target.get_submodule(name).weight
                with torch.no_grad():
                    weight.add_((f.alpha / f.rank * f.up @ f.down).reshape(weight.shape).to(weight.dtype))
                ranks.append(f.rank)
                errors.append(f.error or 0.0)
            out = noise_prediction(exported, args.prompt)
            lost = float((out - reference).norm() / (reference - base).norm())
            print(f"| {path} | {variant} | {len(layers)} | {label} | {min(ranks)}-{max(ranks)} | {max(errors):.3f} | "
                  f"{sum(errors) / len(errors):.3f} | {lost:.1%} |")
        detach(parts)


if __name__ == "__main__":
    main()
