"""Ranking candidate source tasks (or encoders) for a target task by transferability, without training.

`rank_sources` scores the target's labels on each candidate's features (LogME or H-score, from
hfmtl/analysis/transferability.py); `rank_source_encoders` first extracts those features from each
candidate encoder (hfmtl/analysis/features.py). `rank_sources`' docstring has a worked example.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..model.transfer import load_source
from ..tasks import Task
from .features import extract_features
from .transferability import ArrayLike, h_score, logme, to_numpy

__all__ = ["rank_source_encoders", "rank_sources"]


def _score(features: np.ndarray, labels: np.ndarray, metric: str, regression: bool | None) -> float:
    if metric == "logme":
        return logme(features, labels, regression=regression)
    if metric == "h_score":
        if regression:
            raise ConfigError("metric='h_score' is for classification targets; use metric='logme' for regression")
        return h_score(features, labels)
    raise ConfigError(f"metric={metric!r} is not one of 'logme', 'h_score'")


def rank_sources(
    target_labels: ArrayLike,
    source_features: Mapping[str, ArrayLike],
    *,
    metric: str = "logme",
    regression: bool | None = None,
) -> list[tuple[str, float]]:
    """Rank candidate sources for a target by the transferability of their features to the target.

    The protocol: for each candidate source task, ``source_features[source]`` holds the features of the
    TARGET's examples (same rows, same order as `target_labels`) computed by the encoder after training
    on that source (e.g. the checkpoint of a source stage), frozen; the score is LogME (or H-score) of the
    target's labels on them. It estimates, without training on the target, how well a linear read-out of
    that encoder fits the target, which LogME's paper shows correlates with the score after fine-tuning.
    Include the untrained (pretrained) encoder as a candidate: a source that scores below it is predicted
    not to help the target. Scores compare candidates for one target only.

    Args:
        target_labels: the target's labels, aligned with every feature matrix.
        source_features: source name -> (N, D) features of the target's examples under that source.
        metric: 'logme' or 'h_score' (classification only).
        regression: as in `logme`.

    Returns:
        (source, score) pairs, best first.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, size=100)
        >>> useful = np.c_[y + 0.1 * rng.normal(size=100), rng.normal(size=100)]
        >>> [name for name, _ in rank_sources(y, {"noise": rng.normal(size=(100, 2)), "useful": useful})]
        ['useful', 'noise']
    """
    labels = to_numpy(target_labels)
    scores = [(name, _score(to_numpy(f), labels, metric, regression)) for name, f in source_features.items()]
    return sorted(scores, key=lambda item: -item[1])


def rank_source_encoders(
    encoders: Mapping[str, nn.Module | str | Path],
    target_task: Task,
    target_dataset: Any,
    tokenizer: Any,
    *,
    metric: str = "logme",
    **extract_kwargs: Any,
) -> list[tuple[str, float]]:
    """`rank_sources` on encoders: extract the target's features with each, then score and rank.

    Args:
        encoders: source name -> a model (a `MultiTaskModel` or a bare encoder) or the path / Hub id of a
            saved one (an hfmtl model directory, e.g. a source stage's output, or any HF encoder; loaded
            one at a time with `hfmtl.model.transfer.load_source` and released, so only one is in memory). A
            path gives a bare encoder, pooled as 'auto' (hfmtl/model/pooling.py) unless ``pooling`` says otherwise: pass the
            pooling the models were trained with.
        target_task: the target task, set up.
        target_dataset: the target's tokenized features with labels (e.g. its eval features).
        tokenizer: their tokenizer.
        metric: 'logme' or 'h_score'.
        **extract_kwargs: passed to `extract_features` (pooling, batch_size, max_examples, device).

    Returns:
        (source, score) pairs, best first.

    Example:
        >>> ranking = rank_source_encoders(                                              # doctest: +SKIP
        ...     {"pretrained": "../shared/models/all-MiniLM-L6-v2", "mnli": "outputs/mnli", "sst2": "outputs/sst2"},
        ...     rte_task, rte_data.eval_features, tokenizer)
        >>> [source for source, _ in ranking]  # best first; below "pretrained": predicted not to help  # doctest: +SKIP
    """
    features, labels, regression = {}, None, None
    for name, encoder in encoders.items():
        if isinstance(encoder, (str, Path)):
            encoder = load_source(str(encoder), key=f"sources.{name}").encoder
        extracted = extract_features(encoder, target_task, target_dataset, tokenizer, **extract_kwargs)
        features[name], labels, regression = extracted.features, extracted.labels, extracted.regression
        del encoder
    if labels is None:
        raise ConfigError("no candidate encoders to rank")
    return rank_sources(labels, features, metric=metric, regression=regression)
