"""Inference: predictions of a saved multi-task model from raw inputs, in Python and on the command line.

- `Predictor`: ``Predictor.from_pretrained(path_or_repo)`` then ``predict(task_name, inputs)`` or
  ``predict_many(requests)`` (see `hfmtl.inference.predictor`);
- one predictor per task type (`TaskPredictor` subclasses in sequence.py, tokens.py, choices.py,
  spans.py), registered with `register_predictor`, reusing the task type's own preprocessing;
- `add_cli`: the ``hfmtl predict`` and ``hfmtl info`` commands (see `hfmtl.inference.cli`).
"""

from .base import PREDICTORS, InputError, PredictOptions, TaskPredictor, register_predictor
from .cli import add_cli, model_info
from .predictor import Predictor, read_run_config

__all__ = [
    "PREDICTORS",
    "InputError",
    "PredictOptions",
    "Predictor",
    "TaskPredictor",
    "add_cli",
    "model_info",
    "read_run_config",
    "register_predictor",
]
