"""SDXL exports (diffusers and kohya format, UNet + both text encoders) load at full strength in the oldest
diffusers / transformers that pyproject.toml claims, as `StableDiffusionXLPipeline.load_lora_weights` reads
them. Same machinery as test_interop.py (the old releases in a side folder, a subprocess)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dreamlr.adapters import AdapterConfig, attach, merge, save_adapter, trainable_parameters
from dreamlr.diffusion import load_pipeline
from dreamlr.diffusion.models import TINY_SDXL, adapter_modules
from dreamlr.export import export_adapter
from tests.test_interop import TOLERANCE, oldest_versions, run_check, side_packages

CHECK = r'''
import json, sys
import torch
from safetensors.torch import load_file
import diffusers
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

job = json.loads(open(sys.argv[1]).read())
base, inputs = job["base"], load_file(job["inputs"])


def encoder(cls, name):
    model = cls(CLIPTextConfig.from_pretrained(f"{base}/{name}"))
    state = load_file(f"{base}/{name}/weights.safetensors")  # as dreamlr's transformers names them
    model.load_state_dict({k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
                           for k, v in state.items()})
    return model.eval()


def outputs(pipe):
    with torch.no_grad():
        first = pipe.text_encoder(inputs["ids"], output_hidden_states=True).hidden_states[-2]
        second = pipe.text_encoder_2(inputs["ids"], output_hidden_states=True)
        hidden = torch.cat([first, second.hidden_states[-2]], dim=-1)
        cond = {"text_embeds": second[0], "time_ids": inputs["time_ids"]}
        return hidden, second[0], pipe.unet(inputs["latents"], 10, hidden, added_cond_kwargs=cond).sample


results = {"version": diffusers.__version__}
for case, path in job["cases"]:
    pipe = StableDiffusionXLPipeline(
        vae=AutoencoderKL.from_pretrained(base + "/vae"), text_encoder=encoder(CLIPTextModel, "text_encoder"),
        text_encoder_2=encoder(CLIPTextModelWithProjection, "text_encoder_2"), tokenizer=None, tokenizer_2=None,
        unet=UNet2DConditionModel.from_pretrained(base + "/unet").eval(), scheduler=EulerDiscreteScheduler(),
        add_watermarker=False)
    folder, _, name = path.rpartition("/")
    pipe.load_lora_weights(folder, weight_name=name)
    got = outputs(pipe)
    layers = sum(len(getattr(m, "lora_A", None) or ()) > 0
                 for model in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2) for m in model.modules())
    results[case] = {"diffs": [(a - inputs[f"ref{i}"]).abs().max().item() for i, a in enumerate(got)],
                     "layers": layers}
with open(sys.argv[2], "w") as out:
    json.dump(results, out)
'''


@pytest.fixture(scope="module")
def sdxl_interop(tmp_path_factory) -> dict:
    side = side_packages(oldest_versions())
    work = tmp_path_factory.mktemp("interop_sdxl")
    pipe = load_pipeline(TINY_SDXL)
    pipe.unet.save_pretrained(work / "base" / "unet")
    pipe.vae.save_pretrained(work / "base" / "vae")
    for name in ("text_encoder", "text_encoder_2"):
        model = getattr(pipe, name)
        model.config.save_pretrained(work / "base" / name)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, work / "base" / name / "weights.safetensors")
    model = adapter_modules(pipe)
    torch.manual_seed(0)
    attach(model["unet"], AdapterConfig(variant="lora", rank=4, alpha=8, targets="attn+proj"))
    for name in ("text_encoder", "text_encoder_2"):
        attach(model[name], AdapterConfig(variant="lora", rank=2, alpha=4, targets="clip-attn"))
    with torch.no_grad():
        for tensor in trainable_parameters(model).values():
            tensor.add_(0.1 * torch.randn_like(tensor))
    adapter = save_adapter(model, work / "adapter.safetensors", metadata={"base_model": TINY_SDXL})
    layers = sum(1 for _ in trainable_parameters(model)) // 2
    merge(model)
    generator = torch.Generator().manual_seed(0)
    inputs = {"ids": torch.randint(0, 100, (2, 8), generator=generator),
              "latents": torch.randn(2, 4, 8, 8, generator=generator),
              "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    with torch.no_grad():
        first = pipe.text_encoder(inputs["ids"], output_hidden_states=True).hidden_states[-2]
        second = pipe.text_encoder_2(inputs["ids"], output_hidden_states=True)
        hidden = torch.cat([first, second.hidden_states[-2]], dim=-1)
        sample = pipe.unet(inputs["latents"], 10, hidden,
                           added_cond_kwargs={"text_embeds": second[0], "time_ids": inputs["time_ids"]}).sample
    inputs.update(ref0=hidden, ref1=second[0], ref2=sample)
    cases = []
    for fmt in ("diffusers", "kohya"):
        export_adapter(adapter, fmt, work / f"{fmt}.safetensors")
        cases.append((fmt, str(work / f"{fmt}.safetensors")))
    results, _ = run_check(CHECK, side, work, inputs, cases)
    return {"results": results, "layers": layers}


@pytest.mark.parametrize("fmt", ["diffusers", "kohya"])
def test_sdxl_exports_load_at_full_strength_in_the_oldest_diffusers(fmt, sdxl_interop):
    results = sdxl_interop["results"]
    assert results["version"] == oldest_versions()["diffusers"]
    got = results[fmt]
    assert got["layers"] == sdxl_interop["layers"], got
    assert max(got["diffs"]) <= TOLERANCE, got
