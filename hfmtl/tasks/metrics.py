"""Metrics that work offline, each computed by the library that owns it.

`evaluate.load("accuracy")` downloads the metric's script from the Hub, so it fails without internet. The
built-in names below call scikit-learn, SciPy and seqeval directly; any other `evaluate` metric is still
available as ``evaluate:<hub name or local module path>`` (that one needs the Hub, or a local copy).

Example:
    >>> compute_metric("accuracy", [1, 0, 1], [1, 1, 1])
    {'accuracy': 0.6666666666666666}
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError


def _accuracy(predictions, references, **_: Any) -> dict[str, float]:
    from sklearn.metrics import accuracy_score

    return {"accuracy": float(accuracy_score(references, predictions))}


def _average(predictions, references, average: str | None) -> str:
    """Binary F1 for two classes (GLUE's MRPC convention), macro otherwise, unless asked.

    Tasks pass `average` from their label count; this guess (from the labels present in both arrays)
    is for direct calls only.
    """
    if average:
        return average
    refs = np.asarray(references)
    if refs.ndim == 2:  # multi-label indicator matrix
        return "micro"
    present = np.union1d(refs, np.asarray(predictions))
    return "binary" if set(present.tolist()) <= {0, 1} else "macro"


def _prf(kind: str) -> Callable[..., dict[str, float]]:
    def metric(predictions, references, average: str | None = None, **_: Any) -> dict[str, float]:
        from sklearn import metrics as skm

        fn = {"f1": skm.f1_score, "precision": skm.precision_score, "recall": skm.recall_score}[kind]
        value = fn(references, predictions, average=_average(predictions, references, average), zero_division=0)
        return {kind: float(value)}

    return metric


def _matthews(predictions, references, **_: Any) -> dict[str, float]:
    from sklearn.metrics import matthews_corrcoef

    return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}


def _pearson(predictions, references, **_: Any) -> dict[str, float]:
    from scipy.stats import pearsonr

    return {"pearson": float(pearsonr(predictions, references)[0])}


def _spearman(predictions, references, **_: Any) -> dict[str, float]:
    from scipy.stats import spearmanr

    return {"spearman": float(spearmanr(predictions, references)[0])}


def _mse(predictions, references, **_: Any) -> dict[str, float]:
    from sklearn.metrics import mean_squared_error

    return {"mse": float(mean_squared_error(references, predictions))}


def _mae(predictions, references, **_: Any) -> dict[str, float]:
    from sklearn.metrics import mean_absolute_error

    return {"mae": float(mean_absolute_error(references, predictions))}


def _seqeval(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]], **_: Any):
    """Entity-level precision/recall/F1 over IOB tag sequences (CoNLL convention), plus token accuracy."""
    from seqeval import metrics as sm

    return {
        "precision": float(sm.precision_score(references, predictions, zero_division=0)),
        "recall": float(sm.recall_score(references, predictions, zero_division=0)),
        "f1": float(sm.f1_score(references, predictions, zero_division=0)),
        "accuracy": float(sm.accuracy_score(references, predictions)),
    }


# SQuAD v1.1 scoring is written here because no installed library owns it: evaluate's `squad` module is a
# script fetched from the Hub. Semantics follow the official v1.1 evaluation script (Rajpurkar et al.
# 2016): lower-case, strip punctuation, the articles a/an/the and extra whitespace; token-overlap F1;
# each prediction scored against its best-matching gold answer.
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _squad(predictions: dict[str, str], references: dict[str, list[str]], **_: Any) -> dict[str, float]:
    """Exact match and F1 as fractions in [0, 1], like every other metric here (so that a task's main
    metric can be averaged with the others); the official script prints the same values x 100."""
    missing = set(references) - set(predictions)
    if missing:
        raise ValueError(f"squad metric: {len(missing)} question(s) have no prediction")
    em = f1 = 0.0
    for qid, golds in references.items():
        pred = predictions[qid]
        em += max(float(normalize_answer(pred) == normalize_answer(g)) for g in golds)
        f1 += max(_token_f1(pred, g) for g in golds)
    n = max(len(references), 1)
    return {"exact_match": em / n, "f1": f1 / n}


METRICS: dict[str, Callable[..., dict[str, float]]] = {
    "accuracy": _accuracy,
    "f1": _prf("f1"),
    "precision": _prf("precision"),
    "recall": _prf("recall"),
    "matthews_correlation": _matthews,
    "pearson": _pearson,
    "spearman": _spearman,
    "mse": _mse,
    "mae": _mae,
    "seqeval": _seqeval,
    "squad": _squad,
}


# Which way each metric key is better. Every key the built-in metrics return is listed, and the
# common `evaluate` ones; the direction of any other key must be declared
# (``tasks.<task>.greater_is_better``) before it can choose a best checkpoint.
LOWER_IS_BETTER = frozenset({"mse", "mae", "rmse", "loss", "wer", "cer", "ter", "perplexity"})
HIGHER_IS_BETTER = frozenset(
    {
        "accuracy",
        "f1",
        "precision",
        "recall",
        "matthews_correlation",
        "pearson",
        "spearman",
        "exact_match",
        "bleu",
        "google_bleu",
        "rouge1",
        "rouge2",
        "rougeL",
        "rougeLsum",
        "meteor",
        "chrf",
        "r_squared",
    }
)


def greater_is_better(key: str) -> bool | None:
    """Whether a higher value of metric `key` is better; None when hfmtl does not know the key.

    Example:
        >>> greater_is_better("accuracy"), greater_is_better("mse"), greater_is_better("my_score")
        (True, False, None)
    """
    if key in LOWER_IS_BETTER:
        return False
    if key in HIGHER_IS_BETTER:
        return True
    return None


def metric_key(name: str) -> str:
    """The key a metric name most likely returns: itself, or for ``evaluate:<name or path>`` the
    module's name (``evaluate:./metrics/mae.py`` -> ``mae``).

    Example:
        >>> metric_key("evaluate:./metrics/mae.py"), metric_key("accuracy")
        ('mae', 'accuracy')
    """
    if not name.startswith("evaluate:"):
        return name
    module = name.removeprefix("evaluate:").rstrip("/").split("/")[-1]
    return module.removesuffix(".py")


def check_metric_name(key: str, name: str) -> None:
    """Raise a ConfigError naming `key` if `name` is neither built in nor an `evaluate:` reference."""
    if name.startswith("evaluate:") and len(name) > len("evaluate:"):
        return
    if name not in METRICS:
        raise ConfigError(
            f"{key}={name!r} is not a metric; choose one of {sorted(METRICS)} or 'evaluate:<name or path>'"
        )


def compute_metric(name: str, predictions: Any, references: Any, **kwargs: Any) -> dict[str, float]:
    """Compute metric `name` and return ``{key: value}`` (a metric may return several keys).

    Args:
        name: a key of `METRICS`, or ``evaluate:<name or local path>`` for any `evaluate` module.
        predictions: in the metric's format (label ids, floats, tag sequences, or {id: answer}).
        references: the same format as `predictions` (for squad: {id: [gold answers]}).
        **kwargs: passed to the metric (e.g. ``average="macro"`` for f1).
    """
    if name.startswith("evaluate:"):
        import evaluate  # imported here: it is slow to import and only this path needs it

        module = evaluate.load(name.removeprefix("evaluate:"))
        result = module.compute(predictions=predictions, references=references, **kwargs)
        return {k: float(v) for k, v in result.items() if isinstance(v, (int, float, np.floating))}
    if name not in METRICS:
        check_metric_name("metric", name)
    return METRICS[name](predictions, references, **kwargs)
