"""A pad token for tokenizers that ship without one (most decoder models: GPT-2, Llama, Qwen2...).

Batches are padded, so the tokenizer needs a pad token; without one, `tokenizer.pad` fails at the first
batch. The standard remedy is to pad with the end-of-sequence token: it is already in the vocabulary, so
the embedding matrix keeps its size. Padding never reaches a result, as every head reads the attention
mask (hfmtl/tasks/heads.py pools the last token the mask keeps, even when it is an EOS that equals the
pad token). The tokenizer saved with the model keeps that pad token, and the encoder's config gets its
id (``pad_token_id``), so a reload pads the same way.

Example:
    >>> from transformers import GPT2TokenizerFast                              # doctest: +SKIP
    >>> tokenizer = GPT2TokenizerFast.from_pretrained("gpt2")                  # doctest: +SKIP
    >>> ensure_pad_token(tokenizer, "gpt2")                                     # doctest: +SKIP
    True
    >>> tokenizer.pad_token == tokenizer.eos_token                              # doctest: +SKIP
    True
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger("hfmtl")


def ensure_pad_token(tokenizer: Any, source: str, key: str = "model.name_or_path") -> bool:
    """Give `tokenizer` its EOS token as pad token when it has no pad token, and log that it did.

    Args:
        tokenizer: a transformers tokenizer.
        source: where it was loaded from, for the log line and the error.
        key: the config key (or argument) that named `source`, for the error.

    Returns:
        True when the pad token was set here, False when the tokenizer had one.

    Raises:
        ConfigError: the tokenizer has neither a pad token nor an EOS token.
    """
    if tokenizer.pad_token is not None:
        return False
    if tokenizer.eos_token is None:
        raise ConfigError(
            f"{key}={source!r}: its tokenizer has neither a pad token nor an end-of-sequence token to pad "
            "with; save the tokenizer with a pad token (tokenizer.add_special_tokens({'pad_token': ...}), and "
            "resize the model's embeddings if the token is new) or set model.tokenizer_name_or_path to one that has"
        )
    tokenizer.pad_token = tokenizer.eos_token
    logger.info(
        "the tokenizer of %s has no pad token: padding with its end-of-sequence token %r (id %d), saved with the model",
        source,
        tokenizer.eos_token,
        tokenizer.pad_token_id,
    )
    return True


def set_pad_token_id(model: Any, tokenizer: Any) -> None:
    """Record the tokenizer's pad token in the encoder's config (``pad_token_id``) when it names none.

    Args:
        model: a `MultiTaskModel`; its saved config (``config.encoder``) and its live encoder's config get
            the id.
        tokenizer: the run's tokenizer, after `ensure_pad_token`.

    A config that already has a ``pad_token_id`` keeps it: encoders such as RoBERTa count positions from
    it, and their tokenizers pad with that same token.

    Raises:
        ConfigError: the pad token lies outside the encoder's vocabulary (a tokenizer class that adds its
            own pad token to a vocabulary the checkpoint's embeddings do not cover), which would otherwise
            fail inside the embedding lookup at the first padded batch.
    """
    if tokenizer.pad_token_id is None:
        return
    vocab_size = getattr(model.config.encoder, "vocab_size", None)
    if isinstance(vocab_size, int) and tokenizer.pad_token_id >= vocab_size:
        raise ConfigError(
            f"the tokenizer pads with {tokenizer.pad_token!r} (id {tokenizer.pad_token_id}), outside the encoder's "
            f"vocabulary of {vocab_size} tokens; save the tokenizer with a pad token the model knows (e.g. "
            "tokenizer.pad_token = tokenizer.eos_token) or set model.tokenizer_name_or_path to one that has"
        )
    for config in (model.config.encoder, getattr(model.encoder, "config", None)):
        if config is not None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = tokenizer.pad_token_id
