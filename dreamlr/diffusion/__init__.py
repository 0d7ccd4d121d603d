"""DreamBooth on diffusers: model loading and instance data."""

from dreamlr.diffusion.models import (
    TINY,
    Components,
    load_components,
    load_pipeline,
    pipeline_from_components,
    tiny_resolution,
)

__all__ = ["TINY", "Components", "load_components", "load_pipeline", "pipeline_from_components", "tiny_resolution"]
