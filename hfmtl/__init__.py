"""hfmtl: multi-task and transfer learning for NLP on Hugging Face transformers.

Importing hfmtl registers `MultiTaskConfig` / `MultiTaskModel` with `AutoConfig` / `AutoModel`, so
``transformers.AutoModel.from_pretrained(saved_dir)`` rebuilds a saved multi-task model.
"""

from .adapters import add_adapters, merged_encoder
from .config import RunConfig, load_config
from .errors import ConfigError, DataError, HfmtlError
from .export import export_task
from .inference import Predictor
from .modeling import MultiTaskConfig, MultiTaskModel, MultiTaskOutput, register_auto_classes
from .stages import plan_stages
from .tasks import TASK_TYPES, Task, TaskConfig, build_task, register_task
from .transfer import initialize_from

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
    "Predictor",
    "RunConfig",
    "Task",
    "TaskConfig",
    "add_adapters",
    "build_task",
    "export_task",
    "initialize_from",
    "load_config",
    "merged_encoder",
    "plan_stages",
    "register_task",
]
