"""The run config's gradient accumulation and clipping, in DeepSpeed's config, where DeepSpeed owns both.

Under DeepSpeed, Accelerate's `backward` runs DeepSpeed's whole step: DeepSpeed accumulates and clips the
gradients by its own config, and hfmtl's ``accelerator.clip_grad_norm_`` does nothing. Left to
Accelerate (1.15), ``train.max_grad_norm`` is not read -- an ``auto`` value becomes 1.0 whatever the run
config says -- and a ``gradient_accumulation_steps`` in the Accelerate config that differs from
``train.gradient_accumulation_steps`` wins, with only a warning. `align_deepspeed_config` fills each
``auto`` value from the run config and refuses a value set in the Accelerate config that differs, before
anything is prepared.

Example:
    >>> align_deepspeed_config(config, accelerator)  # doctest: +SKIP
"""

from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..config import RunConfig
from ..errors import ConfigError


def align_deepspeed_config(config: RunConfig, accelerator: Accelerator) -> None:
    """Under DeepSpeed: its ``gradient_accumulation_steps`` and ``gradient_clipping`` from the run config
    (``auto`` values filled in place); nothing under other engines.

    Raises:
        ConfigError: the Accelerate config (or launcher flag) sets one of them to another value than
            the run config; the message names both and how to make them agree.
    """
    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return
    plugin, train = accelerator.state.deepspeed_plugin, config.train
    wanted = {
        # DeepSpeed's 0.0 is no clipping, as train.max_grad_norm: null
        "gradient_clipping": ("train.max_grad_norm", float(train.max_grad_norm or 0.0)),
        "gradient_accumulation_steps": ("train.gradient_accumulation_steps", train.gradient_accumulation_steps),
    }
    for key, (name, value) in wanted.items():
        plugin.fill_match(key, must_match=False, **{key: value})  # only where the value is "auto"
        given = plugin.get_value(key)
        given = 0.0 if key == "gradient_clipping" and given is None else given  # DeepSpeed's default: off
        if given != value:
            raise ConfigError(
                f"{name}={getattr(train, name.split('.')[1])} but the DeepSpeed config sets {key}={given}, and "
                f"DeepSpeed's value would win: make them agree (deepspeed_config.{key} in the Accelerate "
                f"config, 'auto' to take {name}, or {name} in the run config)"
            )
