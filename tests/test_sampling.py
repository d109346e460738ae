"""Tests of the task sampler (`hfmtl.training.sampling`) and the per-task example order (`hfmtl.training.data.EpochSampler`).

Probabilities are checked against their closed forms, draws against those probabilities, and both
samplers for the determinism that keeps every process on the same task and order.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import DATA

from hfmtl.errors import ConfigError
from hfmtl.training.data import EpochSampler, feature_lengths
from hfmtl.training.sampling import TaskSampler, steps_per_epoch

SIZES = {"a": 1000, "b": 300, "c": 50}


def _draw(sampler: TaskSampler, n: int) -> list[str]:
    return [sampler.next_task() for _ in range(n)]


# ------------------------------------------------------------------------------------------------
# TaskSampler: probabilities in closed form


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # p ∝ n
        ({"strategy": "proportional"}, {"a": 1000 / 1350, "b": 300 / 1350, "c": 50 / 1350}),
        # p ∝ min(n, K)
        ({"strategy": "proportional", "max_examples": 400}, {"a": 400 / 750, "b": 300 / 750, "c": 50 / 750}),
        # p ∝ n^(1/T)
        (
            {"strategy": "temperature", "temperature": 2.0},
            {
                t: n**0.5 / (1000**0.5 + 300**0.5 + 50**0.5)
                for t, n in SIZES.items()  # sqrt: 31.62, 17.32, 7.07
            },
        ),
        # p ∝ min(n, K)^(1/T)
        (
            {"strategy": "temperature", "temperature": 3.0, "max_examples": 400},
            {t: min(n, 400) ** (1 / 3) / (400 ** (1 / 3) + 300 ** (1 / 3) + 50 ** (1 / 3)) for t, n in SIZES.items()},
        ),
        # T = 1 is proportional
        ({"strategy": "temperature", "temperature": 1.0}, {"a": 1000 / 1350, "b": 300 / 1350, "c": 50 / 1350}),
        ({"strategy": "uniform"}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
        ({"strategy": "round_robin"}, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}),
        # weights normalised; a task without a weight gets 0
        ({"strategy": "weights", "weights": {"a": 1.0, "b": 3.0}}, {"a": 0.25, "b": 0.75, "c": 0.0}),
        ({"strategy": "weights", "weights": {"a": 2, "b": 2, "c": 4}}, {"a": 0.25, "b": 0.25, "c": 0.5}),
    ],
)
def test_probabilities_match_the_closed_form(kwargs: dict, expected: dict[str, float]) -> None:
    probs = TaskSampler(SIZES, seed=0, **kwargs).probabilities()
    assert list(probs) == ["a", "b", "c"]
    assert probs == pytest.approx(expected, abs=1e-12)
    assert sum(probs.values()) == pytest.approx(1.0)


def test_temperature_flattens_the_distribution() -> None:
    p_c = [TaskSampler(SIZES, "temperature", temperature=t).probabilities()["c"] for t in (1.0, 2.0, 5.0, 100.0)]
    assert p_c == sorted(p_c)  # the smallest task gains as T grows
    assert p_c[0] == pytest.approx(50 / 1350) and p_c[-1] == pytest.approx(1 / 3, abs=0.01)


def test_all_zero_weights_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="every task has weight 0 under strategy 'weights'"):
        TaskSampler(SIZES, "weights", weights={"a": 0.0})


def test_bad_strategy_and_no_tasks_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="sampling.strategy='annealed' is not allowed"):
        TaskSampler(SIZES, "annealed")
    with pytest.raises(ConfigError, match="at least one task"):
        TaskSampler({})


# ------------------------------------------------------------------------------------------------
# TaskSampler: draws


@pytest.mark.parametrize(
    "kwargs",
    [
        {"strategy": "proportional"},
        {"strategy": "temperature", "temperature": 2.0},
        {"strategy": "uniform"},
        {"strategy": "weights", "weights": {"a": 1.0, "b": 3.0}},
    ],
    ids=["proportional", "temperature", "uniform", "weights"],
)
def test_empirical_frequencies_match_the_probabilities(kwargs: dict) -> None:
    n = 20_000
    sampler = TaskSampler(SIZES, seed=123, **kwargs)
    counts = Counter(_draw(sampler, n))
    # the standard error of a frequency is sqrt(p(1-p)/n) <= 0.0036: 0.015 is > 4 standard errors
    for task, p in sampler.probabilities().items():
        assert counts[task] / n == pytest.approx(p, abs=0.015), task
    if kwargs["strategy"] == "weights":
        assert counts["c"] == 0  # weight 0: never drawn
    assert sampler.step == n


def test_round_robin_takes_tasks_in_config_order() -> None:
    sampler = TaskSampler({"b": 10, "a": 1000, "c": 5}, "round_robin", seed=0)
    assert _draw(sampler, 7) == ["b", "a", "c", "b", "a", "c", "b"]


def test_same_seed_draws_the_same_sequence_on_every_process() -> None:
    # every process builds its own sampler from the shared seed: their draws must agree step for step
    processes = [TaskSampler(SIZES, "temperature", temperature=2.0, seed=7) for _ in range(3)]
    sequences = [_draw(s, 500) for s in processes]
    assert sequences[0] == sequences[1] == sequences[2]
    assert set(sequences[0]) == {"a", "b", "c"}


def test_different_seeds_draw_different_sequences() -> None:
    first = _draw(TaskSampler(SIZES, "uniform", seed=0), 200)
    second = _draw(TaskSampler(SIZES, "uniform", seed=1), 200)
    # two independent uniform sequences agree at ~1/3 of the steps, never at all 200
    agreement = sum(x == y for x, y in zip(first, second)) / 200
    assert first != second and 0.2 < agreement < 0.5


# ------------------------------------------------------------------------------------------------
# TaskSampler: checkpointing


@pytest.mark.parametrize("strategy", ["proportional", "round_robin"])
def test_state_dict_resumes_the_exact_sequence(strategy: str) -> None:
    sampler = TaskSampler(SIZES, strategy, seed=3)
    _draw(sampler, 50)
    state = copy.deepcopy(sampler.state_dict())  # what a checkpoint holds
    continued = _draw(sampler, 50)

    resumed = TaskSampler(SIZES, strategy, seed=999)  # the seed must not matter once the state is loaded
    resumed.load_state_dict(state)
    assert resumed.step == 50
    assert _draw(resumed, 50) == continued
    assert resumed.step == sampler.step == 100


def test_state_dict_is_a_snapshot() -> None:
    sampler = TaskSampler(SIZES, seed=3)
    state = sampler.state_dict()
    _draw(sampler, 20)  # drawing after the snapshot must not change it
    fresh = TaskSampler(SIZES, seed=3)
    fresh.load_state_dict(state)
    assert _draw(fresh, 20) == _draw(TaskSampler(SIZES, seed=3), 20)


@pytest.mark.parametrize("names", [["a", "b"], ["a", "b", "d"], ["c", "b", "a"]])
def test_load_state_dict_of_other_tasks_is_a_config_error(names: list[str]) -> None:
    state = TaskSampler({n: 10 for n in names}, seed=0).state_dict()
    with pytest.raises(ConfigError) as info:
        TaskSampler(SIZES, seed=0).load_state_dict(state)
    message = str(info.value)
    assert f"trained on tasks {names}" in message and "this config has ['a', 'b', 'c']" in message


# ------------------------------------------------------------------------------------------------
# steps_per_epoch


@pytest.mark.parametrize(
    ("num_processes", "accumulation", "expected"),
    [
        (1, 1, 13 + 9),  # ceil(100/8) + ceil(33/4)
        (2, 1, 7 + 5),  # ceil(100/16) + ceil(33/8)
        (2, 4, 3),  # ceil(12/4)
        (1, 5, 5),  # ceil(22/5)
        (4, 100, 1),  # never 0
    ],
)
def test_steps_per_epoch(num_processes: int, accumulation: int, expected: int) -> None:
    assert steps_per_epoch({"a": 100, "b": 33}, {"a": 8, "b": 4}, num_processes, accumulation) == expected


def test_steps_per_epoch_exact_multiples() -> None:
    assert steps_per_epoch({"a": 64, "b": 32}, {"a": 16, "b": 16}, 1, 1) == 4 + 2
    assert steps_per_epoch({"a": 64, "b": 32}, {"a": 16, "b": 16}, 2, 3) == 1  # 2 + 1 micro-batches


# ------------------------------------------------------------------------------------------------
# EpochSampler


@pytest.mark.parametrize("n", [1, 10, 257])
def test_each_epoch_is_a_permutation(n: int) -> None:
    sampler = EpochSampler(n, seed=0)
    assert len(sampler) == n
    for epoch in range(3):
        sampler.use_epoch(epoch)
        assert sorted(sampler) == list(range(n))


def test_order_depends_on_seed_and_epoch_only() -> None:
    n = 100
    one, other = EpochSampler(n, seed=5), EpochSampler(n, seed=5)
    one.use_epoch(2)
    other.use_epoch(2)
    assert list(one) == list(other) == list(one)  # same (seed, epoch): same order, however often iterated
    assert list(one) != list(range(n))  # shuffled

    epoch_orders = []
    for epoch in range(3):
        one.use_epoch(epoch)
        epoch_orders.append(list(one))
    assert len({tuple(o) for o in epoch_orders}) == 3  # a fresh order every epoch

    other_seed = EpochSampler(n, seed=6)
    other_seed.use_epoch(2)
    assert list(other_seed) != epoch_orders[2]


@pytest.fixture(scope="module")
def sst2_lengths(tmp_path_factory, tiny_tokenizer_dir) -> np.ndarray:
    """Token counts of the first 2000 SST-2 training sentences under the tests' tokenizer."""
    from datasets import load_dataset
    from transformers import AutoTokenizer

    tmp: Path = tmp_path_factory.mktemp("sst2")
    head = tmp / "train.jsonl"
    with open(DATA / "sst2" / "train.jsonl") as src:
        head.write_text("".join(itertools.islice(src, 2000)))
    dataset = load_dataset("json", data_files={"train": str(head)}, split="train", cache_dir=str(tmp / "cache"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    dataset = dataset.map(lambda batch: tokenizer(batch["sentence"]), batched=True, remove_columns=dataset.column_names)
    lengths = np.array(feature_lengths(dataset))
    assert len(lengths) == 2000 and lengths.min() >= 3  # [CLS] x [SEP] at the least
    return lengths


def _batches(order: list[int], batch_size: int) -> list[list[int]]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _spread_and_efficiency(order: list[int], lengths: np.ndarray, batch_size: int) -> tuple[float, float]:
    """Mean (max - min) length per batch, and real tokens / padded tokens over all batches."""
    batches = [lengths[b] for b in _batches(order, batch_size)]
    spread = float(np.mean([b.max() - b.min() for b in batches]))
    efficiency = float(sum(b.sum() for b in batches) / sum(b.max() * len(b) for b in batches))
    return spread, efficiency


def test_group_by_length_cuts_padding_on_real_data(sst2_lengths: np.ndarray) -> None:
    n, batch_size = len(sst2_lengths), 16
    grouped = EpochSampler(n, seed=0, lengths=sst2_lengths.tolist(), batch_size=batch_size)
    plain = EpochSampler(n, seed=0)

    grouped_order = list(grouped)
    assert sorted(grouped_order) == list(range(n))  # every example exactly once
    grouped_spread, grouped_eff = _spread_and_efficiency(grouped_order, sst2_lengths, batch_size)
    plain_spread, plain_eff = _spread_and_efficiency(list(plain), sst2_lengths, batch_size)

    # SST-2 sentences run from 3 to ~60 tokens: a random batch spans ~30 of them, a grouped one ~1-2
    assert plain_spread > 15
    assert grouped_spread < 0.2 * plain_spread
    assert grouped_eff > 0.85 and grouped_eff > plain_eff + 0.3


def test_group_by_length_shuffles_batches_and_epochs(sst2_lengths: np.ndarray) -> None:
    n, batch_size = 1000, 16  # 62 full batches and one of 8: two mega-batches (of 50 batches)
    lengths = sst2_lengths[:n].tolist()
    sampler = EpochSampler(n, seed=1, lengths=lengths, batch_size=batch_size)
    order = list(sampler)
    assert sorted(order) == list(range(n))
    batches = _batches(order, batch_size)
    assert [len(b) for b in batches] == [16] * 62 + [8]  # only the last batch is short

    # batches are sorted by length inside a mega-batch, then shuffled: the batches' longest lengths
    # are not in descending order
    longest = [max(lengths[i] for i in b) for b in batches[:-1]]
    assert longest != sorted(longest, reverse=True)

    assert list(EpochSampler(n, seed=1, lengths=lengths, batch_size=batch_size)) == order  # reproducible
    sampler.use_epoch(1)
    assert list(sampler) != order
