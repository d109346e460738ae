"""hfmtl: multi-task and transfer learning for NLP on Hugging Face transformers.

Importing hfmtl registers `MultiTaskConfig` / `MultiTaskModel` with `AutoConfig` / `AutoModel`, so
``transformers.AutoModel.from_pretrained(saved_dir)`` rebuilds a saved multi-task model.
"""

from .config import RunConfig, load_config
from .errors import ConfigError, DataError, HfmtlError
from .modeling import MultiTaskConfig, MultiTaskModel, MultiTaskOutput, register_auto_classes
from .tasks import TASK_TYPES, Task, TaskConfig, build_task, register_task

register_auto_classes()

__version__ = "0.1.0"

__all__ = [
    "TASK_TYPES",
    "ConfigError",
    "DataError",
    "HfmtlError",
    "MultiTaskConfig",
    "MultiTaskModel",
    "MultiTaskOutput",
    "RunConfig",
    "Task",
    "TaskConfig",
    "build_task",
    "load_config",
    "register_task",
]
