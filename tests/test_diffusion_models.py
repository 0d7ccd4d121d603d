"""Model loading: the built-in tiny model, saved folders, and clear errors for bad sources."""

import time

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from safetensors.torch import save_file

from dreamlr.diffusion import TINY, load_components, load_pipeline, tiny_resolution
from dreamlr.errors import UserError

PROMPT = "a photo of sks dog"


def generate(pipe, prompt=PROMPT, seed=0):
    r = tiny_resolution()
    out = pipe(prompt, num_inference_steps=2, height=r, width=r, generator=torch.Generator().manual_seed(seed),
               output_type="np")
    return out.images


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-sd")
    load_pipeline(TINY).save_pretrained(path)
    return path


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_tiny_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = load_components(TINY)
    assert torch.equal(torch.rand(3), expected)
    b = load_components(TINY)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(a, name), getattr(b, name))


def test_tiny_components_fit_together():
    c = load_components(TINY)
    assert c.source == TINY
    assert isinstance(c.noise_scheduler, DDPMScheduler)
    assert torch.equal(c.noise_scheduler.betas, DDPMScheduler.from_config(c.scheduler.config).betas)
    assert c.text_encoder.config.vocab_size == len(c.tokenizer)
    assert c.text_encoder.config.hidden_size == c.unet.config.cross_attention_dim
    assert 2 ** (len(c.vae.config.block_out_channels) - 1) == 8
    assert c.unet.config.sample_size * 8 == tiny_resolution()
    names = {n.rsplit(".", 1)[-1] for n, _ in c.unet.named_modules()}
    assert {"to_q", "to_k", "to_v", "proj_in", "proj_out"} <= names
    assert any(n.endswith("to_out.0") for n, _ in c.unet.named_modules())
    assert not any(m.training for m in (c.unet, c.vae, c.text_encoder))


def test_tiny_tokenizer_covers_any_text():
    tok = load_components(TINY).tokenizer
    ids = tok(PROMPT).input_ids
    assert tok.convert_ids_to_tokens(ids) == ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "sks</w>", "dog</w>",
                                              "<|endoftext|>"]
    odd = tok("Zebra café №42 🐕!").input_ids
    assert tok.unk_token_id not in odd[1:-1] and len(odd) > 5
    padded = tok(PROMPT, padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(padded) == 77


def test_tiny_generation_is_deterministic():
    pipe = load_pipeline(TINY)
    a, b = generate(pipe), generate(pipe)
    r = tiny_resolution()
    assert a.shape == (1, r, r, 3) and np.isfinite(a).all()
    assert np.array_equal(a, b)
    assert not np.array_equal(a, generate(pipe, seed=1))
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.safety_checker is None


def test_tiny_in_reduced_precision():
    c = load_components(TINY, dtype=torch.bfloat16)
    assert c.unet.dtype == c.vae.dtype == c.text_encoder.dtype == torch.bfloat16


def test_saved_folder_loads_back_identically(tiny_dir):
    pipe, loaded = load_pipeline(TINY), load_pipeline(str(tiny_dir))
    assert_same_weights(pipe.unet, loaded.unet)
    assert_same_weights(pipe.text_encoder, loaded.text_encoder)
    assert loaded.tokenizer(PROMPT).input_ids == pipe.tokenizer(PROMPT).input_ids
    assert np.array_equal(generate(pipe), generate(loaded))
    assert isinstance(load_components(str(tiny_dir)).noise_scheduler, DDPMScheduler)


def one_line_error(source: str) -> str:
    start = time.perf_counter()
    with pytest.raises(UserError) as info:
        load_pipeline(source)
    assert time.perf_counter() - start < 2, "must fail fast, not wait for the network"
    message = str(info.value)
    assert "\n" not in message and f"'{source}'" in message
    return message


@pytest.mark.parametrize("repo_id", ["nobody-here/no-such-sd-model", "no-such-sd-model"])
def test_unknown_hub_id_offline_fails_fast(repo_id):
    assert one_line_error(repo_id) == (
        f"model '{repo_id}' not found locally, and the hub is offline; give a local path or `tiny`"
    )


@pytest.mark.parametrize("name", ["missing.safetensors", "missing.ckpt", "./missing", "deep/er/missing"])
def test_missing_path(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert one_line_error(name) == f"model '{name}': no such file or folder"


def test_folder_without_model_index(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    assert "model_index.json" in one_line_error(str(tmp_path))


def test_folder_that_is_not_stable_diffusion(tmp_path):
    (tmp_path / "model_index.json").write_text('{"_class_name": "SomethingElse", "transformer": ["x", "y"]}')
    assert "not a Stable Diffusion 1.x/2.x or SDXL base pipeline" in one_line_error(str(tmp_path))


def test_corrupt_single_file(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"not a safetensors file" * 10)
    assert "not a readable checkpoint" in one_line_error(str(path))


def test_a_single_file_without_text_encoder_is_one_line(tmp_path):
    # single files load offline from dreamlr's packaged configs (tests/test_single_file.py); an incomplete one
    # is named before any weights load
    path = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)}, str(path))
    assert "a UNet without the CLIP text encoder(s)" in one_line_error(str(path))


def test_other_file_types_rejected(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"\0")
    assert ".safetensors or .ckpt" in one_line_error(str(path))
