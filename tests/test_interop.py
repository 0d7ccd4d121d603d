"""Exports load right in the oldest diffusers / transformers / PEFT that pyproject.toml claims
(`[tool.dreamlr.oldest-readers]`).

Those releases are installed once (`pip install --no-deps --target`) under
`$DREAMLR_CACHE/interop/<versions>/` (default `~/.cache/dreamlr/interop/`) and imported in a subprocess
ahead of this environment's packages, which give it torch and the rest. The subprocess loads dreamlr's
exports as a user of those versions would (`load_lora_weights`, `PeftModel.from_pretrained`,
`CLIPTextModel.from_pretrained` / `UNet2DConditionModel.from_pretrained`) and returns its outputs'
differences from dreamlr's own adapted model as JSON. Skipped, with the reason, where the releases cannot be
installed (no network on a fresh machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from dreamlr.adapters import AdapterConfig, attach, merge, save_adapter, set_step, trainable_parameters
from dreamlr.diffusion import load_pipeline
from dreamlr.export import export_adapter

ROOT = Path(__file__).resolve().parents[1]
# what the oldest transformers needs beside it (its own pins: tokenizers>=0.21,<0.22, huggingface_hub<1.0);
# move these with the transformers lower bound in pyproject.toml
COMPANIONS = {"huggingface_hub": "0.34.4", "tokenizers": "0.21.4"}
# transformers 4.54 imports the `kernels` package when one is installed, and this environment's needs a newer
# huggingface_hub than 4.54 allows: the side folder hides it behind this stub
KERNELS_STUB = '''def get_kernel(*args, **kwargs):
    raise ImportError("the kernels package is hidden in dreamlr's interop test environment")
'''
TOLERANCE = 1e-4

CHECK = r'''
import json, sys
import torch
from safetensors.torch import load_file
import diffusers, peft, transformers
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from peft import PeftModel
from transformers import CLIPTextConfig, CLIPTextModel

job = json.loads(open(sys.argv[1]).read())
base, inputs = job["base"], load_file(job["inputs"])


def text_encoder():
    model = CLIPTextModel(CLIPTextConfig.from_pretrained(base + "/text_encoder"))
    state = load_file(base + "/text_encoder/weights.safetensors")  # as dreamlr's transformers names them
    model.load_state_dict({k if k.startswith("text_model.") else "text_model." + k: v for k, v in state.items()})
    return model.eval()


def unet():
    return UNet2DConditionModel.from_pretrained(base + "/unet").eval()


def outputs(text_model, unet_model):
    with torch.no_grad():
        hidden = text_model(inputs["ids"])[0]
        return hidden, unet_model(inputs["latents"], 10, hidden).sample


def lora_layers(*models):
    return sum(len(getattr(m, "lora_A", None) or ()) > 0 for model in models for m in model.modules())


def result(reference, text_model, unet_model):
    hidden, sample = outputs(text_model, unet_model)
    return {"text": (hidden - inputs[reference + ".text"]).abs().max().item(),
            "unet": (sample - inputs[reference + ".unet"]).abs().max().item(),
            "layers": lora_layers(text_model, unet_model)}


results = {"versions": {m.__name__: m.__version__ for m in (diffusers, transformers, peft)}}
for case, kind, path, reference in job["cases"]:
    if kind in ("diffusers", "kohya"):
        pipe = StableDiffusionPipeline(vae=AutoencoderKL.from_pretrained(base + "/vae"), text_encoder=text_encoder(),
                                       tokenizer=None, unet=unet(), scheduler=DDIMScheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        folder, _, name = path.rpartition("/")
        pipe.load_lora_weights(folder, weight_name=name)
        results[case] = result(reference, pipe.text_encoder, pipe.unet)
    elif kind == "peft":
        results[case] = result(reference, PeftModel.from_pretrained(text_encoder(), path + "/text_encoder").eval(),
                               PeftModel.from_pretrained(unet(), path + "/unet").eval())
    else:  # merged: the text encoder and UNet folders as from_pretrained reads them
        results[case] = result(reference, CLIPTextModel.from_pretrained(path + "/text_encoder").eval(),
                               UNet2DConditionModel.from_pretrained(path + "/unet").eval())
with open(sys.argv[2], "w") as out:
    json.dump(results, out)
'''


def oldest_versions() -> dict[str, str]:
    """The oldest diffusers / transformers / peft pyproject.toml says load dreamlr's exports, and companions."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["dreamlr"]
    versions = dict(tool["oldest-readers"])
    assert set(versions) == {"diffusers", "transformers", "peft"}
    return {**versions, **COMPANIONS}


def side_packages(versions: dict[str, str]) -> Path:
    """A folder with exactly these releases (no dependencies), installed once and reused."""
    key = "-".join(f"{name}{version}" for name, version in sorted(versions.items()))
    root = Path(os.environ.get("DREAMLR_CACHE", "~/.cache/dreamlr")).expanduser() / "interop"
    target = root / key
    if (target / "INSTALLED").is_file():
        return target
    specs = [f"{name}=={version}" for name, version in sorted(versions.items())]
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--target", str(tmp), *specs]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"cannot install {' '.join(specs)}: {exc}")
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
        pytest.skip(f"cannot install {' '.join(specs)}: {reason}")
    (tmp / "kernels.py").write_text(KERNELS_STUB, encoding="utf-8")
    (tmp / "INSTALLED").write_text("\n".join(specs) + "\n", encoding="utf-8")
    try:
        tmp.rename(target)
    except OSError:  # another run installed it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def adapted(variant: str) -> tuple[torch.nn.ModuleDict, object]:
    """tiny's UNet (attention + 1×1 proj convs) and text encoder with a train-like rank-4, alpha-8 adapter."""
    pipe = load_pipeline("tiny")
    options = dict(variant=variant, rank=4, alpha=8, ramp_steps=10, warmup_steps=10)
    attach(pipe.unet, AdapterConfig(targets="attn+proj", **options))
    attach(pipe.text_encoder, AdapterConfig(targets="clip-attn", **options))
    model = torch.nn.ModuleDict({"unet": pipe.unet, "text_encoder": pipe.text_encoder})
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in trainable_parameters(model).values():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
    set_step(model, 5)
    return model, pipe


def outputs(pipe, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        hidden = pipe.text_encoder(inputs["ids"])[0]
        return hidden, pipe.unet(inputs["latents"], 10, hidden).sample


@pytest.fixture(scope="module")
def interop(tmp_path_factory) -> dict:
    """Exports of lora / dora / d2lora adapters, loaded by the oldest supported releases: {case: diffs}."""
    side = side_packages(oldest_versions())
    work = tmp_path_factory.mktemp("interop")
    base = load_pipeline("tiny")
    base.unet.save_pretrained(work / "base" / "unet")
    base.vae.save_pretrained(work / "base" / "vae")
    base.text_encoder.config.save_pretrained(work / "base" / "text_encoder")
    save_file({k: v.contiguous() for k, v in base.text_encoder.state_dict().items()},
              work / "base" / "text_encoder" / "weights.safetensors")
    generator = torch.Generator().manual_seed(0)
    inputs = {"ids": torch.randint(0, 100, (2, 8), generator=generator),
              "latents": torch.randn(2, 4, 8, 8, generator=generator)}
    cases, layers = [], {}
    for variant in ("lora", "dora", "d2lora"):
        model, pipe = adapted(variant)
        adapter = save_adapter(model, work / f"{variant}.safetensors", metadata={"base_model": "tiny"})
        merge(model)
        inputs[f"{variant}.text"], inputs[f"{variant}.unet"] = outputs(pipe, inputs)  # dreamlr's own model
        formats = {"lora": ["diffusers", "kohya", "peft", "merged"], "dora": ["diffusers", "peft", "merged"],
                   "d2lora": ["diffusers"]}[variant]
        for fmt in formats:
            case = f"{variant}-{fmt}"
            output = work / (case + (".safetensors" if fmt in ("diffusers", "kohya") else ""))
            energy = 0.95 if variant == "d2lora" else None  # per-layer ranks
            report = export_adapter(adapter, fmt, output, energy=energy)
            reference = variant
            if variant == "d2lora":  # an SVD export: compare with what this environment's diffusers applies
                current = load_pipeline("tiny")
                current.load_lora_weights(str(output))
                reference = f"{case}-current"
                inputs[f"{reference}.text"], inputs[f"{reference}.unet"] = outputs(current, inputs)
            cases.append((case, fmt, str(output), reference))
            layers[case] = 0 if fmt == "merged" else len(report.layers)
            if fmt == "diffusers":  # old diffusers never reads the header: the same file without it
                stripped = work / f"{case}-noheader.safetensors"
                save_file(load_file(output), stripped)
                cases.append((f"{case}-noheader", fmt, str(stripped), reference))
                layers[f"{case}-noheader"] = len(report.layers)
    results, stderr = run_check(CHECK, side, work, inputs, cases)
    return {"results": results, "layers": layers, "stderr": stderr}


def run_check(check: str, side: Path, work: Path, inputs: dict[str, torch.Tensor], cases: list) -> tuple[dict, str]:
    """Run the `check` script with the old releases in `side` ahead of this environment, on `work`/base, `inputs`
    and `cases`; (its JSON results, its stderr)."""
    save_file({k: v.contiguous() for k, v in inputs.items()}, work / "inputs.safetensors")
    (work / "job.json").write_text(json.dumps({"base": str(work / "base"), "inputs": str(work / "inputs.safetensors"),
                                               "cases": cases}), encoding="utf-8")
    (work / "check.py").write_text(check, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(side), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(work / "check.py"), str(work / "job.json"), str(work / "out.json")],
                          capture_output=True, text=True, env=env, cwd=work, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((work / "out.json").read_text(encoding="utf-8")), done.stderr


def test_the_oldest_supported_releases_are_the_ones_loaded(interop):
    versions = oldest_versions()
    assert interop["results"]["versions"] == {name: versions[name] for name in ("diffusers", "transformers", "peft")}


@pytest.mark.parametrize("case", ["lora-diffusers", "lora-diffusers-noheader", "lora-kohya", "lora-peft",
                                  "dora-diffusers", "dora-diffusers-noheader", "dora-peft",
                                  "d2lora-diffusers", "d2lora-diffusers-noheader"])
def test_lora_exports_load_at_full_strength_in_the_oldest_releases(case, interop):
    """Every layer loaded (text encoder included) and the outputs of dreamlr's adapted model."""
    got = interop["results"][case]
    assert got["layers"] == interop["layers"][case], got
    assert got["text"] <= TOLERANCE and got["unet"] <= TOLERANCE, got


@pytest.mark.parametrize("case", ["lora-merged", "dora-merged"])
def test_merged_exports_load_in_the_oldest_releases(case, interop):
    """The merged text encoder and UNet folders load with their weights (not a random init) in transformers 4.x."""
    got = interop["results"][case]
    assert got["text"] <= TOLERANCE and got["unet"] <= TOLERANCE, got
    assert "were not used" not in interop["stderr"] and "newly initialized" not in interop["stderr"]


def test_package_sets_lower_bounds_and_the_constraints_file_pins_this_machine():
    """pyproject.toml takes over no environment (ranges, no `==`); constraints.txt pins the tested torch pair, and
    the README's install commands use it."""
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    assert not [str(r) for r in requirements if any(s.operator in ("==", "===", "~=") for s in r.specifier)]
    bounds = {r.name: r.specifier for r in requirements}
    for name in ("torch", "torchvision", "diffusers", "transformers", "accelerate", "peft"):
        assert [s.operator for s in bounds[name]] == [">="], name
    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]
    assert {r.name for r in pins} == {"torch", "torchvision"}
    for pin in pins:  # an exact release the package's own range admits
        (spec,) = pin.specifier
        assert spec.operator == "==" and spec.version in bounds[pin.name], pin
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv .venv")]
    assert len(commands) == 2 and all("pip install -q -c constraints.txt -e " in line for line in commands)
