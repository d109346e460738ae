"""Tests of `hfmtl.tasks.metrics`: every built-in metric against a value worked out by hand in the test.

The expected numbers come from counts and formulas written out below, never from the library that the
metric itself calls (scikit-learn, SciPy, seqeval).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hfmtl.errors import ConfigError
from hfmtl.tasks.metrics import (
    METRICS,
    check_metric_name,
    compute_metric,
    greater_is_better,
    metric_key,
    normalize_answer,
)

BUILT_IN = {
    "accuracy",
    "f1",
    "precision",
    "recall",
    "matthews_correlation",
    "pearson",
    "spearman",
    "mse",
    "mae",
    "seqeval",
    "squad",
}


def test_every_built_in_metric_is_covered_here() -> None:
    # a metric added to METRICS must get its hand-computed test in this file
    assert set(METRICS) == BUILT_IN


# ------------------------------------------------------------------------------------------------
# Classification: one binary example whose confusion matrix is counted by hand
#
#   index        0  1  2  3  4  5  6  7
#   reference    1  0  0  1  1  0  1  1
#   prediction   1  1  0  1  0  0  1  0
#                TP FP TN TP FN TN TP FN   ->  TP=3, FP=1, FN=2, TN=2

BIN_REFS = [1, 0, 0, 1, 1, 0, 1, 1]
BIN_PREDS = [1, 1, 0, 1, 0, 0, 1, 0]
TP, FP, FN, TN = 3, 1, 2, 2


def test_hand_counts_of_the_binary_example() -> None:
    refs, preds = np.array(BIN_REFS), np.array(BIN_PREDS)
    assert (((preds == 1) & (refs == 1)).sum(), ((preds == 1) & (refs == 0)).sum()) == (TP, FP)
    assert (((preds == 0) & (refs == 1)).sum(), ((preds == 0) & (refs == 0)).sum()) == (FN, TN)


def test_accuracy() -> None:
    assert compute_metric("accuracy", BIN_PREDS, BIN_REFS) == {"accuracy": (TP + TN) / 8}  # 5/8
    assert compute_metric("accuracy", [2, 0, 1], [2, 1, 1]) == pytest.approx({"accuracy": 2 / 3})


def test_binary_precision_recall_f1_of_class_1_by_default() -> None:
    precision = TP / (TP + FP)  # 3/4
    recall = TP / (TP + FN)  # 3/5
    f1 = 2 * precision * recall / (precision + recall)  # = 2TP / (2TP + FP + FN) = 6/9
    assert f1 == pytest.approx(6 / 9)

    assert compute_metric("precision", BIN_PREDS, BIN_REFS) == pytest.approx({"precision": 0.75})
    assert compute_metric("recall", BIN_PREDS, BIN_REFS) == pytest.approx({"recall": 0.6})
    assert compute_metric("f1", BIN_PREDS, BIN_REFS) == pytest.approx({"f1": f1})


def test_macro_f1_on_two_classes_only_when_asked() -> None:
    f1_class1 = 2 * TP / (2 * TP + FP + FN)  # 6/9
    # class 0 as the positive class: its TP are the TN above, FP and FN swap
    f1_class0 = 2 * TN / (2 * TN + FN + FP)  # 4/7
    macro = (f1_class1 + f1_class0) / 2  # 0.619...
    assert compute_metric("f1", BIN_PREDS, BIN_REFS, average="macro") == pytest.approx({"f1": macro})
    assert compute_metric("f1", BIN_PREDS, BIN_REFS)["f1"] == pytest.approx(f1_class1)
    assert macro != pytest.approx(f1_class1)


def test_matthews_correlation_from_the_2x2_confusion_matrix() -> None:
    mcc = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))  # 4 / sqrt(240)
    assert mcc == pytest.approx(0.2581988897)
    assert compute_metric("matthews_correlation", BIN_PREDS, BIN_REFS) == pytest.approx({"matthews_correlation": mcc})
    # perfect and perfectly inverted predictions
    assert compute_metric("matthews_correlation", BIN_REFS, BIN_REFS)["matthews_correlation"] == pytest.approx(1.0)
    inverted = [1 - r for r in BIN_REFS]
    assert compute_metric("matthews_correlation", inverted, BIN_REFS)["matthews_correlation"] == pytest.approx(-1.0)


# Three classes: the default is macro over classes.
#
#   index        0  1  2  3  4  5  6
#   reference    0  1  1  2  2  0  2
#   prediction   0  1  2  2  1  0  0
#
#   class 0: TP 2 (0, 5)  FP 1 (6)  FN 0          P 2/3  R 1    F1 4/5
#   class 1: TP 1 (1)     FP 1 (4)  FN 1 (2)      P 1/2  R 1/2  F1 1/2
#   class 2: TP 1 (3)     FP 1 (2)  FN 2 (4, 6)   P 1/2  R 1/3  F1 2/5

MC_REFS = [0, 1, 1, 2, 2, 0, 2]
MC_PREDS = [0, 1, 2, 2, 1, 0, 0]


def test_multiclass_defaults_to_macro() -> None:
    assert compute_metric("f1", MC_PREDS, MC_REFS) == pytest.approx({"f1": (4 / 5 + 1 / 2 + 2 / 5) / 3})
    assert compute_metric("precision", MC_PREDS, MC_REFS) == pytest.approx({"precision": (2 / 3 + 1 / 2 + 1 / 2) / 3})
    assert compute_metric("recall", MC_PREDS, MC_REFS) == pytest.approx({"recall": (1 + 1 / 2 + 1 / 3) / 3})
    # micro F1 over single-label classes is the accuracy: TP 2 + 1 + 1 = 4 of 7 right
    assert compute_metric("f1", MC_PREDS, MC_REFS, average="micro") == pytest.approx({"f1": 4 / 7})
    assert compute_metric("accuracy", MC_PREDS, MC_REFS) == pytest.approx({"accuracy": 4 / 7})


def test_f1_when_a_prediction_has_a_class_absent_from_the_references() -> None:
    #   reference 0 1 0 0 / prediction 0 2 1 0
    #   class 0: TP 2 FP 0 FN 1 -> F1 4/5; class 1: TP 0 -> 0; class 2: TP 0 -> 0; macro (4/5)/3
    assert compute_metric("f1", [0, 2, 1, 0], [0, 1, 0, 0]) == pytest.approx({"f1": (4 / 5) / 3})


# Multi-label: 2-D indicator arrays, micro-averaged over every (example, label) cell.
#
#   reference  [1 0 1]  [0 1 0]  [1 1 0]
#   prediction [1 0 0]  [0 1 1]  [1 0 0]
#   TP: (0,0) (1,1) (2,0) = 3   FP: (1,2) = 1   FN: (0,2) (2,1) = 2

ML_REFS = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
ML_PREDS = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])


def test_multilabel_defaults_to_micro() -> None:
    assert compute_metric("precision", ML_PREDS, ML_REFS) == pytest.approx({"precision": 3 / 4})
    assert compute_metric("recall", ML_PREDS, ML_REFS) == pytest.approx({"recall": 3 / 5})
    assert compute_metric("f1", ML_PREDS, ML_REFS) == pytest.approx({"f1": 2 * 3 / (2 * 3 + 1 + 2)})
    # per label F1: label 0 -> 1, label 1 -> 2/3 (TP 1, FN 1), label 2 -> 0; macro differs from micro
    assert compute_metric("f1", ML_PREDS, ML_REFS, average="macro") == pytest.approx({"f1": (1 + 2 / 3 + 0) / 3})


# ------------------------------------------------------------------------------------------------
# Regression


def _pearson_by_formula(x, y) -> float:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / np.sqrt((dx**2).sum() * (dy**2).sum()))


def test_pearson() -> None:
    # deviations from the mean 3: x -> [-2 -1 0 1 2], y -> [-1 -2 1 0 2]; sum of products 8, sums of squares 10
    assert compute_metric("pearson", [1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx({"pearson": 8 / 10})

    preds = [0.5, 2.25, 1.0, 3.75, 4.0, 2.0]
    refs = [0.0, 2.0, 1.5, 4.0, 5.0, 1.0]
    assert compute_metric("pearson", preds, refs) == pytest.approx({"pearson": _pearson_by_formula(preds, refs)})
    # invariant to an affine map of the predictions, and negated by a flip
    assert compute_metric("pearson", [3 * p + 1 for p in preds], refs)["pearson"] == pytest.approx(
        _pearson_by_formula(preds, refs)
    )
    assert compute_metric("pearson", [-p for p in preds], refs)["pearson"] == pytest.approx(
        -_pearson_by_formula(preds, refs)
    )


def test_spearman_is_pearson_of_ranks_with_ties_averaged() -> None:
    preds = [0.1, 0.4, 0.35, 0.8, 0.8]
    refs = [1.0, 2.0, 3.0, 4.0, 5.0]
    pred_ranks = [1, 3, 2, 4.5, 4.5]  # the two 0.8 share ranks 4 and 5
    ref_ranks = [1, 2, 3, 4, 5]
    # deviations: [-2 0 -1 1.5 1.5] and [-2 -1 0 1 2]: sum of products 8.5, sums of squares 9.5 and 10
    expected = 8.5 / math.sqrt(9.5 * 10)
    assert _pearson_by_formula(pred_ranks, ref_ranks) == pytest.approx(expected)
    assert compute_metric("spearman", preds, refs) == pytest.approx({"spearman": expected})
    # Pearson on the raw values is another number
    assert compute_metric("pearson", preds, refs)["pearson"] != pytest.approx(expected)
    # any monotone map of the predictions keeps Spearman
    assert compute_metric("spearman", [p**3 for p in preds], refs)["spearman"] == pytest.approx(expected)


def test_mse() -> None:
    # squared errors 0.25, 0.25, 0 -> mean 1/6
    assert compute_metric("mse", [1.0, 2.5, 4.0], [1.5, 2.0, 4.0]) == pytest.approx({"mse": 1 / 6})
    assert compute_metric("mse", [1.0, 2.0], [1.0, 2.0]) == {"mse": 0.0}


def test_mae() -> None:
    # absolute errors 0.5, 0.5, 0 -> mean 1/3
    assert compute_metric("mae", [1.0, 2.5, 4.0], [1.5, 2.0, 4.0]) == pytest.approx({"mae": 1 / 3})


SAMPLE_INPUTS = {
    "accuracy": ([1, 0], [1, 1]),
    "f1": ([1, 0], [1, 1]),
    "precision": ([1, 0], [1, 1]),
    "recall": ([1, 0], [1, 1]),
    "matthews_correlation": ([1, 0, 1], [1, 0, 0]),
    "pearson": ([1.0, 2.0, 3.5], [1.0, 2.5, 3.0]),
    "spearman": ([1.0, 2.0, 3.5], [1.0, 2.5, 3.0]),
    "mse": ([1.0], [2.0]),
    "mae": ([1.0], [2.0]),
    "seqeval": ([["B-PER", "O"]], [["B-PER", "O"]]),
    "squad": ({"q": "Paris"}, {"q": ["Paris"]}),
}
LOWER_IS_BETTER_KEYS = {"mse", "mae"}


@pytest.mark.parametrize("name", sorted(BUILT_IN))
def test_every_key_of_every_built_in_metric_knows_its_direction(name: str) -> None:
    # best-checkpoint choice and eval/mean read the direction of each key a metric returns
    keys = compute_metric(name, *SAMPLE_INPUTS[name])
    assert {key: greater_is_better(key) for key in keys} == {key: key not in LOWER_IS_BETTER_KEYS for key in keys}


def test_an_unknown_key_has_no_direction_and_evaluate_names_give_their_module_key() -> None:
    assert greater_is_better("my_score") is None
    assert greater_is_better("loss") is False
    assert metric_key("evaluate:./metrics/my_score.py") == "my_score"
    assert metric_key("evaluate:mae") == "mae"


# ------------------------------------------------------------------------------------------------
# Token classification: entity-level seqeval
#
#   sentence 1  ref  B-PER I-PER O B-LOC O        gold: PER[0:2] LOC[3]
#               pred B-PER I-PER O B-ORG B-MISC   pred: PER[0:2] ORG[3] MISC[4]
#   sentence 2  ref  B-ORG I-ORG I-ORG O B-MISC   gold: ORG[0:3] MISC[4]
#               pred B-ORG I-ORG O     O B-MISC   pred: ORG[0:2] MISC[4]
#
#   An entity counts only if its type AND span match: PER[0:2] (s1) and MISC[4] (s2). ORG[3] has the
#   right span but the wrong type; ORG[0:2] the right type but a short span; MISC[4] (s1) is spurious.
#   -> correct 2, predicted 5, gold 4. Token accuracy: s1 has 2 wrong tokens (3, 4), s2 has 1 (2): 7/10.

SEQ_REFS = [["B-PER", "I-PER", "O", "B-LOC", "O"], ["B-ORG", "I-ORG", "I-ORG", "O", "B-MISC"]]
SEQ_PREDS = [["B-PER", "I-PER", "O", "B-ORG", "B-MISC"], ["B-ORG", "I-ORG", "O", "O", "B-MISC"]]


def test_seqeval_entity_level_precision_recall_f1() -> None:
    correct, predicted, gold = 2, 5, 4
    precision, recall = correct / predicted, correct / gold  # 0.4, 0.5
    f1 = 2 * precision * recall / (precision + recall)  # 4/9
    wrong_tokens, tokens = 2 + 1, 10
    result = compute_metric("seqeval", SEQ_PREDS, SEQ_REFS)
    assert result == pytest.approx(
        {"precision": precision, "recall": recall, "f1": f1, "accuracy": (tokens - wrong_tokens) / tokens}
    )


def test_seqeval_perfect_and_empty_predictions() -> None:
    assert compute_metric("seqeval", SEQ_REFS, SEQ_REFS) == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
    )
    no_entities = [["O"] * len(s) for s in SEQ_REFS]
    # nothing predicted: precision 0/0 -> 0 (zero_division=0), recall 0/4; 3 of 10 tokens are O in the refs
    assert compute_metric("seqeval", no_entities, SEQ_REFS) == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "accuracy": 3 / 10}
    )


# ------------------------------------------------------------------------------------------------
# Question answering: SQuAD v1.1


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The  Quick, brown FOX!", "quick brown fox"),
        ("an apple a day", "apple day"),
        ("Theater of the Absurd", "theater of absurd"),  # only whole-word articles go
        ("Rock 'n' Roll", "rock n roll"),
        ("  1,000.5 km ", "10005 km"),
        ("The", ""),
    ],
)
def test_normalize_answer(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_squad_exact_match_and_f1_as_fractions_best_gold_answer() -> None:
    references = {
        "q1": ["Denver Broncos", "The Denver Broncos!"],
        "q2": ["Santa Clara, California", "Levi's Stadium"],
        "q3": ["1990"],
    }
    predictions = {"q1": "denver broncos", "q2": "Levi's Stadium in Santa Clara", "q3": "in 1990s", "extra": "x"}
    # q1: normalises to a gold answer -> EM 1, F1 1.
    # q2: 'levis stadium in santa clara' (5 tokens)
    #     vs 'santa clara california' (3): overlap 2 -> P 2/5, R 2/3 -> F1 1/2
    #     vs 'levis stadium' (2):          overlap 2 -> P 2/5, R 1   -> F1 4/7   (the max counts) ; EM 0
    # q3: 'in 1990s' vs '1990': no common token -> F1 0, EM 0
    f1_q2 = max(2 * (2 / 5) * (2 / 3) / (2 / 5 + 2 / 3), 2 * (2 / 5) * 1 / (2 / 5 + 1))
    assert f1_q2 == pytest.approx(4 / 7)
    result = compute_metric("squad", predictions, references)
    assert result == pytest.approx({"exact_match": 1 / 3, "f1": (1 + 4 / 7 + 0) / 3})


def test_squad_counts_repeated_tokens_once_per_match() -> None:
    # 'paris paris' vs 'paris': overlap min(2, 1) = 1 -> P 1/2, R 1 -> F1 2/3
    assert compute_metric("squad", {"q": "Paris Paris"}, {"q": ["Paris"]}) == pytest.approx(
        {"exact_match": 0.0, "f1": 2 / 3}
    )


def test_squad_question_without_prediction_is_an_error() -> None:
    with pytest.raises(ValueError, match="1 question"):
        compute_metric("squad", {"q1": "a"}, {"q1": ["a"], "q2": ["b"]})


# ------------------------------------------------------------------------------------------------
# Names


def test_unknown_metric_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        compute_metric("acuracy", [1], [1])
    message = str(info.value)
    assert "'acuracy' is not a metric" in message
    assert "'accuracy'" in message and "'evaluate:<name or path>'" in message


def test_check_metric_name() -> None:
    for name in (*BUILT_IN, "evaluate:foo", "evaluate:./metrics/my_metric"):
        check_metric_name("tasks.rte.metrics[0]", name)  # no error
    for bad in ("evaluate:", "foo", "Accuracy"):
        with pytest.raises(ConfigError, match=rf"^tasks\.rte\.metrics\[0\]='{bad}' is not a metric"):
            check_metric_name("tasks.rte.metrics[0]", bad)
