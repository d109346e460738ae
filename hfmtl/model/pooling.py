"""Which token stands for the sequence: the pooling ``auto`` resolves to, from the encoder's attention.

A bidirectional encoder (BERT, RoBERTa, DeBERTa, ModernBERT...) lets its first token see the whole input:
that token's state ('cls') represents the sequence. A decoder (causal) model lets each token see only
the tokens before it, so its first token sees itself alone and only the last real token has read the
whole input: such a model pools 'last', as transformers' own ``...ForSequenceClassification`` of the
causal families does (it takes the rightmost non-padding token).

Whether a family is causal is read from transformers' own Auto mappings rather than kept in a list
here: a model type with a causal-LM class and no masked-LM class (GPT-2, Llama, Qwen2, Mistral, ...)
is a decoder; one with both (BERT, RoBERTa: a masked LM that can also be configured as a decoder) is
causal only when its config says ``is_decoder``. Encoder-decoder models (T5, BART) are not decoders
here: their encoder half is bidirectional.

Example:
    >>> import transformers
    >>> resolve_pooling("auto", transformers.BertConfig())
    'cls'
    >>> resolve_pooling("auto", transformers.Qwen2Config())
    'last'
    >>> resolve_pooling("mean", transformers.Qwen2Config())
    'mean'
"""

from __future__ import annotations

import logging
import typing
from typing import Any

import torch

from ..config.sections import Pooling
from ..errors import ConfigError

logger = logging.getLogger("hfmtl")

# What `model.pooling` / `MultiTaskConfig.pooling` may be; a saved model holds one of them other than 'auto'.
POOLING_CHOICES: tuple[str, ...] = typing.get_args(Pooling)


def is_causal(encoder_config: Any) -> bool:
    """Whether the encoder attends causally (each token sees only the tokens before it)."""
    # imported here: loading transformers' Auto model module registers hfmtl's model (hfmtl/_auto.py),
    # which imports configuration.py, which imports this module
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if getattr(encoder_config, "is_encoder_decoder", False):
        return False
    if getattr(encoder_config, "is_decoder", False):
        return True
    model_type = getattr(encoder_config, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def resolve_pooling(pooling: str, encoder_config: Any) -> str:
    """`pooling`, with 'auto' replaced by the choice for this encoder ('last' when causal, else 'cls').

    The resolved choice is what a model saves, so that a reload pools as the training did; resolving
    'auto' is logged, as the one place a user sees what it became.

    Raises:
        ConfigError: `pooling` is not one of `POOLING_CHOICES`.
    """
    if pooling not in POOLING_CHOICES:
        raise ConfigError(
            f"model.pooling={pooling!r} is not allowed; choose one of {', '.join(map(repr, POOLING_CHOICES))}"
        )
    if pooling != "auto":
        return pooling
    model_type = getattr(encoder_config, "model_type", None)
    if is_causal(encoder_config):
        logger.info(
            "model.pooling=auto: 'last' (the last non-padding token), as %s is a decoder (causal) model", model_type
        )
        return "last"
    logger.info("model.pooling=auto: 'cls' (the first token), as %s is a bidirectional encoder", model_type)
    return "cls"


def causal_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over the real tokens only, so that left padding does not shift them.

    A model with absolute position embeddings (GPT-2) would otherwise give a left-padded input other
    positions, and other outputs, than the same input alone. Padding positions get 0 (they are masked).

    Example:
        >>> causal_position_ids(torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])).tolist()
        [[0, 0, 0, 1], [0, 1, 2, 0]]
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)
