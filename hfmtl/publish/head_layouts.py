"""Where each encoder family keeps its standard heads, for hfmtl/publish/export.py.

A `PooledHead` (first token -> dense -> tanh -> linear) exports exactly only where a family's standard
``...ForSequenceClassification`` / ``...ForMultipleChoice`` head computes the same; `FAMILIES` names the
modules its two layers go to, or why there is no exact equivalent. An encoder type missing here is
refused by the export for those heads. A `TokenHead` needs no entry: the export finds the one linear
layer of the family's standard per-token head in the transformers class itself (export.py).

Example:
    >>> FAMILIES["bert"].sequence
    ('{base}.pooler.dense', 'classifier')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedConfig


def classifier_dropout(config: PreTrainedConfig, dropout: float) -> dict[str, Any]:
    """The config value most families read their head's dropout from."""
    return {"classifier_dropout": dropout}


def _deberta_config(config: PreTrainedConfig, dropout: float) -> dict[str, Any]:
    # ContextPooler's activation is a config value (GELU by default): tanh makes it hfmtl's head
    return {
        "pooler_hidden_act": "tanh",
        "pooler_hidden_size": config.hidden_size,
        "pooler_dropout": dropout,
        "cls_dropout": dropout,
    }


def _electra_config(config: PreTrainedConfig, dropout: float) -> dict[str, Any]:
    # ElectraForMultipleChoice's SequenceSummary is configurable: first token -> linear -> tanh
    return {
        "classifier_dropout": dropout,
        "summary_type": "first",
        "summary_use_proj": True,
        "summary_proj_to_labels": False,
        "summary_activation": "tanh",
        "summary_first_dropout": dropout,
        "summary_last_dropout": dropout,
    }


@dataclass(frozen=True)
class Family:
    """Where a `PooledHead`'s ``dense`` and ``out_proj`` go in one encoder family's standard classes.

    `sequence` (``...ForSequenceClassification``) and `choice` (``...ForMultipleChoice``) each hold the
    (dense, out_proj) module names, ``{base}`` standing for the base model's attribute, or, where the
    standard head cannot compute ``out_proj(tanh(dense(first token)))``, the reason why not.
    `config` gives the config values that make the standard head match (and keep the head's dropout).
    """

    sequence: tuple[str, str] | str
    choice: tuple[str, str] | str
    config: Callable[[PreTrainedConfig, float], dict[str, Any]] = classifier_dropout


_POOLER = ("{base}.pooler.dense", "classifier")  # BERT's pooler is dense + tanh on the first token
_ROBERTA = Family(sequence=("classifier.dense", "classifier.out_proj"), choice=_POOLER)
_DEBERTA_POOLER = ("pooler.dense", "classifier")
_DISTILBERT = "DistilBERT's head applies a fixed ReLU after pre_classifier where hfmtl's head applies tanh"

# Checked against transformers' modeling files; an encoder type missing here is refused.
FAMILIES: dict[str, Family] = {
    "bert": Family(sequence=_POOLER, choice=_POOLER),
    "roberta": _ROBERTA,
    "xlm-roberta": _ROBERTA,
    "camembert": _ROBERTA,
    "deberta": Family(_DEBERTA_POOLER, "transformers has no DebertaForMultipleChoice", _deberta_config),
    "deberta-v2": Family(_DEBERTA_POOLER, _DEBERTA_POOLER, _deberta_config),
    "electra": Family(
        sequence="ELECTRA's classification head applies a fixed GELU where hfmtl's head applies tanh",
        choice=("sequence_summary.summary", "classifier"),
        config=_electra_config,
    ),
    "distilbert": Family(sequence=_DISTILBERT, choice=_DISTILBERT),
    "albert": Family(sequence=("{base}.pooler", "classifier"), choice=("{base}.pooler", "classifier")),
    "mpnet": Family(sequence=("classifier.dense", "classifier.out_proj"), choice=_POOLER),
}
