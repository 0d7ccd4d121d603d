"""Text tasks on transformers models with the same adapters: sequence classification and causal LMs.

Train with `dreamlr.text.train.train(TextTrainConfig(...))`; load or score a run folder with
`load_run` / `evaluate_run`.
"""

from dreamlr.text.config import TextTrainConfig
from dreamlr.text.evaluate import evaluate_run, load_run

__all__ = ["TextTrainConfig", "evaluate_run", "load_run"]
