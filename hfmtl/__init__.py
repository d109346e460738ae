"""hfmtl: multi-task and transfer learning for NLP on Hugging Face transformers.

The public API loads lazily: ``import hfmtl.config`` (or ``hfmtl --help``) loads no torch. Importing
hfmtl also teaches transformers' `AutoConfig` / `AutoModel` the ``hfmtl`` model type (see
hfmtl/_auto.py), so ``import hfmtl; transformers.AutoModel.from_pretrained(saved_dir)`` rebuilds a
saved multi-task model.

Example:
    >>> import hfmtl
    >>> hfmtl.load_config("configs/tiny.yaml").train.max_steps
    12
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _auto

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "ConfigError": "hfmtl.errors",
    "DataError": "hfmtl.errors",
    "HfmtlError": "hfmtl.errors",
    "RunConfig": "hfmtl.config",
    "load_config": "hfmtl.config",
    "plan_stages": "hfmtl.config.stages",
    "TASK_TYPES": "hfmtl.tasks",
    "Task": "hfmtl.tasks",
    "TaskConfig": "hfmtl.tasks",
    "build_task": "hfmtl.tasks",
    "register_task": "hfmtl.tasks",
    "MultiTaskConfig": "hfmtl.model",
    "MultiTaskModel": "hfmtl.model",
    "MultiTaskOutput": "hfmtl.model",
    "add_adapters": "hfmtl.model",
    "initialize_from": "hfmtl.model",
    "merged_encoder": "hfmtl.model",
    "MultiTaskTrainer": "hfmtl.training.trainer",
    "TrainerCallback": "hfmtl.training.callbacks",
    "RunRecord": "hfmtl.run_record",
    "export_task": "hfmtl.publish",
    "push_to_hub": "hfmtl.publish",
    "Predictor": "hfmtl.inference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hfmtl' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


_auto.install()
