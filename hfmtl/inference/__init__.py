"""Inference: predictions of a saved multi-task model from raw inputs.

`Predictor`: ``Predictor.from_pretrained(path_or_repo)`` then ``predict(task_name, inputs)`` (a task, a
list of tasks or ``"all"``: shared encoder passes, shared_pass.py) or ``predict_many(requests)``. Each
task type brings its own `TaskPredictor`, in its file under hfmtl/tasks/.
"""

from .predictor import Predictor
from .saved_tasks import read_run_config

__all__ = ["Predictor", "read_run_config"]
