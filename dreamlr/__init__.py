"""dreamlr: DreamBooth personalization of diffusion models with low-rank adapters."""

__version__ = "0.1.0"
