"""Quality checks of the world model and encoders, through dreamlr's own loaders (`world` built-ins):

- CLIP class retrieval: on fresh world images, the share whose best-matching caption among the eight
  `a photo of a <class>` captions names their class (issue 13's bar: >= 90 %), and the same among the
  eight `a photo of a <class> <the image's context>` captions (`class_retrieval_in_context`; world captions
  nearly always name the context, so a caption without one reads as the studio backdrop); the same for
  the context among `a photo of a <class> <context>` captions of the image's class.
- Base-model composition: the world classifier finds the prompt's class and context in the world model's
  generations for the held-out (class, context) pairs (bars: >= 80 % each).
- VAE: reconstruction PSNR on fresh world images.
- Subject nearest neighbour: each subject image's nearest other image (cosine), in a gallery of every
  subject's images plus views of other instances of the same classes, is an image of the same subject
  (bar for world-DINO: >= 90 %); given for DINO and for CLIP-I, which should separate instances less.

    python -m dreamlr.world.quality --world DIR      # DIR: a build's world/ folder (default: assets/world)
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from dreamlr.world.instances import HELDOUT_PAIRS, SUBJECTS
from dreamlr.world.sampling import sample_instance, sample_scene, world_samples
from dreamlr.world.scene import render
from dreamlr.world.subjects import subject_scenes
from dreamlr.world.vocab import CLASSES, CONTEXTS

EVAL_SEED = 10_000  # far from the build's seeds


def clip_retrieval(clip, count: int = 400, seed: int = EVAL_SEED) -> dict[str, float]:
    """Class and context retrieval accuracy of a CLIP encoder on `count` fresh world images."""
    scenes = [s for s, _ in world_samples(seed, count)]
    images = torch.nn.functional.normalize(clip.embed_images([render(s) for s in scenes]), dim=1)
    classes = list(CLASSES)
    texts = torch.nn.functional.normalize(clip.embed_texts([f"a photo of a {CLASSES[c]}" for c in classes]), dim=1)
    pred = (images @ texts.T).argmax(1)
    class_acc = float(np.mean([classes[p] == s.instance.cls for p, s in zip(pred.tolist(), scenes)]))
    contexts = [c for c in CONTEXTS if c != "studio"]
    hits, class_hits = [], []
    for k, scene in enumerate(scenes):
        if scene.context == "studio":
            continue
        noun, phrase = CLASSES[scene.instance.cls], CONTEXTS[scene.context]
        ctx = torch.nn.functional.normalize(clip.embed_texts([f"a photo of a {noun} {CONTEXTS[c]}" for c in contexts]),
                                            dim=1)
        hits.append(contexts[int((ctx @ images[k]).argmax())] == scene.context)
        cls = torch.nn.functional.normalize(clip.embed_texts([f"a photo of a {CLASSES[c]} {phrase}" for c in classes]),
                                            dim=1)
        class_hits.append(classes[int((cls @ images[k]).argmax())] == scene.instance.cls)
    return {"class_retrieval": class_acc, "class_retrieval_in_context": float(np.mean(class_hits)),
            "context_retrieval": float(np.mean(hits)), "images": count}


def subject_nearest_neighbour(encoder, distractors_per_class: int = 4, views: int = 5,
                              seed: int = EVAL_SEED) -> dict[str, float]:
    """Share of subject images whose nearest other image is of the same subject (gallery: all subjects'
    reference images + `distractors_per_class` other instances of each subject class, `views` images each)."""
    rng = np.random.default_rng(seed)
    labels, images = [], []
    for name in SUBJECTS:
        for scene in subject_scenes(name):
            labels.append(name)
            images.append(render(scene))
    for cls in sorted({i.cls for i in SUBJECTS.values()}):
        for k in range(distractors_per_class):
            instance = sample_instance(rng, cls)
            for _ in range(views):
                labels.append(f"other-{cls}-{k}")
                images.append(render(sample_scene(rng, instance=instance, context=None, dressed=False)))
    emb = torch.nn.functional.normalize(encoder.embed_images(images), dim=1)
    sim = emb @ emb.T
    sim.fill_diagonal_(-2)
    nearest = sim.argmax(1).tolist()
    queries = [k for k, label in enumerate(labels) if label in SUBJECTS]
    return {"subject_nn": float(np.mean([labels[nearest[k]] == labels[k] for k in queries])),
            "queries": len(queries), "gallery": len(images)}


@torch.no_grad()
def vae_psnr(vae, count: int = 64, seed: int = EVAL_SEED) -> dict[str, float]:
    """Reconstruction PSNR (dB, pixels in [0, 1]) of the world model's VAE on `count` fresh world images
    (encoded to the posterior mean, decoded)."""
    scenes = [s for s, _ in world_samples(seed, count)]
    x = torch.stack([torch.from_numpy(np.asarray(render(s))) for s in scenes]).permute(0, 3, 1, 2).float() / 127.5 - 1
    vae = vae.float()
    recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    mse = ((recon - x) / 2).square().mean(dim=(1, 2, 3))
    return {"psnr_db": float((-10 * torch.log10(mse)).mean()), "images": count}


@torch.no_grad()
def composition(pipe, classifier, per_pair: int = 4, steps: int = 25, guidance: float = 5.0,
                seed: int = EVAL_SEED) -> dict[str, float]:
    """Generate `per_pair` images of `a photo of a <class> <context>` for every held-out (class, context)
    pair and return the shares where the world classifier finds the prompt's class and its context."""
    from dreamlr.world.classifier import classify

    hits_cls, hits_ctx = [], []
    for k, (cls, context) in enumerate(sorted(HELDOUT_PAIRS)):
        prompt = f"a photo of a {CLASSES[cls]} {CONTEXTS[context]}"
        images = pipe([prompt] * per_pair, num_inference_steps=steps, guidance_scale=guidance, height=64, width=64,
                      generator=torch.Generator().manual_seed(seed + k)).images
        found = classify(classifier, images)
        hits_cls += [c == cls for c in found["cls"]]
        hits_ctx += [c == context for c in found["context"]]
    return {"class": float(np.mean(hits_cls)), "context": float(np.mean(hits_ctx)), "images": len(hits_cls)}


def measure(world: str | None = None, encoders: bool = True, model: bool = True) -> dict[str, dict[str, float]]:
    """The checks whose parts exist (of `world`, a build's world/ folder, else the built-in world)."""
    from dreamlr.world.assets import ENV, world_dir

    if world:
        os.environ[ENV] = world
    results: dict[str, dict[str, float]] = {}
    if encoders and (world_dir() / "clip").is_dir() and (world_dir() / "dino").is_dir():
        from dreamlr.evaluation.encoders import load_clip, load_dino

        clip, dino = load_clip("world"), load_dino("world")
        results.update(clip=clip_retrieval(clip), dino=subject_nearest_neighbour(dino),
                       clip_i=subject_nearest_neighbour(clip))
    if model and (world_dir() / "model").is_dir() and (world_dir() / "classifier").is_dir():
        from dreamlr.diffusion import load_pipeline
        from dreamlr.world.classifier import classify, load_classifier

        classifier = load_classifier(world_dir() / "classifier")
        scenes = [s for s, _ in world_samples(EVAL_SEED + 1, 400)]
        found = classify(classifier, [render(s) for s in scenes])
        results["classifier_on_real"] = {
            "class": float(np.mean([f == s.instance.cls for f, s in zip(found["cls"], scenes)])),
            "context": float(np.mean([f == s.context for f, s in zip(found["context"], scenes)]))}
        pipe = load_pipeline("world")
        pipe.set_progress_bar_config(disable=True)
        results["vae"] = vae_psnr(pipe.vae)
        results["base_composition"] = composition(pipe, classifier)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="world encoders' quality checks")
    parser.add_argument("--world", help="a build's world/ folder (default: assets/world or $DREAMLR_WORLD_DIR)")
    parser.add_argument("--no-encoders", action="store_true", help="skip the CLIP/DINO checks")
    parser.add_argument("--no-model", action="store_true", help="skip the world model's checks")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.world, not args.no_encoders, not args.no_model), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
