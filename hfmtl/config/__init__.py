"""The typed run config: YAML + dotted ``key=value`` overrides -> validated dataclasses.

Importing this package loads no torch (task types are looked up only when a config is built).

Example:
    >>> cfg = load_config("configs/tiny.yaml", ["train.max_steps=5", "tasks.rte.batch_size=4"])
    >>> cfg.train.max_steps
    5
"""

from .run import RunConfig, apply_overrides, config_from_dict, load_config, save_config
from .sections import (
    POOLING_CHOICES,
    SAMPLING_CHOICES,
    BalancingConfig,
    ModelConfig,
    PeftSection,
    SamplingConfig,
    StageConfig,
)
from .train import TrainConfig

__all__ = [
    "POOLING_CHOICES",
    "SAMPLING_CHOICES",
    "BalancingConfig",
    "ModelConfig",
    "PeftSection",
    "RunConfig",
    "SamplingConfig",
    "StageConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "load_config",
    "save_config",
]
