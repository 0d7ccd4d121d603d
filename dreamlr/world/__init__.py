"""A small procedural world for benchmarking personalization on a CPU: 64 px scenes of eight object classes
in eighteen contexts with DreamBench-style captions (`scene`, `captions`, `sampling`), the subjects never
shown to the world model (`instances`, `subjects`, `prompts`), and the builders of the world's diffusion
model and scoring encoders (`tokenizer`, `architectures`, `train_*`), shipped under assets/world/."""

from dreamlr.world.captions import caption, describe, parse_caption
from dreamlr.world.sampling import sample_scene, world_samples
from dreamlr.world.scene import IMAGE_SIZE, Instance, Scene, render

__all__ = ["IMAGE_SIZE", "Instance", "Scene", "caption", "describe", "parse_caption", "render", "sample_scene",
           "world_samples"]
