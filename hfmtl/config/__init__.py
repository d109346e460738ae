"""The typed run config: YAML + dotted ``key=value`` overrides -> validated dataclasses.

Importing this package loads no torch (task types are looked up only when a config is built).

Example:
    >>> cfg = load_config("configs/tiny.yaml", ["train.max_steps=5", "tasks.rte.batch_size=4"])
    >>> cfg.train.max_steps
    5
"""

from .run import RunConfig, apply_overrides, config_from_dict, load_config, save_config
from .sections import BalancingConfig, ModelConfig, PeftSection, Pooling, SamplingConfig, SamplingStrategy, StageConfig
from .train import TrainConfig

__all__ = [
    "BalancingConfig",
    "ModelConfig",
    "PeftSection",
    "Pooling",
    "RunConfig",
    "SamplingConfig",
    "SamplingStrategy",
    "StageConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "save_config",
]
