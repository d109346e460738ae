"""Encoder-decoder models (T5, mT5, BART, mBART...) as encoders: only their encoder stack is used.

hfmtl feeds a backbone one input and reads its hidden states. An encoder-decoder model's `AutoModel`
(`T5Model`, `BartModel`) also wants decoder inputs: T5's stops at its first step without them, and
BART's, which makes them itself by shifting the input right, returns its *decoder's* states. Its encoder
stack (`get_encoder()`) is the bidirectional encoder a multi-task model needs, and the decoder's weights
are neither loaded into the model nor saved with it.

``encoder_only`` is ``auto`` (the default): the encoder stack exactly for an encoder-decoder model.
`MultiTaskConfig` saves what it resolved to, so a reload builds the same thing.

Example:
    >>> import transformers
    >>> resolve_encoder_only("auto", transformers.T5Config())
    True
    >>> resolve_encoder_only("auto", transformers.BertConfig())
    False
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    # Not at run time: hfmtl/_auto.py imports this module (via configuration.py) while transformers'
    # configuration_auto is still loading, and `from transformers import PreTrainedModel` there would
    # re-enter the half-imported package (`import hfmtl; from transformers import BertModel` failed).
    from transformers import PreTrainedModel

logger = logging.getLogger("hfmtl")


def is_encoder_decoder(encoder_config: Any) -> bool:
    return bool(getattr(encoder_config, "is_encoder_decoder", False))


def resolve_encoder_only(value: bool | str | None, encoder_config: Any) -> bool:
    """``model.encoder_only`` for this encoder: 'auto' (or None) -> whether it is an encoder-decoder model.

    Raises:
        ConfigError: true for a model that has no separate encoder, or false for an encoder-decoder model
            (its decoder would need decoder inputs, which no task gives it).
    """
    model_type = getattr(encoder_config, "model_type", "this model")
    if value in ("auto", None):
        return is_encoder_decoder(encoder_config)
    if value is True and not is_encoder_decoder(encoder_config):
        raise ConfigError(
            f"model.encoder_only=true: {model_type} is not an encoder-decoder model, it is all encoder; "
            "leave model.encoder_only at auto"
        )
    if value is False and is_encoder_decoder(encoder_config):
        raise ConfigError(
            f"model.encoder_only=false: {model_type} is an encoder-decoder model, and hfmtl gives a backbone "
            "no decoder inputs, so only its encoder can be used; set model.encoder_only to auto or true"
        )
    if value not in (True, False):
        raise ConfigError(f"model.encoder_only={value!r} is not allowed; choose auto, true or false")
    return value


def encoder_stack(model: PreTrainedModel) -> PreTrainedModel:
    """The encoder half of the encoder-decoder `model` (its `get_encoder()`); the decoder is dropped."""
    from transformers import PreTrainedModel

    encoder = model.get_encoder()
    if encoder is model or not isinstance(encoder, PreTrainedModel):
        raise ConfigError(f"{type(model).__name__} has no separate encoder stack to use as an encoder")
    logger.info(
        "%s is an encoder-decoder model: using its encoder (%s) only", model.config.model_type, type(encoder).__name__
    )
    return encoder
