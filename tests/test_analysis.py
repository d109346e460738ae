"""Task-relatedness analysis: LogME and H-score against hand and direct computations, gradient cosines,
the tracker's JSON, heatmaps, TAG's lookahead affinity, transfer matrices, and feature extraction on
real data slices with the tiny random encoder."""

from __future__ import annotations

import contextlib
import json
import struct
from unittest import mock

import numpy as np
import pytest
import torch
import transformers
from conftest import TASK_CONFIGS, make_config, write_config
from scipy.stats import multivariate_normal
from torch import nn

import hfmtl
from hfmtl import cli
from hfmtl.analysis import (
    GradientSimilarityTracker,
    TaskMatrix,
    extract_features,
    fit_logme,
    gradient_cosine_matrix,
    h_score,
    heatmap,
    logme,
    lookahead_affinity,
    rank_source_encoders,
    rank_sources,
    shared_parameters,
    task_gradients,
    transfer_matrix,
)
from hfmtl.errors import ConfigError
from hfmtl.tasks import task_config_from_dict
from hfmtl.tasks.token_classification import IGNORE_INDEX
from hfmtl.training.data import prepare_task_data

MAX_LENGTH = 48
EVAL_SAMPLES = 12


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One intra-op thread: the 2-core machine is shared with other jobs (see test_tasks.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- LogME ----------------------------------------------------------------------------------------


def direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The log evidence by its O(D^3) definition (Bishop 2006, eq. 3.86), no spectrum tricks."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    e_m = beta / 2 * np.sum((y - f @ m) ** 2) + alpha / 2 * m @ m
    return d / 2 * np.log(alpha) + n / 2 * np.log(beta) - e_m - np.linalg.slogdet(a)[1] / 2 - n / 2 * np.log(2 * np.pi)


def marginal_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The same evidence as the density of y ~ N(0, I / beta + F F^T / alpha)."""
    cov = np.eye(len(y)) / beta + f @ f.T / alpha
    return float(multivariate_normal(np.zeros(len(y)), cov).logpdf(y))


def linear_data(n: int, d: int, noise: float, seed: int = 0, rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features (of rank `rank`, default full) and a noisy linear function of them."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, d)) if rank is None else rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d))
    return f, f @ rng.normal(size=d) + noise * rng.normal(size=n)


def test_logme_is_higher_for_features_that_predict_the_labels():
    f, y = linear_data(300, 10, noise=0.1)
    unrelated = np.random.default_rng(1).normal(size=(300, 10))
    assert logme(f, y) > logme(unrelated, y) + 2.0
    # less noise: more evidence
    assert logme(*linear_data(300, 10, noise=0.01)) > logme(f, y)


# N < D at full rank fits any target exactly (the evidence peaks at beta -> infinity): rank 3 keeps a residual
@pytest.mark.parametrize("n, d, rank", [(40, 6, None), (40, 6, 3), (8, 12, 3)], ids=["n>d", "n>d-low-rank", "n<d"])
def test_logme_equals_the_direct_evidence_at_its_stationary_point(n, d, rank):
    f, y = linear_data(n, d, noise=0.3, seed=n, rank=rank)
    result = fit_logme(f, y)
    assert result.converged
    alpha, beta = float(result.alpha[0]), float(result.beta[0])
    evidence = direct_evidence(f, y, alpha, beta)
    assert result.score * n == pytest.approx(evidence, rel=1e-9)
    assert marginal_evidence(f, y, alpha, beta) == pytest.approx(evidence, rel=1e-9)
    # the fixed point satisfies the stationarity equations of the evidence in alpha and beta
    sigma = np.linalg.eigvalsh(f.T @ f)
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    gamma = np.sum(beta * sigma / (alpha + beta * sigma))
    assert alpha == pytest.approx(gamma / (m @ m), rel=1e-7)
    assert beta == pytest.approx((n - gamma) / np.sum((y - f @ m) ** 2), rel=1e-7)
    # ... so its derivatives there vanish and any nearby (alpha, beta) has less evidence
    h = 1e-4
    d_alpha = (direct_evidence(f, y, alpha * np.exp(h), beta) - direct_evidence(f, y, alpha * np.exp(-h), beta)) / 2 / h
    d_beta = (direct_evidence(f, y, alpha, beta * np.exp(h)) - direct_evidence(f, y, alpha, beta * np.exp(-h))) / 2 / h
    assert abs(d_alpha) < 1e-6 and abs(d_beta) < 1e-6
    for da, db in [(1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95), (1.05, 0.95)]:
        assert direct_evidence(f, y, alpha * da, beta * db) < evidence


def test_logme_classification_averages_one_hot_targets():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=150)
    separable = np.eye(3)[labels] * 3 + rng.normal(size=(150, 3))
    random = rng.normal(size=(150, 3))
    result = fit_logme(separable, labels)
    assert result.evidence.shape == (3,)
    one_hot = [logme(separable, (labels == c).astype(np.float64), regression=True) for c in range(3)]
    assert result.score == pytest.approx(np.mean(one_hot), rel=1e-12)
    assert logme(separable, labels) > logme(random, labels) + 0.2
    # an (N, K) target array is used as given: the one-hot matrix gives the same score
    assert logme(separable, np.eye(3)[labels]) == pytest.approx(result.score, rel=1e-12)
    # torch inputs, and class names instead of ids (only the partition matters)
    names = np.array(["neg", "neu", "pos"])[labels]
    assert logme(torch.tensor(separable), torch.tensor(labels)) == pytest.approx(result.score, rel=1e-12)
    assert logme(separable, names, regression=False) == pytest.approx(result.score, rel=1e-12)


def test_logme_invariances():
    f, y = linear_data(80, 5, noise=0.2)
    score = logme(f, y)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(5, 5)))
    perm = np.random.default_rng(3).permutation(80)
    assert logme(f * 37.0, y) == pytest.approx(score, abs=1e-8)  # feature scale
    assert logme(f @ q, y) == pytest.approx(score, abs=1e-8)  # rotation of the features
    assert logme(f[perm], y[perm]) == pytest.approx(score, abs=1e-8)  # order of the examples
    assert logme(f, 10.0 * y) == pytest.approx(score - np.log(10.0), abs=1e-8)  # target scale: -log c
    # duplicated feature columns span the same space: same evidence
    assert logme(np.c_[f, f], y) == pytest.approx(score, abs=1e-6)


def test_logme_of_an_exact_fit_is_finite():
    # noise-free targets: the evidence peaks at beta -> infinity; the residual floor keeps it finite
    f, y = linear_data(100, 4, noise=0.0)
    result = fit_logme(f, y)
    assert result.converged and np.isfinite(result.score) and np.isfinite(result.beta).all()
    assert (
        result.score > logme(*linear_data(100, 4, noise=0.01)) > logme(f, y + np.random.default_rng(5).normal(size=100))
    )


def test_logme_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        logme(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="labels for"):
        logme(np.zeros((5, 2)), np.zeros(4))
    with pytest.raises(ValueError, match="all zeros"):
        logme(np.ones((5, 2)), np.zeros(5))


# --- H-score --------------------------------------------------------------------------------------


def test_h_score_equals_a_hand_computation():
    # 1-D: var(f) = 5, class means 1 and 5 around 3: var(E[f|y]) = 4, H = 4 / 5
    assert h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), np.array([0, 0, 1, 1])) == pytest.approx(0.8)
    # 2-D, diagonal covariance: cov(f) = diag(5, 1), between = diag(4, 0.25) -> H = 4/5 + 0.25/1
    f = np.array([[0.0, 0.0], [2.0, 2.0], [4.0, 0.0], [6.0, 2.0]])
    f[:, 1] = [0.0, 1.0, 2.0, -1.0] - np.mean([0.0, 1.0, 2.0, -1.0])
    labels = np.array([0, 0, 1, 1])
    centred = f - f.mean(axis=0)
    cov = centred.T @ centred / 4
    means = np.array([centred[:2].mean(axis=0), centred[2:].mean(axis=0)])
    between = (means.T @ means) / 2
    assert h_score(f, labels) == pytest.approx(np.trace(np.linalg.inv(cov) @ between))


def test_h_score_separable_beats_random_and_is_linearly_invariant():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=200)
    separable = np.eye(4)[labels] @ rng.normal(size=(4, 6)) * 2 + rng.normal(size=(200, 6))
    random = rng.normal(size=(200, 6))
    score = h_score(separable, labels)
    assert score > 1.0 > 0.2 > h_score(random, labels)
    assert score <= 3.0  # at most C - 1
    mix = rng.normal(size=(6, 6))  # any invertible linear map
    assert h_score(separable @ mix, labels) == pytest.approx(score, rel=1e-8)
    assert h_score(separable, labels, shrinkage=0.0) == pytest.approx(score, rel=1e-8)
    # shrinkage pulls cov(f) towards tr(cov)/D * I; at 1 the score is tr(between) / (tr(cov) / D)
    centred = separable - separable.mean(axis=0)
    means = np.stack([centred[labels == c].mean(axis=0) for c in range(4)])
    between = sum(np.mean(labels == c) * np.outer(means[c], means[c]) for c in range(4))
    full = h_score(separable, labels, shrinkage=1.0)
    assert full == pytest.approx(np.trace(between) / (np.trace(centred.T @ centred / 200) / 6), rel=1e-10)
    assert h_score(random, labels, shrinkage="auto") < 0.2 < h_score(separable, labels, shrinkage="auto")
    with pytest.raises(ValueError, match="shrinkage"):
        h_score(separable, labels, shrinkage=1.5)
    with pytest.raises(ValueError, match="classification"):
        h_score(separable, rng.normal(size=200))


def test_rank_sources_orders_by_score():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=120)
    candidates = {
        "noise": rng.normal(size=(120, 4)),
        "strong": np.c_[y * 2.0 + 0.2 * rng.normal(size=120), rng.normal(size=(120, 3))],
        "weak": np.c_[y * 2.0 + 1.5 * rng.normal(size=120), rng.normal(size=(120, 3))],
    }
    for metric in ("logme", "h_score"):
        ranking = rank_sources(y, candidates, metric=metric)
        assert [name for name, _ in ranking] == ["strong", "weak", "noise"]
        score = logme if metric == "logme" else h_score
        assert ranking[0][1] == pytest.approx(score(candidates["strong"], y))
    with pytest.raises(ConfigError, match="metric"):
        rank_sources(y, candidates, metric="leep")


# --- models for the gradient tests ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder_dir):
    return transformers.AutoTokenizer.from_pretrained(tiny_encoder_dir)


def tiny_model(encoder_dir: str, tasks: dict[str, int]) -> hfmtl.MultiTaskModel:
    """A tiny MultiTaskModel with one classification head per task (num_labels given)."""
    torch.manual_seed(0)
    specs = {name: {"type": "classification", "num_labels": k} for name, k in tasks.items()}
    return hfmtl.MultiTaskModel.from_encoder(encoder_dir, specs)


def random_batch(num_labels: int, seed: int, batch: int = 4, length: int = 12) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, 2000, (batch, length), generator=g),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "labels": torch.randint(0, num_labels, (batch,), generator=g),
    }


def test_gradient_cosine_of_identical_tasks_is_one_and_grads_are_untouched(tiny_encoder_dir):
    model = tiny_model(tiny_encoder_dir, {"a": 2, "b": 2, "c": 3})
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())  # b is a duplicate of a
    model.train()
    params = list(model.parameters())
    sentinel = {id(p): torch.full_like(p, 0.5) for p in params[::2]}  # some .grad set, the others None
    for p in params[::2]:
        p.grad = sentinel[id(p)].clone()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = random_batch(2, seed=0)
    grads = task_gradients(model, {"a": batch, "b": batch, "c": random_batch(3, seed=1)})
    names, cos = gradient_cosine_matrix(grads)
    assert names == ["a", "b", "c"]
    assert np.diag(cos) == pytest.approx(1.0, abs=1e-6)
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert np.allclose(cos, cos.T) and -1 < cos[0, 2] < 1
    assert grads["a"].numel() == sum(p.numel() for p in model.encoder.parameters())
    # nothing changed: .grad fields, parameters, training mode
    for p in params[::2]:
        assert torch.equal(p.grad, sentinel[id(p)])
    assert all(p.grad is None for p in params[1::2])
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert model.training


class ToyEncoder(nn.Module):
    def __init__(self, dim: int = 5):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(dim))


class ToyModel(nn.Module):
    """A shared parameter vector w; `forward(task, t)` returns the task's loss:

    'up' and 'up2' pull w towards +t (the same objective), 'down' pulls it towards -t; 'lin+' and 'lin-'
    are opposite linear losses.
    """

    def __init__(self, dim: int = 5):
        super().__init__()
        self.encoder = ToyEncoder(dim)

    def forward(self, task: str, t: torch.Tensor) -> torch.Tensor:
        w = self.encoder.w
        if task.startswith("lin"):
            return (w * t).sum() * (1 if task == "lin+" else -1)
        return ((w - (-1.0 if task == "down" else 1.0) * t) ** 2).sum()


def toy_loss(model: nn.Module, task_name: str, batch) -> torch.Tensor:
    return model(task_name, **batch)


def test_gradient_cosine_of_opposite_losses_is_minus_one():
    model = ToyModel()
    batch = {"t": torch.arange(1.0, 6.0)}
    grads = task_gradients(model, {"lin+": batch, "lin-": batch}, loss_fn=toy_loss)
    assert gradient_cosine_matrix(grads)[1] == pytest.approx(np.array([[1.0, -1.0], [-1.0, 1.0]]))
    # a zero gradient has cosine 0 with everything
    zero = {"a": torch.zeros(3), "b": torch.ones(3)}
    assert gradient_cosine_matrix(zero)[1].tolist() == [[0.0, 0.0], [0.0, 1.0]]


def test_gradients_under_lora_use_only_the_adapters(tiny_encoder_dir):
    from hfmtl.model.adapters import add_adapters

    model = tiny_model(tiny_encoder_dir, {"a": 2, "b": 2})
    lora = {"peft_type": "LORA", "r": 2, "target_modules": ["query", "value"], "init_lora_weights": False}
    add_adapters(model, lora, mode="shared", base_model=tiny_encoder_dir)
    named = shared_parameters(model)
    assert named and all("lora_" in name for name, _ in named)
    assert not any(name.startswith("heads") for name, _ in named)
    grads = task_gradients(model, {"a": random_batch(2, 0), "b": random_batch(2, 1)})
    assert grads["a"].numel() == sum(p.numel() for _, p in named) < 10_000
    assert grads["a"].abs().sum() > 0 and grads["b"].abs().sum() > 0
    # the lookahead steps the adapters only, through PEFT's wrapper, and leaves them as they were
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    affinity = lookahead_affinity(model, {"a": random_batch(2, 0), "b": random_batch(2, 1)}, learning_rate=1.0)
    assert np.isfinite(affinity.values).all() and affinity.values[0, 0] > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_gradients_of_a_ddp_model_leave_its_reducer_usable(tmp_path):
    """Under DDP the model is unwrapped: no DDP forward, and the training steps around it still work."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(ToyModel())
        batch = {"t": torch.arange(1.0, 6.0)}
        ddp("up", **batch).backward()  # a training step: forward, backward, all-reduce
        # never through DDP's forward, whose buffer broadcast is a collective that would hang a call made on
        # the main process only
        with mock.patch.object(DistributedDataParallel, "forward", side_effect=AssertionError("DDP forward")):
            grads = task_gradients(ddp, {"up": batch, "down": batch}, loss_fn=toy_loss)
        assert gradient_cosine_matrix(grads)[1][0, 1] == pytest.approx(-1.0)
        assert torch.equal(ddp.module.encoder.w.grad, -2 * batch["t"])  # the step's gradient, untouched
        ddp("up", **batch).backward()  # would raise if the reducer had been left mid-reduction
        assert torch.equal(ddp.module.encoder.w.grad, -4 * batch["t"])
    finally:
        dist.destroy_process_group()


def test_tracker_records_and_round_trips_json(tiny_encoder_dir, tmp_path):
    model = tiny_model(tiny_encoder_dir, {"a": 2, "b": 3})
    tracker = GradientSimilarityTracker(["a", "b"])
    first = tracker.record(10, model, {"b": random_batch(3, 1), "a": random_batch(2, 0)})
    second = tracker.record(20, model, {"a": random_batch(2, 2), "b": random_batch(3, 3)})
    assert first.shape == (2, 2) and np.diag(first) == pytest.approx(1.0)
    path = tracker.save(tmp_path / "sub" / "gradient_similarity.json")
    data = json.loads(path.read_text())
    assert data["tasks"] == ["a", "b"] and data["steps"] == [10, 20]
    assert data["num_parameters"] == sum(p.numel() for p in model.encoder.parameters())
    assert np.allclose(data["mean"], (first + second) / 2)
    loaded = GradientSimilarityTracker.load(path)
    assert loaded.steps == [10, 20] and loaded.task_names == ["a", "b"]
    assert np.allclose(loaded.matrices[1], second) and np.allclose(loaded.mean, tracker.mean)
    with pytest.raises(ValueError, match="no batch for task"):
        tracker.record(30, model, {"a": random_batch(2, 0)})


# --- heatmaps ------------------------------------------------------------------------------------


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_heatmap_writes_a_deterministic_png(tmp_path):
    matrix = np.array([[1.0, -0.35, np.nan], [-0.35, 1.0, 0.2], [0.1, 0.2, 1.0]])
    labels = ["rte", "stsb", "ner"]
    first = heatmap(matrix, labels, tmp_path / "a" / "cos.png", title="Gradient cosine", figsize=(4, 3), dpi=50)
    second = heatmap(matrix, labels, tmp_path / "cos2.png", title="Gradient cosine", figsize=(4, 3), dpi=50)
    assert png_size(first) == (200, 150)
    assert first.stat().st_size > 1000
    assert first.read_bytes() == second.read_bytes()
    other = heatmap(matrix * 0.5, labels, tmp_path / "other.png", title="Gradient cosine", figsize=(4, 3), dpi=50)
    assert other.read_bytes() != first.read_bytes()
    rect = heatmap(np.ones((2, 3)), ["x", "y"], tmp_path / "rect.png", col_labels=labels, dpi=40)
    assert png_size(rect) == (int((2.8 + 0.8 * 3) * 40), int((2.0 + 0.8 * 2) * 40))
    with pytest.raises(ValueError, match="labels"):
        heatmap(matrix, ["a", "b"], tmp_path / "bad.png")


# --- affinity and transfer matrices --------------------------------------------------------------


def test_lookahead_affinity_on_a_toy_model_equals_the_closed_form():
    model = ToyModel()
    t = torch.arange(1.0, 6.0)
    lr = 0.1
    result = lookahead_affinity(
        model, {"up": {"t": t}, "up2": {"t": t}, "down": {"t": t}}, learning_rate=lr, loss_fn=toy_loss
    )
    # from w = 0 a step on 'up' moves w to 2 lr t: ||w - t||^2 shrinks by (1 - 2 lr)^2, ||w + t||^2 grows
    helps, hurts = 1 - (1 - 2 * lr) ** 2, 1 - (1 + 2 * lr) ** 2
    expected = np.array([[helps, helps, hurts], [helps, helps, hurts], [hurts, hurts, helps]])
    assert result.values == pytest.approx(expected, rel=1e-6)
    assert result.values[0, 1] > 0 > result.values[0, 2]
    assert torch.equal(model.encoder.w, torch.zeros(5)) and model.encoder.w.grad is None


def test_lookahead_affinity_on_the_model_leaves_it_unchanged(tiny_encoder_dir):
    model = tiny_model(tiny_encoder_dir, {"a": 2, "b": 2, "c": 3})
    model.heads["b"].load_state_dict(model.heads["a"].state_dict())
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch_a = random_batch(2, 0)
    groups = [
        {"a": batch_a, "b": batch_a, "c": random_batch(3, 1)},
        {"a": batch_a, "b": batch_a, "c": random_batch(3, 2)},
    ]
    result = lookahead_affinity(model, groups, learning_rate=0.5)
    assert result.values.shape == (3, 3) and len(result.info["per_group"]) == 2
    # b duplicates a: stepping on either affects every task alike, and each helps itself
    assert result.values[0] == pytest.approx(result.values[1], rel=1e-5)
    assert result.values[0, 0] > 0
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters()) and model.training


def test_transfer_matrix_gains_and_json_round_trip(tmp_path):
    pairs = {("mnli", "rte"): 0.70, ("mnli", "stsb"): 0.80, ("sst2", "rte"): 0.55}
    alone = {"rte": 0.60, "stsb": 0.85}
    m = transfer_matrix(pairs, alone)
    assert m.sources == ["mnli", "sst2"] and m.targets == ["rte", "stsb"]
    assert m.values[0] == pytest.approx([0.10, -0.05])
    assert m.values[1, 0] == pytest.approx(-0.05) and np.isnan(m.values[1, 1])
    nested = transfer_matrix({"mnli": {"rte": 0.70, "stsb": 0.80}, "sst2": {"rte": 0.55}}, alone, relative=True)
    assert nested.values[0, 0] == pytest.approx(0.10 / 0.60)
    losses = transfer_matrix({("mnli", "rte"): 0.4}, {"rte": 0.5}, higher_is_better=False)
    assert losses.values[0, 0] == pytest.approx(0.1)
    path = m.save(tmp_path / "transfer.json")
    assert json.loads(path.read_text())["values"][1][1] is None
    loaded = TaskMatrix.load(path)
    assert loaded.sources == m.sources and np.allclose(loaded.values, m.values, equal_nan=True)
    assert loaded.info["alone_scores"] == alone
    with pytest.raises(ValueError, match="no alone score"):
        transfer_matrix(pairs, {"rte": 0.6})


# --- feature extraction on real slices -----------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(tokenizer):
    cache = {}

    def get(task_name: str):
        if task_name not in cache:
            config = {**TASK_CONFIGS[task_name], "max_eval_samples": EVAL_SAMPLES}
            task = hfmtl.build_task(task_name, task_config_from_dict(task_name, config))
            data = prepare_task_data(task, tokenizer, MAX_LENGTH, contextlib.nullcontext, train=False)
            cache[task_name] = task, data.eval_features
        return cache[task_name]

    return get


@pytest.fixture(scope="module")
def encoder(tiny_encoder_dir):
    return transformers.AutoModel.from_pretrained(tiny_encoder_dir, add_pooling_layer=False)


def test_extract_features_of_sequence_tasks(prepared, encoder, tokenizer):
    for task_name, regression in [("rte", False), ("stsb", True)]:
        task, dataset = prepared(task_name)
        out = extract_features(encoder, task, dataset, tokenizer, batch_size=5)
        assert out.features.shape == (EVAL_SAMPLES, 64) and out.unit == "example"
        assert out.regression is regression
        assert np.allclose(out.labels, dataset["labels"])
        assert np.isfinite(logme(out.features, out.labels, regression=out.regression))
    # 'cls' pooling is the first token's hidden state; 'mean' differs; batch size changes nothing
    task, dataset = prepared("rte")
    first = dataset[0]
    with torch.no_grad():
        hidden = encoder(
            input_ids=torch.tensor([first["input_ids"]]), token_type_ids=torch.tensor([first["token_type_ids"]])
        ).last_hidden_state
    cls = extract_features(encoder, task, dataset, tokenizer, batch_size=EVAL_SAMPLES, pooling="cls")
    mean = extract_features(encoder, task, dataset, tokenizer, pooling="mean", max_examples=3)
    assert np.allclose(cls.features[0], hidden[0, 0].numpy(), atol=1e-5)
    assert np.allclose(mean.features[0], hidden[0].mean(dim=0).numpy(), atol=1e-5)
    assert mean.features.shape == (3, 64)
    assert np.isfinite(h_score(cls.features, cls.labels))


def test_extract_features_of_tokens_and_choices(prepared, encoder, tokenizer):
    task, dataset = prepared("ner")
    out = extract_features(encoder, task, dataset, tokenizer, batch_size=5)
    gold = [tag for row in dataset["labels"] for tag in row if tag != IGNORE_INDEX]
    assert out.unit == "token" and out.features.shape == (len(gold), 64)
    assert out.labels.tolist() == gold
    # the first scored token of the first sentence is its first word's first sub-token
    first = dataset[0]
    position = next(i for i, tag in enumerate(first["labels"]) if tag != IGNORE_INDEX)
    with torch.no_grad():
        hidden = encoder(input_ids=torch.tensor([first["input_ids"]])).last_hidden_state
    assert np.allclose(out.features[0], hidden[0, position].numpy(), atol=1e-5)

    task, dataset = prepared("copa")
    out = extract_features(encoder, task, dataset, tokenizer)
    assert out.unit == "choice" and out.features.shape == (2 * EVAL_SAMPLES, 64)
    assert out.labels.reshape(EVAL_SAMPLES, 2).argmax(axis=1).tolist() == dataset["labels"]

    squad = hfmtl.build_task("squad", task_config_from_dict("squad", TASK_CONFIGS["squad"]))
    with pytest.raises(ConfigError, match="question answering"):
        extract_features(encoder, squad, None, tokenizer)


def test_extract_features_from_a_multitask_model_and_ranking_encoders(prepared, encoder, tokenizer, tiny_encoder_dir):
    task, dataset = prepared("rte")
    model = hfmtl.MultiTaskModel.from_encoder(tiny_encoder_dir, {"rte": task.head_spec()}, pooling="mean")
    model.train()
    from_model = extract_features(model, task, dataset, tokenizer)  # the model's pooling: mean
    from_encoder = extract_features(encoder, task, dataset, tokenizer, pooling="mean")
    assert np.allclose(from_model.features, from_encoder.features, atol=1e-5)
    assert model.training  # mode restored
    other = transformers.AutoModel.from_config(encoder.config, add_pooling_layer=False)
    ranking = rank_source_encoders(
        {"path": tiny_encoder_dir, "module": encoder, "other": other}, task, dataset, tokenizer, pooling="mean"
    )
    scores = dict(ranking)
    assert scores["path"] == pytest.approx(scores["module"], abs=1e-6)  # the same weights, loaded from disk
    assert [s for _, s in ranking] == sorted(scores.values(), reverse=True)


# --- `hfmtl analyze` end to end ------------------------------------------------------------------------


def test_hfmtl_analyze_writes_scores_matrices_and_heatmaps(tiny_encoder_dir, tmp_path, capsys):
    tasks = {"rte": TASK_CONFIGS["rte"], "stsb": TASK_CONFIGS["stsb"], "ner": TASK_CONFIGS["ner"]}
    cfg = write_config(tmp_path / "run.yaml", make_config(tiny_encoder_dir, tmp_path / "unused", tasks))
    out = tmp_path / "analysis"
    argv = ["analyze", str(cfg), "--output", str(out), "--batches", "2", "--max-examples", "32"]
    argv += ["--target", "rte", "--sources", f"pretrained={tiny_encoder_dir}"]
    assert cli.main(argv) == 0

    result = json.loads((out / "analysis.json").read_text())
    assert result["tasks"] == ["rte", "stsb", "ner"]
    assert set(result["transferability"]) == {"rte", "stsb", "ner"}
    assert "h_score" in result["transferability"]["rte"] and "h_score" not in result["transferability"]["stsb"]
    cosine = np.array(result["gradient_cosine"]["mean"])
    assert cosine.shape == (3, 3) and np.allclose(np.diag(cosine), 1.0) and np.allclose(cosine, cosine.T)
    assert result["gradient_cosine"]["steps"] == [0, 1]
    assert np.array(result["lookahead_affinity"]["values"]).shape == (3, 3)
    assert list(result["source_ranking"]["logme"]) == ["pretrained"]
    for png in ("gradient_cosine.png", "lookahead_affinity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "sources for rte by LogME" in capsys.readouterr().out


def test_hfmtl_analyze_bad_target_is_one_line(tiny_encoder_dir, tmp_path, capsys):
    cfg = write_config(
        tmp_path / "run.yaml", make_config(tiny_encoder_dir, tmp_path / "x", {"rte": TASK_CONFIGS["rte"]})
    )
    assert cli.main(["analyze", str(cfg), "--output", str(tmp_path / "a"), "--target", "mnli"]) == 2
    assert capsys.readouterr().err.strip() == "error: --target 'mnli' is not a task of the config; tasks are ['rte']"
