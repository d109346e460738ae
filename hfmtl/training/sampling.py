"""Which task trains at each optimizer step.

Strategies (``sampling.strategy``), with n_t the number of training examples of task t:

- ``proportional``: p_t ∝ n_t — every example is seen about equally often;
- ``temperature``: p_t ∝ min(n_t, K)^(1/T) — T=1 is proportional, T→∞ uniform; the cap K
  (``max_examples``) is T5's "examples-proportional mixing" limit (Raffel et al. 2020, §3.5.2);
  jiant and XTREME use the same temperature form;
- ``uniform``: p_t = 1/#tasks;
- ``weights``: p_t ∝ the given per-task weight;
- ``round_robin``: tasks in turn, in config order (deterministic).

The sampler draws by name: a task, or an input group of tasks that share their rows, whose size is
its rows counted once (hfmtl/training/input_groups.py). ``max_examples`` caps n_t for ``proportional`` too. Every process builds the sampler with the same seed
and so draws the same task at the same step with no communication; the sampler's state (its RNG and
step) is saved in checkpoints, so a resumed run draws the same sequence.

An *epoch* is as many optimizer steps as it takes to see every task's training data once at its
batch size: sum over tasks of ceil(n_t / (batch_t * processes)) micro-batches, divided by the
gradient accumulation steps. A task whose data runs out before the others starts a new, reshuffled
pass over its data; it never runs dry. A streaming task's size is declared (``num_train_examples``) or
unknown (hfmtl/training/streaming.py): with an unknown size the run has no epochs, and only the
strategies that do not weigh sizes (``uniform``, ``round_robin``, ``weights``) apply.

Example:
    >>> s = TaskSampler({"a": 300, "b": 100}, strategy="proportional", seed=0)
    >>> s.probabilities()
    {'a': 0.75, 'b': 0.25}
"""

from __future__ import annotations

from typing import Any, get_args

import numpy as np
import torch

from ..config import SamplingStrategy
from ..errors import ConfigError
from ..typed import check_choice

SAMPLING_CHOICES = get_args(SamplingStrategy)


class TaskSampler:
    """Seeded, checkpointable choice of the task of each step.

    Args:
        sizes: task_name -> number of training examples, None where unknown (a stream's; config order is
            kept for round-robin).
        strategy: one of proportional, temperature, uniform, round_robin, weights.
        temperature: T for ``temperature``.
        max_examples: cap on n_t before computing probabilities (None: no cap).
        weights: task_name -> weight, for ``weights`` (missing tasks get 0).
        seed: the seed shared by all processes.
    """

    def __init__(
        self,
        sizes: dict[str, int | None],
        strategy: str = "proportional",
        temperature: float = 1.0,
        max_examples: int | None = None,
        weights: dict[str, float] | None = None,
        seed: int = 0,
    ):
        check_choice("sampling.strategy", strategy, SAMPLING_CHOICES)
        if not sizes:
            raise ConfigError("the task sampler needs at least one task")
        self.task_names = list(sizes)
        self.sizes = dict(sizes)
        self.strategy = strategy
        self.temperature = temperature
        self.max_examples = max_examples
        self.weights = dict(weights or {})
        self.seed = seed
        self._probs = np.array([self.probabilities()[t] for t in self.task_names])
        self._rng = np.random.default_rng(seed)
        self.step = 0

    def probabilities(self) -> dict[str, float]:
        """The probability of each task at any step (round-robin: its share of steps).

        Raises:
            ConfigError: the strategy weighs sizes and a task's is unknown.
        """
        unknown = [t for t in self.task_names if self.sizes[t] is None]
        if unknown and self.strategy in ("proportional", "temperature"):
            raise ConfigError(
                f"sampling.strategy={self.strategy!r} needs every task's size: set tasks.{unknown[0]}.num_train_examples"
            )
        n = np.array([self.sizes[t] or 0 for t in self.task_names], dtype=np.float64)
        if self.max_examples is not None:
            n = np.minimum(n, self.max_examples)
        if self.strategy == "proportional":
            raw = n
        elif self.strategy == "temperature":
            raw = n ** (1.0 / self.temperature)
        elif self.strategy == "weights":
            raw = np.array([self.weights.get(t, 0.0) for t in self.task_names], dtype=np.float64)
        else:  # uniform, round_robin
            raw = np.ones(len(self.task_names))
        if raw.sum() <= 0:
            raise ConfigError(f"sampling: every task has weight 0 under strategy {self.strategy!r}")
        probs = raw / raw.sum()
        return {t: float(p) for t, p in zip(self.task_names, probs)}

    def next_task(self) -> str:
        """The task of the next step."""
        if self.strategy == "round_robin":
            task = self.task_names[self.step % len(self.task_names)]
        else:
            task = self.task_names[int(self._rng.choice(len(self.task_names), p=self._probs))]
        self.step += 1
        return task

    def tasks_of_step(self, step: int, tasks_per_step: int | None) -> list[str]:
        """The tasks of an all-tasks step (``balancing.step: all_tasks``): every task, or `tasks_per_step`
        of them drawn without replacement with `probabilities` from a generator seeded by the seed and
        `step` (the steps taken before it). A function of the step alone: the same on every process and
        after a resume, with no state to save; `next_task`'s sequence is left alone.

        Example:
            >>> s = TaskSampler({"a": 1, "b": 1, "c": 1}, strategy="uniform", seed=0)
            >>> s.tasks_of_step(5, None)
            ['a', 'b', 'c']
            >>> s.tasks_of_step(5, 2) == s.tasks_of_step(5, 2)
            True
        """
        names = self.task_names
        if tasks_per_step is None or tasks_per_step >= len(names):
            return list(names)
        probabilities = torch.tensor([self.probabilities()[n] for n in names])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        chosen = torch.multinomial(probabilities, tasks_per_step, replacement=False, generator=generator)
        return [names[i] for i in sorted(chosen.tolist())]

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "rng": self._rng.bit_generator.state, "task_names": self.task_names}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["task_names"]) != self.task_names:
            raise ConfigError(
                f"the checkpoint was trained on tasks {state['task_names']}, this config has {self.task_names}"
            )
        self.step = int(state["step"])
        self._rng.bit_generator.state = state["rng"]


def steps_per_epoch(
    sizes: dict[str, int | None], batch_sizes: dict[str, int], num_processes: int, gradient_accumulation_steps: int
) -> int | None:
    """Optimizer steps that see every task's training data once (see the module docstring); None when a
    task's size is unknown (a stream without ``num_train_examples``): the run then has no epochs."""
    if any(size is None for size in sizes.values()):
        return None
    micro_batches = sum(-(-sizes[t] // (batch_sizes[t] * num_processes)) for t in sizes)
    return max(1, -(-micro_batches // gradient_accumulation_steps))
