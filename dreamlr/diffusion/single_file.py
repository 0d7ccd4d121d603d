"""Single-file Stable Diffusion checkpoints (the LDM layout A1111, ComfyUI and the original repos use), offline.

`checkpoint_kind` tells SD 1.x, 2.x (epsilon or v-prediction) and SDXL apart from the file's key names and shapes;
`load_single_file` loads one with diffusers' single-file loader, giving it the configs dreamlr ships for that kind
(`model_configs/<kind>/`, the official repos' values) or the ones the file itself carries, and CLIP's tokenizer built
from open_clip's bundled BPE file, so nothing comes from the hub; `write_single_file` writes a diffusers pipeline as
such a file, with its configs in the metadata (`dreamlr.config.<path in a diffusers folder>`).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import importlib.util
import json
import pickle
import re
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders.single_file_utils import (
    SingleFileComponentError,
    create_diffusers_clip_model_from_ldm,
    infer_diffusers_model_type,
)
from safetensors import SafetensorError, safe_open
from transformers import CLIPTextModelWithProjection, CLIPTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from dreamlr.errors import UserError
from dreamlr.export.ldm import ldm_names
from dreamlr.fileio import atomic_path

KINDS = ("sd1", "sd2", "sd2-v", "sdxl")
CONFIG_KEY = "dreamlr.config."  # + a config file's path inside a diffusers folder, e.g. `unet/config.json`
SUPPORTED = "dreamlr supports Stable Diffusion 1.x, 2.x and SDXL checkpoints"
CONFIGS = Path(__file__).with_name("model_configs")

_UNET, _VAE = "model.diffusion_model.", "first_stage_model."
_CLIP = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
_OPEN_CLIP = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}
_NAMES = {"sd3": "an SD3", "sd35": "an SD3.5", "flux": "a Flux", "xl_refiner": "an SDXL refiner",
          "inpainting": "an inpainting", "xl_inpaint": "an inpainting", "controlnet": "a ControlNet"}
_CONFIG_FILE = re.compile(r"model_index\.json|(unet|vae|text_encoder(_2)?)/config\.json"
                          r"|scheduler/scheduler_config\.json|tokenizer(_2)?/(tokenizer_config|tokenizer)\.json")
_ALLOWED_PARTS = {("diffusers", "UNet2DConditionModel"), ("diffusers", "AutoencoderKL"),
                  ("transformers", "CLIPTextModel"), ("transformers", "CLIPTextModelWithProjection"),
                  ("transformers", "CLIPTokenizer")}
_WRITTEN_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
_IGNORED_PARTS = ("safety_checker", "feature_extractor", "image_encoder")  # always passed as None
_TOKENIZER_SETTINGS = ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length")
_DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
_SD2_BASE_STEP = 875000  # a .ckpt's global_step that marks SD 2.0-base (epsilon), as diffusers reads it
_SD2_V_PROBE = _UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"  # ComfyUI's test: std > 0.09 in v models


def checkpoint_kind(path: Path) -> str:
    """The checkpoint's kind, one of KINDS, read from its key names and shapes (no weights load); a one-line
    UserError for anything else (SD3, Flux, an SDXL refiner, an inpainting model, a broken file, …)."""
    return _kind(Path(path), *_read_keys(Path(path)))


def load_single_file(path: Path, dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """A StableDiffusionPipeline (SD 1.x/2.x) or StableDiffusionXLPipeline from a single-file checkpoint, without
    a safety checker or watermarker, loaded with no network access; failures are one-line UserErrors."""
    path = Path(path)
    tensors, metadata = _read_keys(path)
    kind = _kind(path, tensors, metadata)
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    extra = dict(add_watermarker=False) if kind == "sdxl" else dict(safety_checker=None, requires_safety_checker=False)
    with _config_folder(path, kind, metadata, cls) as folder:
        try:
            index = json.loads((folder / "model_index.json").read_text())
            for name in ("tokenizer", "tokenizer_2"):  # CLIP's, unless the file carries its own
                if name in index and not (folder / name / "tokenizer.json").is_file():
                    extra[name] = clip_tokenizer(**_tokenizer_settings(folder / name / "tokenizer_config.json"))
            if kind == "sdxl":
                extra["text_encoder_2"] = _sdxl_text_encoder_2(path, tensors, folder, dtype)
            pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, dtype=dtype,
                                        feature_extractor=None, image_encoder=None, **extra)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, SingleFileComponentError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"model '{path}': cannot be loaded as a single-file {kind} checkpoint ({reason})") from e
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, name, None)
        missing = [n for n, p in model.named_parameters() if p.is_meta] if model is not None else []
        if missing:
            raise UserError(f"model '{path}': the file has no weights for the {name}'s {missing[0]} "
                            f"(and {len(missing) - 1} more); is it a complete {kind} checkpoint?")
    return pipe


def write_single_file(pipe: DiffusionPipeline, path: Path) -> Path:
    """Write an SD 1.x/2.x/SDXL-shaped diffusers pipeline as one LDM-layout .safetensors file (atomically, one tensor
    at a time), with its diffusers configs (and a tokenizer that is not CLIP's, whole) in the metadata."""
    metadata = {CONFIG_KEY + name: text for name, text in _config_files(pipe).items()}
    _save_safetensors(Path(path), ldm_state_dict(pipe), metadata)
    return Path(path)


def ldm_state_dict(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's UNet, VAE and text encoder tensors under their LDM names, as write_single_file writes them:
    an SDXL pipeline's encoders as SDXL's conditioner embedders, an SD one's in OpenCLIP's layout (SD 2.x) when it
    uses OpenCLIP's GELU (OpenAI CLIP, SD 1.x, uses quick_gelu), else in OpenAI CLIP's."""
    tensors = {_UNET + key: value for key, value in _unet_ldm(pipe.unet).items()}
    tensors.update({_VAE + key: value for key, value in _vae_ldm(pipe.vae).items()})
    if isinstance(pipe, StableDiffusionXLPipeline):
        tensors.update(_clip_ldm(pipe.text_encoder, _CLIP["sdxl"]))
        tensors.update(_open_clip_ldm(pipe.text_encoder_2, _OPEN_CLIP["sdxl"]))
    elif pipe.text_encoder.config.hidden_act == "gelu":
        tensors.update(_open_clip_ldm(pipe.text_encoder, _OPEN_CLIP["sd2"]))
    else:
        tensors.update(_clip_ldm(pipe.text_encoder, _CLIP["sd1"]))
    return tensors


def clip_tokenizer(**settings) -> CLIPTokenizer:
    """OpenAI CLIP's BPE tokenizer (49408 tokens, as in every SD 1.x/2.x/SDXL repo), built from open_clip's bundled
    vocabulary file; `settings` (e.g. pad_token="!" for OpenCLIP encoders) go to CLIPTokenizer."""
    vocab, merges = _clip_bpe()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), **{"model_max_length": 77, **settings})


def _kind(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> str:
    """checkpoint_kind on a file's keys and metadata, read once."""
    try:
        family = infer_diffusers_model_type(tensors)
    except Exception:  # noqa: BLE001 - diffusers' checks fail on partial key sets: not a family it knows
        family = "unknown"
    if family not in ("v1", "v2", "xl_base"):
        name = next((n for prefix, n in _NAMES.items() if family.startswith(prefix)), f"a '{family}'")
        raise UserError(f"model '{path}': {name} checkpoint (as diffusers reads its keys); {SUPPORTED}")
    if not any(key.startswith(_UNET + "input_blocks.") for key in tensors):
        raise UserError(f"model '{path}': no Stable Diffusion UNet in the file (no '{_UNET}*' weights); {SUPPORTED}")
    has = {prefix: any(key.startswith(prefix) for key in tensors) for prefix in (*_CLIP.values(), *_OPEN_CLIP.values())}
    if has[_CLIP["sdxl"]] and has[_OPEN_CLIP["sdxl"]]:
        return "sdxl"
    if has[_OPEN_CLIP["sd2"]]:
        return "sd2-v" if _v_prediction(path, tensors, metadata) else "sd2"
    if has[_CLIP["sd1"]]:
        return "sd1"
    raise UserError(f"model '{path}': a UNet without the CLIP text encoder(s) of SD 1.x/2.x/SDXL; {SUPPORTED}")


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary and merges: the 256 byte symbols, the same with `</w>`, one token per merge, then
    <|startoftext|> and <|endoftext|>."""
    folder = importlib.util.find_spec("open_clip").submodule_search_locations[0]  # not imported: that takes seconds
    lines = gzip.decompress(Path(folder, "bpe_simple_vocab_16e6.txt.gz").read_bytes()).decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1])
    symbols = list(bytes_to_unicode().values())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m) for m in merges)]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return tuple((token, i) for i, token in enumerate(tokens)), merges


def _read_keys(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The file's tensors as data-free stand-ins of their shapes, and its metadata (a .ckpt's global_step)."""
    if not path.is_file():
        raise UserError(f"model '{path}': no such file")
    if path.suffix.lower() not in (".safetensors", ".ckpt"):
        raise UserError(f"model '{path}': a single-file checkpoint must be .safetensors or .ckpt")
    try:
        if path.suffix.lower() == ".safetensors":
            with safe_open(str(path), framework="pt") as handle:
                shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
                metadata = handle.metadata() or {}
            return {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}, metadata
        if not zipfile.is_zipfile(path):
            raise ValueError("a .ckpt must be a zip file, as torch.save writes")
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"model '{path}': the .ckpt holds Python objects besides tensors, which dreamlr does not "
                        "unpickle; convert it to .safetensors") from e
    except (OSError, ValueError, RuntimeError, SafetensorError, EOFError) as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"model '{path}': not a readable checkpoint ({reason}); {SUPPORTED}") from e
    step = state.get("global_step") if isinstance(state, dict) else None
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}
    return tensors, ({"global_step": str(int(step))} if isinstance(step, (int, torch.Tensor)) else {})


def _sdxl_text_encoder_2(path: Path, tensors: dict[str, torch.Tensor], folder: Path, dtype: torch.dtype
                         ) -> PreTrainedModel:
    """SDXL's second (OpenCLIP) text encoder, converted from its own keys only: diffusers' loader tells the two
    encoders apart by width, so one of a model whose encoders are equally wide would get the first one's weights."""
    prefix = _OPEN_CLIP["sdxl"]
    if path.suffix.lower() == ".ckpt":
        state = {key: value for key, value in tensors.items() if key.startswith(prefix)}
    else:
        with safe_open(str(path), framework="pt") as handle:
            state = {key: handle.get_tensor(key) for key in handle.keys() if key.startswith(prefix)}
    return create_diffusers_clip_model_from_ldm(CLIPTextModelWithProjection, state, subfolder="text_encoder_2",
                                                config=str(folder), torch_dtype=dtype, local_files_only=True)


def _v_prediction(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Whether an SD 2.x file predicts v (the 768 px models) rather than epsilon (2.x-base), as the file says: its
    embedded dreamlr scheduler config, its ModelSpec `modelspec.prediction_type`, a .ckpt's global_step (875000 is
    2.0-base, as diffusers reads it); else as its weights suggest (ComfyUI's test on one bias); else v (diffusers)."""
    scheduler = metadata.get(CONFIG_KEY + "scheduler/scheduler_config.json")
    try:
        if scheduler is not None:
            return json.loads(scheduler).get("prediction_type") == "v_prediction"
    except (ValueError, AttributeError) as e:
        raise UserError(f"model '{path}': its embedded scheduler config is not valid JSON ({e})") from e
    if "modelspec.prediction_type" in metadata:
        return metadata["modelspec.prediction_type"] == "v"
    if metadata.get("global_step") == str(_SD2_BASE_STEP):
        return False
    if _SD2_V_PROBE not in tensors:
        return True
    probe = tensors[_SD2_V_PROBE]
    if probe.is_meta:  # a .safetensors file's stand-in: read the one tensor
        with safe_open(str(path), framework="pt") as handle:
            probe = handle.get_tensor(_SD2_V_PROBE)
    return probe.float().std(unbiased=False).item() > 0.09


@contextlib.contextmanager
def _config_folder(path: Path, kind: str, metadata: dict[str, str], cls: type) -> Iterator[Path]:
    """The diffusers config folder for the file: the configs it carries (written to a temporary folder, checked
    to name only SD parts), else the packaged ones for its kind."""
    files = {key[len(CONFIG_KEY):]: text for key, text in metadata.items() if key.startswith(CONFIG_KEY)}
    if not files:
        yield CONFIGS / kind
        return
    bad = sorted(name for name in files if not _CONFIG_FILE.fullmatch(name))
    try:
        index = json.loads(files.get("model_index.json", "null"))
        parts = {name: tuple(entry) for name, entry in index.items() if isinstance(entry, list)}
    except (ValueError, AttributeError, TypeError):
        index, parts = None, {}
    odd = [f"{name}: {list(entry)}" for name, entry in parts.items() if not _allowed_part(name, entry)]
    if bad or odd or not isinstance(index, dict) or index.get("_class_name") != cls.__name__:
        what = f"unexpected entries ({', '.join(bad + odd)})" if bad or odd else f"no {cls.__name__} model_index.json"
        raise UserError(f"model '{path}': its embedded dreamlr configs have {what}")
    with tempfile.TemporaryDirectory(prefix="dreamlr-config-") as tmp:
        for name, text in files.items():
            Path(tmp, name).parent.mkdir(parents=True, exist_ok=True)
            Path(tmp, name).write_text(text, encoding="utf-8")
        yield Path(tmp)


def _allowed_part(name: str, entry: tuple) -> bool:
    """Whether a model_index entry names a part of a Stable Diffusion pipeline (or one that is passed as None)."""
    if name in _IGNORED_PARTS or entry in _ALLOWED_PARTS or entry == (None, None):
        return True
    return name == "scheduler" and len(entry) == 2 and entry[0] == "diffusers" and str(entry[1]).endswith("Scheduler")


def _tokenizer_settings(config: Path) -> dict:
    """The special tokens and length from a tokenizer_config.json (none when it is absent)."""
    settings = json.loads(config.read_text()) if config.is_file() else {}
    return {key: settings[key] for key in _TOKENIZER_SETTINGS if isinstance(settings.get(key), (str, int))}


def _config_files(pipe: DiffusionPipeline) -> dict[str, str]:
    """{path in a diffusers folder: text} for the pipeline's model_index and each written part's config; a
    tokenizer that is CLIP's BPE gets its tokenizer_config.json only, any other its tokenizer.json too."""
    files = {"model_index.json": pipe.to_json_string()}
    for name in _WRITTEN_PARTS:
        part = getattr(pipe, name, None)
        if name in ("unet", "vae"):
            files[f"{name}/config.json"] = part.to_json_string()
        elif name == "scheduler":
            files["scheduler/scheduler_config.json"] = part.to_json_string()
        elif isinstance(part, PreTrainedModel):
            files[f"{name}/config.json"] = part.config.to_json_string(use_diff=False)
        elif isinstance(part, PreTrainedTokenizerBase):
            with tempfile.TemporaryDirectory() as tmp:
                part.save_pretrained(tmp)
                files[f"{name}/tokenizer_config.json"] = Path(tmp, "tokenizer_config.json").read_text()
            backend = json.loads(part.backend_tokenizer.to_str())
            if not _is_clip_bpe(part.get_vocab(), backend["model"]):
                backend.update(truncation=None, padding=None)  # the last call's settings, not the tokenizer's
                files[f"{name}/tokenizer.json"] = json.dumps(backend, ensure_ascii=False)
    return files


def _is_clip_bpe(vocab: dict[str, int], model: dict) -> bool:
    """Whether a tokenizer's vocabulary (added tokens included) and BPE merges are exactly CLIP's."""
    clip_vocab, clip_merges = _clip_bpe()
    merges = [tuple(m.split(" ") if isinstance(m, str) else m) for m in model.get("merges", [])]
    return vocab == dict(clip_vocab) and merges == list(clip_merges)


def _unet_ldm(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The UNet's tensors under their LDM names (`input_blocks.1.0.in_layers.0.weight`, …)."""
    names = ldm_names(unet)
    out = {}
    for key, value in unet.state_dict().items():
        module, _, param = key.rpartition(".")
        if module not in names:
            raise ValueError(f"UNet tensor {key} has no LDM name: not an SD 1.x/2.x/SDXL-shaped UNet")
        out[f"{names[module]}.{param}"] = value
    return out


def _vae_ldm(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The VAE's tensors under their LDM names; the mid-block attention as 1×1 convolutions, as LDM has them."""
    last = len(vae.config.up_block_types) - 1
    renames = [
        (r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out."),
        (r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block."),
        (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
        (r"^decoder\.up_blocks\.(\d+)\.resnets\.", lambda m: f"decoder.up.{last - int(m[1])}.block."),
        (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"decoder.up.{last - int(m[1])}.upsample."),
        (r"\.mid_block\.resnets\.(\d+)\.", lambda m: f".mid.block_{int(m[1]) + 1}."),
        (r"\.mid_block\.attentions\.0\.", ".mid.attn_1."),
        (r"\.conv_shortcut\.", ".nin_shortcut."),
        (r"attn_1\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
         lambda m: "attn_1." + {"group_norm": "norm", "to_out.0": "proj_out"}.get(m[1], m[1][-1]) + "."),
    ]
    out = {}
    for key, value in vae.state_dict().items():
        for pattern, new in renames:
            key = re.sub(pattern, new, key)
        if re.search(r"attn_1\.(q|k|v|proj_out)\.weight$", key):
            value = value[:, :, None, None]
        out[key] = value
    return out


def _clip_ldm(model: PreTrainedModel, prefix: str) -> dict[str, torch.Tensor]:
    """OpenAI CLIP's layout: transformers' own names under `<prefix>text_model.`."""
    return {f"{prefix}text_model.{key.removeprefix('text_model.')}": v for key, v in model.state_dict().items()}


def _open_clip_ldm(model: PreTrainedModel, prefix: str) -> dict[str, torch.Tensor]:
    """OpenCLIP's layout (`transformer.resblocks.N.attn.in_proj_weight`, …): q, k and v stacked into one
    in-projection, the text projection transposed."""
    state = {key.removeprefix("text_model."): value for key, value in model.state_dict().items()}
    renames = [("embeddings.token_embedding.", "token_embedding."), ("final_layer_norm.", "ln_final."),
               ("embeddings.position_embedding.weight", "positional_embedding"),
               ("encoder.layers.", "transformer.resblocks."), (".self_attn.", ".attn."), (".layer_norm1.", ".ln_1."),
               (".layer_norm2.", ".ln_2."), (".mlp.fc1.", ".mlp.c_fc."), (".mlp.fc2.", ".mlp.c_proj.")]
    out = {}
    for key, value in state.items():
        head, _, tail = key.partition(".self_attn.")
        if tail.startswith(("k_proj.", "v_proj.")):
            continue
        if tail.startswith("q_proj."):
            param = tail.removeprefix("q_proj.")
            key = f"{head}.self_attn.in_proj_{param}"
            value = torch.cat([state[f"{head}.self_attn.{x}_proj.{param}"] for x in "qkv"])
        elif key == "text_projection.weight":
            key, value = "text_projection", value.T
        for old, new in renames:
            key = key.replace(old, new)
        out[prefix + key] = value
    return out


def _save_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A .safetensors file written atomically one tensor at a time (never the whole model twice in memory), the
    header in a fixed order (metadata first, then tensors by name), so the same model gives the same bytes."""
    tensors = dict(sorted(tensors.items()))
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, value in tensors.items():
        size = value.numel() * value.element_size()
        header[name] = dict(dtype=_DTYPES[value.dtype], shape=list(value.shape), data_offsets=[offset, offset + size])
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(len(text).to_bytes(8, "little") + text)
        for value in tensors.values():
            handle.write(value.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
