"""Single-file checkpoints: the kind read from key names, the packaged SD configs, and write → load round trips."""

import functools
import json

import diffusers
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils as diffusers_sf
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from dreamlr.diffusion import single_file
from dreamlr.diffusion.models import load_components, pipeline_from_components
from dreamlr.diffusion.single_file import (
    CONFIGS,
    KINDS,
    checkpoint_kind,
    clip_tokenizer,
    ldm_state_dict,
    load_single_file,
    write_single_file,
)
from dreamlr.errors import UserError

PROMPT = "a photo of sks dog"
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"
# the official repos' parameter counts (UNet, VAE, text encoder[, text_encoder_2])
OFFICIAL = {
    "sd1": (859_520_964, 83_653_863, 123_060_480),
    "sd2": (865_910_724, 83_653_863, 340_387_840),
    "sd2-v": (865_910_724, 83_653_863, 340_387_840),
    "sdxl": (2_567_463_684, 83_653_863, 123_060_480, 694_659_840),
}


def generate(pipe):
    return pipe(PROMPT, num_inference_steps=2, height=64, width=64, generator=torch.Generator().manual_seed(0),
                output_type="np").images


def assert_same_pipeline(a, b, images=True):
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if getattr(a, name, None) is None:
            continue
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert sa.keys() == sb.keys(), name
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key}"
    for name in ("tokenizer", "tokenizer_2"):
        if getattr(a, name, None) is not None:
            assert getattr(b, name)(PROMPT).input_ids == getattr(a, name)(PROMPT).input_ids
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert type(b.scheduler) is type(a.scheduler) and public(b.scheduler.config) == public(a.scheduler.config)
    assert not images or (generate(a) == generate(b)).all()


def one_line_error(call, *words):
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and all(word in message for word in words), message


@pytest.fixture(scope="module")
def tiny():
    return pipeline_from_components(load_components("tiny"))


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory):
    return write_single_file(tiny, tmp_path_factory.mktemp("single") / "tiny.safetensors")


def test_tiny_round_trip_offline(tiny, tiny_file, tmp_path):
    assert checkpoint_kind(tiny_file) == "sd1"
    with safe_open(str(tiny_file), framework="pt") as handle:
        keys, metadata = set(handle.keys()), handle.metadata()
        assert handle.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape()[2:] == [1, 1]
    assert {UNET_KEY, "first_stage_model.encoder.down.0.block.0.norm1.weight",
            "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"} <= keys
    assert json.loads(metadata["dreamlr.config.unet/config.json"])["cross_attention_dim"] == 32
    assert "dreamlr.config.tokenizer/tokenizer.json" in metadata  # tiny's tokenizer is not CLIP's: it travels whole
    assert_same_pipeline(tiny, load_single_file(tiny_file, torch.float32))
    again = write_single_file(tiny, tmp_path / "again.safetensors")
    assert again.read_bytes() == tiny_file.read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == ["again.safetensors"]  # no temp file left behind


def test_tiny_sdxl_round_trip(tmp_path):
    """Both tiny-sdxl text encoders are 32 wide: diffusers' loader alone would give the second one the first one's
    weights (it tells them apart by width)."""
    pipe = pipeline_from_components(load_components("tiny-sdxl"))
    path = write_single_file(pipe, tmp_path / "xl.safetensors")
    assert checkpoint_kind(path) == "sdxl"
    keys = set(load_file(path))
    assert {"conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            "conditioner.embedders.1.model.transformer.resblocks.1.attn.in_proj_weight",
            "conditioner.embedders.1.model.text_projection", "model.diffusion_model.label_emb.0.0.weight"} <= keys
    loaded = load_single_file(path, torch.float32)
    assert isinstance(loaded, StableDiffusionXLPipeline)
    assert_same_pipeline(pipe, loaded)


@pytest.mark.parametrize("prediction, kind", [("epsilon", "sd2"), ("v_prediction", "sd2-v")])
def test_openclip_encoder_writes_sd2_layout(tiny, tmp_path, prediction, kind):
    config = tiny.text_encoder.config.to_dict() | {"hidden_act": "gelu"}
    pipe = pipeline_from_components(load_components("tiny"))
    pipe.text_encoder = CLIPTextModel(CLIPTextConfig(**config))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction)
    pipe.tokenizer = clip_tokenizer(pad_token="!")  # CLIP's own: only its settings travel
    path = write_single_file(pipe, tmp_path / "sd2.safetensors")
    assert checkpoint_kind(path) == kind
    with safe_open(str(path), framework="pt") as handle:
        assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in handle.keys()
        assert "dreamlr.config.tokenizer/tokenizer.json" not in handle.metadata()
    if kind == "sd2":
        loaded = load_single_file(path)
        assert_same_pipeline(pipe, loaded, images=False)
        assert loaded.tokenizer.pad_token == "!" and len(loaded.tokenizer) == 49408


def test_packaged_configs_are_used_without_embedded_ones(tiny, tiny_file, tmp_path, monkeypatch):
    """A file without dreamlr's metadata loads with the packaged folder of its kind and CLIP's tokenizer."""
    with safe_open(str(tiny_file), framework="pt") as handle:
        files = {k.removeprefix("dreamlr.config."): v for k, v in handle.metadata().items()}
    for name, text in files.items():
        if name != "tokenizer/tokenizer.json":
            (tmp_path / "configs" / "sd1" / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "configs" / "sd1" / name).write_text(text)
    plain = tmp_path / "plain.safetensors"
    save_file(load_file(tiny_file), plain)
    monkeypatch.setattr(single_file, "CONFIGS", tmp_path / "configs")
    loaded = load_single_file(plain)
    assert len(loaded.tokenizer) == 49408 and loaded.tokenizer.pad_token == "<|endoftext|>"
    for name in ("unet", "vae", "text_encoder"):
        for key, value in getattr(tiny, name).state_dict().items():
            assert torch.equal(value, getattr(loaded, name).state_dict()[key]), key


@pytest.mark.parametrize("kind", KINDS)
def test_packaged_configs_build_the_official_models(kind):
    folder = CONFIGS / kind
    with torch.device("meta"):
        parts = [UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet")),
                 AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae")),
                 CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
        if kind == "sdxl":
            parts.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
    assert tuple(sum(p.numel() for p in part.parameters()) for part in parts) == OFFICIAL[kind]
    prediction = json.loads((folder / "scheduler" / "scheduler_config.json").read_text()).get("prediction_type")
    assert (prediction == "v_prediction") == (kind == "sd2-v")
    pads = {json.loads(p.read_text())["pad_token"] for p in folder.glob("tokenizer*/tokenizer_config.json")}
    assert pads == {"sd1": {"<|endoftext|>"}, "sdxl": {"<|endoftext|>", "!"}}.get(kind, {"!"})

    # the writer's LDM names map back, through diffusers' own converters, to every tensor at full size
    unet, vae, text_encoder, *text_encoder_2 = parts
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    extra = (dict(text_encoder_2=text_encoder_2[0], tokenizer_2=None) if kind == "sdxl"
             else dict(safety_checker=None, requires_safety_checker=False))
    scheduler_class = json.loads((folder / "model_index.json").read_text())["scheduler"][1]
    scheduler = getattr(diffusers, scheduler_class).from_pretrained(folder, subfolder="scheduler")
    pipe = cls(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=None, scheduler=scheduler,
               feature_extractor=None, **extra)
    ldm = ldm_state_dict(pipe)
    shapes = lambda state: {k.removeprefix("text_model."): tuple(v.shape) for k, v in state.items()}  # noqa: E731
    assert shapes(diffusers_sf.convert_ldm_unet_checkpoint(ldm, unet.config)) == shapes(unet.state_dict())
    assert shapes(diffusers_sf.convert_ldm_vae_checkpoint(ldm, vae.config)) == shapes(vae.state_dict())
    if kind == "sd1" or kind == "sdxl":
        assert shapes(diffusers_sf.convert_ldm_clip_checkpoint(ldm)) == shapes(text_encoder.state_dict())
    if kind != "sd1":
        encoder = text_encoder_2[0] if kind == "sdxl" else text_encoder
        prefix = "conditioner.embedders.1.model." if kind == "sdxl" else "cond_stage_model.model."
        converted = diffusers_sf.convert_open_clip_checkpoint(encoder, ldm, prefix=prefix)
        assert shapes(converted) == shapes(encoder.state_dict())


def test_clip_tokenizer_matches_the_official_ids():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a dog").input_ids == [49406, 320, 1125, 539, 320, 1929, 49407]
    assert tokenizer("hello   world\nnew-line").input_ids == [49406, 3306, 1002, 686, 268, 1148, 49407]
    assert tokenizer("A Photo of sks DOG, naïve").input_ids[:7] == [49406, 320, 1125, 539, 48136, 1929, 267]
    padded = clip_tokenizer(pad_token="!")("a dog", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 1929, 49407, 0, 0]


class Opaque:
    """Not a tensor: a .ckpt holding one is not unpickled."""


def write_keys(path, shapes, metadata=None):
    """A file of zero tensors of the given shapes (or of the given tensors)."""
    tensors = {k: v if isinstance(v, torch.Tensor) else torch.zeros(v, dtype=torch.float16) for k, v in shapes.items()}
    if path.suffix == ".ckpt":
        torch.save({"state_dict": tensors, **(metadata or {})}, path)
    else:
        save_file(tensors, path, metadata=metadata)
    return path


# the telltale keys (and shapes) of each family, as diffusers and checkpoint_kind read them
PROBE = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
SD1 = {UNET_KEY: (1, 4, 1, 1), "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight": (1, 1)}
SD2 = {UNET_KEY: (1, 4, 1, 1), "cond_stage_model.model.token_embedding.weight": (1, 1),
       "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (1, 1024)}
SDXL = {UNET_KEY: (1, 4, 1, 1), "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (1,),
        "conditioner.embedders.0.transformer.text_model.embeddings.position_embedding.weight": (1, 1)}


@pytest.mark.parametrize("name, shapes, metadata, kind", [
    ("sd1.safetensors", SD1, None, "sd1"),
    ("sd2.safetensors", SD2, None, "sd2-v"),  # diffusers' default for SD 2.x: the 768 px v-prediction model
    ("sd2-spec.safetensors", SD2, {"modelspec.prediction_type": "epsilon"}, "sd2"),
    ("sd2-base.ckpt", SD2, {"global_step": 875000}, "sd2"),
    ("sd2-768.ckpt", SD2, {"global_step": 110000}, "sd2-v"),
    ("sd2-flat-bias.safetensors", SD2 | {PROBE: (1280,)}, None, "sd2"),  # ComfyUI's weight test: epsilon
    ("sd2-spread-bias.safetensors", SD2 | {PROBE: torch.linspace(-0.3, 0.3, 1280)}, None, "sd2-v"),
    ("sdxl.safetensors", SDXL, None, "sdxl"),
])
def test_checkpoint_kind(tmp_path, name, shapes, metadata, kind):
    assert checkpoint_kind(write_keys(tmp_path / name, shapes, metadata)) == kind


@pytest.mark.parametrize("shapes, words", [
    ({"model.diffusion_model.joint_blocks.0.context_block.adaLN_modulation.1.bias": (9216,),
      "model.diffusion_model.pos_embed": (1, 36864, 1)}, ["an SD3 checkpoint"]),
    ({"model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": (1,)}, ["a Flux checkpoint"]),
    ({UNET_KEY: (1, 4, 1, 1), "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (1,)},
     ["an SDXL refiner"]),
    ({**SD1, UNET_KEY: (1, 9, 1, 1)}, ["an inpainting checkpoint"]),
    ({"first_stage_model.encoder.conv_in.weight": (1, 3, 1, 1)}, ["no Stable Diffusion UNet"]),
    ({UNET_KEY: (1, 4, 1, 1)}, ["without the CLIP text encoder"]),
])
def test_other_models_are_refused_in_one_line(tmp_path, shapes, words):
    path = write_keys(tmp_path / "other.safetensors", shapes)
    one_line_error(lambda: checkpoint_kind(path), *words, "dreamlr supports Stable Diffusion 1.x, 2.x and SDXL")


def test_broken_files_are_refused_in_one_line(tiny_file, tmp_path):
    data = tiny_file.read_bytes()
    torch.save({"state_dict": {UNET_KEY: torch.zeros(1)}, "callback": Opaque()}, tmp_path / "pickled.ckpt")
    cases = {"truncated.safetensors": data[: len(data) // 2], "garbage.safetensors": b"\x00garbage" * 9,
             "empty.safetensors": b"", "garbage.ckpt": b"not a zip" * 9}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        one_line_error(functools.partial(checkpoint_kind, tmp_path / name), "not a readable checkpoint")
    one_line_error(lambda: load_single_file(tmp_path / "pickled.ckpt"), "Python objects besides tensors")
    one_line_error(lambda: checkpoint_kind(tmp_path / "missing.safetensors"), "no such file")
    (tmp_path / "model.bin").write_bytes(data)
    one_line_error(lambda: checkpoint_kind(tmp_path / "model.bin"), ".safetensors or .ckpt")


def test_incomplete_or_tampered_files_are_refused_in_one_line(tiny_file, tmp_path):
    tensors = load_file(tiny_file)
    with safe_open(str(tiny_file), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({k: v for k, v in tensors.items() if not k.startswith("first_stage_model.")},
              tmp_path / "no-vae.safetensors", metadata=metadata)
    one_line_error(lambda: load_single_file(tmp_path / "no-vae.safetensors"), "cannot be loaded", "AutoencoderKL")
    index = json.loads(metadata["dreamlr.config.model_index.json"]) | {"unet": ["os", "system"]}
    save_file(tensors, tmp_path / "odd.safetensors", metadata=metadata | {
        "dreamlr.config.model_index.json": json.dumps(index), "dreamlr.config.../escape.json": "{}"})
    one_line_error(lambda: load_single_file(tmp_path / "odd.safetensors"), "unexpected entries", "unet", "escape")


def test_train_and_generate_from_a_single_file_sdxl_checkpoint_offline(tmp_path, monkeypatch):
    """The whole CLI on a checkpoint file: dreamlr's own converter writes tiny-sdxl, `train` and `generate` load it
    with the hub offline and name it as the adapter's base model."""
    from dreamlr.cli import main
    from tests.test_train import DEMO

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = write_single_file(pipeline_from_components(load_components("tiny-sdxl")), tmp_path / "xl.safetensors")
    run = tmp_path / "run"
    assert main(["train", "--model", str(path), "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
                 "--output-dir", str(run), "--max-steps", "2", "--set", "resolution=32",
                 "--set", "num_validation_images=0"]) == 0
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {token} {class}\n")
    assert main(["generate", "--model", str(path), "--adapter", str(run / "adapter.safetensors"), "--prompts",
                 str(prompts), "--class-name", "mug", "--num-images", "1", "--steps", "2",
                 "--output-dir", str(tmp_path / "gen")]) == 0
    assert len(list((tmp_path / "gen").glob("*.png"))) == 1


@pytest.mark.parametrize("model", ["tiny", "tiny-sdxl"])
def test_export_checkpoint_is_the_merged_model_in_one_file(model, tmp_path):
    """`dreamlr export --format checkpoint`: the file loads back (offline) as dreamlr's merged model."""
    from dreamlr.adapters import AdapterConfig, attach, detach, save_adapter, trainable_parameters
    from dreamlr.cli import main
    from dreamlr.diffusion import load_pipeline
    from dreamlr.diffusion.models import adapter_modules

    parts = adapter_modules(load_pipeline(model))
    torch.manual_seed(0)
    attach(parts, AdapterConfig(variant="dora", rank=2, targets="attn"))
    with torch.no_grad():
        for tensor in trainable_parameters(parts).values():
            tensor.add_(0.1 * torch.randn_like(tensor))
    adapter = save_adapter(parts, tmp_path / "adapter.safetensors", metadata={"base_model": model})
    out = tmp_path / "merged.safetensors"
    assert main(["export", "--adapter", str(adapter), "--format", "checkpoint", "--output", str(out)]) == 0
    merged = load_pipeline(model, adapter=adapter)
    detach(adapter_modules(merged), merge=True)
    assert_same_pipeline(merged, load_single_file(out))
    assert main(["export", "--adapter", str(adapter), "--format", "checkpoint", "--output", str(out)]) == 2
