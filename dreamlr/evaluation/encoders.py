"""Image and text encoders for scoring: CLIP through open_clip, DINO through timm, from a SPEC string.

CLIP SPEC: `ARCH:PRETRAINED` (an open_clip architecture and pretrained tag, e.g. `ViT-B-32:openai`),
`ARCH:FILE` (that architecture with a local weights file), `FILE` (ViT-B-32 with OpenAI's QuickGELU,
the default's architecture), `FOLDER` (an open_clip model folder: `open_clip_config.json` + weights),
`world` (world-CLIP, see dreamlr.world) or `tiny` (a small random CLIP for tests).
DINO SPEC: a timm model name with its pretrained tag (e.g. `vit_small_patch16_224.dino`),
`NAME:FILE` (that architecture with a local weights file, timm's or the original DINO format),
`FILE` (the default's architecture, ViT-S/16, with those weights), `FOLDER` (a timm model folder:
`config.json` + weights),
`world` (world-DINO) or `tiny`.
Images are resized (shorter side, bicubic) to 256/224 of the model's input size, center-cropped to
it, and normalized with the model's own mean and std.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import open_clip
import timm
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from PIL import Image
from safetensors import SafetensorError
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2 as T

from dreamlr.errors import UserError
from dreamlr.hub import hub_offline
from dreamlr.evaluation.dreambench import CLIP_DEFAULT, DINO_DEFAULT
from dreamlr.world.assets import world_part

TINY = "tiny"
WORLD = "world"  # world-CLIP / world-DINO, built by dreamlr itself (dreamlr.world)
CLIP_FILE_ARCH = "ViT-B-32-quickgelu"  # architecture for a bare CLIP weights file
DINO_FILE_ARCH = DINO_DEFAULT  # architecture (and normalization) for a bare DINO weights file
RESIZE_RATIO = 256 / 224  # Resize 256, CenterCrop 224 at the standard input size

# A CLIP small enough for tests, in open_clip's own model-config format (same tokenizer as ViT-B-32).
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_DINO_CONFIG = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 0}
TINY_SEED = 0

_Model = TypeVar("_Model", bound=torch.nn.Module)
_T = TypeVar("_T")
_E = TypeVar("_E", bound="ImageEncoder")


def preprocessing(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> T.Compose:
    """PIL RGB image -> normalized tensor (3, size, size): Resize to 256/224·size, CenterCrop, Normalize."""
    return T.Compose([
        T.Resize(round(size * RESIZE_RATIO), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
        T.CenterCrop(size),
        T.ToImage(),
        T.ToDtype(torch.float32, scale=True),
        T.Normalize(mean, std),
    ])


class ImageEncoder:
    """A vision model with its preprocessing; `embed_images` gives one float32 row per image (on CPU)."""

    def __init__(self, model: torch.nn.Module, spec: str, size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], identity: object = None, device: str | torch.device = "cpu"):
        """`identity` (JSON-able) tells weights apart that `spec` alone does not, for `cache_key`."""
        self.model = model.eval().requires_grad_(False).to(device)
        self.spec = spec
        self.size = size
        self.device = torch.device(device)
        self.transform = preprocessing(size, tuple(mean), tuple(std))
        payload = [type(self).__name__, spec, size, list(mean), list(std), identity]
        self.cache_key = hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)

    @torch.inference_mode()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """Embeddings (n, d) of the images, unnormalized, float32 on CPU."""
        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        return self._forward_images(pixels).float().cpu()


class DinoEncoder(ImageEncoder):
    """A timm vision model; its pooled output (the CLS token for ViTs) is the embedding."""


class ClipEncoder(ImageEncoder):
    """An open_clip model: image embeddings and text embeddings in one space."""

    def __init__(self, model: torch.nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], spec: str,
                 size: int, mean: tuple[float, ...], std: tuple[float, ...],
                 identity: object = None, device: str | torch.device = "cpu"):
        super().__init__(model, spec, size, mean, std, identity, device)
        self.tokenizer = tokenizer

    def _forward_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    @torch.inference_mode()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Text embeddings (n, d), unnormalized, float32 on CPU."""
        return self.model.encode_text(self.tokenizer(texts).to(self.device)).float().cpu()


def load_clip(spec: str = CLIP_DEFAULT, device: str | torch.device = "cpu") -> ClipEncoder:
    """The CLIP encoder a SPEC names (see the module docstring); a bad or unavailable SPEC is a UserError."""
    if spec == WORLD:  # built-in: world-CLIP's open_clip folder, loaded as any FOLDER is
        return _as_world(load_clip(str(world_part("clip")), device))
    if spec == TINY:
        model = _seeded(lambda: open_clip.CLIP(**TINY_CLIP_CONFIG))
        size = TINY_CLIP_CONFIG["vision_cfg"]["image_size"]
        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        tokenizer = open_clip.get_tokenizer("ViT-B-32")
        return ClipEncoder(model, tokenizer, spec, size, mean, std, TINY_CLIP_CONFIG, device)
    path = Path(spec).expanduser()
    arch, _, tag = spec.partition(":")
    if path.is_dir():
        name, pretrained, quick_gelu, weights = f"local-dir:{path}", None, False, sorted(path.iterdir())
    elif path.is_file():
        name, pretrained, quick_gelu, weights = CLIP_FILE_ARCH, str(path), False, [path]
    else:
        if arch not in open_clip.list_models():
            raise UserError(f"CLIP encoder '{spec}': unknown; give an open_clip ARCH:PRETRAINED such as "
                            f"{CLIP_DEFAULT}, a local weights file or folder, or `tiny`")
        weights_path = Path(tag).expanduser()
        if weights_path.is_file():
            name, pretrained, quick_gelu, weights = arch, str(weights_path), False, [weights_path]
        else:
            tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
            if not tag_cfg:
                tags = open_clip.list_pretrained_tags_by_model(arch)
                known = ", ".join(tags[:4]) + (", …" if len(tags) > 4 else "") if tags else "none"
                raise UserError(f"CLIP encoder '{spec}': {tag!r} is neither a pretrained tag of {arch} "
                                f"(known: {known}) nor a weights file; write ARCH:PRETRAINED, e.g. {CLIP_DEFAULT}")
            # fetch (or find in the cache) first: open_clip itself would log the failure before raising
            _guarded("CLIP", spec, lambda: open_clip.download_pretrained(tag_cfg))
            name, pretrained, weights = arch, tag, []
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))  # e.g. OpenAI's weights need QuickGELU
    model = _guarded("CLIP", spec, lambda: open_clip.create_model(
        name, pretrained=pretrained, force_quick_gelu=quick_gelu, require_pretrained=True))
    tokenizer = _guarded("CLIP", spec, lambda: open_clip.get_tokenizer(name))
    cfg = open_clip.get_model_preprocess_cfg(model)
    size = cfg["size"][-1] if isinstance(cfg["size"], (tuple, list)) else cfg["size"]
    return ClipEncoder(model, tokenizer, spec, int(size), cfg["mean"], cfg["std"], _file_identity(weights), device)


def load_dino(spec: str = DINO_DEFAULT, device: str | torch.device = "cpu") -> DinoEncoder:
    """The DINO encoder a SPEC names (see the module docstring); a bad or unavailable SPEC is a UserError."""
    if spec == WORLD:  # built-in: world-DINO's timm folder, loaded as any FOLDER is
        return _as_world(load_dino(str(world_part("dino")), device))
    if spec == TINY:
        model = _seeded(lambda: timm.models.VisionTransformer(**TINY_DINO_CONFIG))
        return DinoEncoder(model, spec, TINY_DINO_CONFIG["img_size"], IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
                           TINY_DINO_CONFIG, device)
    path = Path(spec).expanduser()
    arch, _, file = spec.partition(":")
    if path.is_dir():
        name, kwargs, weights = f"local-dir:{path}", {}, sorted(path.iterdir())
    elif path.is_file():
        name, kwargs, weights = DINO_FILE_ARCH, {"pretrained_cfg_overlay": {"file": str(path)}}, [path]
    elif file and Path(file).expanduser().is_file() and timm.is_model(arch):
        weights_path = Path(file).expanduser()
        name, kwargs, weights = arch, {"pretrained_cfg_overlay": {"file": str(weights_path)}}, [weights_path]
    elif _timm_has_weights(spec):
        name, kwargs, weights = spec, {}, []
    else:
        raise UserError(f"DINO encoder '{spec}': unknown; give a timm model name with its pretrained tag such as "
                        f"{DINO_DEFAULT}, NAME:FILE, a local weights file or folder, or `tiny`")
    model = _guarded("DINO", spec, lambda: timm.create_model(name, pretrained=True, num_classes=0, **kwargs))
    data_cfg = timm.data.resolve_data_config({}, model=model)
    return DinoEncoder(model, spec, int(data_cfg["input_size"][-1]), data_cfg["mean"], data_cfg["std"],
                       _file_identity(weights), device)


def _as_world(encoder: _E) -> _E:
    """An encoder loaded from the world's folder, named `world` (its cache key still tells builds apart)."""
    encoder.spec = WORLD
    return encoder


def _timm_has_weights(name: str) -> bool:
    """Whether timm knows pretrained weights for this model name (with or without a tag)."""
    try:
        return timm.is_model(name) and timm.models.get_pretrained_cfg(name) is not None
    except RuntimeError:  # a known architecture with an unknown tag
        return False


def _seeded(build: Callable[[], _Model]) -> _Model:
    """Build a random model with fixed weights, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return build()


def _guarded(kind: str, spec: str, load: Callable[[], _T]) -> _T:
    """Run a library loader, turning its failures into one-line UserErrors (its warnings silenced: a file that
    fails gets one line)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load()
    except (pickle.UnpicklingError, EOFError, SafetensorError) as e:
        raise UserError(f"{kind} encoder '{spec}': not a weights file that can be read (a .safetensors file or a "
                        f"torch state dict of plain tensors; {type(e).__name__}); check the file or give another "
                        "SPEC") from None
    except (OSError, RuntimeError, ValueError, KeyError, AttributeError, TypeError) as e:
        if hub_offline() and _missing_download(e):
            raise UserError(f"{kind} encoder '{spec}': weights not found locally, and the hub is offline; "
                            "give a local weights file or folder, or `tiny`") from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{kind} encoder '{spec}' cannot be loaded ({reason})") from None


def _missing_download(error: BaseException | None) -> bool:
    """Whether the error (or one it came from) says a hub download was impossible."""
    while error is not None:
        if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)) or "Failed to download" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def _file_identity(paths: list[Path]) -> list[tuple[str, int, int]]:
    """Path, size and modification time of each local weights file (a changed file changes the cache key)."""
    return [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths if p.is_file()]
