"""Stable Diffusion 2.x on tiny SD2-shaped folders (linear attention projections, GELU text encoder, `!` padding):
the loss target follows the model's prediction type (epsilon or v), checked against the formulas written out
here, and zero-terminal-SNR training and sampling (Lin et al. 2023) for v-prediction models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from dreamlr.cli import main
from dreamlr.diffusion import load_components
from dreamlr.diffusion import train as train_module
from dreamlr.diffusion.models import _SD_SCHEDULE, _tiny_text_config, _tiny_tokenizer, _tiny_vae, zero_snr_schedulers
from dreamlr.diffusion.views import Views
from dreamlr.errors import UserError
from tests.test_train import DEMO, run_config


def sd2_folder(root: Path, prediction: str) -> Path:
    """A tiny SD 2.x-shaped pipeline folder predicting `prediction` ("epsilon" or "v_prediction")."""
    tokenizer = _tiny_tokenizer(pad_token="!")  # OpenCLIP's tokenizer pads with "!"
    torch.manual_seed(2)
    unet = UNet2DConditionModel(sample_size=8, layers_per_block=1, block_out_channels=(32, 64),
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=(2, 4), use_linear_projection=True)
    text_encoder = CLIPTextModel(_tiny_text_config(tokenizer, hidden_act="gelu"))
    pipe = StableDiffusionPipeline(vae=_tiny_vae(0.18215), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**{**_SD_SCHEDULE, "prediction_type": prediction}),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root)
    return root


def alphas_cumprod(zero_snr: bool) -> torch.Tensor:
    """SD's scaled-linear ᾱ_t, and with `zero_snr` Lin et al.'s Algorithm 1 (shift √ᾱ so the last is 0, scale so
    the first is kept), written out here as an independent reference."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    root = torch.cumprod(1 - betas, 0).sqrt()
    if zero_snr:
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
    return root ** 2


@pytest.mark.parametrize("prediction, zero_snr", [("epsilon", False), ("v_prediction", False),
                                                  ("v_prediction", True)])
def test_the_loss_is_the_mse_to_the_models_own_target(prediction, zero_snr, tmp_path):
    folder = sd2_folder(tmp_path / "sd2", prediction)
    config = run_config(tmp_path, pretrained_model_name_or_path=str(folder), rescale_betas_zero_snr=zero_snr)
    parts = load_components(str(folder))
    if zero_snr:
        parts.noise_scheduler, parts.scheduler = zero_snr_schedulers(parts.scheduler.config, parts.source)
    embed = train_module.PromptEncoder(parts, parts.text_encoders(), trainable=False)
    x0 = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    views = Views(x0, ["a photo of sks dog"] * 2, torch.zeros(2, 6))
    with torch.no_grad():
        loss = train_module._denoising(config, parts, parts.unet, embed, views, torch.Generator().manual_seed(5),
                                       torch.device("cpu"), torch.float32)
        generator = torch.Generator().manual_seed(5)  # the same draws, in the trainer's order
        latents = x0 * 0.18215
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (2,), generator=generator)
        a = alphas_cumprod(zero_snr)[t].float().view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        pred = parts.unet(noisy, t, embed(views.prompts)[0]).sample
        target = noise if prediction == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * latents
        torch.testing.assert_close(loss, F.mse_loss(pred, target), rtol=1e-5, atol=1e-6)
    if zero_snr:
        assert float(alphas_cumprod(True)[-1]) == 0 and float(parts.noise_scheduler.alphas_cumprod[-1]) < 1e-12
        assert parts.scheduler.config.timestep_spacing == "trailing"


def test_zero_snr_v_prediction_trains_and_samples_from_the_cli(tmp_path):
    folder = sd2_folder(tmp_path / "sd2v", "v_prediction")
    run = tmp_path / "run"
    assert main(["train", "--model", str(folder), "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
                 "--output-dir", str(run), "--max-steps", "3", "--set", "resolution=32",
                 "--set", "rescale_betas_zero_snr=true", "--set", "validation_steps=3",
                 "--set", "validation_inference_steps=2"]) == 0
    assert (run / "samples" / "step-3" / "0.png").is_file()
    assert "zero terminal SNR" in (run / "README.md").read_text()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of {token} {class}\n")
    assert main(["generate", "--model", str(folder), "--adapter", str(run / "adapter.safetensors"), "--zero-snr",
                 "--prompts", str(prompts), "--class-name", "mug", "--num-images", "1", "--steps", "2",
                 "--output-dir", str(tmp_path / "gen")]) == 0
    assert '"zero_snr": true' in (tmp_path / "gen" / "manifest.jsonl").read_text()


def test_zero_snr_on_an_epsilon_model_is_one_line_and_writes_nothing(tmp_path, capsys):
    folder = sd2_folder(tmp_path / "sd2", "epsilon")
    capsys.readouterr()
    code = main(["train", "--model", str(folder), "--instance-dir", str(DEMO), "--instance-prompt", "a photo of sks mug",
                 "--output-dir", str(tmp_path / "run"), "--max-steps", "1", "--set", "resolution=32",
                 "--set", "rescale_betas_zero_snr=true"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "needs a v-prediction model" in err, err
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="predicts epsilon"):
        zero_snr_schedulers(load_components(str(folder)).scheduler.config, "x")
