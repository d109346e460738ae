"""`MultiTaskConfig`: the configuration a saved multi-task model is rebuilt from.

It nests the encoder's config and one head spec per task (like `EncoderDecoderConfig` nests two
configs), so ``config.json`` alone rebuilds the model.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..errors import ConfigError
from .encoder_stack import resolve_encoder_only
from .pooling import resolve_pooling

MODEL_TYPE = "hfmtl"


class MultiTaskConfig(PreTrainedConfig):
    r"""Configuration of a `MultiTaskModel`.

    Args:
        encoder: the encoder's config (a `PreTrainedConfig` or its dict).
        tasks: task_name -> head spec (``{"type": ..., "num_labels": ..., ...}``) as each task type
            writes it (see `Task.head_spec`).
        pooling: how sequence-level heads reduce the encoder's output: 'cls' (first token), 'mean', 'last'
            (last non-padding token), or 'auto', which becomes 'last' for a decoder (causal) encoder and
            'cls' for any other as the config is built (see hfmtl/model/pooling.py): the resolved choice is
            the one saved.
        classifier_dropout: dropout in the heads; None uses the encoder's ``hidden_dropout_prob``.
        peft: set when the encoder carries PEFT adapters (see `hfmtl.model.adapters`): ``mode`` ('shared' or
            'per_task'), ``adapters`` (their names) and ``base_model`` (where the encoder's own weights
            come from, so that saved adapters can be re-attached).
        encoder_only: use only the encoder stack of an encoder-decoder encoder config (T5, BART...);
            'auto' becomes true exactly for those as the config is built (hfmtl/model/encoder_stack.py),
            and the resolved value is the one saved.
    """

    model_type = MODEL_TYPE
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PreTrainedConfig | dict | None = None
    tasks: dict | None = None
    pooling: str = "auto"
    classifier_dropout: float | None = None
    peft: dict | None = None
    encoder_only: bool | str = "auto"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.pooling = resolve_pooling(self.pooling, self.encoder)
        self.encoder_only = resolve_encoder_only(self.encoder_only, self.encoder)
        self.tasks = dict(self.tasks or {})
        for spec in self.tasks.values():
            # JSON turns integer keys into strings; heads and users index id2label by int
            if "id2label" in spec:
                spec["id2label"] = {int(k): v for k, v in spec["id2label"].items()}

    @property
    def hidden_size(self) -> int:
        encoder = self.encoder
        for name in ("hidden_size", "dim", "d_model"):
            if hasattr(encoder, name):
                return int(getattr(encoder, name))
        raise ConfigError(f"cannot find the hidden size of encoder type {encoder.model_type!r}")


# Known to AutoConfig from here on: `import hfmtl` arranges for this module to load with transformers'
# Auto modules (hfmtl/_auto.py).
AutoConfig.register(MODEL_TYPE, MultiTaskConfig, exist_ok=True)
