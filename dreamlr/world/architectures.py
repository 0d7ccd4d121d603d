"""The world's model architectures, sized for a 2-core CPU (`full`) or a seconds-long smoke run (`toy`):
the diffusion model's VAE, UNet and text encoder (diffusers / transformers classes), world-CLIP (open_clip's
CLIP class, in open_clip's model-config format) and world-DINO (timm's VisionTransformer).

Full sizes (issue 13's measurements, 2 idle threads): a 1.25 M-parameter AutoencoderKL 64 px -> 8x8x4
(0.92 s/step at batch 32) and a 5.9 M-parameter UNet (64/128/128, one layer per block; 0.35 s/step at
batch 64 on 8x8 latents)."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dreamlr.world.scene import IMAGE_SIZE

SIZES = ("full", "toy")
LATENT_SIZE = IMAGE_SIZE // 8
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)

_VAE = {
    "full": dict(block_out_channels=(32, 64, 64, 64), norm_num_groups=16),
    "toy": dict(block_out_channels=(8, 8, 8, 8), norm_num_groups=4),
}
_UNET = {
    "full": dict(block_out_channels=(64, 128, 128), attention_head_dim=8, norm_num_groups=32),
    "toy": dict(block_out_channels=(16, 32, 32), attention_head_dim=2, norm_num_groups=8),
}
_TEXT = {"full": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4),
         "toy": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)}
# world-CLIP's image tower is open_clip's ModifiedResNet (the RN50 family's, one block per stage, attention
# pooling): measured, a ViT (patch 8, width 192, 4 layers) at the same cost per step had learned the
# backdrops after 300 steps but still named the object's class no better than chance (21 %, 8 classes)
_CLIP = {
    "full": {"embed_dim": 128,
             "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 32, "head_width": 32},
             "text_cfg": {"width": 128, "heads": 4, "layers": 3}},
    "toy": {"embed_dim": 16,
            "vision_cfg": {"image_size": IMAGE_SIZE, "layers": [1, 1, 1, 1], "width": 4, "head_width": 16},
            "text_cfg": {"width": 16, "heads": 2, "layers": 1}},
}
_DINO = {"full": dict(embed_dim=192, depth=4, num_heads=3), "toy": dict(embed_dim=16, depth=1, num_heads=2)}
CLIP_CONTEXT = 32  # world-CLIP's text length in tokens: world captions take at most ~20
DINO_BASE_ARCH = "vit_small_patch16_224"  # the timm architecture the world-DINO folder names; sizes overridden


def _check(size: str) -> None:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")


def build_vae(size: str = "full") -> AutoencoderKL:
    """A fresh AutoencoderKL, 64 px RGB <-> 8x8x4 latents."""
    _check(size)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         sample_size=IMAGE_SIZE, **_VAE[size])


def build_text_encoder(tokenizer: CLIPTokenizer, size: str = "full") -> CLIPTextModel:
    """A fresh CLIP text encoder over the world tokenizer's vocabulary."""
    _check(size)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **_TEXT[size]))


def build_unet(size: str = "full") -> UNet2DConditionModel:
    """A fresh text-conditioned UNet on 8x8x4 latents."""
    _check(size)
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=_TEXT[size]["hidden_size"], **_UNET[size])


def build_scheduler() -> DDIMScheduler:
    """Stable Diffusion 1.x's noise schedule, DDIM for sampling."""
    return DDIMScheduler(**SCHEDULE)


def clip_config(vocab_size: int, size: str = "full") -> dict:
    """open_clip's model config (`model_cfg`) for world-CLIP: a ResNet image tower and a text tower over the
    world tokenizer (`hf_tokenizer_name`: open_clip then loads the tokenizer from the model's folder)."""
    _check(size)
    cfg = _CLIP[size]
    return {"embed_dim": cfg["embed_dim"], "vision_cfg": dict(cfg["vision_cfg"]),
            "text_cfg": {"context_length": CLIP_CONTEXT, "vocab_size": vocab_size, "hf_tokenizer_name": "world",
                         "tokenizer_mode": None, **cfg["text_cfg"]}}


def dino_args(size: str = "full") -> dict:
    """timm VisionTransformer arguments for world-DINO (64 px, 8 px patches, no classifier head)."""
    _check(size)
    return dict(img_size=IMAGE_SIZE, patch_size=8, num_classes=0, **_DINO[size])
